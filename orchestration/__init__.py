"""Dagster Definitions, local backfill runner and the `backfills` command."""
