"""NaN and infinities are named for what they are, with the rows that hold them, in every numeric contract.

A NaN amount used to be reported as "amount must be <= 100000000" with an empty sample: Spark orders NaN above
every number, and the sample's filtered read lost the NaN rows to Parquet filter pushdown (row-group
statistics ignore NaN). The evidence now names the `finite` rule and shows the rows, whatever the value.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Lake
from pyspark.sql import functions as F

from backfills.assets.generator import RAW_SCHEMA, landing_key
from backfills.assets.raw_transactions import read_landed
from backfills.assets.reader import FeatureReader
from backfills.assets.registry import FEATURES, feature_spec
from backfills.checks.contracts import FINITE_CHECK, enforce_contract, feature_contract, raw_contract
from backfills.checks.samples import plain
from backfills.errors import ContractViolationError
from backfills.specs import DateRange

DAY = date(2025, 1, 3)
KINDS = {"NaN": math.nan, "inf": math.inf, "-inf": -math.inf}


def _plant(lake: Lake, value: float, rows: int = 3) -> list[str]:
    """Replace the day's landing file by the generated one with `rows` amounts set to `value`, written in
    small row groups so the planted rows sit in groups whose statistics hold only other values."""
    path = lake.root / landing_key(DAY)
    table = pq.read_table(path)
    positions = [10, 150, 290][:rows]
    amounts = table.column("amount").to_pylist()
    for position in positions:
        amounts[position] = value
    table = table.set_column(
        table.schema.get_field_index("amount"), "amount", pa.array(amounts, pa.float64())
    )
    pq.write_table(table.cast(RAW_SCHEMA), path, row_group_size=50)
    return sorted(table.column("txn_id").to_pylist()[position] for position in positions)


def _check_raw(lake: Lake, spark) -> None:
    enforce_contract(
        read_landed(spark, lake.store, [landing_key(DAY)]),
        raw_contract(1),
        table="raw_transactions",
        partitions=DAY.isoformat(),
        key_columns=["txn_id"],
    )


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_non_finite_raw_amount_breaks_the_finite_rule_with_its_rows(lake: Lake, spark, kind: str) -> None:
    planted = _plant(lake, KINDS[kind])
    with pytest.raises(ContractViolationError) as raised:
        _check_raw(lake, spark)
    [violation] = raised.value.report["violations"]
    assert (violation["column"], violation["check"], violation["count"]) == ("amount", FINITE_CHECK, 3)
    assert violation["rule"] == "must be a finite number (not NaN, inf or -inf)"
    assert [row["txn_id"] for row in violation["sample"]] == planted
    assert {row["amount"] for row in violation["sample"]} == {kind}
    message = str(raised.value)
    assert "amount must be a finite number" in message and f"amount={kind}" in message
    assert "must be <=" not in message and "must be >=" not in message  # not misreported as a bound


def test_a_nan_amount_blocks_the_batch_with_the_rows_in_the_manifest(lake: Lake, spark) -> None:
    planted = _plant(lake, math.nan, rows=2)
    with pytest.raises(ContractViolationError):
        lake.stage(spark, "customer_daily_txn", DAY, DAY, "nan")
    manifest = lake.catalog.get_batch("nan")
    assert manifest.state == "blocked" and "customer_daily_txn" not in manifest.tables
    [record] = manifest.blocking_failures()
    assert record.check == "raw_input_contract"
    [violation] = record.figures["violations"]
    assert violation["check"] == FINITE_CHECK
    assert [row["txn_id"] for row in violation["sample"]] == planted


def test_the_sample_of_a_broken_bound_is_not_lost_to_parquet_pushdown(lake: Lake, spark) -> None:
    """A value above the bound in a file whose other row groups are clean: the sample shows it."""
    path = lake.root / landing_key(DAY)
    table = pq.read_table(path)
    amounts = table.column("amount").to_pylist()
    amounts[120] = 5e9
    table = table.set_column(
        table.schema.get_field_index("amount"), "amount", pa.array(amounts, pa.float64())
    )
    pq.write_table(table.cast(RAW_SCHEMA), path, row_group_size=50)
    with pytest.raises(ContractViolationError) as raised:
        _check_raw(lake, spark)
    [violation] = raised.value.report["violations"]
    assert violation["check"] == "max" and violation["sample"] == [
        {"txn_id": table.column("txn_id")[120].as_py(), "amount": 5e9}
    ]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_non_finite_feature_value_breaks_the_feature_contract_naming_the_keys(
    lake: Lake, spark, kind: str
) -> None:
    lake.stage(spark, "customer_daily_txn", DAY, DAY, "clean")
    daily = FeatureReader(spark, lake.store).read_batch("customer_daily_txn", "clean")
    weekly = feature_spec("customer_txn_7d")
    staged = weekly.transform({"customer_daily_txn": daily}, DateRange(DAY, DAY)).select(*weekly.column_names)
    first = sorted(row["customer_id"] for row in staged.select("customer_id").collect())[0]
    broken = staged.withColumn(
        "decline_rate_7d",
        F.when(F.col("customer_id") == first, F.lit(KINDS[kind])).otherwise(F.col("decline_rate_7d")),
    )
    with pytest.raises(ContractViolationError) as raised:
        enforce_contract(
            broken,
            feature_contract(weekly),
            table=weekly.name,
            partitions=DAY.isoformat(),
            key_columns=["customer_id", "feature_date"],
        )
    [violation] = raised.value.report["violations"]
    assert (violation["column"], violation["check"], violation["count"]) == (
        "decline_rate_7d",
        FINITE_CHECK,
        1,
    )
    assert violation["sample"] == [
        {"customer_id": first, "feature_date": DAY.isoformat(), "decline_rate_7d": kind}
    ]


def test_non_finite_numbers_are_shown_as_text_in_evidence() -> None:
    assert [plain(value) for value in (math.nan, math.inf, -math.inf, 1.5)] == ["NaN", "inf", "-inf", 1.5]
    assert plain(datetime(2025, 1, 3, 4, 5, tzinfo=UTC)) == "2025-01-03T04:05:00+00:00"


def test_every_floating_column_of_every_contract_has_the_finite_rule(spark) -> None:
    """Floating columns can hold NaN and infinities; integers and decimals cannot."""
    contracts = [raw_contract(1), *[feature_contract(spec) for spec in FEATURES]]
    for contract in contracts:
        for name, column in contract.columns.items():
            floating = column.dtype.type.simpleString() in ("float", "double")
            has_rule = any(check.name == FINITE_CHECK for check in column.checks)
            assert has_rule == floating, (contract.name, name)
    assert any(
        c.dtype.type.simpleString() == "double" for c in feature_contract(FEATURES[1]).columns.values()
    )
