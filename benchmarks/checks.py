"""Quality-gate benchmark: every check of one feature table over a month of staged days, compared with a
hand-written Spark floor that computes the same verdicts, and with the cost of computing the features.
Writes benchmarks/CHECKS_REPORT.md.

It measures and reports; the one thing it verifies is that the floor's verdicts equal the gate's (a floor
that computes less is no floor). `.venv/bin/python benchmarks/checks.py --help` lists the options.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from unittest import mock

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from run import Samples, machine, peak_memory, source_version
from spark_setup import SparkSettings, add_spark_options

import backfills.assets.staging as staging_module
import backfills.checks.gate as gate_module
from backfills.assets.registry import DAILY, MONTHLY, WEEKLY, feature_spec
from backfills.assets.staging import stage_partitions
from backfills.assets.transformations import MONEY
from backfills.checks import expectations as gx_checks
from backfills.checks.contracts import enforce_contract, feature_contract
from backfills.checks.cross_table import CROSS_TABLE_CHECK, cross_table_outcome
from backfills.checks.diff import PERCENTILE_ACCURACY, PSI_EPSILON
from backfills.checks.diff_check import DIFF_CHECK, numeric_columns
from backfills.checks.expectations import (
    NULL_RATES_CHECK,
    RANGE_CHECK,
    ROW_CONSISTENCY_CHECK,
    UNIQUE_KEYS_CHECK,
    expectations_for,
    run_expectations,
)
from backfills.checks.gate import NON_EMPTY_CHECK, GateInputs, run_gate
from backfills.checks.outcome import CheckOutcome
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import ColumnSchema, PartitionRecord
from backfills.resources.feature_store import partition_facts, read_partitions, write_partitions
from backfills.resources.storage import LocalObjectStore
from backfills.specs import DateRange, FeatureSpec

BENCHMARKS_DIR = Path(__file__).resolve().parent
START = date(2025, 1, 1)  # the first feature day checked; the upstream starts `lookback` days earlier
# The tables whose only input is customer_daily_txn, which this harness synthesizes at any scale.
TABLES = (WEEKLY, MONTHLY)
CASES = ("no production yet", "with production")
FIRST_BATCH, SECOND_BATCH = "bench-first", "bench-second"

# Names of the figures: what each repetition records.
STAGE = "stage_partitions (all)"
STAGE_CONTRACT = "output contract inside staging (computes the cached rows)"
FEATURES = "feature computation (stage_partitions without the gate)"
GATE = "gate (run_gate)"
GATE_PARTS = {
    "run_expectations": "gate: expectations (GX)",
    "non_empty": "gate: non-empty",
    "diff_outcome": "gate: diff vs production",
    "cross_table_outcome": "gate: cross-table",
}
CONTRACT = "output contract alone, on the written rows"
FLOOR = "floor (all)"
FLOOR_AGGREGATE = "floor: one aggregation (ranges, nulls, row rules)"
FLOOR_DUPLICATES = "floor: one group-by (duplicate keys)"
FLOOR_CROSS = "floor: key coverage (one anti join)"
FLOOR_DIFF_QUANTILES = "floor: diff, production deciles (one aggregation)"
FLOOR_DIFF_JOIN = "floor: diff, one full outer join + aggregation"
FLOOR_PARTS = (FLOOR_AGGREGATE, FLOOR_DUPLICATES, FLOOR_CROSS, FLOOR_DIFF_QUANTILES, FLOOR_DIFF_JOIN)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--table", choices=TABLES, default=WEEKLY, help=f"table checked ({WEEKLY})")
    parser.add_argument("--days", type=int, default=30, help="feature days staged and checked (30)")
    parser.add_argument(
        "--rows-per-day", type=int, default=1_000_000, help="rows per feature day of the table (1000000)"
    )
    parser.add_argument(
        "--active-share",
        type=float,
        default=0.5,
        help="share of customers with a row in customer_daily_txn on a given day (0.5)",
    )
    parser.add_argument(
        "--changed-share",
        type=float,
        default=0.001,
        help="share of upstream rows the second batch changes, for the diff (0.001)",
    )
    parser.add_argument("--repetitions", type=int, default=3, help="repetitions of each measurement (3)")
    parser.add_argument(
        "--experiment-repetitions",
        type=int,
        default=1,
        help="repetitions of each experiment (1); 0 skips the experiments",
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic upstream (7)")
    add_spark_options(parser, driver_memory="6g")
    parser.add_argument(
        "--report", type=Path, default=BENCHMARKS_DIR / "CHECKS_REPORT.md", help="where to write the report"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=BENCHMARKS_DIR / ".work",
        help="folder under which a fresh scratch folder for the data is made (benchmarks/.work)",
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch data afterwards")
    args = parser.parse_args(argv)
    for name in ("days", "rows_per_day", "repetitions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.active_share <= 1:
        parser.error("--active-share must be in (0, 1]")
    if not 0 <= args.changed_share < 1:
        parser.error("--changed-share must be in [0, 1)")
    return args


# Counting Spark jobs


@dataclass
class Phase:
    seconds: float = 0.0
    jobs: int = 0
    agrees: bool | None = None  # for an experiment: same verdicts (and diff counts) as the gate


class SparkJobs:
    """Wall time and Spark jobs of a block of code, through a job group set around it. Blocks nest: an
    outer block counts only the jobs launched outside its inner blocks."""

    def __init__(self, spark: SparkSession) -> None:
        self._context = spark.sparkContext
        self._groups: list[str] = []
        self._serial = 0

    @contextmanager
    def phase(self) -> Iterator[Phase]:
        self._serial += 1
        group = f"checks-bench-{self._serial}"
        self._groups.append(group)
        self._context.setJobGroup(group, group)
        phase = Phase()
        began = time.perf_counter()
        try:
            yield phase
        finally:
            phase.seconds = time.perf_counter() - began
            self._groups.pop()
            outer = self._groups[-1] if self._groups else "checks-bench-idle"
            self._context.setJobGroup(outer, outer)
            # Job events reach the status store through the listener bus: let it drain before counting.
            self._context._jsc.sc().listenerBus().waitUntilEmpty()
            phase.jobs = len(self._context.statusTracker().getJobIdsForGroup(group))


@dataclass
class Measurements:
    """Every figure of one case, one value per repetition."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    jobs: dict[str, list[int]] = field(default_factory=dict)

    def add(self, name: str, seconds: float, jobs: int | None = None) -> None:
        self.seconds.setdefault(name, []).append(seconds)
        if jobs is not None:
            self.jobs.setdefault(name, []).append(jobs)

    def samples(self, name: str) -> Samples:
        return Samples(self.seconds[name])

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def jobs_cell(self, name: str) -> str:
        counts = sorted(set(self.jobs.get(name, [])))
        return (
            "–".join(str(count) for count in (counts[0], counts[-1]) if count is not None) if counts else ""
        )


