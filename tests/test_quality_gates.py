"""Faulty raw data blocks the batch with evidence, stages nothing downstream and leaves production alone."""

from __future__ import annotations

import dataclasses
import json
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import Lake, make_lake

from backfills.assets.generator import Fault, landing_key, write_landing_zone
from backfills.assets.registry import feature_spec
from backfills.assets.staging import CONTRACT_CHECK, RAW_INPUT_CHECK
from backfills.checks.diff_check import DIFF_CHECK
from backfills.checks.duplicates import DUPLICATE_EVENTS_CHECK
from backfills.checks.non_empty import NON_EMPTY_CHECK
from backfills.errors import ContractViolationError, SchemaDriftError
from backfills.orchestration.cli import main
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


def test_exact_duplicate_txn_ids_are_counted_once_reported_and_the_batch_passes(
    tmp_path: Path, spark
) -> None:
    lake = _faulty_lake(tmp_path, "duplicate_txn_ids")
    _stage_daily(lake, spark)
    manifest = lake.catalog.get_batch("faulty")
    assert manifest.state == "checked" and manifest.blocking_failures() == []
    # The copies are all in the fault day's file, whose events all belong to the staged days.
    landed = pq.read_table(lake.root / landing_key(FAULT_DAY)).to_pandas()
    copies = len(landed) - landed["txn_id"].nunique()
    assert copies >= 1
    [duplicates] = [record for record in manifest.checks if record.check == DUPLICATE_EVENTS_CHECK]
    assert duplicates.verdict == "warned" and not duplicates.blocking
    assert duplicates.figures["dropped"] == copies and duplicates.figures["conflicting"] == 0
    assert f"{copies} re-delivered events dropped" in duplicates.summary
    repeated = set(landed["txn_id"][landed["txn_id"].duplicated()])
    assert {row["txn_id"] for row in duplicates.figures["sample"]} <= repeated
    assert {row["delivered_again_in_file_of"] for row in duplicates.figures["sample"]} == {
        FAULT_DAY.isoformat()
    }

    clean = make_lake(tmp_path / "clean")
    write_landing_zone(clean.store, start=JAN_1, days=6, customers=60, rows_per_day=400, seed=5)
    _stage_daily(clean, spark)
    hashes = {day: r.content_hash for day, r in manifest.tables["customer_daily_txn"].items()}
    clean_records = clean.catalog.get_batch("faulty").tables["customer_daily_txn"]
    assert hashes == {day: r.content_hash for day, r in clean_records.items()}


def test_clean_raw_data_reports_no_dropped_duplicates(lake: Lake, spark) -> None:
    _stage_daily(lake, spark)
    [duplicates] = [c for c in lake.catalog.get_batch("faulty").checks if c.check == DUPLICATE_EVENTS_CHECK]
    assert duplicates.verdict == "passed" and duplicates.figures["dropped"] == 0


def test_an_empty_day_only_warns_when_the_spec_expects_empty_days(tmp_path: Path, spark) -> None:
    lake = _faulty_lake(tmp_path, "empty_day")
    lenient = dataclasses.replace(feature_spec("customer_daily_txn"), empty_partition_blocks=False)
    lake.stage(spark, lenient, JAN_1, JAN_4, "lenient")
    manifest = lake.catalog.get_batch("lenient")
    assert manifest.state == "checked"
    [empty] = [record for record in manifest.checks if record.check == NON_EMPTY_CHECK]
    # Jan 3's own file is empty; its late events, in Jan 4's file, still give the day a few rows.
    assert empty.verdict == "warned" and empty.figures["empty_landing_days"] == ["2025-01-03"]
    assert "landing files with no rows: 2025-01-03" in empty.summary


def test_batches_json_names_the_failing_checks_of_a_blocked_batch(
    tmp_path: Path, spark, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    lake = _faulty_lake(tmp_path, "negative_amounts")
    with pytest.raises(ContractViolationError):
        _stage_daily(lake, spark)
    monkeypatch.setenv("BACKFILLS_STORAGE_ROOT", str(lake.root))
    assert main(["batches", "--format", "json"]) == 0
    [batch] = json.loads(capsys.readouterr().out)
    summary = batch["check_summary"]
    assert batch["state"] == summary["state"] == "blocked"
    [reason] = summary["blocking_failures"]
    assert reason.startswith(f"customer_daily_txn {RAW_INPUT_CHECK} (2025-01-01..2025-01-04)")
    assert "amount" in reason
    assert summary["tables"]["customer_daily_txn"]["checks"][RAW_INPUT_CHECK]["verdict"] == "failed"


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


def test_a_partial_delivery_over_complete_production_data_is_flagged_by_the_diff(
    tmp_path: Path, spark
) -> None:
    lake = make_lake(tmp_path / "lake")
    settings = {"start": JAN_1, "days": 6, "customers": 60, "rows_per_day": 400, "seed": 5}
    write_landing_zone(lake.store, **settings)
    lake.stage(spark, "customer_daily_txn", JAN_1, JAN_4, "complete", requester="alice")
    lake.catalog.promote("complete", actor="carol")
    # The landing file of Jan 3 is delivered again, a fifth of it missing: contracts cannot tell.
    write_landing_zone(lake.store, **settings, faults=[Fault("partial_delivery", FAULT_DAY)])
    staged = lake.stage(spark, "customer_daily_txn", JAN_1, JAN_4, "partial", requester="alice")
    [diff] = [outcome for outcome in staged.checks if outcome.name == DIFF_CHECK]
    by_day = {entry["partition"]: entry for entry in diff.figures["partitions"]}
    assert by_day["2025-01-01"]["changed"] == by_day["2025-01-04"]["changed"] == 0
    assert by_day["2025-01-03"]["changed"] + by_day["2025-01-03"]["removed"] > 0
    assert by_day["2025-01-02"]["changed"] > 0  # its late events were in Jan 3's file
    assert diff.figures["verdict"] != "pass" and not diff.passed
    assert "2025-01-03" in diff.summary
