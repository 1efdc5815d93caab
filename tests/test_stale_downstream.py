"""Promoting an upstream fix without its downstream: the approval request names the production partitions it
would leave stale, promotion refuses it unless forced with a reason, and the audit trail shows the stale
partitions until a batch recomputes them.

Production is `jan` (every table, Jan 1..4, from tests/conftest.py's staged template). Then one transaction
of Jan 2 turns out never to have happened (its landing file is corrected), and two batches recompute it:
`late`, customer_daily_txn for Jan 2 alone, and the later `late-full`, the same day with its blast radius
(the 7-day, 30-day and profile partitions production serves whose windows read Jan 2: Jan 2..4).
"""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Lake, make_lake
from test_canary import RULES, _approve
from test_catalog import stage

from backfills.assets.registry import DAILY, MONTHLY, PROFILE, WEEKLY
from backfills.errors import StaleDownstreamError
from backfills.orchestration.audit import production_now
from backfills.orchestration.cli import main
from backfills.orchestration.promotion import promote
from backfills.orchestration.stale_downstream import stale_downstream
from backfills.resources.approvals_store import ApprovalStore
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import BatchManifest
from backfills.resources.storage import LocalObjectStore

ALICE = "U0ALICE"
JAN_2, JAN_4 = date(2025, 1, 2), date(2025, 1, 4)
STALE_DAYS = ["2025-01-02", "2025-01-03", "2025-01-04"]
NOW = datetime.now(UTC)
REASON = "the daily fix is urgent; the windows follow in late-full"


def _drop_a_transaction_of(lake: Lake, day: date) -> None:
    """Correct the day's landing file: one transaction of that day never happened (the file also holds
    late deliveries of earlier days, left as they are)."""
    [path] = (lake.root / "raw" / "transactions" / f"date={day.isoformat()}").glob("*.parquet")
    table = pq.read_table(path)
    first = [moment.date() for moment in table["event_ts"].to_pylist()].index(day)
    pq.write_table(pa.concat_tables([table.slice(0, first), table.slice(first + 1)]), path)


@pytest.fixture(scope="module")
def late_template(staged_template: Path, tmp_path_factory: pytest.TempPathFactory, spark) -> Path:
    root = tmp_path_factory.mktemp("stale") / "lake"
    shutil.copytree(staged_template, root)
    lake = make_lake(root)
    lake.catalog.promote("jan", actor="initial-load", reason="production before the test")
    _drop_a_transaction_of(lake, JAN_2)
    lake.stage(spark, DAILY, JAN_2, JAN_2, "late", requester=ALICE)
    lake.catalog.mark_complete("late", {DAILY: [JAN_2.isoformat()]})
    lake.stage(spark, DAILY, JAN_2, JAN_2, "late-full", requester=ALICE)
    for table in (WEEKLY, MONTHLY, PROFILE):
        lake.stage(spark, table, JAN_2, JAN_4, "late-full", requester=ALICE)
    lake.catalog.mark_complete("late-full", lake.catalog.get_batch("late-full").partitions_by_table())
    for batch in ("late", "late-full"):
        _approve(lake, batch)
    return root


