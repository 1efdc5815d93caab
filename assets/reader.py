"""Reading feature tables as of a release: what training jobs, checks and auditors use."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from backfills.assets.registry import feature_spec
from backfills.resources.canary import open_canary
from backfills.resources.canary_slice import Channel, check_channel, slice_column
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import Canary, ReleasedPartition
from backfills.resources.feature_store import PartitionFiles, read_partitions
from backfills.resources.storage import ObjectStore
from backfills.serving.training import TrainingSet, build_training_set


class FeatureReader:
    """`read(table, start, end, release=None, channel="production")`: production rows of a table, now or as
    of any past release, or the canary channel's rows; `training_set(entities, features, release=None)`:
    point-in-time-correct features for entity rows."""

    def __init__(self, spark: SparkSession, store: ObjectStore) -> None:
        self.spark = spark
        self.store = store
        self.catalog = ReleaseCatalog(store)

    def read(
        self,
        table: str,
        start: date | str,
        end: date | str,
        release: str | None = None,
        channel: Channel = "production",
    ) -> DataFrame:
        """The table's rows with start <= date <= end. `channel="canary"`: while a canary is open, the
        entities of its slice get the canary release's rows and every other entity production's (without
        one, everyone gets production's); `release` pins a release instead (production channel only)."""
        canary = open_canary(self.catalog) if check_channel(channel, release) == "canary" else None
        if canary is None:
            partitions = self.catalog.release_partitions(table, str(start), str(end), release_id=release)
            return self._rows(table, [(day, entry.base, entry.files) for day, entry in partitions.items()])
        return self._canary_rows(table, str(start), str(end), canary)

    def _canary_rows(self, table: str, start: str, end: str, canary: Canary) -> DataFrame:
        production = (
            self.catalog.release_partitions(table, start, end) if self.catalog.current_release_id() else {}
        )
        exposed = self.catalog.release_partitions(table, start, end, release_id=canary.release_id)
        same = {day: entry for day, entry in production.items() if exposed.get(day) == entry}
        in_slice = slice_column(F.col(feature_spec(table).entity_keys[0]), canary.percent)

        def rows(partitions: dict[str, ReleasedPartition]) -> DataFrame:
            return self._rows(table, [(day, entry.base, entry.files) for day, entry in partitions.items()])

        differing = {day: entry for day, entry in production.items() if day not in same}
        canary_only = {day: entry for day, entry in exposed.items() if day not in same}
        return (
            rows(same)
            .unionByName(rows(differing).where(~in_slice))
            .unionByName(rows(canary_only).where(in_slice))
        )

    def training_set(
        self,
        entities: DataFrame | pd.DataFrame,
        features: Sequence[str],
        release: str | None = None,
        channel: Channel = "production",
    ) -> TrainingSet:
        """Each entity row (`customer_id`, `event_ts` in UTC, any other columns carried through) with the
        `features` (`table.column`) usable at its event time, as of `release` (default: the current one),
        or, with `channel="canary"`, the canary release's for the entities of an open canary's slice.
        See serving/training.py for the point-in-time rule; `.write(path)` saves it with its lineage."""
        return build_training_set(self.spark, self.store, entities, features, release, channel=channel)

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
