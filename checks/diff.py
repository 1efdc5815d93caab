"""What a staged batch changes compared with production: rows added, removed and changed per partition, and
how each numeric column's distribution shifts. Pure Spark functions; `judge` applies a policy to a report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime, time
from decimal import Decimal
from functools import reduce
from operator import or_
from typing import Literal

from pyspark.sql import Column, DataFrame, Row
from pyspark.sql import functions as F
from pyspark.sql.types import DataType, NumericType

from backfills.errors import InvalidInputError, InvalidRequestError
from backfills.specs import DiffPolicy

# A fixed accuracy makes percentile_approx return the same values for the same data (relative error 1e-4).
PERCENTILE_ACCURACY = 10_000
QUANTILES = {"p10": 0.1, "p50": 0.5, "p90": 0.9}
# Bin shares are floored at this value before PSI's logarithm, so an empty bin on one side adds a large but
# finite term (a bin holding 10% in production and nothing staged adds about 0.69) instead of infinity.
PSI_EPSILON = 1e-4

Verdict = Literal["pass", "warn", "block"]


@dataclass(frozen=True)
class ColumnShift:
    """One numeric column, staged vs production, over all compared partitions (nulls left out)."""

    column: str
    production_mean: float | None
    staged_mean: float | None
    # (staged - production) / |production|; None when the production mean is 0 or None.
    mean_shift: float | None
    production_quantiles: dict[str, float | None]  # {"p10": .., "p50": .., "p90": ..}
    staged_quantiles: dict[str, float | None]
    # Population stability index over bins cut at production quantiles; None when a side has no values.
    psi: float | None


@dataclass(frozen=True)
class PartitionDiff:
    """Row counts of one partition: matched on the keys, compared on every other column."""

    partition: str  # YYYY-MM-DD
    production_rows: int
    staged_rows: int
    added: int
    removed: int
    changed: int
    unchanged: int


@dataclass(frozen=True)
class DiffReport:
    """What replacing production with the staged rows would change."""

    partitions: list[PartitionDiff]  # sorted by partition
    columns: list[ColumnShift]
    # Keys of changed rows plus {column: {"production": v, "staged": v}} for each column that differs.
    changed_sample: list[dict[str, object]]

    @property
    def production_rows(self) -> int:
        return sum(p.production_rows for p in self.partitions)

    @property
    def staged_rows(self) -> int:
        return sum(p.staged_rows for p in self.partitions)

    @property
    def added(self) -> int:
        return sum(p.added for p in self.partitions)

    @property
    def removed(self) -> int:
        return sum(p.removed for p in self.partitions)

    @property
    def changed(self) -> int:
        return sum(p.changed for p in self.partitions)

    @property
    def unchanged(self) -> int:
        return sum(p.unchanged for p in self.partitions)

    @property
    def changed_fraction(self) -> float:
        """Rows changed, added or removed, over production rows (0 when production has none)."""
        if not self.production_rows:
            return 0.0
        return (self.changed + self.added + self.removed) / self.production_rows

    def to_metadata(self) -> dict[str, object]:
        """A JSON-friendly summary for Dagster metadata and the batch manifest."""
        return {
            "production_rows": self.production_rows,
            "staged_rows": self.staged_rows,
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "changed_fraction": self.changed_fraction,
            "partitions": [asdict(p) for p in self.partitions],
            "columns": [_jsonable(asdict(c)) for c in self.columns],
            "changed_sample": self.changed_sample,
        }


@dataclass(frozen=True)
class DiffVerdict:
    verdict: Verdict
    reasons: list[str]  # blocking reasons first; each names the column or partition, the figure and threshold


def diff_against_production(
    staged: DataFrame,
    production: DataFrame,
    *,
    keys: Sequence[str],
    date_column: str,
    numeric_columns: Sequence[str],
    sample_size: int = 5,
    bins: int = 10,
) -> DiffReport:
    """Compare staged rows with the production rows they would replace.

    Rows are matched on `keys` (which include `date_column`, null-safe) and assumed unique on each side (the
    duplicates check guarantees it); a matched row is changed when any other column differs, null-safe.
    Pass both sides restricted to the same partitions: every row is compared as given. Spark work: one full
    outer join of keys and one row hash per side with one aggregation (per-partition counts and the keys of
    the sample), a lookup of the sampled keys' values, one aggregation over the staged rows (means,
    quantiles, PSI bin counts) and two over production (quantiles first: they cut the bins).
    """
    keys = list(keys)
    numeric_columns = list(numeric_columns)
    _check_arguments(keys, date_column, sample_size, bins)
    value_columns = _check_schemas(staged, production, keys, numeric_columns)
    partitions, sample = _compare_rows(staged, production, keys, date_column, value_columns, sample_size)
    columns = _column_shifts(staged, production, numeric_columns, bins)
    return DiffReport(partitions=partitions, columns=columns, changed_sample=sample)


def judge(report: DiffReport, policy: DiffPolicy) -> DiffVerdict:
    """Block, warn or pass a diff under a policy, with one reason per threshold crossed."""
    blocks: list[str] = []
    warns: list[str] = []
    fraction = report.changed_fraction
    if policy.changed_fraction_block is not None and fraction > policy.changed_fraction_block:
        blocks.append(_changed_fraction_reason(report, "block", policy.changed_fraction_block))
    elif fraction > policy.changed_fraction_warn:
        warns.append(_changed_fraction_reason(report, "warn", policy.changed_fraction_warn))
    for shift in report.columns:
        if shift.psi is not None and shift.psi > policy.psi_block:
            blocks.append(f"{shift.column}: PSI {shift.psi:.4g} > block threshold {policy.psi_block:g}")
        elif shift.psi is not None and shift.psi > policy.psi_warn:
            warns.append(f"{shift.column}: PSI {shift.psi:.4g} > warn threshold {policy.psi_warn:g}")
        if (
            policy.mean_shift_block is not None
            and shift.mean_shift is not None
            and abs(shift.mean_shift) > policy.mean_shift_block
        ):
            blocks.append(
                f"{shift.column}: mean shift {shift.mean_shift:+.2%} (production "
                f"{shift.production_mean:.6g}, staged {shift.staged_mean:.6g}) beyond block threshold "
                f"±{policy.mean_shift_block:.2%}"
            )
    verdict: Verdict = "block" if blocks else "warn" if warns else "pass"
    return DiffVerdict(verdict=verdict, reasons=blocks + warns)


def _changed_fraction_reason(report: DiffReport, level: str, threshold: float) -> str:
    busiest = max(report.partitions, key=lambda p: p.changed + p.added + p.removed)
    busiest_count = busiest.changed + busiest.added + busiest.removed
    return (
        f"rows: changed fraction {report.changed_fraction:.4g} ({report.changed} changed, {report.added} "
        f"added, {report.removed} removed of {report.production_rows} production rows) > {level} threshold "
        f"{threshold:g}; most in {busiest.partition} ({busiest_count} of {busiest.production_rows})"
    )


def _check_arguments(keys: list[str], date_column: str, sample_size: int, bins: int) -> None:
    if date_column not in keys:
        raise InvalidRequestError(f"diff keys {keys} must include the date column {date_column!r}")
    if sample_size < 0:
        raise InvalidRequestError(f"diff sample_size must be >= 0, got {sample_size}")
    if bins < 2:
        raise InvalidRequestError(f"diff bins must be >= 2 (PSI needs at least two bins), got {bins}")


def _check_schemas(
    staged: DataFrame, production: DataFrame, keys: list[str], numeric_columns: list[str]
) -> list[str]:
    """Fail with every schema problem named at once; return the columns compared besides the keys."""
    staged_types = {f.name: f.dataType for f in staged.schema.fields}
    production_types = {f.name: f.dataType for f in production.schema.fields}
    wanted = [*keys, *numeric_columns]
    missing_staged = list(dict.fromkeys(c for c in [*wanted, *production_types] if c not in staged_types))
    missing_production = list(dict.fromkeys(c for c in [*wanted, *staged_types] if c not in production_types))
    problems = []
    if missing_staged:
        problems.append(f"missing in staged: {', '.join(missing_staged)}")
    if missing_production:
        problems.append(f"missing in production: {', '.join(missing_production)}")
    shared = [c for c in staged_types if c in production_types]
    # Numbers of different types still compare by value (decimal(18,2) vs double); anything else would be
    # coerced by Spark in ways nobody asked for.
    clashing = [
        f"{c} (staged {staged_types[c].simpleString()}, production {production_types[c].simpleString()})"
        for c in shared
        if staged_types[c] != production_types[c] and not _both_numeric(staged_types[c], production_types[c])
    ]
    if clashing:
        problems.append(f"different types: {', '.join(clashing)}")
    not_numeric = [
        f"{c} ({staged_types[c].simpleString()})"
        for c in numeric_columns
        if c in shared and not _both_numeric(staged_types[c], production_types[c])
    ]
    if not_numeric:
        problems.append(f"numeric columns that are not numeric: {', '.join(not_numeric)}")
    if problems:
        raise InvalidInputError(
            "cannot diff the staged rows against production: " + "; ".join(problems) + ". Both sides must "
            "have the feature table's columns and types (a schema change needs a new contract first)."
        )
    return [c for c in staged_types if c not in keys]


def _both_numeric(left: DataType, right: DataType) -> bool:
    return isinstance(left, NumericType) and isinstance(right, NumericType)


def _compare_rows(
    staged: DataFrame,
    production: DataFrame,
    keys: list[str],
    date_column: str,
    value_columns: list[str],
    sample_size: int,
) -> tuple[list[PartitionDiff], list[dict[str, object]]]:
    """One full outer join on the keys with one hash of the other columns per side, one aggregation by
    partition: the counts and the keys of a sample of changed rows, whose values are then looked up by key.

    The shuffle carries the keys and one 64-bit hash per row instead of every column. Production's columns
    are cast to the staged types first, so numbers of another type compare by value. Two rows whose values
    differ share a hash with probability about 2^-64 per row.
    """
    staged_types = {field.name: field.dataType for field in staged.schema.fields}

    def hashed(frame: DataFrame, prefix: str) -> DataFrame:
        values = [F.col(c).cast(staged_types[c]) for c in value_columns]
        return frame.select(
            *[F.col(k).alias(f"_{prefix}k{i}") for i, k in enumerate(keys)],
            F.xxhash64(F.lit(0), *values, *[F.isnull(v) for v in values]).alias(f"_{prefix}h"),
        )

    joined = hashed(staged, "s").join(
        hashed(production, "p"),
        on=[F.col(f"_sk{i}").eqNullSafe(F.col(f"_pk{i}")) for i in range(len(keys))],
        how="full_outer",
    )
    in_staged = F.col("_sh").isNotNull()
    in_production = F.col("_ph").isNotNull()
    changed = in_staged & in_production & (F.col("_sh") != F.col("_ph"))
    date_index = keys.index(date_column)
    aggregates = [
        F.count_if(in_production).alias("production_rows"),
        F.count_if(in_staged).alias("staged_rows"),
        F.count_if(in_staged & ~in_production).alias("added"),
        F.count_if(in_production & ~in_staged).alias("removed"),
        F.count_if(changed).alias("changed"),
        F.count_if(in_staged & in_production & ~changed).alias("unchanged"),
    ]
    staged_keys = [F.col(f"_sk{i}") for i in range(len(keys))]
    if sample_size:
        # Ordering by a hash of the keys spreads the sample over entities instead of the smallest IDs, and
        # stays deterministic; min_by ignores the rows whose ordering is null (those not changed).
        order = F.when(changed, F.struct(F.xxhash64(*staged_keys), *staged_keys))
        key = F.struct(*[k.alias(f"k{i}") for i, k in enumerate(staged_keys)])
        aggregates.append(F.min_by(key, order, sample_size).alias("sample"))
    partition = F.coalesce(F.col(f"_sk{date_index}"), F.col(f"_pk{date_index}"))
    rows = joined.groupBy(partition.alias("partition")).agg(*aggregates).collect()

    rows.sort(key=lambda row: _partition_label(row["partition"]))
    partitions = [
        PartitionDiff(
            partition=_partition_label(row["partition"]),
            production_rows=row["production_rows"],
            staged_rows=row["staged_rows"],
            added=row["added"],
            removed=row["removed"],
            changed=row["changed"],
            unchanged=row["unchanged"],
        )
        for row in rows
    ]
    if not sample_size:
        return partitions, []
    # Take the samples round-robin over partitions so a many-day batch shows changes from several days.
    candidates = [
        (rank, index, entry)
        for index, row in enumerate(rows)
        for rank, entry in enumerate(row["sample"] or [])
    ]
    candidates.sort(key=lambda candidate: candidate[:2])
    picked = [tuple(entry[f"k{i}"] for i in range(len(keys))) for _, _, entry in candidates[:sample_size]]
    return partitions, _changed_values(staged, production, keys, value_columns, picked)


def _changed_values(
    staged: DataFrame,
    production: DataFrame,
    keys: list[str],
    value_columns: list[str],
    picked: list[tuple[object, ...]],
) -> list[dict[str, object]]:
    """The keys of each picked row and, for each column that differs, its production and staged value."""
    if not picked:
        return []
    wanted = reduce(
        or_,
        [
            reduce(
                lambda a, b: a & b, [F.col(k).eqNullSafe(F.lit(v)) for k, v in zip(keys, row, strict=True)]
            )
            for row in picked
        ],
    )
    both = (
        staged.where(wanted)
        .select(*keys, *value_columns, F.lit("staged").alias("_side"))
        .unionByName(
            production.where(wanted).select(*keys, *value_columns, F.lit("production").alias("_side"))
        )
        .collect()
    )
    found = {(tuple(row[k] for k in keys), row["_side"]): row for row in both}
    sample = []
    for key in picked:
        staged_row, production_row = found[(key, "staged")], found[(key, "production")]
        entry: dict[str, object] = {k: _jsonable(v) for k, v in zip(keys, key, strict=True)}
        for column in value_columns:
            before, after = production_row[column], staged_row[column]
            if not _same(before, after):
                entry[column] = {"production": _jsonable(before), "staged": _jsonable(after)}
        sample.append(entry)
    return sample


def _same(left: object, right: object) -> bool:
    """Spark's null-safe equality: both null, or equal values (NaN equals NaN)."""
    if left is None or right is None:
        return left is None and right is None
    if isinstance(left, float) and isinstance(right, float) and math.isnan(left) and math.isnan(right):
        return True
    return left == right