# The synthetic upstream: customer_daily_txn at any scale, made by Spark from hashes (deterministic)


def customers_for(args: argparse.Namespace, window: int) -> int:
    """Customers needed for `rows_per_day` rows of a `window`-day table when each is active on a day with
    probability `active_share`: a customer has a row on day D if active on any of the window's days."""
    return round(args.rows_per_day / (1 - (1 - args.active_share) ** window))


def synthetic_daily(
    spark: SparkSession,
    *,
    customers: int,
    days: DateRange,
    active_share: float,
    changed_share: float,
    seed: int,
) -> DataFrame:
    """customer_daily_txn rows of `days`, within the spec's types, bounds and row rules. `changed_share` of
    the rows get one more (declined) transaction: the same keys with other values, for the diff."""

    def draw(salt: str, modulus: int) -> Column:
        return F.pmod(F.xxhash64(F.lit(seed), F.lit(salt), F.col("id"), F.col("day")), F.lit(modulus))

    per_million = 1_000_000
    grid = spark.range(customers).crossJoin(
        spark.range(len(days.days())).withColumnRenamed("id", "day").hint("broadcast")
    )
    active = grid.where(draw("active", per_million) < F.lit(round(active_share * per_million)))
    changed = draw("changed", per_million) < F.lit(round(changed_share * per_million))
    txn_count = F.lit(1) + draw("count", 8)
    declined = F.when(draw("declined", 10) == 0, 1).otherwise(0)
    cents = F.lit(100) + draw("ticket", 50_000)  # largest approved ticket: 1.00 to 500.99 USD
    approved = F.col("txn_count") - F.col("declined_count")
    # Every further approved ticket is at most the largest one, so the largest stays within the sum.
    sum_cents = F.col("max_cents") + (approved - 1) * F.pmod(F.col("other"), F.col("max_cents") + 1)
    return active.select(
        F.format_string("c%010d", "id").alias("customer_id"),
        F.date_add(F.lit(days.start), F.col("day").cast("int")).alias("feature_date"),
        (txn_count + F.when(changed, 1).otherwise(0)).cast("long").alias("txn_count"),
        (declined + F.when(changed, 1).otherwise(0)).cast("long").alias("declined_count"),
        cents.alias("max_cents"),
        draw("other", 1 << 30).alias("other"),
        F.least(txn_count, F.lit(1) + draw("categories", 4)).cast("long").alias("merchant_category_count"),
    ).select(
        "customer_id",
        "feature_date",
        "txn_count",
        approved.cast("long").alias("approved_count"),
        "declined_count",
        _money(F.when(approved > 0, sum_cents).otherwise(0)).alias("amount_sum_usd"),
        _money(F.when(approved > 0, F.col("max_cents"))).alias("amount_max_usd"),
        "merchant_category_count",
    )


def _money(cents: Column) -> Column:
    return (cents.cast("decimal(18,0)") / F.lit(100)).cast(MONEY)


def stage_upstream(
    frame: DataFrame,
    days: DateRange,
    *,
    batch_id: str,
    spark: SparkSession,
    store: LocalObjectStore,
    catalog: ReleaseCatalog,
) -> int:
    """Write synthetic customer_daily_txn rows as staged partitions of a batch, through the project's own
    contract, writer, reader, content hashes and catalog (as stage_partitions would). Returns the rows."""
    spec = feature_spec(DAILY)
    frame = frame.cache()
    try:
        enforce_contract(
            frame,
            feature_contract(spec),
            table=DAILY,
            partitions=f"{days.start}..{days.end}",
            key_columns=[*spec.entity_keys, spec.date_column],
        )
        base = f"staging/{DAILY}/{batch_id}/synthetic"
        files = write_partitions(
            frame, store, base, date_column=spec.date_column, sort_columns=spec.entity_keys
        )
    finally:
        frame.unpersist()
    written = read_partitions(
        spark, store, files.values(), schema_ddl=spec.schema_ddl, columns=spec.column_names
    )
    nullable = [column.name for column in spec.columns if column.nullable]
    facts = partition_facts(
        written, date_column=spec.date_column, schema_ddl=spec.schema_ddl, null_columns=nullable
    )
    now = datetime.now(UTC)
    records = [
        PartitionRecord(
            table=DAILY,
            partition=day,
            batch_id=batch_id,
            run_id=f"{batch_id}-upstream",
            attempt_id="synthetic",
            base=base,
            files=list(files[day].files),
            row_count=facts[day].row_count,
            content_hash=facts[day].content_hash,
            columns=[ColumnSchema(name=column.name, type=column.type) for column in spec.columns],
            code_version="synthetic",
            written_at=now,
            null_counts=facts[day].null_counts,
        )
        for day in sorted(files)
    ]
    catalog.record_partitions(batch_id, records, run_id=f"{batch_id}-upstream", requester="benchmark")
    return sum(record.row_count for record in records)


# Instrumenting stage_partitions: the gate, its parts and the output contract, timed where they run


