"""Blocking checks block: every gate check is a blocking Dagster asset check; a failing one stops the steps
downstream of it inside the same run; and each staged-row rule (null rates, value ranges with a tolerance,
every row rule of every table) fails on rows that break it, naming the rule and showing the rows.

The failures come from transformations wrapped to corrupt some rows (a logic bug that still passes the
output contract), staged through the real gate with `lake.stage`.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import Lake, make_lake
from dagster import DagsterInstance, materialize
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from backfills.assets.check_results import GATE_CHECK
from backfills.assets.factory import (
    BATCH_TAG,
    build_feature_assets,
    daily_partitions,
    raw_transactions_spec,
    staging_key,
)
from backfills.assets.reader import FeatureReader
from backfills.assets.registry import FEATURES, FeatureSpec, feature_spec
from backfills.checks.expectations import (
    NULL_RATES_CHECK,
    RANGE_CHECK,
    ROW_CONSISTENCY_CHECK,
    run_expectations,
)
from backfills.checks.registry import check_names
from backfills.orchestration.definitions import defs
from backfills.resources.catalog_resource import CatalogResource
from backfills.resources.spark import SparkResource

DAILY, WEEKLY, MONTHLY, PROFILE = (
    "customer_daily_txn",
    "customer_txn_7d",
    "customer_txn_30d",
    "customer_risk_profile",
)
JAN_1, JAN_2, JAN_3, JAN_4, JAN_5, JAN_6 = (date(2025, 1, day) for day in range(1, 7))


# Declared blocking in the Definitions


def test_every_staged_asset_carries_one_blocking_partitioned_quality_gate_of_all_its_checks() -> None:
    assets = {key: asset for asset in defs.resolve_asset_graph().assets_defs for key in asset.keys}
    for spec in FEATURES:
        [gate] = assets[staging_key(spec.name)].check_specs
        assert (gate.name, gate.blocking) == (GATE_CHECK, True), spec.name
        assert gate.partitions_def == assets[staging_key(spec.name)].partitions_def
        assert all(name in gate.description for name in check_names(spec)), spec.name


# A failing blocking check stops the run's downstream steps


Rows = Callable[[DataFrame], Column]


def some_customers(rows: DataFrame) -> Column:
    """About every fourth customer: deterministic, a few rows on every day of the generated landing zone."""
    return F.abs(F.hash(rows["customer_id"])) % 4 == 0


def _corrupted(table: str, column: str, value: Rows, where: Rows = some_customers) -> FeatureSpec:
    """The table's spec with a transformation bug: `column` gets `value(rows)` on the rows `where` selects."""
    spec = feature_spec(table)

    def buggy(inputs, dates):
        rows = spec.transform(inputs, dates)
        wrong = value(rows).cast(rows.schema[column].dataType)  # the contract's type: only values are wrong
        return rows.withColumn(column, F.when(where(rows), wrong).otherwise(F.col(column)))

    return dataclasses.replace(spec, transform=buggy)


DECLINES_OVER_TOTAL = _corrupted(
    DAILY, "declined_count", lambda rows: rows["txn_count"] - rows["approved_count"] + 1
)


def test_a_failing_blocking_check_stops_the_downstream_step_in_the_same_run(
    lake: Lake, dagster_instance: DagsterInstance
) -> None:
    partitions = daily_partitions("2025-01-01")
    daily, weekly = build_feature_assets([DECLINES_OVER_TOTAL, feature_spec(WEEKLY)], partitions, {})
    settings = lake.settings()
    result = materialize(
        [raw_transactions_spec(partitions), daily, weekly],
        selection=[staging_key(DAILY), staging_key(WEEKLY)],
        partition_key="2025-01-01",
        resources={
            "spark": SparkResource.from_settings(settings),
            "catalog": CatalogResource(storage_root=settings.storage_root),
        },
        instance=dagster_instance,
        tags={BATCH_TAG: "stopped"},
        raise_on_error=False,
    )
    assert not result.success
    started = {event.step_key for event in result.all_events if event.event_type_value == "STEP_START"}
    failed = {event.step_key for event in result.all_events if event.is_step_failure}
    assert failed == started == {"staging__customer_daily_txn"}  # the 7-day step never started
    [gate] = result.get_asset_check_evaluations()
    assert (gate.check_name, gate.passed, gate.severity.value) == (GATE_CHECK, False, "ERROR")
    assert gate.description.startswith(f"failed: {ROW_CONSISTENCY_CHECK} (")
    assert f"| {ROW_CONSISTENCY_CHECK} | failed |" in gate.metadata["checks"].value
    manifest = lake.catalog.get_batch("stopped")
    assert manifest.state == "blocked" and sorted(manifest.tables) == [DAILY]
    assert [record.check for record in manifest.blocking_failures()] == [ROW_CONSISTENCY_CHECK]
    assert lake.catalog.current_release_id() is None


