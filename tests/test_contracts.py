"""Contracts at write time: faulty raw files and broken feature frames are refused with the rule, the count
and the offending rows; drifted landing files are refused from their footers before Spark reads any data."""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import spark_jobs
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from backfills.assets.generator import Fault, landing_key, write_landing_zone
from backfills.assets.raw_transactions import read_landed
from backfills.assets.registry import DAILY, MAX_TICKET_USD, feature_spec
from backfills.assets.transformations import MONEY, customer_daily_txn
from backfills.checks.contracts import (
    EVENT_DAY_CHECK,
    MAX_RAW_AMOUNT,
    check_landing_schema,
    enforce_contract,
    feature_contract,
    raw_contract,
)
from backfills.errors import ContractViolationError, InvalidInputError, SchemaDriftError
from backfills.resources.storage import LocalObjectStore
from backfills.specs import LANDED_DATE, DateRange

START = date(2025, 1, 1)
# One fault per day, with clean days around them.
FAULT_DAYS = {
    "negative_amounts": date(2025, 1, 2),
    "absurd_amounts": date(2025, 1, 3),
    "null_customer_ids": date(2025, 1, 4),
    "out_of_day_timestamps": date(2025, 1, 5),
    "missing_column": date(2025, 1, 6),
    "wrong_column_type": date(2025, 1, 7),
}
CLEAN_DAY = date(2025, 1, 8)
LATENESS_DAYS = 1
RAW_KEYS = ["txn_id"]
DAILY_KEYS = ["customer_id", "feature_date"]


@pytest.fixture(scope="module")
def faulty_zone(tmp_path_factory: pytest.TempPathFactory) -> LocalObjectStore:
    store = LocalObjectStore(tmp_path_factory.mktemp("faulty_landing"))
    faults = [Fault(name, day) for name, day in FAULT_DAYS.items()]
    write_landing_zone(store, start=START, days=8, customers=60, rows_per_day=400, seed=11, faults=faults)
    return store


def read_raw(spark: SparkSession, store: LocalObjectStore, days: list[date]) -> DataFrame:
    """Raw rows as the daily feature reads them, with the day of the file each row came from."""
    return read_landed(spark, store, [landing_key(day) for day in days])


def offending_txn_ids(table: pa.Table, broken: pa.Array) -> list[str]:
    return sorted(table.filter(broken).column("txn_id").to_pylist())


def _outside_lateness(table: pa.Table, day: date) -> pa.Array:
    event_days = table.column("event_ts").to_pandas().dt.date
    allowed = {day - timedelta(days=lag) for lag in range(LATENESS_DAYS + 1)}
    return pa.array(~event_days.isin(allowed))


# fault -> (column, check, rows the generator breaks, how to find them in the file independently)
RAW_FAULTS = {
    "negative_amounts": ("amount", "min", 36, lambda t, day: pc.less(t.column("amount"), 0)),
    "absurd_amounts": ("amount", "max", 5, lambda t, day: pc.greater(t.column("amount"), MAX_RAW_AMOUNT)),
    "null_customer_ids": ("customer_id", "not_null", 24, lambda t, day: pc.is_null(t.column("customer_id"))),
    "out_of_day_timestamps": ("event_ts", EVENT_DAY_CHECK, 24, _outside_lateness),
}


@pytest.mark.parametrize("fault", sorted(RAW_FAULTS))
def test_each_raw_fault_breaks_the_raw_contract_naming_rule_count_and_txn_ids(
    spark: SparkSession, faulty_zone: LocalObjectStore, fault: str
) -> None:
    column, check, rows, broken = RAW_FAULTS[fault]
    day = FAULT_DAYS[fault]
    table = pq.read_table(faulty_zone.data_uri(landing_key(day)))
    expected = offending_txn_ids(table, broken(table, day))
    assert len(expected) == rows

    with pytest.raises(ContractViolationError) as raised:
        enforce_contract(
            read_raw(spark, faulty_zone, [day]),
            raw_contract(LATENESS_DAYS),
            table="raw_transactions",
            partitions=day.isoformat(),
            key_columns=RAW_KEYS,
        )

    report = raised.value.report
    json.dumps(report)  # fit for Dagster metadata and the batch manifest as it is
    assert report["rows"] == table.num_rows
    [violation] = report["violations"]
    assert (violation["column"], violation["check"], violation["count"]) == (column, check, rows)
    assert [row["txn_id"] for row in violation["sample"]] == expected[:5]
    message = str(raised.value)
    assert message.startswith(f"raw_transactions {day.isoformat()} breaks its contract: {column} must ")
    assert f"({rows} rows), e.g. txn_id={expected[0]} {column}=" in message
    assert all(txn_id in message for txn_id in expected[:5])
    assert not any(txn_id in message for txn_id in expected[5:])
    assert isinstance(raised.value, InvalidInputError)


