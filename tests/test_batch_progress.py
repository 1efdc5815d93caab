"""What `backfills batches` and the approval sensor say about a batch whose backfill is still running: per
table the partitions staged of those targeted, and what the others wait for (upstream partitions of the
same batch, named with their days, or their run). Worked out by hand from the 7-day window of
customer_txn_7d over customer_daily_txn."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from test_catalog import record

from backfills.assets.batch_progress import table_progress, waiting_summary
from backfills.assets.registry import FEATURES_BY_NAME
from backfills.orchestration.approval_channels import LocalChannel
from backfills.orchestration.approval_flow import ApprovalFlow
from backfills.orchestration.approval_message import Links
from backfills.orchestration.approval_policy import ApprovalRules
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import LaunchPlan
from backfills.resources.storage import LocalObjectStore

DAILY, WEEKLY = "customer_daily_txn", "customer_txn_7d"
BATCH = "b-progress"


def _days(first: int, last: int) -> list[str]:
    return [f"2025-01-{day:02d}" for day in range(first, last + 1)]


@pytest.fixture
def catalog(tmp_path) -> ReleaseCatalog:
    catalog = ReleaseCatalog(LocalObjectStore(tmp_path))
    plan = LaunchPlan(
        planned_at=datetime.now(UTC) - timedelta(minutes=1),
        release_id=None,
        targets={DAILY: _days(1, 10), WEEKLY: _days(1, 10)},
        planned_out={WEEKLY: {"2025-01-01": "needs customer_daily_txn 2024-12-26..2024-12-31"}},
    )
    catalog.record_plan(BATCH, plan, requester="U0ALICE")
    return catalog


def test_a_running_batch_says_which_partitions_wait_for_upstream_and_which_for_their_run(catalog):
    records = [record(DAILY, day, BATCH) for day in _days(1, 5)]
    catalog.record_partitions(BATCH, records, run_id="run-1")
    batch = catalog.get_batch(BATCH)
    daily, weekly = table_progress(batch, FEATURES_BY_NAME)
    assert (daily.staged, daily.targeted, daily.planned_out) == (5, 10, 0)
    assert daily.waiting == (
        "5 wait for their run (the backfill daemon launches runs whose upstream is staged; "
        "it looks every 30s)"
    )
    # Weekly 01 is planned out; 02..05 read only staged daily days; 06..10 read daily days not staged yet.
    assert (weekly.staged, weekly.targeted, weekly.planned_out) == (0, 10, 1)
    assert weekly.waiting.startswith(
        "5 wait for upstream partitions of this batch not staged yet "
        "(customer_daily_txn 2025-01-06..2025-01-10), 4 wait for their run"
    )
    assert daily.describe().startswith(
        "customer_daily_txn       staged 5 of 10 targeted, checks pending on 5; "
    )
    assert waiting_summary(batch, FEATURES_BY_NAME).startswith(f"{DAILY}: 5 wait for their run")


def test_a_complete_batch_waits_for_nothing(catalog):
    records = [record(DAILY, day, BATCH) for day in _days(1, 10)]
    records += [record(WEEKLY, day, BATCH) for day in _days(2, 10)]
    catalog.record_partitions(BATCH, records, run_id="run-1")
    batch = catalog.mark_complete(BATCH, catalog.get_batch(BATCH).partitions_by_table())
    assert [item.waiting for item in table_progress(batch, FEATURES_BY_NAME)] == [None, None]
    assert [item.describe() for item in table_progress(batch, FEATURES_BY_NAME)] == [
        "customer_daily_txn       staged 10 of 10 targeted, checks pending on 10",
        "customer_txn_7d          staged 9 of 10 targeted, 1 planned out (not computable), "
        "checks pending on 9",
    ]
    assert waiting_summary(batch, FEATURES_BY_NAME) == ""


def test_the_approval_sensor_says_what_a_running_batch_waits_for(catalog):
    catalog.record_partitions(BATCH, [record(DAILY, day, BATCH) for day in _days(1, 10)], run_id="run-1")
    flow = ApprovalFlow(
        catalog, LocalChannel(lambda text: None), ApprovalRules(frozenset({"U0BOB"})), Links("http://d.test")
    )
    report = flow.run(lambda batch: None)  # the backfill has not finished
    assert report.notes == [
        f"batch {BATCH}: its backfill is still running; {WEEKLY}: 9 wait for their run (the backfill daemon "
        "launches runs whose upstream is staged; it looks every 30s)"
    ]
