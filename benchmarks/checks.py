"""Quality-gate benchmark: every check of one feature table over a month of staged days, compared with a
hand-written Spark floor that computes the same verdicts, and with the cost of computing the features.
Writes benchmarks/CHECKS_REPORT.md and the checks' figures in benchmarks/results.json.

The gate is fused: the checks add their counts to the one pass over the written rows that the manifest
needs anyway (row counts, content hashes, null counts), then judge from those figures, with one join of
their own for key coverage and one for the diff. What the checks cost is therefore their share of that
pass (the pass with every measure against the pass with the manifest's alone, both over the cached rows)
plus the judging. It measures and reports; the one thing it verifies is that the floor's verdicts equal
the gate's (a floor that computes less is no floor). `.venv/bin/python benchmarks/checks.py --help` lists
the options.
"""

from __future__ import annotations

import argparse
import json
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
from typing import Any
from unittest import mock

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from run import Samples, machine, peak_memory, source_version
from spark_setup import SparkSettings, add_spark_options

import backfills.assets.staging as staging_module
from backfills.assets.registry import DAILY, MONTHLY, WEEKLY, feature_spec
from backfills.assets.staging import stage_partitions
from backfills.assets.transformations import MONEY
from backfills.checks.check import GateInputs
from backfills.checks.contracts import enforce_contract, feature_contract
from backfills.checks.cross_table import CROSS_TABLE_CHECK, cross_table_outcome
from backfills.checks.diff import PERCENTILE_ACCURACY, PSI_EPSILON
from backfills.checks.diff_check import DIFF_CHECK, numeric_columns
from backfills.checks.expectations import (
    NULL_RATES_CHECK,
    RANGE_CHECK,
    ROW_CONSISTENCY_CHECK,
    UNIQUE_KEYS_CHECK,
    run_expectations,
)
from backfills.checks.gate import run_gate
from backfills.checks.non_empty import NON_EMPTY_CHECK
from backfills.checks.outcome import CheckOutcome
from backfills.checks.registry import checks_of
from backfills.checks.staged_pass import run_pass
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
GOAL_OVER_FLOOR = 1.5
GOAL_SHARE_OF_FEATURES = 0.25

# Names of the figures: what each repetition records.
STAGE = "stage_partitions (all, the probe's own measurements taken out)"
PASS = "the pass in staging (first action on the cached rows: computes the features)"
PASS_FULL = "the pass again, every measure, over the cached rows"
PASS_MANIFEST = "the pass with the manifest's measures alone (rows, hashes, nulls), over the cached rows"
CHECKS_IN_PASS = "checks' share of the pass (every measure - the manifest's alone)"
GATE = "judging (run_gate: GX over the figures, the coverage join, the diff join)"
CHECKS = "checks (share of the pass + judging)"
FEATURES = "feature computation (stage_partitions without the checks)"
PROBE = "the probe's own measurements (taken out of stage_partitions)"
FLOOR = "floor (all)"
FLOOR_AGGREGATE = "floor: one aggregation (ranges, nulls, row rules)"
FLOOR_DUPLICATES = "floor: one group-by (duplicate keys)"
FLOOR_CROSS = "floor: key coverage (one anti join per direction)"
FLOOR_DIFF_QUANTILES = "floor: diff, production deciles (one aggregation)"
FLOOR_DIFF_JOIN = "floor: diff, one full outer join + aggregation"
FLOOR_PARTS = (FLOOR_AGGREGATE, FLOOR_DUPLICATES, FLOOR_CROSS, FLOOR_DIFF_QUANTILES, FLOOR_DIFF_JOIN)


