"""The diff of a staged batch against production: row counts, column shifts, PSI and the policy's verdict."""

from __future__ import annotations

import json
import math
from datetime import date
from decimal import Decimal

import pytest
from pyspark.sql import DataFrame, SparkSession

from backfills.checks.diff import PSI_EPSILON, DiffReport, PartitionDiff, diff_against_production, judge
from backfills.errors import InvalidInputError, InvalidRequestError
from backfills.specs import DiffPolicy

SCHEMA = "customer_id string, feature_date date, txn_count bigint, amount_usd decimal(18,2), segment string"
KEYS = ("customer_id", "feature_date")
NUMERIC = ("txn_count", "amount_usd")
DAY_1 = date(2025, 1, 1)
DAY_2 = date(2025, 1, 2)


def row(customer: str, day: date, txn_count: int | None, amount: str | None, segment: str | None = "silver"):
    return (customer, day, txn_count, None if amount is None else Decimal(amount), segment)


def table(spark: SparkSession, rows: list[tuple], schema: str = SCHEMA) -> DataFrame:
    return spark.createDataFrame(rows, schema)


def diff(staged: DataFrame, production: DataFrame, **options: object) -> DiffReport:
    return diff_against_production(
        staged, production, keys=KEYS, date_column="feature_date", numeric_columns=NUMERIC, **options
    )


def test_identical_batch_changes_nothing_and_passes(spark: SparkSession) -> None:
    rows = [row(f"c{i:02d}", day, i, f"{10 * i}.50") for day in (DAY_1, DAY_2) for i in range(1, 11)]

    report = diff(table(spark, rows), table(spark, rows))

    assert report.partitions == [
        PartitionDiff(
            "2025-01-01", production_rows=10, staged_rows=10, added=0, removed=0, changed=0, unchanged=10
        ),
        PartitionDiff(
            "2025-01-02", production_rows=10, staged_rows=10, added=0, removed=0, changed=0, unchanged=10
        ),
    ]
    assert report.changed_fraction == 0.0
    assert report.changed_sample == []
    txn_count, amount = report.columns
    assert (
        txn_count.production_quantiles == txn_count.staged_quantiles == {"p10": 1.0, "p50": 5.0, "p90": 9.0}
    )
    assert amount.production_mean == amount.staged_mean == pytest.approx(55.5)
    assert (txn_count.psi, amount.psi) == (0.0, 0.0)
    assert (txn_count.mean_shift, amount.mean_shift) == (0.0, 0.0)
    verdict = judge(report, DiffPolicy())
    assert (verdict.verdict, verdict.reasons) == ("pass", [])


def test_changed_added_and_removed_rows_are_counted_per_partition_with_a_sample(spark: SparkSession) -> None:
    production = [row(f"c{i}", day, i, f"{10 * i}.00") for day in (DAY_1, DAY_2) for i in range(1, 6)]
    staged = [
        row("c1", DAY_1, 1, "12.50"),  # amount recomputed
        row("c2", DAY_1, 2, "20.00"),
        row("c3", DAY_1, 3, "30.00"),
        row("c4", DAY_1, 4, "40.00"),
        row("c6", DAY_1, 6, "60.00"),  # new customer; c5 is gone from day 1
        *[row(f"c{i}", DAY_2, i, f"{10 * i}.00") for i in (1, 2, 4, 5)],
        row("c3", DAY_2, 4, "30.00", segment="gold"),  # two columns change on day 2
    ]

    report = diff(table(spark, staged), table(spark, production))

    assert report.partitions == [
        PartitionDiff(
            "2025-01-01", production_rows=5, staged_rows=5, added=1, removed=1, changed=1, unchanged=3
        ),
        PartitionDiff(
            "2025-01-02", production_rows=5, staged_rows=5, added=0, removed=0, changed=1, unchanged=4
        ),
    ]
    assert (report.added, report.removed, report.changed, report.unchanged) == (1, 1, 2, 7)
    assert report.changed_fraction == pytest.approx(0.4)
    assert report.changed_sample == [
        {
            "customer_id": "c1",
            "feature_date": "2025-01-01",
            "amount_usd": {"production": 10.0, "staged": 12.5},
        },
        {
            "customer_id": "c3",
            "feature_date": "2025-01-02",
            "txn_count": {"production": 3, "staged": 4},
            "segment": {"production": "silver", "staged": "gold"},
        },
    ]
    metadata = json.loads(json.dumps(report.to_metadata()))
    assert metadata["changed"] == 2 and metadata["production_rows"] == 10
    assert metadata["partitions"][0] == {
        "partition": "2025-01-01",
        "production_rows": 5,
        "staged_rows": 5,
        "added": 1,
        "removed": 1,
        "changed": 1,
        "unchanged": 3,
    }
    assert metadata["changed_sample"] == report.changed_sample


