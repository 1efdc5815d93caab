"""Governed feature backfills on Dagster."""
