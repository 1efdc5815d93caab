"""Launches from the Materialize dialog, through the real webserver and daemon, with exactly the payload the
dialog sends (`launchPartitionBackfill` with `assetSelection` + `partitionNames`, or `allPartitions`):
Dagster widens each launch downstream, and every launch either completes with a checked batch or is
refused before anything is computed, with what to select instead.

The partitions end at the last landed day (BACKFILLS_PARTITIONS_END, as `make dev` sets it), so the dialog
offers only days with data. First, over an empty production and at the same time:
(b) a partial first load: the four tables over the last ten days;
(c) all partitions of the four tables;
(d) customer_txn_7d alone over the last ten days, whose upstream nobody provides.
Then (c) is promoted, and (a) the four tables over the last ten days runs over that production.

Slow by nature (real services, several backfill daemon iterations per backfill; the tests' daemon looks
every 5 s instead of Dagster's 30 s, see tests/dagster_services.py): deselect with `-m "not end_to_end"`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
from conftest import make_lake
from dagster_services import CHANNEL, REQUESTER, DagsterServices, WaitTimeout, governed_services, iter_days
from operator_flow import approval_requests, wait_for
from slack_api import FakeSlack

from backfills.assets.check_results import GATE_CHECK
from backfills.assets.factory import REQUESTER_TAG, staging_key
from backfills.assets.generator import write_landing_zone
from backfills.assets.registry import FEATURES, feature_spec
from backfills.checks.registry import check_names
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import BatchManifest
from backfills.resources.connect_server import ConnectServer

pytestmark = pytest.mark.end_to_end

FIRST_DAY, LAST_DAY = "2025-01-01", "2025-01-24"  # the landed days, and the partitions
LAST_TEN = list(iter_days("2025-01-15", LAST_DAY))
ALL_DAYS = list(iter_days(FIRST_DAY, LAST_DAY))
TABLES = [spec.name for spec in FEATURES]
DAILY, WEEKLY, MONTHLY, PROFILE = TABLES
BACKFILL_TIMEOUT_SECONDS = 900


@dataclass
class Launches:
    services: DagsterServices
    slack: FakeSlack
    storage_root: Path
    catalog: ReleaseCatalog
    status: dict[str, str]  # case -> final backfill status
    ids: dict[str, str]  # case -> backfill ID (= batch ID)

    def batch(self, case: str) -> BatchManifest:
        return self.catalog.get_batch(self.ids[case])


def _wait(services: DagsterServices, backfill_ids: dict[str, str]) -> dict[str, str]:
    try:
        return {
            case: services.client.wait_for_backfill(backfill_id, BACKFILL_TIMEOUT_SECONDS)
            for case, backfill_id in backfill_ids.items()
        }
    except WaitTimeout as error:
        pytest.fail(f"{error}\n{services.log_tails()}", pytrace=False)


@pytest.fixture(scope="module")
def launches(tmp_path_factory: pytest.TempPathFactory, connect_server: ConnectServer) -> Iterator[Launches]:
    base = tmp_path_factory.mktemp("dialog")
    storage_root: Path = base / "storage"
    lake = make_lake(storage_root)
    write_landing_zone(
        lake.store, start=date.fromisoformat(FIRST_DAY), days=len(ALL_DAYS), customers=40, rows_per_day=200
    )
    # The session's Spark Connect server (tests/operator_flow.py): warm when the operator's flow ran first.
    with governed_services(
        base, storage_root, partitions_start=FIRST_DAY, partitions_end=LAST_DAY, connect=connect_server
    ) as (services, slack):
        client, tags = services.client, {REQUESTER_TAG: REQUESTER}
        four = [staging_key(table).path for table in TABLES]
        ids = {
            "b": client.launch_from_dialog(four, LAST_TEN, tags),
            "c": client.launch_from_dialog(four, None, tags),
            "d": client.launch_from_dialog([staging_key(WEEKLY).path], LAST_TEN, tags),
        }
        status = _wait(services, ids)
        if status["c"] == "COMPLETED_SUCCESS":
            # (b)'s request first: once (c) serves its days, the flow would close (b) as superseded.
            wait_for("the request of (b)", lambda: _requests(slack, ids["b"]), timeout=120)
            first_load = lake.catalog.get_batch(ids["c"])
            lake.catalog.mark_complete(ids["c"], first_load.partitions_by_table())
            lake.catalog.promote(ids["c"], actor="first-load", reason="production for launch (a)")
            ids["a"] = client.launch_from_dialog(four, LAST_TEN, tags)
            status |= _wait(services, {"a": ids["a"]})
        yield Launches(services, slack, storage_root, lake.catalog, status, ids)


def _staged(batch: BatchManifest) -> dict[str, list[str]]:
    return {table: days for table, days in batch.partitions_by_table().items() if days}


def _messages(slack: FakeSlack, batch_id: str) -> list[dict]:
    return [m for m in slack.messages(CHANNEL) if batch_id in m["text"]]


def _requests(slack: FakeSlack, batch_id: str) -> list[dict]:
    return [m for m in approval_requests(slack) if batch_id in m["text"]]


def _batches(launches: Launches, batch_id: str) -> str:
    """What `backfills batches BATCH` prints."""
    listing = subprocess.run(
        [sys.executable, "-m", "backfills.orchestration.cli", "batches", "--batch", batch_id],
        capture_output=True,
        text=True,
        env=dict(os.environ, BACKFILLS_STORAGE_ROOT=str(launches.storage_root)),
        timeout=120,
        check=True,
    )
    return listing.stdout


def test_a_the_last_ten_days_over_production_complete_with_every_partition_recomputed(launches: Launches):
    assert launches.status["a"] == "COMPLETED_SUCCESS"
    batch = launches.batch("a")
    assert batch.state == "checked" and batch.missing_partitions() == {}
    assert batch.plan is not None and batch.plan.planned_out == {} and batch.plan.refusal is None
    assert _staged(batch) == {table: LAST_TEN for table in TABLES}


def test_each_run_logs_its_progress_per_table(launches: Launches):
    services = launches.services
    weekly = ("staging", "customer_txn_7d")
    [weekly_run] = [
        run for run in services.client.runs(backfill_id=launches.ids["a"]) if weekly in run.asset_keys
    ]
    messages = [entry.user_message for entry in services.instance.all_logs(weekly_run.run_id)]
    assert any(
        re.search(r"customer_txn_7d: wrote [\d,]+ rows in 10 partitions .* rows/s$", m) for m in messages
    )
    assert any(m.startswith("customer_txn_7d: check value_ranges running (") for m in messages)
    assert any(re.match(r"customer_txn_7d: check value_ranges passed in [\d.]+s$", m) for m in messages)
    assert any(
        m.startswith("customer_txn_7d: 10 of 10 targeted partitions staged in batch") for m in messages
    )


def test_b_a_partial_first_load_completes_and_its_request_names_what_was_not_recomputed(launches: Launches):
    assert launches.status["b"] == "COMPLETED_SUCCESS"
    batch = launches.batch("b")
    assert batch.state == "checked" and batch.missing_partitions() == {}
    # Windows are whole only from the 7th selected day; no 30-day window fits in ten days.
    assert _staged(batch) == {DAILY: LAST_TEN, WEEKLY: LAST_TEN[6:]}
    planned_out = batch.plan.planned_out
    assert sorted(planned_out[WEEKLY]) == LAST_TEN[:6]
    assert sorted(planned_out[MONTHLY]) == LAST_TEN and sorted(planned_out[PROFILE]) == LAST_TEN
    assert "needs customer_daily_txn 2025-01-09..2025-01-14" in planned_out[WEEKLY]["2025-01-15"]
    [request] = wait_for("the approval request", lambda: _requests(launches.slack, batch.batch_id))
    assert "customer_txn_30d 2025-01-15..2025-01-24 NOT recomputed (10 partitions" in request["text"]
    assert "customer_txn_7d 2025-01-15..2025-01-20 NOT recomputed (6 partitions" in request["text"]
    listing = _batches(launches, batch.batch_id)
    assert re.search(r"customer_txn_7d +staged 4 of 10 targeted, 6 planned out \(not computable\)\n", listing)
    assert re.search(r"customer_daily_txn +staged 10 of 10 targeted\n", listing)


def test_c_all_partitions_complete_with_nothing_planned_out(launches: Launches):
    assert launches.status["c"] == "COMPLETED_SUCCESS"
    batch = launches.batch("c")
    assert batch.plan.planned_out == {} and batch.missing_partitions() == {}
    assert _staged(batch) == {table: ALL_DAYS for table in TABLES}


def _executions(launches: Launches, case: str, table: str, check: str) -> list:
    runs = {run.run_id for run in launches.services.client.runs(backfill_id=launches.ids[case])}
    executions = launches.services.client.asset_check_executions(staging_key(table).path, check, limit=500)
    return sorted((item for item in executions if item.run_id in runs), key=lambda item: item.partition)


def test_every_partition_of_a_range_run_has_its_own_gate_result_with_numbers(launches: Launches):
    # One range run per table in (c): each of its 24 partitions has its own succeeded result, none SKIPPED,
    # saying that every check of the gate passed there.
    for table in (DAILY, WEEKLY):
        results = _executions(launches, "c", table, GATE_CHECK)
        assert [item.partition for item in results] == ALL_DAYS
        assert {item.status for item in results} == {"SUCCEEDED"}
        checks = check_names(feature_spec(table))
        for item in results:
            assert item.metadata["partition"] == item.partition
            assert (item.metadata["checks_passed"], item.metadata["checks_failed"]) == (len(checks), 0)
            assert all(f"| {name} | passed |" in item.metadata["checks"] for name in checks)
        # The partition's own numbers, which the Plots panel draws: its rows and content hash.
        staged = launches.batch("c").tables[table]
        assert [item.metadata["rows"] for item in results] == [staged[day].row_count for day in ALL_DAYS]
        assert [item.metadata["content_hash"] for item in results] == [
            staged[day].content_hash for day in ALL_DAYS
        ]


def test_planned_out_partitions_show_a_warning_that_they_were_not_checked(launches: Launches):
    results = _executions(launches, "b", MONTHLY, GATE_CHECK)
    assert [item.partition for item in results] == LAST_TEN
    assert {(item.status, item.severity) for item in results} == {("SUCCEEDED", "WARN")}
    assert all(item.description.startswith("not checked: planned out of batch") for item in results)


def test_d_a_downstream_table_alone_is_refused_before_anything_is_computed(launches: Launches):
    assert launches.status["d"] == "CANCELED"
    batch = launches.batch("d")
    assert batch.state == "blocked" and batch.tables == {}
    refusal = batch.plan.refusal
    assert "customer_txn_7d 2025-01-15..2025-01-24 cannot be computed" in refusal
    assert "add customer_daily_txn from 2025-01-09 to the selection" in refusal
    runs = launches.services.client.runs(backfill_id=launches.ids["d"])
    assert runs and all(run.status in ("FAILURE", "CANCELED") for run in runs)
    failures = [message for run in runs for message in launches.services.run_failures(run.run_id)]
    assert any("cannot be computed" in message for message in failures), failures
    assert not (launches.storage_root / "staging" / WEEKLY / launches.ids["d"]).exists()
    listing = _batches(launches, launches.ids["d"])
    assert "REFUSED  This launch is refused before computing anything" in listing
    notice = wait_for("the blocked notice", lambda: _messages(launches.slack, launches.ids["d"]))
    assert "is blocked" in notice[0]["text"] and "cannot be computed" in notice[0]["text"]