def test_a_column_whose_distribution_moves_blocks_the_batch_naming_the_column(spark: SparkSession) -> None:
    production = [row(f"c{i:03d}", DAY_1, 1, f"{i}.00") for i in range(1, 101)]
    staged = [row(f"c{i:03d}", DAY_1, 1, f"{i + 50}.00") for i in range(1, 101)]

    report = diff(table(spark, staged), table(spark, production))

    txn_count, amount = report.columns
    assert txn_count.psi == 0.0
    assert amount.production_quantiles == {"p10": 10.0, "p50": 50.0, "p90": 90.0}
    assert amount.staged_quantiles == {"p10": 60.0, "p50": 100.0, "p90": 140.0}
    assert amount.mean_shift == pytest.approx(50 / 50.5)
    # Bins cut at production deciles 10..90: staged 51..150 leaves five bins empty (floored at epsilon), keeps
    # four at 10% and puts 60% above 90.
    expected_psi = 5 * (PSI_EPSILON - 0.1) * math.log(PSI_EPSILON / 0.1) + (0.6 - 0.1) * math.log(0.6 / 0.1)
    assert amount.psi == pytest.approx(expected_psi)
    assert amount.psi == pytest.approx(4.3463, abs=1e-4)
    assert len(report.changed_sample) == 5
    assert len({entry["customer_id"] for entry in report.changed_sample}) == 5
    assert all(set(entry) == {*KEYS, "amount_usd"} for entry in report.changed_sample)

    verdict = judge(report, DiffPolicy())
    assert verdict.verdict == "block"
    assert verdict.reasons == [
        "amount_usd: PSI 4.346 > block threshold 0.25",
        "rows: changed fraction 1 (100 changed, 0 added, 0 removed of 100 production rows)"
        " > warn threshold 0.01; most in 2025-01-01 (100 of 100)",
    ]
    on_mean = judge(
        report, DiffPolicy(psi_warn=10, psi_block=10, changed_fraction_warn=2, mean_shift_block=0.5)
    )
    assert on_mean.verdict == "block"
    assert on_mean.reasons == [
        "amount_usd: mean shift +99.01% (production 50.5, staged 100.5) beyond block threshold ±50.00%"
    ]


def test_a_small_change_warns_by_changed_fraction(spark: SparkSession) -> None:
    production = [row(f"c{i:03d}", day, i, f"{i}.00") for day in (DAY_1, DAY_2) for i in range(100)]
    staged = [
        row(f"c{i:03d}", day, i, f"{i}.00", segment="gold" if day == DAY_2 and i < 3 else "silver")
        for day in (DAY_1, DAY_2)
        for i in range(100)
    ]

    report = diff(table(spark, staged), table(spark, production))

    assert [p.changed for p in report.partitions] == [0, 3]
    assert report.changed_fraction == pytest.approx(0.015)
    assert [c.psi for c in report.columns] == [0.0, 0.0]
    verdict = judge(report, DiffPolicy())
    assert verdict.verdict == "warn"
    assert verdict.reasons == [
        "rows: changed fraction 0.015 (3 changed, 0 added, 0 removed of 200 production rows)"
        " > warn threshold 0.01; most in 2025-01-02 (3 of 100)"
    ]
    assert judge(report, DiffPolicy(changed_fraction_warn=0.02)).verdict == "pass"
    blocked = judge(report, DiffPolicy(changed_fraction_block=0.01))
    assert blocked.verdict == "block"
    assert blocked.reasons[0].endswith("> block threshold 0.01; most in 2025-01-02 (3 of 100)")


