"""Reading feature tables as of a release: what training jobs, checks and auditors use."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from backfills.assets.registry import feature_spec
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.feature_store import PartitionFiles, read_partitions
from backfills.resources.storage import ObjectStore
from backfills.serving.training import TrainingSet, build_training_set


class FeatureReader:
    """`read(table, start, end, release=None)`: production rows of a table, now or as of any past release;
    `training_set(entities, features, release=None)`: point-in-time-correct features for entity rows."""

    def __init__(self, spark: SparkSession, store: ObjectStore) -> None:
        self.spark = spark
        self.store = store
        self.catalog = ReleaseCatalog(store)

    def read(self, table: str, start: date | str, end: date | str, release: str | None = None) -> DataFrame:
        partitions = self.catalog.release_partitions(table, str(start), str(end), release_id=release)
        return self._rows(table, [(day, entry.base, entry.files) for day, entry in partitions.items()])

    def training_set(
        self, entities: DataFrame | pd.DataFrame, features: Sequence[str], release: str | None = None
    ) -> TrainingSet:
        """Each entity row (`customer_id`, `event_ts` in UTC, any other columns carried through) with the
        `features` (`table.column`) usable at its event time, as of `release` (default: the current one).
        See serving/training.py for the point-in-time rule; `.write(path)` saves it with its lineage."""
        return build_training_set(self.spark, self.store, entities, features, release)

    def read_batch(self, table: str, batch_id: str) -> DataFrame:
        """Staged rows of a table in one batch (for inspection; production readers use `read`)."""
        records = self.catalog.get_batch(batch_id).tables.get(table, {})
        return self._rows(table, [(day, record.base, record.files) for day, record in records.items()])

    def _rows(self, table: str, partitions: list[tuple[str, str, list[str]]]) -> DataFrame:
        spec = feature_spec(table)
        return read_partitions(
            self.spark,
            self.store,
            [PartitionFiles(base, tuple(files)) for _, base, files in sorted(partitions)],
            schema_ddl=spec.schema_ddl,
            columns=spec.column_names,
        )