def _column_shifts(
    staged: DataFrame, production: DataFrame, numeric_columns: list[str], bins: int
) -> list[ColumnShift]:
    if not numeric_columns:
        return []
    edge_points = [i / bins for i in range(1, bins)]
    production_points = sorted({*QUANTILES.values(), *edge_points})
    staged_points = list(QUANTILES.values())
    values = [F.col(c).cast("double") for c in numeric_columns]

    production_stats = production.agg(*_stat_aggregates(values, production_points)).first()
    production_quantiles = [
        dict(zip(production_points, production_stats[f"q{j}"], strict=True))
        if production_stats[f"q{j}"] is not None
        else None
        for j in range(len(numeric_columns))
    ]
    # Bins are cut at the distinct production quantiles: ties (a column that is mostly 0) merge bins rather
    # than leave empty ones. NaN is not a usable edge.
    edges = {
        j: sorted({q[p] for p in edge_points if not math.isnan(q[p])})
        for j, q in enumerate(production_quantiles)
        if q is not None
    }
    production_bins = {}
    if edges:
        counts = production.agg(*_bin_aggregates(values, edges)).first()
        production_bins = {j: _bin_counts(counts, j, len(column_edges)) for j, column_edges in edges.items()}
    staged_stats = staged.agg(
        *_stat_aggregates(values, staged_points), *_bin_aggregates(values, edges)
    ).first()

    shifts = []
    for j, column in enumerate(numeric_columns):
        quantiles = production_quantiles[j]
        staged_quantile_values = staged_stats[f"q{j}"] or [None] * len(staged_points)
        psi = None
        if j in edges:
            psi = population_stability_index(production_bins[j], _bin_counts(staged_stats, j, len(edges[j])))
        shifts.append(
            ColumnShift(
                column=column,
                production_mean=production_stats[f"mean{j}"],
                staged_mean=staged_stats[f"mean{j}"],
                mean_shift=_relative_shift(production_stats[f"mean{j}"], staged_stats[f"mean{j}"]),
                production_quantiles={
                    name: quantiles[point] if quantiles else None for name, point in QUANTILES.items()
                },
                staged_quantiles=dict(zip(QUANTILES, staged_quantile_values, strict=True)),
                psi=psi,
            )
        )
    return shifts


