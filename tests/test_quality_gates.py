"""Faulty raw data blocks the batch with evidence, stages nothing downstream and leaves production alone."""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path

import pytest
from conftest import Lake, make_lake

from backfills.assets.generator import Fault, write_landing_zone
from backfills.assets.registry import feature_spec
from backfills.assets.staging import CONTRACT_CHECK, RAW_INPUT_CHECK
from backfills.errors import ContractViolationError, SchemaDriftError
from backfills.orchestration.definitions import build_definitions
from backfills.orchestration.local_backfill import BackfillRunFailedError, run_local_backfill

JAN_1, JAN_4 = date(2025, 1, 1), date(2025, 1, 4)
FAULT_DAY = date(2025, 1, 3)


def _faulty_lake(tmp_path: Path, fault: str) -> Lake:
    lake = make_lake(tmp_path / "lake")
    write_landing_zone(
        lake.store,
        start=JAN_1,
        days=6,
        customers=60,
        rows_per_day=400,
        seed=5,
        faults=[Fault(fault, FAULT_DAY)],
    )
    return lake


def _stage_daily(lake: Lake, spark) -> None:
    lake.stage(spark, "customer_daily_txn", JAN_1, JAN_4, "faulty", requester="alice")


@pytest.mark.parametrize(
    ("fault", "error", "column"),
    [
        ("negative_amounts", ContractViolationError, "amount"),
        ("absurd_amounts", ContractViolationError, "amount"),
        ("null_customer_ids", ContractViolationError, "customer_id"),
        ("out_of_day_timestamps", ContractViolationError, "event_ts"),
        ("missing_column", SchemaDriftError, "currency"),
        ("wrong_column_type", SchemaDriftError, "amount"),
    ],
)
def test_corrupting_raw_data_blocks_the_batch_naming_column_and_rows(
    tmp_path: Path, spark, fault: str, error: type, column: str
) -> None:
    lake = _faulty_lake(tmp_path, fault)
    with pytest.raises(error, match=column):
        _stage_daily(lake, spark)
    manifest = lake.catalog.get_batch("faulty")
    assert manifest.state == "blocked" and manifest.tables == {}
    [blocked] = manifest.blocking_failures()
    assert (blocked.table, blocked.check) == ("customer_daily_txn", RAW_INPUT_CHECK)
    assert column in blocked.summary and blocked.partitions[0] == "2025-01-01"
    if error is ContractViolationError:
        [violation] = blocked.figures["violations"]
        assert violation["column"] == column and violation["count"] > 0 and violation["sample"]
        assert all("txn_id" in row for row in violation["sample"])
    assert lake.catalog.current_release_id() is None


def test_an_empty_day_blocks_and_nothing_downstream_is_computed(
    tmp_path: Path, spark, dagster_instance
) -> None:
    lake = _faulty_lake(tmp_path, "empty_day")
    with pytest.raises(BackfillRunFailedError, match="customer_daily_txn"):
        run_local_backfill(
            build_definitions(lake.settings()),
            dagster_instance,
            start=JAN_1,
            end=JAN_4,
            max_partitions_per_run=4,
            batch_id="empty",
        )
    manifest = lake.catalog.get_batch("empty")
    assert manifest.state == "blocked"
    assert manifest.tables == {}  # nothing staged, so the 7d, 30d and profile runs never started
    [blocked] = manifest.blocking_failures()
    assert blocked.check == RAW_INPUT_CHECK and "2025-01-03 have no rows" in blocked.summary
    assert lake.catalog.current_release_id() is None


def test_exact_duplicate_txn_ids_are_counted_once_and_the_batch_passes(tmp_path: Path, spark) -> None:
    lake = _faulty_lake(tmp_path, "duplicate_txn_ids")
    _stage_daily(lake, spark)
    manifest = lake.catalog.get_batch("faulty")
    assert manifest.state == "checked" and manifest.blocking_failures() == []

    clean = make_lake(tmp_path / "clean")
    write_landing_zone(clean.store, start=JAN_1, days=6, customers=60, rows_per_day=400, seed=5)
    _stage_daily(clean, spark)
    hashes = {day: r.content_hash for day, r in manifest.tables["customer_daily_txn"].items()}
    clean_records = clean.catalog.get_batch("faulty").tables["customer_daily_txn"]
    assert hashes == {day: r.content_hash for day, r in clean_records.items()}


def test_a_transformation_bug_that_breaks_the_contract_is_never_staged(lake: Lake, spark) -> None:
    spec = feature_spec("customer_daily_txn")

    def buggy(inputs, dates):  # a logic bug: declines counted negative
        rows = spec.transform(inputs, dates)
        return rows.withColumn("declined_count", -rows["declined_count"] - 1)

    with pytest.raises(
        ContractViolationError, match=r"declined_count must be >= 0 \(\d+ rows\), e\.g\. customer_id="
    ):
        lake.stage(spark, dataclasses.replace(spec, transform=buggy), JAN_1, JAN_4, "buggy")
    manifest = lake.catalog.get_batch("buggy")
    assert manifest.state == "blocked" and manifest.tables == {}
    assert [record.check for record in manifest.blocking_failures()] == [CONTRACT_CHECK]
    assert lake.store.list("staging/customer_daily_txn/buggy") == []