# Each rule fails on the rows that break it, naming the rule and showing them


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory, generated_landing_zone: Path, spark) -> Path:
    """Production serving customer_daily_txn for Jan 1..4 and both windows for Jan 1..2 (clean batch), so
    the buggy runs below stage days production does not serve yet (nothing to diff against)."""
    root = tmp_path_factory.mktemp("blocking") / "lake"
    shutil.copytree(generated_landing_zone / "raw", root / "raw")
    lake = make_lake(root)
    lake.stage(spark, DAILY, JAN_1, JAN_4, "clean")
    for table in (WEEKLY, MONTHLY):
        lake.stage(spark, table, JAN_1, JAN_2, "clean")
    assert lake.catalog.get_batch("clean").state == "checked"
    lake.catalog.promote("clean", actor="test")
    return root


@pytest.fixture
def served(production: Path, tmp_path: Path) -> Lake:
    root = tmp_path / "lake"
    shutil.copytree(production, root)
    return make_lake(root)


def _staged_rows(spark, lake: Lake, table: str, batch: str) -> list[dict]:
    return [row.asDict() for row in FeatureReader(spark, lake.store).read_batch(table, batch).collect()]


def _only_failure(lake: Lake, batch: str, check: str):
    manifest = lake.catalog.get_batch(batch)
    assert manifest.state == "blocked"
    assert [record.check for record in manifest.blocking_failures()] == [check]
    [record] = manifest.blocking_failures()
    return record


def _keys(rows: list[dict]) -> set[tuple[str, str]]:
    return {(row["customer_id"], str(row["feature_date"])) for row in rows}


@pytest.mark.parametrize(
    ("spec", "first", "last", "rule", "broken"),
    [
        pytest.param(
            DECLINES_OVER_TOTAL,
            JAN_5,
            JAN_6,
            "outcomes_add_up",
            lambda row: row["approved_count"] + row["declined_count"] > row["txn_count"],
            id="daily outcomes_add_up",
        ),
        pytest.param(
            _corrupted(DAILY, "amount_max_usd", lambda rows: rows["amount_sum_usd"] + Decimal("0.01")),
            JAN_5,
            JAN_6,
            "largest_within_sum",
            lambda row: row["amount_max_usd"] is not None and row["amount_max_usd"] > row["amount_sum_usd"],
            id="daily largest_within_sum",
        ),
        pytest.param(
            _corrupted(
                WEEKLY,
                "avg_ticket_usd_7d",
                lambda rows: rows["avg_ticket_usd_7d"] + Decimal("1.00"),
                lambda rows: some_customers(rows) & (rows["approved_count_7d"] > 0),
            ),
            JAN_3,
            JAN_4,
            "average_matches_sum",
            lambda row: (
                row["avg_ticket_usd_7d"] is not None
                and abs(row["amount_sum_usd_7d"] - row["avg_ticket_usd_7d"] * row["approved_count_7d"])
                > Decimal("0.005") * row["approved_count_7d"]
            ),
            id="7d average_matches_sum",
        ),
        pytest.param(
            _corrupted(
                MONTHLY,
                "declined_count_30d",
                lambda rows: rows["txn_count_30d"] - rows["approved_count_30d"] + 1,
            ),
            JAN_3,
            JAN_4,
            "outcomes_add_up",
            lambda row: row["approved_count_30d"] + row["declined_count_30d"] > row["txn_count_30d"],
            id="30d outcomes_add_up",
        ),
        pytest.param(
            _corrupted(
                PROFILE,
                "risk_tier",
                lambda rows: F.lit("high"),
                lambda rows: some_customers(rows) & ~(rows["high_velocity_flag"] & rows["high_decline_flag"]),
            ),
            JAN_1,
            JAN_2,
            "tier_matches_flags",
            lambda row: (
                (row["risk_tier"] == "high") != (row["high_velocity_flag"] and row["high_decline_flag"])
            ),
            id="profile tier_matches_flags",
        ),
    ],
)
def test_rows_breaking_a_row_rule_block_the_batch_naming_the_rule_and_the_rows(
    served: Lake, spark, spec: FeatureSpec, first: date, last: date, rule: str, broken: Callable
) -> None:
    lake = served
    lake.stage(spark, spec, first, last, "buggy")
    staged = _staged_rows(spark, lake, spec.name, "buggy")
    offending = [row for row in staged if broken(row)]
    assert 0 < len(offending) < len(staged)  # the bug hit some rows, and the rule is what tells
    record = _only_failure(lake, "buggy", ROW_CONSISTENCY_CHECK)
    [failure] = record.figures["failures"]
    assert failure["rule"].startswith(f"{rule}: ") and rule in record.summary
    assert failure["unexpected_count"] == len(offending)
    assert 0 < len(failure["sample"]) <= 5
    assert _keys(failure["sample"]) <= _keys(offending)
    assert lake.catalog.current_release().batch_id == "clean"  # production untouched


