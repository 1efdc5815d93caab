"""Checks that compare a staged batch with what it would replace and with what it was computed from:
the diff against production, and cross-table consistency of keys and values."""

from __future__ import annotations

import dataclasses
from datetime import date

import pytest
from conftest import Lake
from pyspark.sql import functions as F

from backfills.assets.reader import FeatureReader
from backfills.assets.registry import dependency_order, feature_spec
from backfills.checks.cross_table import CROSS_TABLE_CHECK, cross_table_outcome
from backfills.checks.diff_check import DIFF_CHECK
from backfills.checks.summary import batch_check_summary
from backfills.errors import BlockedUpstreamError
from backfills.specs import DateRange

JAN_1, JAN_4, JAN_6 = date(2025, 1, 1), date(2025, 1, 4), date(2025, 1, 6)
DAILY = feature_spec("customer_daily_txn")


def _outcome(staged, name: str):
    return next(outcome for outcome in staged.checks if outcome.name == name)


@pytest.fixture
def production(lake: Lake, spark) -> Lake:
    """customer_daily_txn for Jan 1..4 promoted to production."""
    lake.stage(spark, DAILY, JAN_1, JAN_4, "v1", requester="alice")
    lake.catalog.promote("v1", actor="carol", reason="initial load")
    return lake


def _with_transform(transform):
    return dataclasses.replace(DAILY, transform=transform)


def test_a_first_batch_has_nothing_to_compare_and_passes(lake: Lake, spark) -> None:
    staged = lake.stage(spark, DAILY, JAN_1, JAN_4, "first")
    diff = _outcome(staged, DIFF_CHECK)
    assert diff.passed and "nothing to compare" in diff.summary
    assert diff.figures["new_days"] == ["2025-01-01", "2025-01-02", "2025-01-03", "2025-01-04"]


def test_an_identical_recompute_changes_no_row(production: Lake, spark) -> None:
    staged = production.stage(spark, DAILY, JAN_1, JAN_4, "same")
    diff = _outcome(staged, DIFF_CHECK)
    assert diff.passed, diff.summary
    assert (diff.figures["changed"], diff.figures["added"], diff.figures["removed"]) == (0, 0, 0)
    assert diff.figures["unchanged"] == staged.row_count


def test_changed_values_are_counted_exactly_and_warn(production: Lake, spark) -> None:
    def plus_one_dollar_for_some(inputs, dates):
        rows = DAILY.transform(inputs, dates)
        bumped = F.col("customer_id").endswith("1")
        return rows.withColumn(
            "amount_sum_usd",
            F.when(bumped, F.col("amount_sum_usd") + F.lit(1))
            .otherwise(F.col("amount_sum_usd"))
            .cast("decimal(18,2)"),
        )

    staged = production.stage(spark, _with_transform(plus_one_dollar_for_some), JAN_1, JAN_4, "fix")
    in_production = FeatureReader(spark, production.store).read("customer_daily_txn", JAN_1, JAN_4)
    expected = in_production.where(F.col("customer_id").endswith("1")).count()
    assert expected > 0
    diff = _outcome(staged, DIFF_CHECK)
    assert diff.figures["changed"] == expected
    assert (diff.figures["added"], diff.figures["removed"]) == (0, 0)
    assert diff.figures["verdict"] == "warn" and not diff.blocking
    assert any("changed fraction" in reason for reason in diff.figures["reasons"])
    [changed] = [row for row in diff.figures["changed_sample"] if row["customer_id"].endswith("1")][:1]
    assert set(changed) == {"customer_id", "feature_date", "amount_sum_usd"}
    manifest = production.catalog.get_batch("fix")
    assert manifest.state == "checked"  # a warning informs the approver; it does not block
    summary = batch_check_summary(manifest)
    assert summary["tables"]["customer_daily_txn"]["diff"]["changed"] == expected
    assert any(DIFF_CHECK in warning for warning in summary["warnings"])


def test_a_shift_beyond_the_threshold_blocks_and_production_is_unchanged(production: Lake, spark) -> None:
    before = production.catalog.current_release_id()

    def tripled_spend(inputs, dates):
        rows = DAILY.transform(inputs, dates)
        return rows.withColumn(
            "amount_sum_usd", (F.col("amount_sum_usd") * 3).cast("decimal(18,2)")
        ).withColumn("amount_max_usd", (F.col("amount_max_usd") * 3).cast("decimal(18,2)"))

    staged = production.stage(spark, _with_transform(tripled_spend), JAN_1, JAN_4, "bad")
    diff = _outcome(staged, DIFF_CHECK)
    assert not diff.passed and diff.blocking
    assert any(reason.startswith("amount_sum_usd: PSI") for reason in diff.figures["reasons"])
    manifest = production.catalog.get_batch("bad")
    assert manifest.state == "blocked"
    assert [record.check for record in manifest.blocking_failures()] == [DIFF_CHECK]
    assert production.catalog.current_release_id() == before


