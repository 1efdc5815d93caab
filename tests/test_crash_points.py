"""The crash-point matrix: a process killed (SIGKILL, its Spark JVM too) at each named point of the flow
leaves no torn state, a plain retry completes with the same content hashes as a clean run, nothing of the
killed attempt is referenced, and `backfills gc` removes what it left behind, once no run can be writing.

Points: mid partition write; after the files, before the manifest; after the manifest, before the checks;
mid checks; after the release file, before the CURRENT swap; mid Slack post.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from conftest import Lake, make_lake
from slack_api import FakeSlack, KillClient

from backfills.assets.reader import FeatureReader
from backfills.errors import BatchNotFoundError
from backfills.orchestration.approval_channels import LocalChannel, SlackChannel
from backfills.orchestration.approval_flow import ApprovalFlow
from backfills.orchestration.approval_message import Links
from backfills.orchestration.approval_policy import ApprovalRules
from backfills.orchestration.cli import main
from backfills.orchestration.promotion import promote
from backfills.resources.approvals_store import ApprovalStore
from backfills.resources.catalog_models import AuditEvent, BatchManifest, CurrentPointer, Release, VoteRecord
from backfills.resources.slack import SlackClient
from backfills.resources.staging_gc import find_orphans

pytestmark = pytest.mark.crash

CHILD = Path(__file__).with_name("crash_child.py")
DAILY, BATCH = "customer_daily_txn", "crashed"
FIRST, LAST = date(2025, 1, 1), date(2025, 1, 4)
REQUESTER, APPROVER, CHANNEL = "U0ALICE", "U0BOB", "C0APPROVALS"
RULES = ApprovalRules(approvers=frozenset({APPROVER}))
STAGING_POINTS = [
    "mid_partition_write",
    "after_files_before_manifest",
    "after_manifest_before_checks",
    "mid_checks",
]


def _copy(template: Path, tmp_path: Path) -> Lake:
    root = tmp_path / "lake"
    shutil.copytree(template, root)
    return make_lake(root)


@pytest.fixture(scope="module")
def in_production(tmp_path_factory, generated_landing_zone: Path, spark) -> Path:
    """Production serves the batch `clean` (customer_daily_txn, Jan 1..4): what a crash must not disturb."""
    root = tmp_path_factory.mktemp("crash") / "lake"
    shutil.copytree(generated_landing_zone / "raw", root / "raw")
    lake = make_lake(root)
    lake.stage(spark, DAILY, FIRST, LAST, "clean")
    lake.catalog.promote("clean", actor="setup")
    return root


@pytest.fixture(scope="module")
def staged(in_production: Path, tmp_path_factory, spark) -> Path:
    """Besides production, the batch `crashed` staged, checked and complete (its approval not asked yet)."""
    root = tmp_path_factory.mktemp("staged") / "lake"
    shutil.copytree(in_production, root)
    lake = make_lake(root)
    lake.stage(spark, DAILY, FIRST, LAST, BATCH, requester=REQUESTER)
    lake.catalog.mark_complete(BATCH, {DAILY: [f"2025-01-0{n}" for n in range(1, 5)]})
    return root


@pytest.fixture(scope="module")
def approved(staged: Path, tmp_path_factory) -> Path:
    """The batch `crashed` approved through the local channel, its promotion due."""
    root = tmp_path_factory.mktemp("approved") / "lake"
    shutil.copytree(staged, root)
    lake = make_lake(root)
    flow = ApprovalFlow(lake.catalog, LocalChannel(lambda text: None), RULES, Links("http://dagster.test"))
    flow.process(BATCH, lambda manifest: None)
    request = ApprovalStore(lake.store).latest(BATCH)
    vote = VoteRecord(user_id=APPROVER, decision="approve", at=datetime.now(UTC), source="cli")
    ApprovalStore(lake.store).update(
        BATCH, request.request_id, lambda current: current.model_copy(update={"cli_votes": [vote]})
    )
    assert flow.process(BATCH, lambda manifest: None) is not None  # approved: promotion due
    return root


def _start(point: str, lake: Lake, *slack: str) -> tuple[subprocess.Popen[bytes], Path]:
    """Start the child that runs the flow to `point` on `lake`; its output goes to a log beside the lake."""
    log = lake.root.parent / f"{point}.log"
    with open(log, "wb") as output:
        child = subprocess.Popen(
            [sys.executable, str(CHILD), point, str(lake.root), *slack],
            start_new_session=True,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    return child, log


def _assert_killed(point: str, child: subprocess.Popen[bytes], log: Path) -> None:
    """The child must die by SIGKILL at its point, not finish or fail."""
    code = child.wait(timeout=600)
    assert code == -signal.SIGKILL, f"{point}: the child exited with {code}:\n{log.read_text()[-3000:]}"


def _crash(point: str, lake: Lake, *slack: str, before_kill=None) -> None:
    """Run the child to its crash point and wait for it to die there."""
    child, log = _start(point, lake, *slack)
    if before_kill is not None:
        before_kill(child.pid)
    _assert_killed(point, child, log)


@pytest.fixture(scope="module")
def killed_while_staging(
    in_production: Path, tmp_path_factory
) -> dict[str, tuple[Path, subprocess.Popen[bytes], Path]]:
    """For each staging crash point, a copy of `in_production` with the child run meant to die there (the
    lake, the child, its log). The four children run at the same time: each starts a JVM of its own, which
    is most of its time, so the matrix waits for the slowest of them rather than for their sum."""
    children = {}
    for point in STAGING_POINTS:
        lake = _copy(in_production, tmp_path_factory.mktemp(point))
        children[point] = (lake.root, *_start(point, lake))
    for _, child, _ in children.values():
        child.wait(timeout=600)
    return children


def _assert_not_torn(lake: Lake) -> None:
    """Every catalog object parses; CURRENT names a stored release; every file anything references exists;
    production reads whole."""
    store = lake.store
    for key in store.list("catalog/batches"):
        BatchManifest.model_validate_json(store.get(key))
    releases = [Release.model_validate_json(store.get(key)) for key in store.list("catalog/releases")]
    for key in store.list("catalog/audit"):
        AuditEvent.model_validate_json(store.get(key))
    current = CurrentPointer.model_validate_json(store.get("catalog/CURRENT")).release_id
    assert current in {release.release_id for release in releases}
    referenced = [
        key
        for b in lake.catalog.list_batches()
        for p in b.tables.values()
        for r in p.values()
        for key in r.files
    ]
    for release in releases:
        snapshot = lake.catalog.snapshot(release)
        referenced += [key for parts in snapshot.values() for part in parts.values() for key in part.files]
    assert all(store.exists(key) for key in referenced)


def _production_hashes(lake: Lake) -> dict[str, str]:
    served = lake.catalog.served(lake.catalog.current_release(), DAILY)
    return {day: part.content_hash for day, part in served.items()}


def _batch_hashes(lake: Lake, batch: str) -> dict[str, str]:
    return {day: r.content_hash for day, r in lake.catalog.get_batch(batch).tables[DAILY].items()}


def _attempt_folders(lake: Lake) -> set[str]:
    folder = lake.root / "staging" / DAILY / BATCH
    return {f"staging/{DAILY}/{BATCH}/{path.name}" for path in folder.iterdir()} if folder.exists() else set()


@pytest.mark.parametrize("point", STAGING_POINTS)
def test_a_run_killed_while_staging_leaves_production_whole_and_a_retry_stages_the_clean_result(
    point: str,
    in_production: Path,
    killed_while_staging: dict[str, tuple[Path, subprocess.Popen[bytes], Path]],
    spark,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:
    root, child, log = killed_while_staging[point]
    _assert_killed(point, child, log)
    production = _production_hashes(make_lake(in_production))
    lake = make_lake(root)

    _assert_not_torn(lake)
    assert _production_hashes(lake) == production
    rows = FeatureReader(spark, lake.store).read(DAILY, FIRST, LAST).count()
    served = lake.catalog.served(lake.catalog.current_release(), DAILY)
    assert rows == sum(part.row_count for part in served.values())
    killed = _attempt_folders(lake)
    assert killed, f"{point}: the killed run wrote nothing"
    if point in ("mid_partition_write", "after_files_before_manifest"):
        with pytest.raises(BatchNotFoundError):
            lake.catalog.get_batch(BATCH)  # nothing of it was ever recorded
    else:
        # Recorded but never checked: the batch cannot be sent for approval or promoted.
        assert lake.catalog.get_batch(BATCH).state == "staging"

    lake.stage(spark, DAILY, FIRST, LAST, BATCH)  # the plain retry
    manifest = lake.catalog.get_batch(BATCH)
    assert manifest.state == "checked"
    assert _batch_hashes(lake, BATCH) == _batch_hashes(lake, "clean")
    assert not {record.base for record in manifest.tables[DAILY].values()} & killed
    _assert_not_torn(lake)

    # What the killed attempt left is found, kept while a run could still be writing, removed after.
    orphans = {orphan.prefix: orphan for orphan in find_orphans(lake.catalog, now=datetime.now(UTC))}
    assert set(orphans) == killed and not any(orphan.removable for orphan in orphans.values())
    monkeypatch.setenv("BACKFILLS_STORAGE_ROOT", str(lake.root))
    assert main(["gc"]) == 0
    listed = capsys.readouterr().out
    assert all(f"keeping      {prefix}/" in listed for prefix in killed) and "0 attempt folders" in listed
    assert all((lake.root / prefix).exists() for prefix in killed)  # a dry run removes nothing
    assert main(["gc", "--older-than", "0", "--apply"]) == 0
    assert f"removed {len(killed)} attempt folders" in capsys.readouterr().out
    assert not any((lake.root / prefix).exists() for prefix in killed)
    assert find_orphans(lake.catalog, now=datetime.now(UTC)) == []
    staged_rows = FeatureReader(spark, lake.store).read_batch(DAILY, BATCH).count()
    assert staged_rows == sum(record.row_count for record in manifest.tables[DAILY].values())


def test_a_promotion_killed_between_the_release_file_and_the_swap_leaves_the_old_release_current(
    approved: Path, tmp_path: Path, spark
) -> None:
    lake = _copy(approved, tmp_path)
    before = lake.catalog.current_release()
    _crash("after_release_before_swap", lake)

    _assert_not_torn(lake)
    assert lake.catalog.current_release_id() == before.release_id  # readers still on the old release
    [written] = [r for r in lake.catalog.list_releases() if r.release_id != before.release_id]
    assert written.batch_id == BATCH  # the killed promotion's release exists, never made current

    change = promote(lake.catalog, RULES, spark, BATCH, requested_by="retry")  # the plain retry
    current = lake.catalog.current_release()
    assert current.release_id == change.release.release_id != written.release_id
    assert current.parent_id == before.release_id
    assert written.release_id not in {release.release_id for release in lake.catalog.release_history()}
    assert _production_hashes(lake) == _batch_hashes(lake, BATCH) == _batch_hashes(lake, "clean")
    assert lake.catalog.get_batch(BATCH).state == "promoted"
    _assert_not_torn(lake)


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        server.add_channel(CHANNEL, "feature-approvals")
        server.add_user(REQUESTER, "alice")
        server.add_user(APPROVER, "bob")
        yield server


def test_a_request_killed_mid_slack_post_is_posted_once_and_found_by_the_retry(
    staged: Path, tmp_path: Path, slack: FakeSlack
) -> None:
    lake = _copy(staged, tmp_path)
    # Slack stores the message, then the poster dies before it hears back.
    _crash(
        "mid_slack_post",
        lake,
        slack.base_url,
        slack.token,
        before_kill=lambda pid: slack.inject("chat.postMessage", KillClient(pid)),
    )
    [posted] = [m for m in slack.messages(CHANNEL) if m.get("metadata")]
    request = ApprovalStore(lake.store).latest(BATCH)
    assert request.status == "posting" and request.message_ts is None  # the post was never recorded

    later = datetime.now(UTC) + timedelta(minutes=3)  # past the dead poster's lease
    flow = ApprovalFlow(
        lake.catalog,
        SlackChannel(SlackClient(slack.token, base_url=slack.base_url, timeout=5), CHANNEL),
        RULES,
        Links("http://dagster.test"),
        now=lambda: later,
    )
    flow.process(BATCH, lambda manifest: None)
    request = ApprovalStore(lake.store).latest(BATCH)
    assert request.status == "pending" and request.message_ts == posted["ts"]
    assert len([m for m in slack.messages(CHANNEL) if m.get("metadata")]) == 1  # never posted twice
    _assert_not_torn(lake)
