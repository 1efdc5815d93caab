"""Asset checks on staged partitions: a clean batch passes, bad rows fail with their keys as evidence."""

from __future__ import annotations

from datetime import date
from functools import reduce

import great_expectations as gx
import pytest
from conftest import Lake
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from backfills.assets.reader import FeatureReader
from backfills.assets.registry import dependency_order, feature_spec
from backfills.checks.check import GateInputs, ProductionRows
from backfills.checks.cross_table import CROSS_TABLE_CHECK
from backfills.checks.expectations import (
    NULL_RATES_CHECK,
    RANGE_CHECK,
    ROW_CONSISTENCY_CHECK,
    UNIQUE_KEYS_CHECK,
    expectation_figures,
    null_measure,
    run_expectations,
    suite,
    validate_on_pass,
)
from backfills.checks.gate import gate_measures, run_gate
from backfills.checks.staged_pass import run_pass
from backfills.specs import DateRange, FeatureSpec


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


def test_expectations_over_a_frame_without_a_column_raise_naming_it(clean_batch, spark) -> None:
    # Staging never gets here (the output contract refuses missing columns first); on its own, the pass
    # cannot count a column that is not there and says which.
    staged = _staged(spark, clean_batch, "customer_txn_30d").drop("decline_rate_30d")
    with pytest.raises(Exception, match="decline_rate_30d"):
        run_expectations(feature_spec("customer_txn_30d"), staged)


def test_a_check_that_raises_is_a_failed_blocking_check_with_the_exception(clean_batch, spark) -> None:
    spec = feature_spec("customer_txn_7d")
    staged = _staged(spark, clean_batch, "customer_txn_7d")
    figures = run_pass(
        staged,
        keys=[*spec.entity_keys, spec.date_column],
        date_column=spec.date_column,
        schema_ddl=spec.schema_ddl,
        measures=gate_measures(spec),
    )
    gate = GateInputs(
        dates=DateRange(date(2025, 1, 1), date(2025, 1, 10)),
        staged=staged,
        figures=figures,
        records=(),
        inputs={},  # the cross-table check needs customer_daily_txn, which this run did not pass
        production=ProductionRows(release_id=None, days=[], rows=None),
    )
    outcomes = {outcome.name: outcome for outcome in run_gate(spec, gate)}
    raised = outcomes[CROSS_TABLE_CHECK]
    assert not raised.passed and raised.blocking
    assert "customer_daily_txn" in raised.figures["error"] and raised.summary.startswith("the check raised")
    assert outcomes[RANGE_CHECK].passed  # the other checks still judge


def _planted_defects(staged: DataFrame, spec: FeatureSpec) -> DataFrame:
    """A few rows out of range on every bounded column, nulls in every column, a duplicated key and rows
    that break every row rule: each expectation of the suite sees some unexpected rows."""
    ordered = staged.orderBy(*spec.entity_keys, spec.date_column)
    first = ordered.limit(40).collect()
    keys = [*spec.entity_keys, spec.date_column]

    def picked(index: int) -> Column:
        row = first[index]
        return reduce(lambda a, b: a & b, [F.col(key) == F.lit(row[key]) for key in keys])

    bad = staged
    for n, column in enumerate(spec.columns):
        if column.name in keys:
            continue
        if column.max_value is not None:
            bad = bad.withColumn(
                column.name,
                F.when(picked(n % 40), F.lit(column.max_value * 10 + 1).cast(column.type)).otherwise(
                    F.col(column.name)
                ),
            )
        bad = bad.withColumn(
            column.name,
            F.when(picked((n + 7) % 40) | picked((n + 8) % 40), F.lit(None).cast(column.type)).otherwise(
                F.col(column.name)
            ),
        )
    return bad.unionByName(ordered.limit(3))


@pytest.mark.parametrize(
    "table", ["customer_daily_txn", "customer_txn_7d", "customer_txn_30d", "customer_risk_profile"]
)
def test_the_one_pass_reaches_the_verdicts_and_counts_of_great_expectations_itself(
    clean_batch, spark, table
) -> None:
    spec = feature_spec(table)
    bad = _planted_defects(_staged(spark, clean_batch, table), spec).cache()
    ours = validate_on_pass(spec, expectation_figures(spec, bad))
    context = gx.get_context(mode="ephemeral")
    source = context.data_sources.add_spark(name="parity", persist=False)
    batch = (
        source.add_dataframe_asset(name="staged")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": bad})
    )
    theirs = batch.validate(suite(spec), result_format="SUMMARY")
    bad.unpersist()
    assert len(ours.results) == len(theirs.results)
    compared = ("element_count", "unexpected_count", "unexpected_percent", "observed_value")
    for mine, gx_result in zip(ours.results, theirs.results, strict=True):
        assert mine.expectation_config.type == gx_result.expectation_config.type
        assert not gx_result.exception_info.get("raised_exception"), gx_result.exception_info
        what = f"{gx_result.expectation_config.type} {gx_result.expectation_config.kwargs.get('column', '')}"
        assert mine.success == gx_result.success, what
        for name in compared:
            if name in gx_result.result:
                assert mine.result.get(name) == pytest.approx(gx_result.result[name]), (what, name)
    assert not ours.success and not theirs.success
    # Every kind of expectation saw unexpected rows, so the comparison covered failures, not only passes.
    failed = {result.expectation_config.type for result in theirs.results if not result.success}
    assert {"expect_column_values_to_not_be_null", "unexpected_rows_expectation"} <= failed


def test_nulls_a_nullable_column_may_hold_are_counted_but_not_sampled(clean_batch, spark) -> None:
    """Sampling offending rows is a scan of its own: only nulls that fail the null rate are sampled."""
    spec, column = feature_spec("customer_daily_txn"), "amount_max_usd"  # nullable: up to half may be null
    staged = _staged(spark, clean_batch, spec.name)
    first = staged.where(F.col(column).isNotNull()).orderBy(*spec.entity_keys, spec.date_column).first()
    one = (F.col("customer_id") == first["customer_id"]) & (F.col("feature_date") == first["feature_date"])
    allowed = staged.withColumn(column, F.when(one, F.lit(None)).otherwise(F.col(column)))
    already = expectation_figures(spec, staged).total(null_measure(column))  # days without an approval
    figures = expectation_figures(spec, allowed)
    assert figures.total(null_measure(column)) == already + 1 and figures.sample(null_measure(column)) == []
    assert {o.name: o for o in run_expectations(spec, allowed)}[NULL_RATES_CHECK].passed

    too_many = staged.withColumn(column, F.lit(None).cast(staged.schema[column].dataType))
    figures = expectation_figures(spec, too_many)
    assert figures.sample(null_measure(column))[0][column] is None
    failed = {o.name: o for o in run_expectations(spec, too_many)}[NULL_RATES_CHECK]
    assert not failed.passed
    [evidence] = [item for item in failed.figures["failures"] if item["column"] == column]
    assert len(evidence["sample"]) == 5 and {row[column] for row in evidence["sample"]} == {None}