def test_days_production_does_not_serve_yet_are_reported_as_new(production: Lake, spark) -> None:
    staged = production.stage(spark, DAILY, date(2025, 1, 3), JAN_6, "extend")
    diff = _outcome(staged, DIFF_CHECK)
    assert diff.passed
    assert diff.figures["compared_days"] == ["2025-01-03", "2025-01-04"]
    assert diff.figures["new_days"] == ["2025-01-05", "2025-01-06"]


def test_daily_rows_missing_a_customer_of_the_raw_data_block_the_batch(lake: Lake, spark) -> None:
    raw_customer = (
        spark.read.parquet(str(lake.root / "raw" / "transactions"))
        .where(F.to_date("event_ts") == F.lit(JAN_1))
        .orderBy("customer_id")
        .first()["customer_id"]
    )

    def loses_a_customer(inputs, dates):
        return DAILY.transform(inputs, dates).where(F.col("customer_id") != raw_customer)

    staged = lake.stage(spark, _with_transform(loses_a_customer), JAN_1, JAN_4, "lossy")
    check = _outcome(staged, CROSS_TABLE_CHECK)
    assert not check.passed and check.blocking
    [violation] = check.figures["violations"]
    assert violation["upstream"] == "raw_transactions"
    assert "no row here" in violation["problem"] and violation["count"] >= 1
    assert {row["customer_id"] for row in violation["sample"]} == {raw_customer}
    assert lake.catalog.get_batch("lossy").state == "blocked"
    with pytest.raises(BlockedUpstreamError, match=CROSS_TABLE_CHECK):
        lake.stage(spark, "customer_txn_7d", JAN_1, JAN_4, "lossy")


def test_a_clean_batch_agrees_with_its_inputs_in_every_table(lake: Lake, spark) -> None:
    for spec in dependency_order():
        staged = lake.stage(spark, spec, JAN_1, JAN_4, "clean")
        check = _outcome(staged, CROSS_TABLE_CHECK)
        assert check.passed, f"{spec.name}: {check.summary}"
    assert lake.catalog.get_batch("clean").state == "checked"


def test_a_profile_dropping_customers_of_the_7_day_table_blocks(lake: Lake, spark) -> None:
    for spec in dependency_order()[:3]:
        lake.stage(spark, spec, JAN_1, JAN_4, "profile")
    profile = feature_spec("customer_risk_profile")

    def drops_high_spenders(inputs, dates):
        rows = profile.transform(inputs, dates)
        return rows.where(F.col("spend_velocity_ratio").isNull() | (F.col("spend_velocity_ratio") < 1.5))

    staged = lake.stage(
        spark, dataclasses.replace(profile, transform=drops_high_spenders), JAN_1, JAN_4, "profile"
    )
    check = _outcome(staged, CROSS_TABLE_CHECK)
    assert not check.passed
    [violation] = check.figures["violations"]
    assert violation["upstream"] == "customer_txn_7d" and violation["count"] > 0


def test_a_7_day_count_above_the_30_day_count_breaks_the_windows_nest_rule(lake: Lake, spark) -> None:
    for spec in dependency_order():
        lake.stage(spark, spec, JAN_1, JAN_4, "nest")
    reader = FeatureReader(spark, lake.store)
    weekly = reader.read_batch("customer_txn_7d", "nest")
    monthly = reader.read_batch("customer_txn_30d", "nest")
    target = monthly.orderBy("customer_id", "feature_date").first()
    broken = monthly.withColumn(
        "txn_count_30d",
        F.when(
            (F.col("customer_id") == target["customer_id"])
            & (F.col("feature_date") == target["feature_date"]),
            F.lit(0).cast("bigint"),
        ).otherwise(F.col("txn_count_30d")),
    )
    profile = feature_spec("customer_risk_profile")
    staged = reader.read_batch("customer_risk_profile", "nest")
    inputs = {"customer_txn_7d": weekly, "customer_txn_30d": broken}
    check = cross_table_outcome(profile, staged, inputs, DateRange(JAN_1, JAN_4))
    assert not check.passed
    [violation] = check.figures["violations"]
    assert violation["problem"].startswith("windows_nest") and violation["count"] == 1
    assert violation["sample"] == [
        {"customer_id": target["customer_id"], "feature_date": target["feature_date"].isoformat()}
    ]
