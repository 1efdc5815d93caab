"""One aggregation over a run's rows that yields, per day, everything the gate and the manifest need: row
count, content hash, and every figure a contract rule or a check asks for (rows breaking a condition, with
up to a few of them as evidence), plus the keys that appear more than once.

Rows are grouped by their key first (entity keys and date: one row per group when keys are unique), then by
day; Spark runs the two as one job. Every check contributes `Measure`s instead of a query of its own, so the
cost of the checks is one pass over the rows whatever their number.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from backfills.checks.samples import SAMPLE_SIZE, SampleRow, plain_rows
from backfills.resources.feature_store import content_hash, row_hashes


@dataclass(frozen=True)
class Measure:
    """Rows for which `condition` is true (a null condition counts as false), counted per day; with `shown`,
    up to `SAMPLE_SIZE` of them per day as evidence: their keys and the `shown` columns, in key order."""

    name: str
    condition: Column
    shown: tuple[str, ...] | None = None


@dataclass
class DayFigures:
    """What the pass found on one day."""

    rows: int = 0
    content_hash: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[SampleRow]] = field(default_factory=dict)
    duplicate_keys: int = 0  # keys held by more than one row
    duplicate_rows: int = 0  # rows holding such keys
    duplicate_sample: list[SampleRow] = field(default_factory=list)


@dataclass(frozen=True)
class PassFigures:
    """The figures of every day that has rows (a day without rows has none)."""

    days: dict[str, DayFigures]
    keys: tuple[str, ...]

    def total(self, name: str) -> int:
        return sum(day.counts.get(name, 0) for day in self.days.values())

    @property
    def rows(self) -> int:
        return sum(day.rows for day in self.days.values())

    def sample(self, name: str, size: int = SAMPLE_SIZE) -> list[SampleRow]:
        """Up to `size` rows of the measure over all days, in key order."""
        rows = [row for day in self.days.values() for row in day.samples.get(name, [])]
        return sorted(rows, key=lambda row: tuple(str(row.get(key)) for key in self.keys))[:size]

    def duplicate_sample(self, size: int = SAMPLE_SIZE) -> list[SampleRow]:
        rows = [row for day in self.days.values() for row in day.duplicate_sample]
        return sorted(rows, key=lambda row: tuple(str(row.get(key)) for key in self.keys))[:size]


def _displayed(df: DataFrame, name: str) -> Column:
    # Timestamps are rendered by Spark in the session time zone (UTC): collected as Python datetimes they
    # would shift to the driver host's zone.
    if isinstance(df.schema[name].dataType, T.TimestampType):
        return F.col(name).cast("string").alias(name)
    return F.col(name)


def run_pass(
    df: DataFrame,
    *,
    keys: Sequence[str],
    date_column: str | None,
    schema_ddl: str | None,
    measures: Sequence[Measure] = (),
    sample_size: int = SAMPLE_SIZE,
    unique_keys: bool = True,
) -> PassFigures:
    """The figures of `df` per day of `date_column` (one group "all" without one), in one Spark job (cache
    `df` if it is costly). With `schema_ddl`, each day's content hash; with `unique_keys`, rows are grouped by
    `keys` first and the keys held by more than one row are counted (else one grouping by day, cheaper)."""
    keys = list(keys)
    if unique_keys and date_column is not None and date_column not in keys:
        raise ValueError(f"the pass groups by key and then by day: {date_column} must be one of {keys}")
    order = F.struct(*[F.col(key) for key in keys]) if keys else F.lit(0)
    day = F.col(date_column).cast("string") if date_column is not None else F.lit("all")
    shown_rows = {}
    for index, measure in enumerate(measures):
        if measure.shown is not None:
            shown = [*keys, *[name for name in measure.shown if name not in keys]]
            shown_rows[index] = F.struct(*[_displayed(df, name) for name in shown])
    if unique_keys:
        grouped = _per_key(df, keys, order, measures, shown_rows, hashed=schema_ddl is not None)
        rows = F.col("_rows")
        repeated = F.struct(*[F.col(key) for key in keys], rows.alias("rows"))
        per_day = [
            F.sum(rows).alias("rows"),
            F.count_if(rows > 1).alias("duplicate_keys"),
            F.coalesce(F.sum(F.when(rows > 1, rows)), F.lit(0)).alias("duplicate_rows"),
            F.min_by(repeated, F.when(rows > 1, order), sample_size).alias("duplicate_sample"),
        ]
        if schema_ddl is not None:
            per_day += [
                F.sum("_fwd").cast("string").alias("forward"),
                F.sum("_bwd").cast("string").alias("backward"),
            ]
        for index in range(len(measures)):
            per_day.append(F.sum(f"_c{index}").alias(f"c{index}"))
            if index in shown_rows:
                sampled = F.col(f"_s{index}")
                per_day.append(
                    F.min_by(sampled, F.when(sampled.isNotNull(), order), sample_size).alias(f"s{index}")
                )
        result = grouped.groupBy(day.alias("day")).agg(*per_day).collect()
    else:
        per_day = [F.count(F.lit(1)).alias("rows")]
        if schema_ddl is not None:
            forward, backward = row_hashes(df)
            per_day += [
                F.sum(forward).cast("string").alias("forward"),
                F.sum(backward).cast("string").alias("backward"),
            ]
        for index, measure in enumerate(measures):
            per_day.append(F.count_if(measure.condition).alias(f"c{index}"))
            if index in shown_rows:
                per_day.append(
                    F.min_by(shown_rows[index], F.when(measure.condition, order), sample_size).alias(
                        f"s{index}"
                    )
                )
        result = df.groupBy(day.alias("day")).agg(*per_day).collect()
    days = {}
    for found in result:
        row_count = int(found["rows"])
        figures = DayFigures(
            rows=row_count,
            content_hash=(
                content_hash(schema_ddl, row_count, found["forward"], found["backward"]) if schema_ddl else ""
            ),
        )
        if unique_keys:
            figures.duplicate_keys = int(found["duplicate_keys"])
            figures.duplicate_rows = int(found["duplicate_rows"])
            figures.duplicate_sample = plain_rows(found["duplicate_sample"] or [], size=sample_size)
        for index, measure in enumerate(measures):
            figures.counts[measure.name] = int(found[f"c{index}"] or 0)
            if index in shown_rows:
                figures.samples[measure.name] = plain_rows(found[f"s{index}"] or [], size=sample_size)
        days[found["day"]] = figures
    return PassFigures(days=dict(sorted(days.items())), keys=tuple(keys))


def _per_key(
    df: DataFrame,
    keys: list[str],
    order: Column,
    measures: Sequence[Measure],
    shown_rows: dict[int, Column],
    *,
    hashed: bool,
) -> DataFrame:
    """One row per key: its rows, hash sums, and per measure the rows meeting it and the first of them."""
    per_key = [F.count(F.lit(1)).alias("_rows")]
    if hashed:
        forward, backward = row_hashes(df)
        per_key += [F.sum(forward).alias("_fwd"), F.sum(backward).alias("_bwd")]
    for index, measure in enumerate(measures):
        per_key.append(F.count_if(measure.condition).alias(f"_c{index}"))
        if index in shown_rows:
            # One offending row per key here; the smallest keys win at the day level.
            per_key.append(F.min_by(shown_rows[index], F.when(measure.condition, order)).alias(f"_s{index}"))
    return df.groupBy(*keys).agg(*per_key)


def merge_measures(measures: Iterable[Measure]) -> list[Measure]:
    """One measure per name (checks may share one, like a column's nulls), keeping the one with a sample."""
    merged: dict[str, Measure] = {}
    for measure in measures:
        if measure.name not in merged or (merged[measure.name].shown is None and measure.shown is not None):
            merged[measure.name] = measure
    return list(merged.values())