@pytest.fixture
def lake(late_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lake:
    root = tmp_path / "lake"
    shutil.copytree(late_template, root)
    monkeypatch.setenv("BACKFILLS_STORAGE_ROOT", str(root))
    monkeypatch.setenv("BACKFILLS_PARTITIONS_START", "2025-01-01")
    return make_lake(root)


def test_a_changed_day_leaves_stale_exactly_the_production_windows_that_read_it(tmp_path: Path) -> None:
    catalog = ReleaseCatalog(LocalObjectStore(tmp_path))
    days = [f"2025-01-{day:02d}" for day in range(1, 21)]
    assert (
        stale_downstream(catalog, BatchManifest(batch_id="fix", created_at=NOW, updated_at=NOW), None) == {}
    )
    stage(catalog, "load", {DAILY: days, WEEKLY: days, MONTHLY: days, PROFILE: days})
    catalog.promote("load", actor="ops")
    stage(catalog, "fix", {DAILY: ["2025-01-05"]}, attempt="a2")

    stale = stale_downstream(catalog, catalog.get_batch("fix"), catalog.current_release())

    assert (
        {table: (entry.days, entry.upstream) for table, entry in stale.items()}
        == {
            WEEKLY: (days[4:11], [DAILY]),  # the 7-day windows ending Jan 5..11 read Jan 5
            MONTHLY: (days[4:], [DAILY]),  # the 30-day windows from Jan 5 on, as far as production serves
            PROFILE: (days[4:], [DAILY]),  # the profile reads both windows
        }
    )


def test_the_request_of_a_daily_fix_without_its_downstream_names_the_partitions_it_leaves_stale(
    lake: Lake,
) -> None:
    request = ApprovalStore(lake.store).latest("late")
    assert "Left stale: 9 production partitions of" in request.summary
    for table in (WEEKLY, MONTHLY, PROFILE):
        assert f"{table} 2025-01-02..2025-01-04 left STALE (3 production partitions computed from" in (
            request.summary
        )
    # The fix with its blast radius leaves nothing stale, and says nothing of it; nor does the template's
    # `fix`, which recomputes the daily rows of Jan 3..4 as production serves them (and Jan 5..6, which no
    # production window reads).
    assert "STALE" not in ApprovalStore(lake.store).latest("late-full").summary
    fix = lake.catalog.get_batch("fix")
    assert stale_downstream(lake.catalog, fix, lake.catalog.current_release()) == {}


def test_a_daily_fix_without_its_downstream_is_refused_naming_the_stale_partitions(lake: Lake, spark) -> None:
    production = lake.catalog.current_release_id()
    with pytest.raises(StaleDownstreamError) as refused:
        promote(lake.catalog, RULES, spark, "late", requested_by="ops")
    message = str(refused.value)
    for table in (WEEKLY, MONTHLY, PROFILE):
        assert f"{table} 2025-01-02..2025-01-04 (3 partitions" in message
    assert "--downstream" in message and "--force" in message and "Nothing was published" in message
    with pytest.raises(StaleDownstreamError, match="needs a reason"):
        promote(lake.catalog, RULES, spark, "late", requested_by="ops", force=True)
    assert lake.catalog.current_release_id() == production


def test_forced_stale_partitions_are_recorded_and_audited_until_a_batch_recomputes_them(
    lake: Lake, spark, capsys
) -> None:
    change = promote(lake.catalog, RULES, spark, "late", requested_by="ops", force=True, reason=REASON)
    forced = change.release
    assert forced.forced and forced.overrides == ["stale_downstream"] and forced.reason == REASON
    assert {table: entry.days for table, entry in forced.left_stale.items()} == dict.fromkeys(
        (WEEKLY, MONTHLY, PROFILE), STALE_DAYS
    )
    assert forced.left_stale[WEEKLY].upstream == [DAILY]
    assert forced.left_stale[PROFILE].upstream == [DAILY]  # through the stale 7-day and 30-day partitions
    assert [mark.since for mark in forced.stale[MONTHLY]] == [forced.release_id]

    now = production_now(lake.catalog, WEEKLY, "2025-01-03")
    assert f"STALE since release {forced.release_id} (batch late)" in now
    assert f"computed from {DAILY} rows production no longer serves" in now
    assert "STALE" not in production_now(lake.catalog, WEEKLY, "2025-01-01")  # its window ends before Jan 2
    assert main(["audit", WEEKLY, "--date", "2025-01-03"]) == 0
    audit = capsys.readouterr().out
    assert f"STALE since release {forced.release_id}" in audit
    assert "downstream_stale" in audit and f"forced: {REASON}" in audit
    assert main(["audit", MONTHLY]) == 0
    assert f"production serves 3 STALE partitions of {MONTHLY}: 2025-01-02..2025-01-04 (3 days) since " in (
        capsys.readouterr().out
    )
    assert main(["audit", DAILY, "--date", "2025-01-02"]) == 0
    assert f"FORCED: {REASON} (overrides: stale_downstream)" in capsys.readouterr().out

    # The fix with its blast radius recomputes them: promoted without force, nothing is stale any more.
    full = promote(lake.catalog, RULES, spark, "late-full", requested_by="ops").release
    assert not full.forced and full.stale == {} and full.left_stale == {}
    assert "STALE" not in production_now(lake.catalog, WEEKLY, "2025-01-03")
    assert main(["audit", PROFILE, "--date", "2025-01-04"]) == 0
    audit = capsys.readouterr().out
    assert "STALE since" not in audit.splitlines()[0]
    assert f"no longer stale: {PROFILE} 2025-01-02..2025-01-04 (3 days), {MONTHLY}" in audit
