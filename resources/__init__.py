"""Spark session, object storage, release catalog and the Dagster resources around them."""