class StagingProbe:
    """Times the gate (and each of its parts) and the output contract inside stage_partitions, counts their
    Spark jobs and keeps the GateInputs the staging built, by wrapping the functions the callers look up."""

    def __init__(self, jobs: SparkJobs) -> None:
        self.jobs = jobs
        self.sink = Measurements()
        self.gate_inputs: GateInputs | None = None
        self.outcomes: list[CheckOutcome] = []

    def _timed(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.jobs.phase() as phase:
                result = function(*args, **kwargs)
            self.sink.add(name, phase.seconds, phase.jobs)
            return result

        return timed

    @contextmanager
    def installed(self) -> Iterator[StagingProbe]:
        timed_gate = self._timed(GATE, run_gate)

        def gate(spec: FeatureSpec, inputs: GateInputs) -> list[CheckOutcome]:
            self.gate_inputs = inputs
            self.outcomes = timed_gate(spec, inputs)
            return self.outcomes

        def contract(df: DataFrame, contract: Any, **kwargs: Any) -> Any:
            return self._timed(STAGE_CONTRACT, enforce_contract)(df, contract, **kwargs)

        with ExitStack() as stack:
            stack.enter_context(mock.patch.object(staging_module, "run_gate", gate))
            stack.enter_context(mock.patch.object(staging_module, "enforce_contract", contract))
            for function, name in GATE_PARTS.items():
                original = getattr(gate_module, function)
                stack.enter_context(mock.patch.object(gate_module, function, self._timed(name, original)))
            yield self


# The floor: the same verdicts, computed by hand in as few Spark passes as they need


@dataclass
class FloorResult:
    verdicts: dict[str, str]  # check -> passed | warned | failed
    figures: dict[str, Any]


def _bounded(spec: FeatureSpec) -> list[Any]:
    return [c for c in spec.columns if c.min_value is not None or c.max_value is not None]


def _outside(column: Any) -> Column:
    value, outside = F.col(column.name), F.lit(False)
    if column.min_value is not None:
        outside = outside | (value < F.lit(column.min_value))
    if column.max_value is not None:
        outside = outside | (value > F.lit(column.max_value))
    return outside


def _max_null_rate(column: Any) -> float:
    if column.max_null_rate is not None:
        return column.max_null_rate
    return 0.5 if column.nullable else 0.0


def floor_expectations(
    spec: FeatureSpec, staged: DataFrame, jobs: SparkJobs, sink: Measurements | None
) -> FloorResult:
    """Ranges, null rates and row rules in one aggregation; duplicate keys in one group-by."""
    bounded, rules = _bounded(spec), spec.row_rules
    aggregates = [
        F.count(F.lit(1)).alias("rows"),
        *[F.count_if(_outside(column)).alias(f"outside_{column.name}") for column in bounded],
        *[F.count_if(F.col(column.name).isNull()).alias(f"nulls_{column.name}") for column in spec.columns],
        *[F.count_if(~F.expr(rule.condition)).alias(f"rule_{rule.name}") for rule in rules],
    ]
    with jobs.phase() as aggregate_phase:
        counts = staged.agg(*aggregates).first().asDict()
    keys = [*spec.entity_keys, spec.date_column]
    with jobs.phase() as duplicates_phase:
        duplicated = staged.groupBy(*keys).count().where(F.col("count") > 1).count()
    if sink is not None:
        sink.add(FLOOR_AGGREGATE, aggregate_phase.seconds, aggregate_phase.jobs)
        sink.add(FLOOR_DUPLICATES, duplicates_phase.seconds, duplicates_phase.jobs)

    rows = counts["rows"]
    outside = {}
    for column in bounded:
        considered = rows - counts[f"nulls_{column.name}"]  # like GX, nulls are not range violations
        unexpected = counts[f"outside_{column.name}"]
        if considered and (considered - unexpected) / considered < spec.range_mostly:
            outside[column.name] = unexpected
    too_many_nulls = {
        column.name: counts[f"nulls_{column.name}"]
        for column in spec.columns
        if rows and (rows - counts[f"nulls_{column.name}"]) / rows < 1.0 - _max_null_rate(column)
    }
    broken = {rule.name: counts[f"rule_{rule.name}"] for rule in rules if counts[f"rule_{rule.name}"]}
    return FloorResult(
        verdicts={
            RANGE_CHECK: "failed" if outside else "passed",
            NULL_RATES_CHECK: "failed" if too_many_nulls else "passed",
            UNIQUE_KEYS_CHECK: "failed" if duplicated else "passed",
            ROW_CONSISTENCY_CHECK: "failed" if broken else "passed",
        },
        figures={
            "rows": rows,
            "outside": outside,
            "too_many_nulls": too_many_nulls,
            "duplicated_keys": duplicated,
            "broken_rules": broken,
        },
    )


def floor_coverage(
    spec: FeatureSpec, inputs: GateInputs, jobs: SparkJobs, sink: Measurements | None
) -> FloorResult:
    """Key coverage against each upstream table: one anti join per direction the relation needs."""
    keys = [*spec.entity_keys, spec.date_column]
    here = inputs.staged.select(*keys)
    missing: dict[str, int] = {}
    with jobs.phase() as phase:
        for rule in spec.key_coverage:
            day = F.expr(rule.upstream_date)
            upstream = (
                inputs.inputs[rule.upstream]
                .where(day.between(F.lit(inputs.dates.start), F.lit(inputs.dates.end)))
                .select(*spec.entity_keys, day.alias(spec.date_column))
            )
            if rule.relation in ("covers", "equal"):
                missing[f"{rule.upstream} keys with no row here"] = upstream.join(
                    here, keys, "left_anti"
                ).count()
            if rule.relation in ("subset", "equal"):
                missing[f"rows whose key is not in {rule.upstream}"] = here.join(
                    upstream, keys, "left_anti"
                ).count()
    if sink is not None:
        sink.add(FLOOR_CROSS, phase.seconds, phase.jobs)
    failed = any(missing.values())
    return FloorResult({CROSS_TABLE_CHECK: "failed" if failed else "passed"}, {"missing": missing})


def _production_deciles(spec: FeatureSpec, production: DataFrame) -> tuple[Any, dict[str, list[float]]]:
    """Production deciles (the PSI bin edges, distinct and without NaN) and means of the numeric columns."""
    numeric = numeric_columns(spec)
    points = [step / 10 for step in range(1, 10)]
    deciles = production.agg(
        *[
            F.percentile_approx(F.col(name).cast("double"), points, PERCENTILE_ACCURACY).alias(name)
            for name in numeric
        ],
        *[F.avg(F.col(name).cast("double")).alias(f"mean_{name}") for name in numeric],
    ).first()
    edges = {
        name: sorted({value for value in deciles[name] if value == value}) if deciles[name] else []
        for name in numeric
    }
    return deciles, edges


def _bin_counts(side: str, edges: dict[str, list[float]], column: Callable[[str], Column]) -> list[Column]:
    """Per numeric column: values, their mean and how many are <= each edge (bin counts by difference)."""
    aggregates = []
    for name, column_edges in edges.items():
        value = column(name).cast("double")
        aggregates.append(F.count(value).alias(f"{side}_n_{name}"))
        aggregates.append(F.avg(value).alias(f"{side}_mean_{name}"))
        aggregates.extend(
            F.count_if(value <= F.lit(edge)).alias(f"{side}_le{b}_{name}")
            for b, edge in enumerate(column_edges)
        )
    return aggregates


def floor_diff(
    spec: FeatureSpec, inputs: GateInputs, jobs: SparkJobs, sink: Measurements | None
) -> FloorResult:
    """What the diff's verdict needs: changed, added and removed rows and each numeric column's PSI (and
    means). Production deciles first (they cut the PSI bins), then one full outer join and one aggregation."""
    production = inputs.production
    if production.rows is None or not production.days:
        return FloorResult({DIFF_CHECK: "passed"}, {"compared": "nothing in production"})
    keys = [*spec.entity_keys, spec.date_column]
    values = [name for name in spec.column_names if name not in keys]
    with jobs.phase() as quantiles_phase:
        deciles, edges = _production_deciles(spec, production.rows)
    joined = (
        _compared(spec, inputs)
        .select(*keys, *[F.col(name).alias(f"s_{name}") for name in values], F.lit(True).alias("in_staged"))
        .join(
            production.rows.select(
                *keys,
                *[F.col(name).alias(f"p_{name}") for name in values],
                F.lit(True).alias("in_production"),
            ),
            keys,
            "full_outer",
        )
    )
    differs = F.lit(False)
    for name in values:
        differs = differs | ~F.col(f"s_{name}").eqNullSafe(F.col(f"p_{name}"))
    aggregates = [
        *_row_counts(differs),
        *_bin_counts("s", edges, lambda name: F.col(f"s_{name}")),
        *_bin_counts("p", edges, lambda name: F.col(f"p_{name}")),
    ]
    with jobs.phase() as join_phase:
        totals = joined.agg(*aggregates).first().asDict()
    if sink is not None:
        sink.add(FLOOR_DIFF_QUANTILES, quantiles_phase.seconds, quantiles_phase.jobs)
        sink.add(FLOOR_DIFF_JOIN, join_phase.seconds, join_phase.jobs)
    return _diff_verdict(spec, totals, deciles, edges)


def _compared(spec: FeatureSpec, inputs: GateInputs) -> DataFrame:
    """The staged rows of the days production serves (the others are new: nothing to compare)."""
    days = list(inputs.production.days)
    return inputs.staged.where(F.col(spec.date_column).cast("string").isin(days))


def _row_counts(differs: Column) -> list[Column]:
    in_staged, in_production = F.col("in_staged").isNotNull(), F.col("in_production").isNotNull()
    return [
        F.count_if(in_production).alias("production_rows"),
        F.count_if(in_staged & ~in_production).alias("added"),
        F.count_if(in_production & ~in_staged).alias("removed"),
        F.count_if(in_staged & in_production & differs).alias("changed"),
    ]


def _diff_verdict(
    spec: FeatureSpec, totals: dict[str, Any], deciles: Any, edges: dict[str, list[float]]
) -> FloorResult:
    """The spec's diff policy applied to row counts, PSI and means, as `judge` does."""
    policy = spec.diff_policy
    blocks, warns = [], []
    rows = totals["production_rows"]
    fraction = (totals["changed"] + totals["added"] + totals["removed"]) / rows if rows else 0.0
    if policy.changed_fraction_block is not None and fraction > policy.changed_fraction_block:
        blocks.append(f"changed fraction {fraction:.4g}")
    elif fraction > policy.changed_fraction_warn:
        warns.append(f"changed fraction {fraction:.4g}")
    psi = {}
    for name, column_edges in edges.items():
        psi[name] = _psi(totals, name, len(column_edges)) if column_edges else None
        if psi[name] is not None and psi[name] > policy.psi_block:
            blocks.append(f"{name} PSI {psi[name]:.4g}")
        elif psi[name] is not None and psi[name] > policy.psi_warn:
            warns.append(f"{name} PSI {psi[name]:.4g}")
        production_mean, staged_mean = deciles[f"mean_{name}"], totals[f"s_mean_{name}"]
        if policy.mean_shift_block is not None and production_mean and staged_mean is not None:
            if abs((staged_mean - production_mean) / abs(production_mean)) > policy.mean_shift_block:
                blocks.append(f"{name} mean shift")
    verdict = "failed" if blocks else "warned" if warns else "passed"
    figures = {
        "production_rows": rows,
        "added": totals["added"],
        "removed": totals["removed"],
        "changed": totals["changed"],
        "changed_fraction": fraction,
        "psi": psi,
        "reasons": blocks + warns,
    }
    return FloorResult({DIFF_CHECK: verdict}, figures)


def _psi(totals: Any, name: str, edge_count: int) -> float | None:
    def bins(side: str) -> list[int]:
        cumulative = [totals[f"{side}_le{b}_{name}"] for b in range(edge_count)] + [
            totals[f"{side}_n_{name}"]
        ]
        return [count - previous for previous, count in zip([0, *cumulative[:-1]], cumulative, strict=True)]

    production, staged = bins("p"), bins("s")
    if not sum(production) or not sum(staged):
        return None
    psi = 0.0
    for production_count, staged_count in zip(production, staged, strict=True):
        expected = max(production_count / sum(production), PSI_EPSILON)
        actual = max(staged_count / sum(staged), PSI_EPSILON)
        psi += (actual - expected) * math.log(actual / expected)
    return psi


def floor(spec: FeatureSpec, inputs: GateInputs, jobs: SparkJobs, sink: Measurements | None) -> FloorResult:
    """Every verdict of the gate. Non-empty needs no Spark: the row counts are in the staged records."""
    with jobs.phase() as phase:
        parts = [
            floor_expectations(spec, inputs.staged, jobs, sink),
            floor_coverage(spec, inputs, jobs, sink),
            floor_diff(spec, inputs, jobs, sink),
        ]
    empty = [record.partition for record in inputs.records if record.row_count == 0]
    verdicts = {NON_EMPTY_CHECK: "failed" if empty else "passed"}
    figures: dict[str, Any] = {NON_EMPTY_CHECK: {"empty": empty}}
    for part in parts:
        verdicts |= part.verdicts
        figures |= {name: part.figures for name in part.verdicts}
    if sink is not None:
        sink.add(FLOOR, phase.seconds)
    return FloorResult(dict(sorted(verdicts.items())), figures)


# Verification: on rows that break every kind of check, the floor must reach the gate's verdicts and counts


@dataclass
class Verification:
    day: str
    injected: dict[str, int]
    rows: list[
        tuple[str, str, str, str, str]
    ]  # check, gate verdict, gate counts, floor verdict, floor counts

    @property
    def agrees(self) -> bool:
        return all(
            gate == floor_ and gate_counts == floor_counts
            for _, gate, gate_counts, floor_, floor_counts in self.rows
        )


def _named(spec: FeatureSpec, prefix: str) -> str:
    return next(column.name for column in spec.columns if column.name.startswith(prefix))


def with_defects(spec: FeatureSpec, staged: DataFrame, day: date) -> tuple[DataFrame, dict[str, int]]:
    """One staged day plus rows breaking each kind of check, minus some keys (for the key coverage)."""
    keys = [*spec.entity_keys, spec.date_column]
    count, average, rate = (
        _named(spec, "txn_count"),
        _named(spec, "avg_ticket_usd"),
        _named(spec, "decline_rate"),
    )
    rows = staged.where(F.col(spec.date_column) == F.lit(day))
    donors = rows.where(F.col(average).isNotNull()).orderBy(*keys).limit(3)

    def renamed(tag: str, frame: DataFrame) -> DataFrame:
        return frame.withColumn(
            spec.entity_keys[0], F.concat(F.lit(f"defect-{tag}-"), F.col(spec.entity_keys[0]))
        )

    kept = rows.where(F.pmod(F.xxhash64(*spec.entity_keys), F.lit(500)) != 0)
    injected = {
        "duplicated keys": (donors.limit(2), 2),
        f"{count} = -1 (also breaks a row rule)": (
            renamed("range", donors).withColumn(count, F.lit(-1).cast("long")),
            3,
        ),
        f"{rate} null": (renamed("null", donors.limit(2)).withColumn(rate, F.lit(None).cast("double")), 2),
        f"{average} tripled": (
            renamed("rule", donors.limit(1)).withColumn(average, (F.col(average) * 3 + 1).cast(MONEY)),
            1,
        ),
    }
    defective = kept
    for frame, _ in injected.values():
        defective = defective.unionByName(frame)
    facts = {name: rows for name, (_, rows) in injected.items()}
    facts["rows dropped (keys the upstream has)"] = rows.count() - kept.count()
    return defective, facts


def _gate_counts(outcome: CheckOutcome) -> str:
    found = []
    for failure in outcome.figures.get("failures", []):
        what = failure.get("column") or failure.get("rule", "duplicated keys").split(":")[0]
        found.append(f"{what}: {failure.get('unexpected_count')}")
    for violation in outcome.figures.get("violations", []):
        found.append(str(violation["count"]))
    return ", ".join(sorted(found)) or "–"


def _floor_counts(check: str, figures: dict[str, Any]) -> str:
    if check == RANGE_CHECK:
        found = [f"{name}: {count}" for name, count in figures["outside"].items()]
    elif check == NULL_RATES_CHECK:
        found = [f"{name}: {count}" for name, count in figures["too_many_nulls"].items()]
    elif check == UNIQUE_KEYS_CHECK:
        found = [f"duplicated keys: {figures['duplicated_keys']}"] if figures["duplicated_keys"] else []
    elif check == ROW_CONSISTENCY_CHECK:
        found = [f"{name}: {count}" for name, count in figures["broken_rules"].items()]
    else:
        found = [str(count) for count in figures["missing"].values() if count]
    return ", ".join(sorted(found)) or "–"


def verify_with_defects(spec: FeatureSpec, inputs: GateInputs, jobs: SparkJobs) -> Verification:
    """The GX suite and the cross-table check against the floor's passes, on one day with defects."""
    day = inputs.dates.start
    defective, injected = with_defects(spec, inputs.staged, day)
    defective = defective.cache()
    try:
        one_day = replace(inputs, staged=defective, dates=DateRange(day, day))
        gate = {outcome.name: outcome for outcome in run_expectations(spec, defective)}
        gate[CROSS_TABLE_CHECK] = cross_table_outcome(spec, defective, inputs.inputs, one_day.dates)
        found = floor_expectations(spec, defective, jobs, None)
        coverage = floor_coverage(spec, one_day, jobs, None)
    finally:
        defective.unpersist()
    verdicts = found.verdicts | coverage.verdicts
    figures = {name: found.figures for name in found.verdicts} | {CROSS_TABLE_CHECK: coverage.figures}
    rows = [
        (
            check,
            gate[check].verdict,
            _gate_counts(gate[check]),
            verdicts[check],
            _floor_counts(check, figures[check]),
        )
        for check in sorted(gate)
    ]
    return Verification(day.isoformat(), injected, rows)


# Experiments: what would bring the gate closer to the floor (the checks code itself is unchanged)


def gx_verdicts(
    spec: FeatureSpec, staged: DataFrame, result_format: str, *, merge_rules: bool = False
) -> list[CheckOutcome]:
    """The spec's GX suite validated with another result format; with `merge_rules`, the row rules as one
    expectation (one query) instead of one each. Verdicts only: on a failure the real check would validate
    the failing expectations again with SUMMARY to collect its evidence, which costs nothing on a pass."""
    tagged = expectations_for(spec)
    if merge_rules and spec.row_rules:
        tagged = [(check, expectation) for check, expectation in tagged if check != ROW_CONSISTENCY_CHECK]
        broken = " OR ".join(f"NOT ({rule.condition})" for rule in spec.row_rules)
        merged = gx_checks.gxe.UnexpectedRowsExpectation(
            unexpected_rows_query=f"SELECT * FROM {{batch}} WHERE {broken}", description="all row rules"
        )
        merged.meta = {"check": ROW_CONSISTENCY_CHECK}
        tagged.append((ROW_CONSISTENCY_CHECK, merged))
    suite = gx_checks.gx.ExpectationSuite(
        name=f"{spec.name}_{result_format}_{time.monotonic_ns()}", expectations=[e for _, e in tagged]
    )
    batch = gx_checks._batch_definition().get_batch(batch_parameters={"dataframe": staged})
    validation = batch.validate(suite, result_format=result_format)
    passed: dict[str, bool] = {}
    for result in validation.results:
        check = result.expectation_config.meta["check"]
        passed[check] = (
            passed.get(check, True)
            and bool(result.success)
            and not (result.exception_info or {}).get("raised_exception")
        )
    return [CheckOutcome(check, ok, True, "experiment: verdict only") for check, ok in sorted(passed.items())]


@contextmanager
def cached(*frames: DataFrame | None) -> Iterator[list[DataFrame | None]]:
    """The frames cached and filled (one scan each), unpersisted afterwards."""
    held = [frame.cache() if frame is not None else None for frame in frames]
    try:
        for frame in held:
            if frame is not None:
                frame.count()
        yield held
    finally:
        for frame in held:
            if frame is not None:
                frame.unpersist(blocking=True)


@dataclass(frozen=True)
class Experiment:
    name: str
    replaces: str  # GATE or the part it stands in for
    run: Callable[[FeatureSpec, GateInputs, SparkJobs], object]
    needs_production: bool = False  # nothing to measure before a release covers the days


def _cached_gate(spec: FeatureSpec, inputs: GateInputs, jobs: SparkJobs) -> object:
    with cached(inputs.staged, inputs.production.rows) as (staged, production):
        return run_gate(
            spec, replace(inputs, staged=staged, production=replace(inputs.production, rows=production))
        )


def _verdicts_only(spec: FeatureSpec, staged: DataFrame) -> list[CheckOutcome]:
    return gx_verdicts(spec, staged, "BOOLEAN_ONLY", merge_rules=True)


def _leaner_gx_gate(spec: FeatureSpec, inputs: GateInputs, jobs: SparkJobs) -> object:
    with mock.patch.object(gate_module, "run_expectations", _verdicts_only):
        return _cached_gate(spec, inputs, jobs)


def _as_outcome(result: FloorResult) -> CheckOutcome:
    ((name, verdict),) = result.verdicts.items()
    return CheckOutcome(name, verdict == "passed", verdict != "warned", "experiment: verdict only")


def _leaner_gate(spec: FeatureSpec, inputs: GateInputs, jobs: SparkJobs) -> object:
    def coverage(spec: FeatureSpec, staged: DataFrame, _inputs: Any, dates: DateRange) -> CheckOutcome:
        return _as_outcome(floor_coverage(spec, replace(inputs, staged=staged, dates=dates), jobs, None))

    def diff(spec: FeatureSpec, staged: DataFrame, production: DataFrame | None, **_: Any) -> CheckOutcome:
        rows = replace(inputs.production, rows=production)
        return _as_outcome(hashed_diff(spec, replace(inputs, staged=staged, production=rows), jobs))

    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(gate_module, "run_expectations", _verdicts_only))
        stack.enter_context(mock.patch.object(gate_module, "cross_table_outcome", coverage))
        stack.enter_context(mock.patch.object(gate_module, "diff_outcome", diff))
        return _cached_gate(spec, inputs, jobs)