def test_a_column_above_its_null_rate_blocks_naming_the_column_and_the_rows(served: Lake, spark) -> None:
    lake = served
    # Nullable (no approved transaction gives no average) but at most half the rows may be null.
    no_averages = _corrupted(WEEKLY, "avg_ticket_usd_7d", lambda rows: F.lit(None), lambda rows: F.lit(True))
    lake.stage(spark, no_averages, JAN_3, JAN_4, "buggy")
    staged = _staged_rows(spark, lake, WEEKLY, "buggy")
    record = _only_failure(lake, "buggy", NULL_RATES_CHECK)
    [failure] = record.figures["failures"]
    assert failure["column"] == "avg_ticket_usd_7d" and failure["threshold"] == {"max_null_rate": 0.5}
    assert failure["unexpected_count"] == failure["element_count"] == len(staged)
    assert failure["unexpected_percent"] == 100.0 and "avg_ticket_usd_7d" in record.summary
    assert 0 < len(failure["sample"]) <= 5
    assert all(row["avg_ticket_usd_7d"] is None for row in failure["sample"])
    assert _keys(failure["sample"]) <= _keys(staged)


@pytest.mark.parametrize(("out_of_range", "passes"), [("few", True), ("many", False)])
def test_a_range_tolerance_lets_a_few_out_of_range_rows_pass_and_blocks_more(
    production: Path, spark, out_of_range: str, passes: bool
) -> None:
    """With `range_mostly=0.9`, up to a tenth of the rows may be out of bounds (value_ranges over the rows
    of a run; the output contract, checked at write time, has no such tolerance)."""
    rows = FeatureReader(spark, make_lake(production).store).read_batch(WEEKLY, "clean")
    total = rows.count()
    bad = 1 if out_of_range == "few" else total // 2  # 1 row is under a tenth; half the rows is not
    numbered = rows.withColumn("n", F.row_number().over(Window.orderBy("customer_id", "feature_date")))
    shifted = numbered.withColumn(
        "decline_rate_7d", F.when(F.col("n") <= bad, F.lit(1.5)).otherwise(F.col("decline_rate_7d"))
    ).drop("n")
    tolerant = dataclasses.replace(feature_spec(WEEKLY), range_mostly=0.9)
    [ranges] = [outcome for outcome in run_expectations(tolerant, shifted) if outcome.name == RANGE_CHECK]
    assert ranges.passed is passes and ranges.blocking
    if not passes:
        [failure] = ranges.figures["failures"]
        assert failure["column"] == "decline_rate_7d" and failure["unexpected_count"] == bad
        assert failure["threshold"] == {"min": 0, "max": 1, "mostly": 0.9}
        assert {row["decline_rate_7d"] for row in failure["sample"]} == {1.5}
    # Without the tolerance, even the one row fails.
    [strict] = [o for o in run_expectations(feature_spec(WEEKLY), shifted) if o.name == RANGE_CHECK]
    assert not strict.passed