def test_an_event_outside_its_file_day_shows_the_file_day_next_to_the_event_time(
    spark: SparkSession, faulty_zone: LocalObjectStore
) -> None:
    day = FAULT_DAYS["out_of_day_timestamps"]
    with pytest.raises(ContractViolationError) as raised:
        enforce_contract(
            read_raw(spark, faulty_zone, [day]),
            raw_contract(LATENESS_DAYS),
            table="raw_transactions",
            partitions=day.isoformat(),
            key_columns=RAW_KEYS,
            sample_size=2,
        )
    [violation] = raised.value.report["violations"]
    assert violation["rule"] == "must fall on its file's day (landed_date) or up to 1 day before it"
    for row in violation["sample"]:
        event_day = date.fromisoformat(row["event_ts"][:10])  # rendered in UTC, as Spark buckets days
        assert row[LANDED_DATE] == day.isoformat()
        assert abs((event_day - day).days) >= 3
    assert len(violation["sample"]) == 2


def test_clean_landing_files_pass_the_drift_check_and_the_raw_contract(
    spark: SparkSession, generated_landing_zone: Path
) -> None:
    store = LocalObjectStore(generated_landing_zone)
    days = [START + timedelta(days=n) for n in range(40)]
    check_landing_schema(spark, store, [landing_key(day) for day in days])

    report = enforce_contract(
        read_raw(spark, store, days[:10]),
        raw_contract(LATENESS_DAYS),
        table="raw_transactions",
        partitions="2025-01-01..2025-01-10",
        key_columns=RAW_KEYS,
    )
    expected_rows = sum(pq.read_metadata(store.data_uri(landing_key(day))).num_rows for day in days[:10])
    assert report.passed and report.violations == () and report.rows == expected_rows


@pytest.mark.parametrize(
    ("fault", "problem"),
    [
        ("missing_column", "has no column currency (expected string)"),
        ("wrong_column_type", "has amount as string (expected double)"),
    ],
)
def test_landing_schema_drift_is_refused_from_footers_before_any_spark_job(
    spark: SparkSession, faulty_zone: LocalObjectStore, fault: str, problem: str
) -> None:
    day = FAULT_DAYS[fault]
    keys = [landing_key(CLEAN_DAY), landing_key(day)]
    jobs_before = spark_jobs(spark)

    with pytest.raises(SchemaDriftError) as raised:
        check_landing_schema(spark, faulty_zone, keys)

    assert spark_jobs(spark) == jobs_before
    message = str(raised.value)
    assert f"file day {day.isoformat()} ({landing_key(day)}) {problem}" in message
    assert "nothing was staged" in message
    assert CLEAN_DAY.isoformat() not in message
    assert message.count("file day") == 1


class _RemoteLikeStore(LocalObjectStore):
    """Local files under `file://` URIs, so footers go through Spark as they do for s3a:// on a cluster."""

    def data_uri(self, key: str) -> str:
        return f"file://{super().data_uri(key)}"


def test_drift_in_files_spark_must_open_is_named_the_same_way(
    spark: SparkSession, faulty_zone: LocalObjectStore
) -> None:
    store = _RemoteLikeStore(faulty_zone.root)
    keys = [
        landing_key(day) for day in (CLEAN_DAY, FAULT_DAYS["missing_column"], FAULT_DAYS["wrong_column_type"])
    ]

    with pytest.raises(SchemaDriftError) as raised:
        check_landing_schema(spark, store, keys)

    message = str(raised.value)
    assert (
        "file day 2025-01-06 (raw/transactions/date=2025-01-06/part-00000.parquet) has no column currency"
        in message
    )
    assert (
        "file day 2025-01-07 (raw/transactions/date=2025-01-07/part-00000.parquet) has amount as string"
        in message
    )
    check_landing_schema(spark, store, keys[:1])


# Feature frames: the real transformation's output, then the same rows broken one way at a time.


@pytest.fixture(scope="module")
def daily_features(spark: SparkSession, generated_landing_zone: Path) -> Iterator[DataFrame]:
    store = LocalObjectStore(generated_landing_zone)
    raw = read_raw(spark, store, [START + timedelta(days=n) for n in range(8)]).drop(LANDED_DATE)
    frame = customer_daily_txn({"raw_transactions": raw}, DateRange(START, date(2025, 1, 7))).cache()
    yield frame
    frame.unpersist()


def _enforce_daily(frame: DataFrame) -> None:
    enforce_contract(
        frame,
        feature_contract(feature_spec(DAILY)),
        table=DAILY,
        partitions="2025-01-01..2025-01-07",
        key_columns=DAILY_KEYS,
    )


def _first_keys(frame: DataFrame, count: int) -> list[tuple[str, date]]:
    rows = frame.where(F.col("amount_max_usd").isNotNull()).orderBy(*DAILY_KEYS).limit(count).collect()
    return [(row.customer_id, row.feature_date) for row in rows]


def _at(keys: list[tuple[str, date]]) -> Column:
    matches = [(F.col("customer_id") == customer) & (F.col("feature_date") == day) for customer, day in keys]
    return functools.reduce(operator.or_, matches)