def _cached_diff(spec: FeatureSpec, inputs: GateInputs, jobs: SparkJobs) -> object:
    with cached(inputs.staged, inputs.production.rows) as (staged, production):
        return gate_module.diff_outcome(
            spec,
            staged,
            production,
            release_id=inputs.production.release_id,
            released_days=inputs.production.days,
            staged_days=[record.partition for record in inputs.records],
        )


def hashed_diff(spec: FeatureSpec, inputs: GateInputs, jobs: SparkJobs) -> FloorResult:
    """The diff's verdict with a lighter join: each side shuffles its keys and one 64-bit hash of the other
    columns (with null markers, as the content hashes do) instead of every value; PSI from one bin-count
    aggregation per side. A change hides only if the hashes collide (about n / 2**64)."""
    production = inputs.production.rows
    if production is None or not inputs.production.days:
        return FloorResult({DIFF_CHECK: "passed"}, {})
    keys = [*spec.entity_keys, spec.date_column]
    values = [F.col(name) for name in spec.column_names if name not in keys]

    def side(frame: DataFrame, flag: str) -> DataFrame:
        row_hash = F.xxhash64(*values, *[F.isnull(value) for value in values])
        return frame.select(*keys, row_hash.alias(f"{flag}_hash"), F.lit(True).alias(flag))

    staged = _compared(spec, inputs)
    joined = side(staged, "in_staged").join(side(production, "in_production"), keys, "full_outer")
    totals = joined.agg(*_row_counts(F.col("in_staged_hash") != F.col("in_production_hash"))).first().asDict()
    deciles, edges = _production_deciles(spec, production)
    totals |= production.agg(*_bin_counts("p", edges, F.col)).first().asDict()
    totals |= staged.agg(*_bin_counts("s", edges, F.col)).first().asDict()
    return _diff_verdict(spec, totals, deciles, edges)


