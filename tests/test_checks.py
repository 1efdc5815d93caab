"""Asset checks on staged partitions: a clean batch passes, bad rows fail with their keys as evidence."""

from __future__ import annotations

from datetime import date

import pytest
from conftest import Lake
from pyspark.sql import functions as F

from backfills.assets.reader import FeatureReader
from backfills.assets.registry import dependency_order, feature_spec
from backfills.checks.expectations import (
    NULL_RATES_CHECK,
    RANGE_CHECK,
    ROW_CONSISTENCY_CHECK,
    UNIQUE_KEYS_CHECK,
    run_expectations,
)


@pytest.fixture(scope="module")
def clean_batch(tmp_path_factory, generated_landing_zone, spark) -> tuple[Lake, str]:
    import shutil

    from conftest import make_lake

    root = tmp_path_factory.mktemp("checks") / "lake"
    shutil.copytree(generated_landing_zone / "raw", root / "raw")
    lake = make_lake(root)
    for spec in dependency_order():
        lake.stage(spark, spec, date(2025, 1, 1), date(2025, 1, 10), "clean")
    return lake, "clean"


def _staged(spark, batch, table):
    lake, batch_id = batch
    return FeatureReader(spark, lake.store).read_batch(table, batch_id)


@pytest.mark.parametrize(
    "table", ["customer_daily_txn", "customer_txn_7d", "customer_txn_30d", "customer_risk_profile"]
)
def test_a_clean_batch_passes_every_expectation(clean_batch, spark, table) -> None:
    outcomes = run_expectations(feature_spec(table), _staged(spark, clean_batch, table))
    assert {o.name for o in outcomes} >= {
        RANGE_CHECK,
        NULL_RATES_CHECK,
        UNIQUE_KEYS_CHECK,
        ROW_CONSISTENCY_CHECK,
    }
    assert [o.summary for o in outcomes if not o.passed] == []


def test_out_of_range_values_fail_with_the_offending_keys(clean_batch, spark) -> None:
    staged = _staged(spark, clean_batch, "customer_daily_txn")
    target = staged.orderBy("customer_id", "feature_date").first()
    bad = staged.withColumn(
        "amount_max_usd",
        F.when(
            (F.col("customer_id") == target["customer_id"])
            & (F.col("feature_date") == target["feature_date"]),
            F.lit(1_000_000_000).cast("decimal(18,2)"),
        ).otherwise(F.col("amount_max_usd")),
    )
    outcomes = {o.name: o for o in run_expectations(feature_spec("customer_daily_txn"), bad)}
    failed = outcomes[RANGE_CHECK]
    assert not failed.passed and failed.blocking
    [evidence] = failed.figures["failures"]
    assert evidence["column"] == "amount_max_usd" and evidence["unexpected_count"] == 1
    assert evidence["threshold"]["max"] == 100_000
    assert evidence["sample"] == [
        {
            "customer_id": target["customer_id"],
            "feature_date": target["feature_date"].isoformat(),
            "amount_max_usd": "1000000000.00",
        }
    ]
    assert "amount_max_usd 1 rows" in failed.summary
    assert outcomes[ROW_CONSISTENCY_CHECK].passed is False  # the max now exceeds the day's spend


def test_duplicate_keys_fail_with_the_duplicated_key(clean_batch, spark) -> None:
    staged = _staged(spark, clean_batch, "customer_txn_7d")
    duplicated = staged.unionByName(staged.orderBy("customer_id", "feature_date").limit(1))
    outcomes = {o.name: o for o in run_expectations(feature_spec("customer_txn_7d"), duplicated)}
    failed = outcomes[UNIQUE_KEYS_CHECK]
    assert not failed.passed
    [evidence] = failed.figures["failures"]
    assert evidence["unexpected_count"] == 1 and evidence["sample"][0]["copies"] == 2


def test_an_expectation_that_raises_is_a_failed_check_with_the_exception(clean_batch, spark) -> None:
    staged = _staged(spark, clean_batch, "customer_txn_30d").drop("decline_rate_30d")
    outcomes = {o.name: o for o in run_expectations(feature_spec("customer_txn_30d"), staged)}
    failed = outcomes[RANGE_CHECK]
    assert not failed.passed
    errors = [e["error"] for e in failed.figures["failures"] if "error" in e]
    assert errors and "decline_rate_30d" in errors[0]