def judged(check: str) -> str:
    return f"judging: {check}"


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
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic upstream (7)")
    add_spark_options(parser, driver_memory="6g")
    parser.add_argument(
        "--report", type=Path, default=BENCHMARKS_DIR / "CHECKS_REPORT.md", help="where to write the report"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=BENCHMARKS_DIR / "results.json",
        help="machine-readable figures, merged into this file (benchmarks/results.json)",
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


# Instrumenting stage_partitions: the pass, the judging of each check, and the checks' share of the pass


class StagingProbe:
    """Times the pass and the judging inside stage_partitions, counts their Spark jobs and, while the run's
    rows are still cached (inside the gate), measures the checks' share of the pass, runs the floor over
    the same cached rows and (once) the verification with defects. Wraps the functions staging looks up."""

    def __init__(self, jobs: SparkJobs, spec: FeatureSpec) -> None:
        self.jobs = jobs
        self.spec = spec
        self.sink = Measurements()
        self.outcomes: list[CheckOutcome] = []
        self.floor_result: FloorResult | None = None
        self.verification: Verification | None = None
        self.verify_next = False
        self._pass_arguments: dict[str, Any] = {}

    def _timed(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.jobs.phase() as phase:
                result = function(*args, **kwargs)
            self.sink.add(name, phase.seconds, phase.jobs)
            return result

        return timed

    def _pass(self, df: DataFrame, **arguments: Any) -> Any:
        self._pass_arguments = arguments
        return self._timed(PASS, run_pass)(df, **arguments)

    def _gate(
        self, spec: FeatureSpec, inputs: GateInputs, progress: Callable[[str], None] = lambda _: None
    ) -> list[CheckOutcome]:
        self.outcomes = self._timed(GATE, run_gate)(spec, inputs, progress)
        self.sink.jobs[GATE][-1] += sum(self.sink.jobs[judged(check.name)][-1] for check in checks_of(spec))
        began = time.perf_counter()
        self._while_cached(spec, inputs)
        self.sink.add(PROBE, time.perf_counter() - began)
        return self.outcomes

    def _while_cached(self, spec: FeatureSpec, inputs: GateInputs) -> None:
        rows, arguments = inputs.staged, self._pass_arguments
        manifest_only = {
            **arguments,
            "measures": staging_module._null_measures(spec),
            "unique_keys": False,
        }
        self._timed(PASS_MANIFEST, run_pass)(rows, **manifest_only)
        self._timed(PASS_FULL, run_pass)(rows, **arguments)
        share = self.sink.seconds[PASS_FULL][-1] - self.sink.seconds[PASS_MANIFEST][-1]
        self.sink.add(CHECKS_IN_PASS, max(0.0, share))
        self.floor_result = floor(spec, inputs, self.jobs, self.sink)
        if self.verify_next:
            self.verification = verify_with_defects(spec, inputs, self.jobs)
            self.verify_next = False

    @contextmanager
    def installed(self) -> Iterator[StagingProbe]:
        with ExitStack() as stack:
            stack.enter_context(mock.patch.object(staging_module, "run_pass", self._pass))
            stack.enter_context(mock.patch.object(staging_module, "run_gate", self._gate))
            for check in checks_of(self.spec):
                timed = self._timed(judged(check.name), check.judge)
                stack.enter_context(mock.patch.object(check, "judge", timed))
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


# One case: the table staged `repetitions` times into one batch


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
    checks: list[str]
    verification: Verification | None = None
    loads: list[float] = field(default_factory=list)  # 1-minute load average as each repetition started

    def median(self, name: str) -> float:
        return self.measurements.median(name)

    @property
    def over_floor(self) -> float:
        return self.median(CHECKS) / self.median(FLOOR)

    @property
    def share_of_features(self) -> float:
        return self.median(CHECKS) / self.median(FEATURES)


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
    """Stage the table's days into `batch_id` `repetitions` times, each timed as described in the module."""
    spec = feature_spec(args.table)
    dates = DateRange(START, START + timedelta(days=args.days - 1))
    earliest = START - timedelta(days=spec.feature_inputs[0].lookback_days)
    probe = StagingProbe(jobs, spec)
    m = probe.sink
    loads = []
    for repetition in range(args.repetitions):
        loads.append(os.getloadavg()[0])
        probe.verify_next = verify and repetition == args.repetitions - 1
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
        stage = phase.seconds - m.seconds[PROBE][-1]
        m.add(STAGE, stage)
        checks = m.seconds[CHECKS_IN_PASS][-1] + m.seconds[GATE][-1]
        m.add(CHECKS, checks)
        m.add(FEATURES, stage - checks)
        print(
            f"  {name}, repetition {repetition + 1}: stage_partitions {stage:.1f} s, checks {checks:.1f} s "
            f"(pass share {m.seconds[CHECKS_IN_PASS][-1]:.1f}, judging {m.seconds[GATE][-1]:.1f}); floor "
            f"{m.seconds[FLOOR][-1]:.1f} s",
            flush=True,
        )
    assert probe.floor_result is not None, "stage_partitions did not run the gate"
    return Case(
        name=name,
        measurements=m,
        gate_verdicts={outcome.name: outcome.verdict for outcome in probe.outcomes},
        gate_figures={outcome.name: outcome.figures for outcome in probe.outcomes},
        floor_result=probe.floor_result,
        rows=staged.row_count,
        staged_days=len(staged.records),
        upstream_rows=upstream_rows,
        checks=[check.name for check in checks_of(spec)],
        verification=probe.verification,
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
        "with the smallest and largest in brackets. How to read them: benchmarks/README.md.",
        "",
        f"Every check of `{args.table}` ({', '.join(first.checks)}) over "
        f"{first.staged_days} staged days ({first.rows:,} rows) against the floor: hand-written Spark passes "
        f"that compute the same verdicts. Goals: checks within {GOAL_OVER_FLOOR}x of the floor, and under "
        f"{GOAL_SHARE_OF_FEATURES:.0%} of the cost of computing the features, with and without a release "
        "to diff against.",
        "",
        "## Goals",
        "",
        "| case | checks (s) | floor (s) | checks / floor | feature computation (s) "
        f"| checks / features | within {GOAL_OVER_FLOOR}x | under {GOAL_SHARE_OF_FEATURES:.0%} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        m = case.measurements
        lines.append(
            f"| {case.name} | {_cell(m.samples(CHECKS))} | {_cell(m.samples(FLOOR))} | "
            f"{case.over_floor:.2f}x | {_cell(m.samples(FEATURES))} | {case.share_of_features:.0%} | "
            f"{_goal(case.over_floor <= GOAL_OVER_FLOOR)} | "
            f"{_goal(case.share_of_features <= GOAL_SHARE_OF_FEATURES)} |"
        )
    lines += [
        "",
        "**Checks** are what the gate adds to staging. The gate is fused: every check contributes counts to "
        "the one aggregation over the run's cached rows that the manifest needs anyway (row counts, content "
        "hashes, null counts), so its cost there is the difference between that pass with every measure "
        "(the output contract's, the expectations', the unique-key grouping) and the same pass with the "
        "manifest's measures alone, both timed again over the cached rows while staging holds them. To that "
        "is added the judging: `run_gate` as staging runs it (GX validating its suite over the pass's "
        "figures, non-empty days from the figures, one full outer join for key coverage, and with "
        "production the diff's hashed join and its distribution statistics). **Feature computation** is "
        "the rest of `stage_partitions`: reading the upstream, the transformation, the manifest's pass, "
        "writing, file checksums, the manifest. **Floor**: one aggregation (ranges, null counts, row rules) "
        "+ one group-by (duplicate keys) + an anti join per coverage direction, over the same cached rows; "
        "with production also one aggregation over production (deciles that cut the PSI bins) + one full "
        "outer join with one aggregation (changed, added, removed rows and PSI bin counts). The floor does "
        "not compute the output contract, nor evidence samples: the checks do both.",
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
        figures = [STAGE, PASS, PASS_MANIFEST, PASS_FULL, CHECKS_IN_PASS, GATE]
        figures += [judged(check) for check in case.checks]
        figures += [CHECKS, FEATURES, FLOOR, *[part for part in FLOOR_PARTS if part in m.seconds], PROBE]
        lines += [
            f"### {case.name}",
            "",
            "| figure | seconds | share of the checks | Spark jobs |",
            "|---|---|---|---|",
        ]
        for name in figures:
            share = _percent(m.median(name), m.median(CHECKS)) if name.startswith("judging") else ""
            lines.append(f"| {name} | {_cell(m.samples(name))} | {share} | {m.jobs_cell(name)} |")
        lines.append("")
    lines += [
        "Spark jobs are counted through a job group set around each part "
        "(`statusTracker().getJobIdsForGroup`); with adaptive query execution a query with a shuffle runs as "
        "two or more jobs. The pass in staging is the first action on the cached transformation output, so "
        "its time includes computing the features.",
        "",
        "## The floor reaches the gate's verdicts",
        "",
    ]
    for case in cases:
        lines += [f"### {case.name}", "", "| check | gate | floor | equal |", "|---|---|---|---|"]
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
            "Every check passes on the benchmark's data, so equal verdicts alone prove little. Here the "
            "expectation checks and the cross-table check (as the gate runs them) and the floor's passes "
            f"ran over day {verification.day} with rows that break each kind of check: "
            + "; ".join(f"{name}: {rows}" for name, rows in verification.injected.items())
            + f". Verdicts and counts {'agree' if verification.agrees else '**differ**'}.",
            "",
            "| check | gate | gate counts | floor | floor counts |",
            "|---|---|---|---|---|",
            *[f"| {' | '.join(row)} |" for row in verification.rows],
            "",
        ]
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


def write_results(args: argparse.Namespace, cases: list[Case]) -> None:
    """The checks' figures in results.json: the worse case as the headline, every case beside it."""
    path: Path = args.results
    results = json.loads(path.read_text()) if path.exists() else {}
    results["checks_over_floor"] = round(max(case.over_floor for case in cases), 3)
    results["checks_share_of_features"] = round(max(case.share_of_features for case in cases), 3)
    results["checks_scale"] = {
        "table": args.table,
        "days": args.days,
        "rows_per_day": args.rows_per_day,
        "repetitions": args.repetitions,
        "commit": source_version(),
    }
    results["checks_by_case"] = {
        case.name: {
            "checks_seconds": round(case.median(CHECKS), 2),
            "floor_seconds": round(case.median(FLOOR), 2),
            "features_seconds": round(case.median(FEATURES), 2),
            "checks_over_floor": round(case.over_floor, 3),
            "checks_share_of_features": round(case.share_of_features, 3),
        }
        for case in cases
    }
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


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
    write_results(args, cases)
    print(f"\n{report}\nwrote {args.report} and {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