def _cached_gx(spec: FeatureSpec, inputs: GateInputs, jobs: SparkJobs) -> object:
    with cached(inputs.staged) as (staged,):
        return run_expectations(spec, staged)


EXPERIMENTS = (
    Experiment(
        "GX with result_format BASIC",
        GATE_PARTS["run_expectations"],
        lambda s, i, _: gx_verdicts(s, i.staged, "BASIC"),
    ),
    Experiment(
        "GX with result_format BOOLEAN_ONLY",
        GATE_PARTS["run_expectations"],
        lambda s, i, _: gx_verdicts(s, i.staged, "BOOLEAN_ONLY"),
    ),
    Experiment(
        "GX BOOLEAN_ONLY, row rules merged into one expectation (fewer queries)",
        GATE_PARTS["run_expectations"],
        lambda s, i, _: gx_verdicts(s, i.staged, "BOOLEAN_ONLY", merge_rules=True),
    ),
    Experiment(
        "GX as the gate runs it, on the staged rows cached, fill included",
        GATE_PARTS["run_expectations"],
        _cached_gx,
    ),
    Experiment(
        "diff on the staged and production rows cached, fill included",
        GATE_PARTS["diff_outcome"],
        _cached_diff,
        needs_production=True,
    ),
    Experiment(
        "diff as a join of keys + one row hash, PSI from per-side aggregations (no caching)",
        GATE_PARTS["diff_outcome"],
        hashed_diff,
        needs_production=True,
    ),
    Experiment("whole gate on the staged and production rows cached, fill included", GATE, _cached_gate),
    Experiment("whole gate: cached rows + GX BOOLEAN_ONLY + merged row rules", GATE, _leaner_gx_gate),
    Experiment(
        "whole gate: the above + key coverage as anti joins + diff as key-and-hash join",
        GATE,
        _leaner_gate,
    ),
)


