"""Contracts and asset checks on staged batches (built in the quality-gates issue)."""