def test_nulls_compare_equal_to_nulls_and_unequal_to_values(spark: SparkSession) -> None:
    production = [
        row("c1", DAY_1, 1, "10.00", segment=None),
        row("c2", DAY_1, 2, "20.00", segment=None),
        row("c3", DAY_1, 3, None),
        row("c4", DAY_1, 4, "40.00", segment="gold"),
    ]
    staged = [
        row("c1", DAY_1, 1, "10.00", segment=None),  # null -> null: unchanged
        row("c2", DAY_1, 2, "20.00", segment="gold"),  # null -> value: changed
        row("c3", DAY_1, 3, None),  # null amount stays null: unchanged
        row("c4", DAY_1, 4, "40.00", segment=None),  # value -> null: changed
    ]

    report = diff(table(spark, staged), table(spark, production))

    assert report.partitions == [
        PartitionDiff(
            "2025-01-01", production_rows=4, staged_rows=4, added=0, removed=0, changed=2, unchanged=2
        )
    ]
    assert sorted(report.changed_sample, key=lambda entry: entry["customer_id"]) == [
        {
            "customer_id": "c2",
            "feature_date": "2025-01-01",
            "segment": {"production": None, "staged": "gold"},
        },
        {
            "customer_id": "c4",
            "feature_date": "2025-01-01",
            "segment": {"production": "gold", "staged": None},
        },
    ]
    amount = report.columns[1]
    assert amount.production_mean == pytest.approx(70 / 3)  # the null amount is left out of the statistics
    assert amount.psi == 0.0


def test_numbers_of_another_type_in_production_compare_by_value(spark: SparkSession) -> None:
    # Production written when amount_usd was a double; the staged rows carry decimal(18,2). Equal values are
    # unchanged whatever their type (the rows are matched on hashes of values cast to the staged types).
    wider = SCHEMA.replace("amount_usd decimal(18,2)", "amount_usd double")
    production = [("c1", DAY_1, 1, 10.0, "silver"), ("c2", DAY_1, 2, 20.5, "silver")]
    staged = [row("c1", DAY_1, 1, "10.00"), row("c2", DAY_1, 2, "20.25")]

    report = diff(table(spark, staged), table(spark, production, wider))

    assert (report.changed, report.unchanged) == (1, 1)
    changed_amount = {"production": 20.5, "staged": 20.25}
    assert report.changed_sample == [
        {"customer_id": "c2", "feature_date": "2025-01-01", "amount_usd": changed_amount}
    ]


def test_empty_production_reports_every_staged_row_as_added(spark: SparkSession) -> None:
    staged = [row(f"c{i}", day, i, f"{i}.00") for day in (DAY_1, DAY_2) for i in range(1, 4)]

    report = diff(table(spark, staged), table(spark, []))

    assert report.partitions == [
        PartitionDiff(
            "2025-01-01", production_rows=0, staged_rows=3, added=3, removed=0, changed=0, unchanged=0
        ),
        PartitionDiff(
            "2025-01-02", production_rows=0, staged_rows=3, added=3, removed=0, changed=0, unchanged=0
        ),
    ]
    assert report.changed_fraction == 0.0
    amount = report.columns[1]
    assert (amount.production_mean, amount.mean_shift, amount.psi) == (None, None, None)
    assert amount.production_quantiles == {"p10": None, "p50": None, "p90": None}
    assert amount.staged_mean == pytest.approx(2.0)
    assert judge(report, DiffPolicy()).verdict == "pass"


def test_schema_mismatches_are_named_before_any_comparison(spark: SparkSession) -> None:
    rows = [row("c1", DAY_1, 1, "1.00")]
    production = table(spark, rows)
    without_segment = table(spark, rows).drop("segment")

    with pytest.raises(InvalidInputError, match=r"missing in staged: segment\b"):
        diff(without_segment, production)
    with pytest.raises(
        InvalidInputError, match=r"missing in staged: amount_eur, segment; missing in production: "
    ):
        diff_against_production(
            without_segment, production, keys=KEYS, date_column="feature_date", numeric_columns=["amount_eur"]
        )
    retyped = table(spark, [("c1", DAY_1, 1, "1.00", "silver")], SCHEMA.replace("decimal(18,2)", "string"))
    with pytest.raises(InvalidInputError, match=r"amount_usd \(staged string, production decimal\(18,2\)\)"):
        diff(retyped, production)
    with pytest.raises(InvalidInputError, match=r"not numeric: segment \(string\)"):
        diff_against_production(
            production, production, keys=KEYS, date_column="feature_date", numeric_columns=["segment"]
        )
    with pytest.raises(InvalidRequestError, match="must include the date column 'feature_date'"):
        diff_against_production(
            production, production, keys=["customer_id"], date_column="feature_date", numeric_columns=NUMERIC
        )