def run_experiments(
    spec: FeatureSpec, inputs: GateInputs, jobs: SparkJobs, gate: list[CheckOutcome]
) -> dict[str, Phase]:
    found = {}
    for experiment in EXPERIMENTS:
        if experiment.needs_production and inputs.production.rows is None:
            continue
        with jobs.phase() as phase:
            result = experiment.run(spec, inputs, jobs)
        phase.agrees = _agrees(result, gate)
        found[experiment.name] = phase
        print(
            f"    experiment: {experiment.name}: {phase.seconds:.1f} s, {phase.jobs} jobs, "
            f"{'same verdicts' if phase.agrees else 'OTHER VERDICTS'}",
            flush=True,
        )
    return found


def _agrees(result: object, gate: list[CheckOutcome]) -> bool:
    """Whether an experiment reached the gate's verdicts (and, for a diff, its row counts)."""
    expected = {outcome.name: outcome for outcome in gate}
    if isinstance(result, FloorResult):
        diff = expected[DIFF_CHECK].figures
        counts = ("changed", "added", "removed")
        same_counts = all(result.figures.get(name, diff.get(name)) == diff.get(name) for name in counts)
        return same_counts and all(
            expected[name].verdict == verdict for name, verdict in result.verdicts.items()
        )
    outcomes = [result] if isinstance(result, CheckOutcome) else list(cast(list[CheckOutcome], result))
    return bool(outcomes) and all(expected[outcome.name].verdict == outcome.verdict for outcome in outcomes)


# The harness


@dataclass
class Case:
    name: str
    measurements: Measurements
    gate_verdicts: dict[str, str]
    gate_figures: dict[str, dict[str, Any]]
    floor_result: FloorResult
    rows: int
    staged_days: int
    upstream_rows: int
    experiments: dict[str, list[Phase]] = field(default_factory=dict)
    verification: Verification | None = None
    loads: list[float] = field(default_factory=list)  # 1-minute load average as each repetition started

    def gate_jobs(self) -> int:
        return sum(self.measurements.jobs[part][-1] for part in GATE_PARTS.values())


