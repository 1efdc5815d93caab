"""Reading feature tables as of a release: what training jobs, checks and auditors use."""

from __future__ import annotations

from datetime import date

from pyspark.sql import DataFrame, SparkSession

from backfills.assets.registry import feature_spec
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.feature_store import PartitionFiles, read_partitions
from backfills.resources.storage import ObjectStore


class FeatureReader:
    """`read(table, start, end, release=None)`: production rows of a table, now or as of any past release."""

    def __init__(self, spark: SparkSession, store: ObjectStore) -> None:
        self.spark = spark
        self.store = store
        self.catalog = ReleaseCatalog(store)

    def read(self, table: str, start: date | str, end: date | str, release: str | None = None) -> DataFrame:
        spec = feature_spec(table)
        partitions = self.catalog.release_partitions(table, str(start), str(end), release_id=release)
        return read_partitions(
            self.spark,
            self.store,
            [PartitionFiles(entry.base, tuple(entry.files)) for _, entry in sorted(partitions.items())],
            schema_ddl=spec.schema_ddl,
            columns=spec.column_names,
        )

    def read_batch(self, table: str, batch_id: str) -> DataFrame:
        """Staged rows of a table in one batch (for inspection; production readers use `read`)."""
        spec = feature_spec(table)
        records = self.catalog.get_batch(batch_id).tables.get(table, {})
        return read_partitions(
            self.spark,
            self.store,
            [PartitionFiles(record.base, tuple(record.files)) for _, record in sorted(records.items())],
            schema_ddl=spec.schema_ddl,
            columns=spec.column_names,
        )
