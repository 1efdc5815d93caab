"""Promotion verifies staged files by size and checksum, without Spark: O(files), not O(rows).

A modified, truncated or deleted staged file refuses promotion, naming the table, the day and the file;
`deep_verify` (and any partition staged before checksums were recorded) also recomputes content hashes with
Spark.
"""

from __future__ import annotations

import re
import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Lake, built_once, make_lake, spark_jobs
from tampering import change_one_byte, rewrite_rows

from backfills.errors import StagedContentChangedError
from backfills.orchestration.approval_channels import LocalChannel
from backfills.orchestration.approval_flow import ApprovalFlow
from backfills.orchestration.approval_message import Links
from backfills.orchestration.approval_policy import ApprovalRules
from backfills.orchestration.promotion import promote, verify_content
from backfills.resources.approvals_store import ApprovalStore
from backfills.resources.catalog_models import VoteRecord
from backfills.resources.storage import ObjectStore

DAILY, BATCH, APPROVER = "customer_daily_txn", "checked", "U0BOB"
RULES = ApprovalRules(approvers=frozenset({APPROVER}))


@pytest.fixture(scope="module")
def approved(tmp_path_factory, generated_landing_zone: Path, spark) -> Path:
    return built_once("verify", tmp_path_factory, lambda root: _approved(root, generated_landing_zone, spark))


def _approved(root: Path, generated_landing_zone: Path, spark) -> None:
    shutil.copytree(generated_landing_zone / "raw", root / "raw")
    lake = make_lake(root)
    lake.stage(spark, DAILY, date(2025, 1, 1), date(2025, 1, 3), BATCH, requester="U0ALICE")
    lake.catalog.mark_complete(BATCH, {DAILY: ["2025-01-01", "2025-01-02", "2025-01-03"]})
    flow = ApprovalFlow(lake.catalog, LocalChannel(lambda text: None), RULES, Links("http://dagster.test"))
    flow.process(BATCH, lambda manifest: None)
    request = ApprovalStore(lake.store).latest(BATCH)
    vote = VoteRecord(user_id=APPROVER, decision="approve", at=datetime.now(UTC), source="cli")
    ApprovalStore(lake.store).update(
        BATCH, request.request_id, lambda current: current.model_copy(update={"cli_votes": [vote]})
    )
    assert flow.process(BATCH, lambda manifest: None) is not None


@pytest.fixture
def lake(approved: Path, tmp_path: Path) -> Lake:
    shutil.copytree(approved, tmp_path / "lake")
    return make_lake(tmp_path / "lake")


def _one_file(lake: Lake) -> tuple[str, Path]:
    record = lake.catalog.get_batch(BATCH).tables[DAILY]["2025-01-02"]
    return record.files[0], lake.root / record.files[0]


def _refused(lake: Lake, spark, **options: bool) -> str:
    with pytest.raises(StagedContentChangedError) as refused:
        promote(lake.catalog, RULES, spark, BATCH, requested_by="ops", **options)
    assert lake.catalog.current_release() is None  # production untouched
    return str(refused.value)


def test_untouched_files_are_verified_without_a_spark_job(lake: Lake, spark) -> None:
    record = lake.catalog.get_batch(BATCH).tables[DAILY]["2025-01-02"]
    assert record.file_checks and all(c.checksum.startswith("sha256:") for c in record.file_checks.values())
    before = spark_jobs(spark)
    # What a canary's completion checks (verify_content as called there), then a promotion.
    assert verify_content(spark, lake.store, lake.catalog.get_batch(BATCH)) == 3
    promote(lake.catalog, RULES, spark, BATCH, requested_by="ops")
    assert spark_jobs(spark) == before
    assert lake.catalog.current_release().batch_id == BATCH


def test_a_file_rewritten_with_one_value_changed_refuses_promotion_without_reading_rows(
    lake: Lake, spark
) -> None:
    key, path = _one_file(lake)
    table = pq.read_table(path)
    counts = table.column("txn_count").to_pylist()
    counts[0] += 1
    table = table.set_column(
        table.schema.get_field_index("txn_count"), "txn_count", pa.array(counts, pa.int64())
    )
    pq.write_table(table, path)
    before = spark_jobs(spark)
    message = _refused(lake, spark)
    assert spark_jobs(spark) == before
    assert f"{DAILY} 2025-01-02 ({key}" in message and ("checksum" in message or "bytes" in message)


def test_a_file_with_one_byte_changed_in_place_refuses_promotion_by_its_checksum(lake: Lake, spark) -> None:
    """The same size, the same footer: only the checksum can tell."""
    key, path = _one_file(lake)
    size = path.stat().st_size
    change_one_byte(path)
    assert path.stat().st_size == size
    before = spark_jobs(spark)
    message = _refused(lake, spark)
    assert spark_jobs(spark) == before
    assert f"{DAILY} 2025-01-02 ({key} changed: its checksum is not the one recorded at staging)" in message


def test_a_truncated_or_deleted_file_refuses_promotion_naming_it(lake: Lake, spark) -> None:
    key, path = _one_file(lake)
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])
    assert f"{key} is {size // 2} bytes, was {size} when staged" in _refused(lake, spark)
    path.unlink()
    assert f"{key} is missing" in _refused(lake, spark)


def test_deep_verify_recomputes_content_hashes_with_spark(lake: Lake, spark) -> None:
    before = spark_jobs(spark)
    promote(lake.catalog, RULES, spark, BATCH, requested_by="ops", deep_verify=True)
    assert before is None or spark_jobs(spark) > before


def _forget_file_checks(manifest):
    """The manifest as earlier versions wrote it: no file checks, so promotion falls back to content hashes
    (the approval binds hashes and code: it stays valid)."""
    for record in manifest.tables[DAILY].values():
        record.file_checks = {}
    return manifest


def test_a_partition_staged_before_checksums_were_kept_is_verified_by_its_rows(lake: Lake, spark) -> None:
    lake.catalog.update_batch(BATCH, _forget_file_checks)
    key, path = _one_file(lake)
    rewrite_rows(path, lambda table: table.slice(1))  # a row gone: same schema, other content
    message = _refused(lake, spark)
    assert f"{DAILY} 2025-01-02 (recorded" in message and "files now hold" in message


def test_the_object_store_checksum_follows_the_bytes(store: ObjectStore) -> None:
    store.put("staging/t/b/a/part.parquet", b"first")
    first = store.checksum("staging/t/b/a/part.parquet")
    store.put("staging/t/b/a/part.parquet", b"first")
    assert store.checksum("staging/t/b/a/part.parquet") == first
    store.put("staging/t/b/a/part.parquet", b"other")
    assert store.checksum("staging/t/b/a/part.parquet") != first


def test_an_unreadable_file_without_checksums_is_named_with_what_the_reader_says(lake: Lake, spark) -> None:
    lake.catalog.update_batch(BATCH, _forget_file_checks)
    key, path = _one_file(lake)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (path.parent / f".{path.name}.crc").unlink(missing_ok=True)

    message = _refused(lake, spark)

    # The reader's own words (a local session's Py4J error only names the JVM call on its first line).
    reason = message.split(f"{DAILY} 2025-01-02 (its files cannot be read: ", 1)[1].split(")")[0]
    assert "An error occurred while calling" not in reason
    assert re.search(r"Exception|Error", reason) and len(reason) > 20