def run_case(
    name: str,
    args: argparse.Namespace,
    *,
    batch_id: str,
    spark: SparkSession,
    store: LocalObjectStore,
    catalog: ReleaseCatalog,
    jobs: SparkJobs,
    upstream_rows: int,
    verify: bool,
) -> Case:
    """Stage the table's days into `batch_id` `repetitions` times; after each, the floor and the contract
    on the rows the gate saw (and, in the first repetitions, the experiments)."""
    spec = feature_spec(args.table)
    dates = DateRange(START, START + timedelta(days=args.days - 1))
    earliest = START - timedelta(days=spec.feature_inputs[0].lookback_days)
    probe = StagingProbe(jobs)
    measurements = probe.sink
    experiments: dict[str, list[Phase]] = {}
    loads = []
    for repetition in range(args.repetitions):
        loads.append(os.getloadavg()[0])
        with probe.installed(), jobs.phase() as phase:
            staged = stage_partitions(
                spec,
                dates,
                batch_id=batch_id,
                run_id=f"{batch_id}-{repetition}",
                requester="benchmark",
                earliest=earliest,
                spark=spark,
                store=store,
                catalog=catalog,
            )
        gate_jobs = sum(measurements.jobs[part][-1] for part in GATE_PARTS.values())
        measurements.jobs[GATE][-1] += gate_jobs
        measurements.add(STAGE, phase.seconds, phase.jobs + gate_jobs + measurements.jobs[STAGE_CONTRACT][-1])
        measurements.add(
            FEATURES,
            phase.seconds - measurements.seconds[GATE][-1],
            phase.jobs + measurements.jobs[STAGE_CONTRACT][-1],
        )
        inputs = probe.gate_inputs
        assert inputs is not None, "stage_partitions did not run the gate"
        floor_result = floor(spec, inputs, jobs, measurements)
        with jobs.phase() as contract:
            enforce_contract(
                inputs.staged,
                feature_contract(spec),
                table=spec.name,
                partitions=f"{dates.start}..{dates.end}",
                key_columns=[*spec.entity_keys, spec.date_column],
            )
        measurements.add(CONTRACT, contract.seconds, contract.jobs)
        print(
            f"  {name}, repetition {repetition + 1}: stage_partitions {phase.seconds:.1f} s, of which gate "
            f"{measurements.seconds[GATE][-1]:.1f} s; floor {measurements.seconds[FLOOR][-1]:.1f} s",
            flush=True,
        )
        if repetition < args.experiment_repetitions:
            for experiment, result in run_experiments(spec, inputs, jobs, probe.outcomes).items():
                experiments.setdefault(experiment, []).append(result)
    verification = verify_with_defects(spec, inputs, jobs) if verify else None
    return Case(
        name=name,
        measurements=measurements,
        gate_verdicts={outcome.name: outcome.verdict for outcome in probe.outcomes},
        gate_figures={outcome.name: outcome.figures for outcome in probe.outcomes},
        floor_result=floor_result,
        rows=staged.row_count,
        staged_days=len(staged.records),
        upstream_rows=upstream_rows,
        experiments=experiments,
        verification=verification,
        loads=loads,
    )


# The report


def _cell(samples: Samples) -> str:
    return samples.cell(1)


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "–"


def _times(count: int, what: str = "time") -> str:
    return f"{count} {what}{'s' if count != 1 else ''}"


def _goal(met: bool) -> str:
    return "**met**" if met else "**missed**"


def _floor_counterpart(case: Case, part: str) -> float | None:
    names = {
        GATE_PARTS["run_expectations"]: (FLOOR_AGGREGATE, FLOOR_DUPLICATES),
        GATE_PARTS["diff_outcome"]: (FLOOR_DIFF_QUANTILES, FLOOR_DIFF_JOIN),
        GATE_PARTS["cross_table_outcome"]: (FLOOR_CROSS,),
    }.get(part, ())
    found = [case.measurements.median(name) for name in names if name in case.measurements.seconds]
    return sum(found) if found else None


