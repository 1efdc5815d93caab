"""Parquet files of feature partitions: writing a run's partitions, reading listed files, content hashes.

Readers only ever read files named in a batch manifest or a release, never a folder listing, so files of a
crashed or superseded attempt are invisible whatever is left on disk.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from backfills.resources.storage import ObjectStore

PARQUET_SUFFIX = ".parquet"


@dataclass(frozen=True)
class PartitionFiles:
    """Where one partition's rows are: the attempt folder Spark wrote and the Parquet files in it."""

    base: str
    files: tuple[str, ...]


@dataclass(frozen=True)
class PartitionFacts:
    row_count: int
    content_hash: str
    null_counts: dict[str, int]  # per nullable column asked for


def write_partitions(
    df: DataFrame, store: ObjectStore, base: str, *, date_column: str, sort_columns: Sequence[str]
) -> dict[str, PartitionFiles]:
    """Write one Parquet file per date under `base` (a fresh folder) and return the files of each date.

    One file per date with rows in key order makes the output the same whatever the run layout.
    """
    (
        df.repartition(F.col(date_column))
        .sortWithinPartitions(date_column, *sort_columns)
        .write.mode("error")
        .partitionBy(date_column)
        .parquet(store.data_uri(base))
    )
    by_date: dict[str, list[str]] = defaultdict(list)
    marker = f"{date_column}="
    for key in store.list(base):
        if not key.endswith(PARQUET_SUFFIX):
            continue
        folder = next((part for part in key.split("/") if part.startswith(marker)), None)
        if folder is not None:
            by_date[folder[len(marker) :]].append(key)
    return {day: PartitionFiles(base, tuple(sorted(keys))) for day, keys in by_date.items()}


def read_partitions(
    spark: SparkSession,
    store: ObjectStore,
    parts: Iterable[PartitionFiles],
    *,
    schema_ddl: str,
    columns: Sequence[str],
) -> DataFrame:
    """Rows of the given partitions, with the date column restored from the folder names."""
    files_by_base: dict[str, list[str]] = defaultdict(list)
    for part in parts:
        files_by_base[part.base].extend(part.files)
    frames = [
        spark.read.schema(schema_ddl)
        .option("basePath", store.data_uri(base))
        .parquet(*[store.data_uri(key) for key in files])
        .select(*columns)
        for base, files in sorted(files_by_base.items())
        if files
    ]
    if not frames:
        return spark.createDataFrame([], schema_ddl).select(*columns)
    return reduce(DataFrame.unionByName, frames)


def row_hashes(df: DataFrame) -> tuple[Column, Column]:
    """Each row hashed twice (columns forward and reversed, with null markers so a shifted null cannot
    collide): the sums of those hashes and the row count identify the multiset of rows, in any order."""
    columns = [F.col(name) for name in df.columns]
    nulls = [F.isnull(column) for column in columns]
    forward = F.xxhash64(*columns, *nulls).cast("decimal(38,0)")
    backward = F.xxhash64(*reversed(columns), *nulls).cast("decimal(38,0)")
    return forward, backward


def content_hash(schema_ddl: str, rows: int, forward: str, backward: str) -> str:
    """The content hash of a partition: from its row count and the sums of its rows' two hashes."""
    return hashlib.sha256(f"{schema_ddl}|{rows}|{forward}|{backward}".encode()).hexdigest()


def partition_facts(
    df: DataFrame, *, date_column: str, schema_ddl: str, null_columns: Sequence[str] = ()
) -> dict[str, PartitionFacts]:
    """Row count, an order-independent content hash and null counts per date, in one Spark aggregation."""
    forward, backward = row_hashes(df)
    rows = (
        df.groupBy(F.col(date_column).cast("string").alias("day"))
        .agg(
            F.count(F.lit(1)).alias("row_count"),
            F.sum(forward).cast("string").alias("forward"),
            F.sum(backward).cast("string").alias("backward"),
            *[F.count_if(F.col(name).isNull()).alias(f"nulls{i}") for i, name in enumerate(null_columns)],
        )
        .collect()
    )
    facts = {}
    for row in rows:
        digest = content_hash(schema_ddl, row.row_count, row.forward, row.backward)
        nulls = {name: int(row[f"nulls{i}"]) for i, name in enumerate(null_columns)}
        facts[row.day] = PartitionFacts(int(row.row_count), digest, nulls)
    return facts


def empty_partition_hash(schema_ddl: str) -> str:
    """Content hash of a partition with no rows (so empty days are recorded, not missing)."""
    return content_hash(schema_ddl, 0, "0", "0")