def _stat_aggregates(values: list[Column], points: list[float]) -> list[Column]:
    return [
        aggregate
        for j, value in enumerate(values)
        for aggregate in (
            F.avg(value).alias(f"mean{j}"),
            F.percentile_approx(value, points, PERCENTILE_ACCURACY).alias(f"q{j}"),
        )
    ]


def _bin_aggregates(values: list[Column], edges: dict[int, list[float]]) -> list[Column]:
    """Non-null count and, per edge, how many values are <= it: bin counts follow by difference."""
    return [
        aggregate
        for j, column_edges in edges.items()
        for aggregate in (
            F.count(values[j]).alias(f"n{j}"),
            *[
                F.count_if(values[j] <= F.lit(edge)).alias(f"le{j}_{b}")
                for b, edge in enumerate(column_edges)
            ],
        )
    ]


def _bin_counts(row: Row, j: int, edge_count: int) -> list[int]:
    cumulative = [row[f"le{j}_{b}"] for b in range(edge_count)] + [row[f"n{j}"]]
    return [count - previous for previous, count in zip([0, *cumulative[:-1]], cumulative, strict=True)]


def population_stability_index(production_counts: list[int], staged_counts: list[int]) -> float | None:
    production_total = sum(production_counts)
    staged_total = sum(staged_counts)
    if not production_total or not staged_total:
        return None
    psi = 0.0
    for production_count, staged_count in zip(production_counts, staged_counts, strict=True):
        expected = max(production_count / production_total, PSI_EPSILON)
        actual = max(staged_count / staged_total, PSI_EPSILON)
        psi += (actual - expected) * math.log(actual / expected)
    return psi


def _relative_shift(production_mean: float | None, staged_mean: float | None) -> float | None:
    if production_mean is None or staged_mean is None or production_mean == 0:
        return None
    return (staged_mean - production_mean) / abs(production_mean)


def _partition_label(value: object) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


def _jsonable(value: object) -> object:
    """Spark values as JSON: dates and times in ISO format, decimals as floats, NaN and infinities as text."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, date | datetime | time):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, Row):
        return _jsonable(value.asDict())
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