def render(
    args: argparse.Namespace,
    *,
    started: datetime,
    total_seconds: float,
    spark_start: float,
    customers: int,
    upstream_days: DateRange,
    cases: list[Case],
    peaks: list[tuple[str, float]],
) -> str:
    command = " ".join(["benchmarks/checks.py", *sys.argv[1:]])
    first = cases[0]
    lines = [
        "# Quality-gate benchmark",
        "",
        f"Written by `{command}` on {started:%Y-%m-%d %H:%M} UTC from commit {source_version()}, in "
        f"{total_seconds / 60:.1f} minutes. Figures are medians of {_times(args.repetitions, 'repetition')}, "
        f"with the smallest and largest in brackets; experiments ran {_times(args.experiment_repetitions)} "
        "each. How to read them: benchmarks/README.md.",
        "",
        f"Every check of `{args.table}` over {first.staged_days} staged days ({first.rows:,} rows) against "
        "the floor: hand-written Spark passes that compute the same verdicts. Goals: checks within 1.5x of "
        "the floor, and under 25% of the cost of computing the features.",
        "",
        "## Goals",
        "",
        "| case | checks: run_gate (s) | floor (s) | checks / floor | feature computation (s) "
        "| checks / features | within 1.5x | under 25% |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        m = case.measurements
        gate, floor_, features = m.median(GATE), m.median(FLOOR), m.median(FEATURES)
        lines.append(
            f"| {case.name} | {_cell(m.samples(GATE))} | {_cell(m.samples(FLOOR))} | {gate / floor_:.1f}x | "
            f"{_cell(m.samples(FEATURES))} | {_percent(gate, features)} | {_goal(gate <= 1.5 * floor_)} | "
            f"{_goal(gate < 0.25 * features)} |"
        )
    lines += [
        "",
        "Checks: `run_gate` as `stage_partitions` runs it (GX expectations, non-empty, diff against "
        "production, cross-table), timed inside the staging. Feature computation: the rest of "
        "`stage_partitions` (reading the upstream, the transformation, the output contract, writing, "
        "reading back, content hashes, the manifest). Floor: one aggregation (ranges, null counts, row "
        "rules) + one group-by (duplicate keys) + one anti join (key coverage); with production also one "
        "aggregation over production (deciles that cut the PSI bins) + one full outer join with one "
        "aggregation (changed, added, removed rows and PSI bin counts). Non-empty needs no Spark work on "
        "either side: the row counts are in the staged records.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in machine().items()],
        *[
            f"| load average (1 min) as each repetition started, {case.name} | "
            f"{', '.join(f'{load:.1f}' for load in case.loads)} |"
            for case in cases
        ],
        "",
        "## Scale",
        "",
        "| | |",
        "|---|---|",
        f"| table checked | `{args.table}`, {first.staged_days} days from {START} |",
        *[
            f"| rows checked, {case.name} | {case.rows:,} ({case.rows / case.staged_days:,.0f} per day) |"
            for case in cases
        ],
        f"| upstream `{DAILY}` | synthetic: {customers:,} customers, each with a row on a day with "
        f"probability {args.active_share}; {upstream_days.start}..{upstream_days.end}, "
        f"{first.upstream_rows:,} rows, staged in the same batch through the project's contract, writer "
        "and catalog |",
        f"| second batch (with production) | the same upstream with {args.changed_share:.2%} of its rows "
        "changed (one more declined transaction), staged after the first batch was promoted |",
        f"| Spark | `{args.master}`, driver memory {args.driver_memory}, {args.shuffle_partitions} shuffle "
        f"partitions, one session for everything (started in {spark_start:.1f} s, not in the figures) |",
        "",
        "## Where the time goes",
        "",
    ]
    for case in cases:
        m = case.measurements
        gate = m.median(GATE)
        lines += [
            f"### {case.name}",
            "",
            "| figure | seconds | share of the gate | Spark jobs | floor counterpart (s) | part / floor |",
            "|---|---|---|---|---|---|",
        ]
        for name in (STAGE, STAGE_CONTRACT, FEATURES, GATE, *GATE_PARTS.values()):
            share = _percent(m.median(name), gate) if name in GATE_PARTS.values() else ""
            counterpart = _floor_counterpart(case, name)
            lines.append(
                f"| {name} | {_cell(m.samples(name))} | {share} | {m.jobs_cell(name)} | "
                f"{f'{counterpart:.1f}' if counterpart is not None else ''} | "
                f"{f'{m.median(name) / counterpart:.1f}x' if counterpart else ''} |"
            )
        for name in (FLOOR, *[part for part in FLOOR_PARTS if part in m.seconds], CONTRACT):
            lines.append(f"| {name} | {_cell(m.samples(name))} | | {m.jobs_cell(name)} | | |")
        lines.append("")
    lines += [
        "Spark jobs are counted through a job group set around each part "
        "(`statusTracker().getJobIdsForGroup`); with adaptive query execution a query with a shuffle runs as "
        "two or more jobs. The output contract inside staging is the first action on the cached "
        "transformation output, so its time includes computing the features; the contract alone, on the "
        "written rows, is what the contract itself costs.",
        "",
        "## The floor reaches the gate's verdicts",
        "",
    ]
    for case in cases:
        lines += [
            f"### {case.name}",
            "",
            "| check | gate | floor | equal |",
            "|---|---|---|---|",
        ]
        for check, verdict in sorted(case.gate_verdicts.items()):
            other = case.floor_result.verdicts.get(check, "(not computed)")
            lines.append(f"| {check} | {verdict} | {other} | {'yes' if verdict == other else '**no**'} |")
        diff = case.gate_figures.get(DIFF_CHECK, {})
        if "changed" in diff:
            found = case.floor_result.figures[DIFF_CHECK]
            gate_psi = max((c["psi"] or 0.0 for c in diff.get("columns", [])), default=0.0)
            floor_psi = max((value or 0.0 for value in found["psi"].values()), default=0.0)
            lines += [
                "",
                "| diff figure | gate | floor |",
                "|---|---|---|",
                *[
                    f"| {name} | {diff[name]:,} | {found[name]:,} |"
                    for name in ("changed", "added", "removed")
                ],
                f"| production rows | {diff['production_rows']:,} | {found['production_rows']:,} |",
                f"| largest PSI | {gate_psi:.3g} | {floor_psi:.3g} |",
            ]
        lines.append("")
    verification = next((case.verification for case in cases if case.verification), None)
    if verification:
        lines += [
            "### With defects",
            "",
            f"Every check passes on the benchmark's data, so equal verdicts alone prove little. Here the GX "
            f"suite and the cross-table check (as the gate runs them) and the floor's passes ran over day "
            f"{verification.day} with rows that break each kind of check: "
            + "; ".join(f"{name}: {rows}" for name, rows in verification.injected.items())
            + f". Verdicts and counts {'agree' if verification.agrees else '**differ**'}.",
            "",
            "| check | gate | gate counts | floor | floor counts |",
            "|---|---|---|---|---|",
            *[f"| {' | '.join(row)} |" for row in verification.rows],
            "",
        ]
    if any(case.experiments for case in cases):
        lines += [
            "## Experiments (benchmark code only; the checks code is unchanged)",
            "",
            "Each experiment stands in for one part of the gate (or the whole gate); the gate / floor ratio "
            "is the gate's median with that part replaced by the experiment.",
            "",
            "| case | experiment | replaces | seconds | Spark jobs | instead of (s) | gate / floor "
            "| same verdicts as the gate |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for case in cases:
            m = case.measurements
            for experiment in EXPERIMENTS:
                phases = case.experiments.get(experiment.name)
                if not phases:
                    continue
                seconds = statistics.median(phase.seconds for phase in phases)
                instead = m.median(experiment.replaces)
                gate = m.median(GATE) - instead + seconds
                lines.append(
                    f"| {case.name} | {experiment.name} | {experiment.replaces} | {seconds:.1f} | "
                    f"{phases[-1].jobs} | {instead:.1f} | {gate / m.median(FLOOR):.1f}x | "
                    f"{'yes' if all(phase.agrees for phase in phases) else '**no**'} |"
                )
        lines.append("")
    lines += [
        "## Peak resident memory",
        "",
        "Peak resident set (VmHWM) of the harness and the processes it started, over the whole run; the sum "
        "is an upper bound of what they held at one time.",
        "",
        "| process | peak MiB |",
        "|---|---|",
        *[f"| {name} | {mib:,.0f} |" for name, mib in peaks],
        f"| total | {sum(mib for _, mib in peaks):,.0f} |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    began = time.perf_counter()
    spec = feature_spec(args.table)
    window = spec.feature_inputs[0].lookback_days + 1
    customers = customers_for(args, window)
    upstream_days = DateRange(START - timedelta(days=window - 1), START + timedelta(days=args.days - 1))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="checks-", dir=args.work_dir))
    cases: list[Case] = []
    try:
        spark_began = time.perf_counter()
        spark = SparkSettings.from_args(args).session()
        spark_start = time.perf_counter() - spark_began
        try:
            store = LocalObjectStore(work / "root")
            catalog = ReleaseCatalog(store)
            jobs = SparkJobs(spark)
            session = {"spark": spark, "store": store, "catalog": catalog, "jobs": jobs}
            synthetic = {"customers": customers, "days": upstream_days, "seed": args.seed}
            for case, (batch_id, changed_share) in zip(
                CASES, ((FIRST_BATCH, 0.0), (SECOND_BATCH, args.changed_share)), strict=True
            ):
                print(
                    f"{case}: upstream {DAILY} of {customers:,} customers, "
                    f"{upstream_days.start}..{upstream_days.end}",
                    flush=True,
                )
                upstream_rows = stage_upstream(
                    synthetic_daily(
                        spark, active_share=args.active_share, changed_share=changed_share, **synthetic
                    ),
                    upstream_days,
                    batch_id=batch_id,
                    spark=spark,
                    store=store,
                    catalog=catalog,
                )
                cases.append(
                    run_case(
                        case,
                        args,
                        batch_id=batch_id,
                        upstream_rows=upstream_rows,
                        verify=case == CASES[-1],
                        **session,
                    )
                )
                if batch_id == FIRST_BATCH:
                    # What the second batch is diffed against.
                    catalog.promote(FIRST_BATCH, actor="benchmark", reason="production for the diff")
            peaks = peak_memory()
        finally:
            spark.stop()
    finally:
        if args.keep_work:
            print(f"scratch data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    report = render(
        args,
        started=started,
        total_seconds=time.perf_counter() - began,
        spark_start=spark_start,
        customers=customers,
        upstream_days=upstream_days,
        cases=cases,
        peaks=peaks,
    )
    args.report.write_text(report)
    print(f"\n{report}\nwrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