def test_real_daily_features_pass_their_contract(spark: SparkSession, daily_features: DataFrame) -> None:
    contract = feature_contract(feature_spec(DAILY))
    assert contract.strict is True and contract.unique == DAILY_KEYS
    result = enforce_contract(
        daily_features,
        contract,
        table=DAILY,
        partitions="2025-01-01..2025-01-07",
        key_columns=DAILY_KEYS,
    )
    assert result.passed and result.rows == daily_features.count() > 0


def test_an_amount_over_its_bound_is_refused_with_the_keys_and_the_value(daily_features: DataFrame) -> None:
    keys = _first_keys(daily_features, 3)
    absurd = F.lit(Decimal("1000000000.00")).cast(MONEY)
    broken = daily_features.withColumn(
        "amount_max_usd", F.when(_at(keys), absurd).otherwise(F.col("amount_max_usd"))
    )

    with pytest.raises(ContractViolationError) as raised:
        _enforce_daily(broken)

    customer, day = keys[0]
    assert str(raised.value).startswith(
        f"{DAILY} 2025-01-01..2025-01-07 breaks its contract: amount_max_usd must be <= {MAX_TICKET_USD} "
        f"(3 rows), e.g. customer_id={customer} feature_date={day.isoformat()} amount_max_usd=1000000000.00, "
    )
    [violation] = raised.value.report["violations"]
    assert violation["sample"] == [
        {"customer_id": c, "feature_date": d.isoformat(), "amount_max_usd": "1000000000.00"} for c, d in keys
    ]


def test_a_null_in_a_required_column_is_refused(daily_features: DataFrame) -> None:
    keys = _first_keys(daily_features, 2)
    broken = daily_features.withColumn("txn_count", F.when(~_at(keys), F.col("txn_count")))

    with pytest.raises(ContractViolationError) as raised:
        _enforce_daily(broken)

    [violation] = raised.value.report["violations"]
    assert (violation["column"], violation["check"], violation["count"]) == ("txn_count", "not_null", 2)
    assert f"txn_count must not be null (2 rows), e.g. customer_id={keys[0][0]}" in str(raised.value)
    assert violation["sample"][0]["txn_count"] is None


def test_a_duplicate_key_is_refused_with_the_key_and_its_row_count(daily_features: DataFrame) -> None:
    keys = _first_keys(daily_features, 2)
    broken = daily_features.unionByName(daily_features.where(_at(keys)))

    with pytest.raises(ContractViolationError) as raised:
        _enforce_daily(broken)

    [violation] = raised.value.report["violations"]
    assert (violation["column"], violation["check"], violation["count"]) == (
        "customer_id, feature_date",
        "unique",
        4,
    )
    assert violation["sample"] == [
        {"customer_id": c, "feature_date": d.isoformat(), "rows": 2} for c, d in keys
    ]
    assert "customer_id, feature_date must be unique together (4 rows)" in str(raised.value)


def test_wrong_missing_or_extra_columns_are_refused_before_any_spark_job(
    spark: SparkSession, daily_features: DataFrame
) -> None:
    broken = (
        daily_features.withColumn("amount_max_usd", F.col("amount_max_usd").cast("double"))
        .drop("merchant_category_count")
        .withColumn("debug_note", F.lit("x"))
    )
    jobs_before = spark_jobs(spark)

    with pytest.raises(ContractViolationError) as raised:
        _enforce_daily(broken)

    assert spark_jobs(spark) == jobs_before
    message = str(raised.value)
    assert "amount_max_usd must have type decimal(18,2) (found double)" in message
    assert "merchant_category_count is missing (expected bigint)" in message
    assert "debug_note is not a column of the contract" in message
    assert [v["check"] for v in raised.value.report["violations"]] == ["dtype", "present", "strict"]
    assert raised.value.report["rows"] is None


def test_pandera_itself_flags_the_rules_the_enforcement_counts(
    spark: SparkSession, faulty_zone: LocalObjectStore
) -> None:
    faulty = read_raw(spark, faulty_zone, [FAULT_DAYS[name] for name in sorted(RAW_FAULTS)])
    contract = raw_contract(LATENESS_DAYS)

    errors = contract.validate(faulty).pandera.errors
    flagged = {
        (error["column"], error["check"])
        for group in errors.values()
        for found in group.values()
        for error in found
    }
    with pytest.raises(ContractViolationError) as raised:
        enforce_contract(
            faulty, contract, table="raw_transactions", partitions="faults", key_columns=RAW_KEYS
        )

    counted = {violation["column"] for violation in raised.value.report["violations"]}
    assert {column for column, _ in flagged} == counted == {"amount", "customer_id", "event_ts"}
    event_rule = next(v["rule"] for v in raised.value.report["violations"] if v["column"] == "event_ts")
    assert ("event_ts", event_rule) in flagged
    assert ("amount", f"in_range(0, {MAX_RAW_AMOUNT})") in flagged
