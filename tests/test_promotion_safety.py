"""Promotion refuses what it must refuse, and production never moves when it does (I6, I8).

The stories: staged files changed after approval (a valid Parquet file with one value changed, one
emptied, one cut short, one deleted); an approval that no longer holds under the rules in force at
promotion (approver off the allowlist, quorum raised) or that was given for other content; a batch
recomputed while its request was open; incomplete, blocked and stale batches; a promotion that crashed
after its swap; approvers from a Slack user group; rollback that needs approval, through the job and the
command line.

Batches are written here without the quality gate (their check verdicts are recorded as passed) so that
these tests stay fast: `tests/mutants.py` runs them once per mutant of the promotion code, against a Spark
Connect server it starts once (BACKFILLS_TEST_SPARK_REMOTE). The tests that refuse before any staged file
is read use `NO_SPARK`, which fails if promotion touches Spark at all.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Lake, built_once, make_lake
from dagster import AssetKey, DagsterInstance, build_sensor_context
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from pyspark.sql import SparkSession
from slack_api import FakeSlack

from backfills.assets.factory import BATCH_TAG
from backfills.assets.registry import feature_spec
from backfills.errors import (
    BatchNotApprovedError,
    CodeVersionChangedError,
    InvalidRequestError,
    StagedContentChangedError,
    StaleBatchError,
)
from backfills.orchestration.approval_channels import SlackChannel
from backfills.orchestration.approval_flow import ApprovalFlow
from backfills.orchestration.approval_message import Links
from backfills.orchestration.approval_policy import ApprovalRules
from backfills.orchestration.cli import main
from backfills.orchestration.definitions import build_definitions
from backfills.orchestration.promotion import (
    PublishedChange,
    _listed,
    production_facts,
    promote,
    verify_approval,
    verify_content,
)
from backfills.orchestration.sensors import APPROVAL_SENSOR, dagster_completion
from backfills.resources.approvals_store import ApprovalStore
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import (
    ApprovalFacts,
    Approver,
    CheckRecord,
    ColumnSchema,
    PartitionRecord,
    TableCode,
)
from backfills.resources.feature_store import (
    empty_partition_hash,
    partition_facts,
    read_partitions,
    write_partitions,
)
from backfills.resources.settings import load_settings
from backfills.resources.slack import SlackClient
from backfills.resources.spark import build_session

ALICE, BOB, CAROL, DAVE, ERIN, MALLORY = "U0ALICE", "U0BOB", "U0CAROL", "U0DAVE", "U0ERIN", "U0MALLORY"
CHANNEL = "C0APPROVALS"
APPROVER_GROUP = "S0RISKAPPROVERS"
TABLE = "customer_daily_txn"
SPEC = feature_spec(TABLE)
JAN = ["2025-01-01", "2025-01-02", "2025-01-03"]
FIX = ["2025-01-02", "2025-01-03", "2025-01-04"]
# The code version of a transformation that was deployed when a batch was staged, and is not any more.
OLD_CODE = "0123456789abcdef"
# Checks whose verdicts are recorded here (the gate itself is tested elsewhere).
GATE_CHECKS = ("value_ranges", "null_rates", "unique_keys", "row_consistency", "non_empty_partitions")


SPARK_REMOTE = os.environ.get("BACKFILLS_TEST_SPARK_REMOTE") or None


@pytest.fixture(scope="module")
def spark() -> SparkSession:
    """The run's local session, as conftest builds it (the same one: one JVM per process), or a session of
    the Spark Connect server named by BACKFILLS_TEST_SPARK_REMOTE."""
    return build_session(
        master="local[2]",
        remote=SPARK_REMOTE,
        driver_memory="2g",
        shuffle_partitions=2,
        bind_address="127.0.0.1",
    )


class _NoSpark:
    """Stands in for Spark where promotion must refuse before it reads a single staged file."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"promotion used Spark ({name}) although it should have refused before")


NO_SPARK = _NoSpark()


class Clock:
    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.at


# Batches recorded by hand


def _record(
    batch: str, day: str, content: str, files: list[str], rows: int, code: str = SPEC.code_version
) -> PartitionRecord:
    return PartitionRecord(
        table=TABLE,
        partition=day,
        batch_id=batch,
        run_id=f"run-{batch}",
        attempt_id="attempt",
        base=f"staging/{TABLE}/{batch}/attempt",
        files=files,
        row_count=rows,
        content_hash=content,
        columns=[ColumnSchema(name=column.name, type=column.type) for column in SPEC.columns],
        code_version=code,
        written_at=datetime.now(UTC),
    )


def _paper_record(
    batch: str, day: str, version: str = "v1", code: str = SPEC.code_version
) -> PartitionRecord:
    """A record whose files were never written: for refusals that must come before any file is read."""
    content = hashlib.sha256(f"{batch}|{day}|{version}".encode()).hexdigest()
    key = f"staging/{TABLE}/{batch}/attempt/feature_date={day}/part-{version}.parquet"
    return _record(batch, day, content, [key], rows=2, code=code)


def _record_checked(
    catalog: ReleaseCatalog,
    batch: str,
    records: list[PartitionRecord],
    *,
    requester: str | None = ALICE,
    failed: str | None = None,
) -> None:
    """Record the partitions and passing verdicts (or one failed blocking check), as a run would."""
    days = [record.partition for record in records]
    catalog.record_partitions(batch, records, run_id=f"run-{batch}", requester=requester)
    verdicts = [
        CheckRecord(
            table=TABLE,
            check=name,
            partitions=days,
            verdict="failed" if name == failed else "passed",
            blocking=True,
            summary=f"{name} failed on 1 row" if name == failed else "passed",
            run_id=f"run-{batch}",
            checked_at=datetime.now(UTC),
        )
        for name in GATE_CHECKS
    ]
    catalog.record_checks(
        batch, verdicts, table=TABLE, partitions=days, run_id=f"run-{batch}", requester=requester
    )


def _paper_batch(
    catalog: ReleaseCatalog, batch: str = "jan", days: list[str] = JAN, *, complete: bool = True
) -> None:
    _record_checked(catalog, batch, [_paper_record(batch, day) for day in days])
    if complete:
        catalog.mark_complete(batch, {TABLE: days})


def _rows(day: str, spend: str) -> list[tuple]:
    moment = date.fromisoformat(day)
    return [
        ("cus-1", moment, 3, 2, 1, Decimal(spend), Decimal("20.00"), 2),
        ("cus-2", moment, 1, 1, 0, Decimal("5.00"), Decimal("5.00"), 1),
    ]


def _staged_batch(
    spark, lake: Lake, batch: str, days: list[str], spend: str, code: str = SPEC.code_version
) -> None:
    """A checked, complete batch with real Parquet files, staged by `code` (by default the code deployed
    now); its last day is a quiet day without rows."""
    written_days = days[:-1]
    frame = spark.createDataFrame([row for day in written_days for row in _rows(day, spend)], SPEC.schema_ddl)
    base = f"staging/{TABLE}/{batch}/attempt"
    files = write_partitions(
        frame, lake.store, base, date_column="feature_date", sort_columns=["customer_id"]
    )
    written = read_partitions(
        spark, lake.store, files.values(), schema_ddl=SPEC.schema_ddl, columns=SPEC.column_names
    )
    facts = partition_facts(written, date_column="feature_date", schema_ddl=SPEC.schema_ddl)
    records = [
        _record(batch, day, facts[day].content_hash, list(files[day].files), facts[day].row_count, code)
        for day in written_days
    ]
    records.append(_record(batch, days[-1], empty_partition_hash(SPEC.schema_ddl), [], 0, code))
    _record_checked(lake.catalog, batch, records)
    lake.catalog.mark_complete(batch, {TABLE: days})


@pytest.fixture
def paper(tmp_path: Path) -> Lake:
    return make_lake(tmp_path / "paper")


@pytest.fixture
def catalog(paper: Lake) -> ReleaseCatalog:
    return paper.catalog


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        server.add_channel(CHANNEL, "feature-approvals")
        for user in (ALICE, BOB, CAROL, DAVE, ERIN, MALLORY):
            server.add_user(user, user[2:].lower())
        server.add_usergroup(APPROVER_GROUP, [DAVE, ERIN])
        yield server


def _flow(catalog: ReleaseCatalog, slack: FakeSlack, rules: ApprovalRules, clock: Clock | None = None):
    client = SlackClient(slack.token, base_url=slack.base_url, timeout=0.5, backoff=0.01)
    return ApprovalFlow(
        catalog, SlackChannel(client, CHANNEL), rules, Links("http://dagster.test"), now=clock or Clock()
    )


RULES = ApprovalRules(approvers=frozenset({BOB, CAROL}))


def _tick(flow: ApprovalFlow, batch: str = "jan", completion=lambda manifest: None):
    return flow.process(batch, completion)


def _request(catalog: ReleaseCatalog, batch: str = "jan"):
    return ApprovalStore(catalog.store).latest(batch)


def _approve(flow: ApprovalFlow, slack: FakeSlack, batch: str = "jan", *, by: str = BOB):
    """Ask for approval of `batch` and approve it with a reaction by `by`; the request the flow approved."""
    _tick(flow, batch)
    slack.react(CHANNEL, _request(flow.catalog, batch).message_ts, by, "white_check_mark")
    due = _tick(flow, batch)
    assert due is not None and _request(flow.catalog, batch).status == "approved"
    return _request(flow.catalog, batch)


def _nothing_published(catalog: ReleaseCatalog) -> bool:
    return catalog.current_release_id() is None and catalog.list_releases() == []


# Approvals re-judged at promotion: refused before any staged file is read


def test_promotion_refuses_an_approval_whose_approver_has_left_the_allowlist(
    catalog: ReleaseCatalog, slack: FakeSlack
) -> None:
    _paper_batch(catalog)
    request = _approve(_flow(catalog, slack, RULES), slack)
    batch = catalog.get_batch("jan")
    # Under the rules it was given, the approval holds.
    approved = verify_approval(ApprovalStore(catalog.store), RULES, batch, datetime.now(UTC))
    assert approved.request_id == request.request_id
    without_bob = ApprovalRules(approvers=frozenset({CAROL}))
    with pytest.raises(BatchNotApprovedError, match="not approved under the current rules") as refused:
        promote(catalog, without_bob, NO_SPARK, "jan", requested_by="ops")
    assert "not on the approvers allowlist" in str(refused.value)
    assert _nothing_published(catalog) and catalog.get_batch("jan").state == "approved"


def test_promotion_refuses_an_approval_short_of_a_quorum_raised_since(
    catalog: ReleaseCatalog, slack: FakeSlack
) -> None:
    _paper_batch(catalog)
    _approve(_flow(catalog, slack, RULES), slack)
    two_needed = ApprovalRules(approvers=frozenset({BOB, CAROL}), quorum=2)
    with pytest.raises(BatchNotApprovedError, match="1 of 2"):
        promote(catalog, two_needed, NO_SPARK, "jan", requested_by="ops")
    assert _nothing_published(catalog)


def test_promotion_refuses_an_approval_given_for_other_content(
    catalog: ReleaseCatalog, slack: FakeSlack
) -> None:
    """A partition recomputed behind the approval's back (a racing rerun): the fingerprint no longer matches,
    so the approval is not for this content, even though the new files would verify."""
    _paper_batch(catalog)
    request = _approve(_flow(catalog, slack, RULES), slack)

    def rerun(manifest):
        manifest.tables[TABLE]["2025-01-02"] = _paper_record("jan", "2025-01-02", version="v2")
        return manifest

    catalog.update_batch("jan", rerun)
    assert catalog.get_batch("jan").fingerprint() != request.fingerprint
    with pytest.raises(BatchNotApprovedError, match="content changed after approval request"):
        promote(catalog, RULES, NO_SPARK, "jan", requested_by="ops")
    assert _nothing_published(catalog)


@pytest.mark.parametrize(
    ("votes", "status", "refusal"),
    [([], "pending", "its approval request is pending"), ([CAROL], "rejected", "jan is rejected")],
)
def test_a_batch_whose_request_is_not_approved_is_never_promoted(
    catalog: ReleaseCatalog, slack: FakeSlack, votes: list[str], status: str, refusal: str
) -> None:
    _paper_batch(catalog)
    flow = _flow(catalog, slack, RULES)
    with pytest.raises(BatchNotApprovedError, match="no approval request"):
        promote(catalog, RULES, NO_SPARK, "jan", requested_by="ops")  # not even asked yet
    _tick(flow)
    for user in votes:
        slack.react(CHANNEL, _request(catalog).message_ts, user, "x")
    _tick(flow)
    assert _request(catalog).status == status
    with pytest.raises(BatchNotApprovedError, match=refusal):
        promote(catalog, RULES, NO_SPARK, "jan", requested_by="ops")
    assert _nothing_published(catalog)


@pytest.mark.parametrize("state", ["blocked", "staging"])
def test_a_blocked_or_unchecked_batch_is_never_promoted(catalog: ReleaseCatalog, state: str) -> None:
    records = [_paper_record("bad", day) for day in JAN]
    if state == "blocked":
        _record_checked(catalog, "bad", records, failed="row_consistency")
    else:  # staged, its checks never recorded (the run died after writing)
        catalog.record_partitions("bad", records, run_id="run-bad", requester=ALICE)
    catalog.mark_complete("bad", {TABLE: JAN})
    assert catalog.get_batch("bad").state == state
    with pytest.raises(BatchNotApprovedError, match=f"bad is {state}: only a batch whose every blocking"):
        promote(catalog, RULES, NO_SPARK, "bad", requested_by="ops")
    assert _nothing_published(catalog)


def test_an_approved_batch_found_incomplete_afterwards_is_not_promoted(
    catalog: ReleaseCatalog, slack: FakeSlack
) -> None:
    """The backfill's completion is recorded again with a day the batch never staged (a late failed run)."""
    _paper_batch(catalog)
    _approve(_flow(catalog, slack, RULES), slack)
    catalog.mark_complete("jan", {TABLE: [*JAN, "2025-01-04"]}, note="1 of 2 runs did not succeed (run-2)")
    with pytest.raises(BatchNotApprovedError, match="incomplete .*1 of 2 runs did not succeed"):
        promote(catalog, RULES, NO_SPARK, "jan", requested_by="ops")
    catalog.mark_complete("jan", {TABLE: [*JAN, "2025-01-04"]})
    with pytest.raises(BatchNotApprovedError, match="incomplete .*2025-01-04"):
        promote(catalog, RULES, NO_SPARK, "jan", requested_by="ops")
    assert _nothing_published(catalog)


def test_a_promotion_that_crashed_after_the_swap_is_finished_by_a_rerun_without_publishing_again(
    catalog: ReleaseCatalog, slack: FakeSlack
) -> None:
    _paper_batch(catalog)
    request = _approve(_flow(catalog, slack, RULES), slack)
    # The run swapped CURRENT, then died before recording the batch and its request as promoted.
    published = catalog.promote("jan", actor="ops", approval=ApprovalFacts(request_id=request.request_id))
    assert catalog.get_batch("jan").state == "approved" and _request(catalog).status == "approved"
    rerun = promote(catalog, RULES, NO_SPARK, "jan", requested_by="ops")  # nothing to verify or publish
    assert rerun.release.release_id == published.release_id and rerun.changed == {}
    assert [release.release_id for release in catalog.list_releases()] == [published.release_id]
    assert catalog.get_batch("jan").state == "promoted"
    assert (_request(catalog).status, _request(catalog).release_id) == ("promoted", published.release_id)


def test_a_batch_staged_by_code_no_longer_deployed_is_refused_unless_forced_with_a_reason(
    catalog: ReleaseCatalog, slack: FakeSlack
) -> None:
    _record_checked(catalog, "old", [_paper_record("old", day, code=OLD_CODE) for day in JAN])
    catalog.mark_complete("old", {TABLE: JAN})
    _approve(_flow(catalog, slack, RULES), slack, "old")
    changed = f"{TABLE} was staged by code version {OLD_CODE} but {SPEC.code_version} is deployed"
    with pytest.raises(
        CodeVersionChangedError, match="cannot be promoted: the approval covers the code"
    ) as no:
        promote(catalog, RULES, NO_SPARK, "old", requested_by="ops")
    assert changed in str(no.value)
    for reason in (None, "   "):
        with pytest.raises(
            CodeVersionChangedError, match="promoting with force over changed code needs a reason"
        ):
            promote(catalog, RULES, NO_SPARK, "old", requested_by="ops", force=True, reason=reason)
    assert _nothing_published(catalog)


# The approval flow: superseded requests, incomplete batches


def test_a_recomputed_batch_supersedes_its_open_request_and_old_votes_do_not_carry_over(
    catalog: ReleaseCatalog, slack: FakeSlack
) -> None:
    _paper_batch(catalog)
    clock = Clock()
    flow = _flow(catalog, slack, RULES, clock)
    _tick(flow)
    first = _request(catalog)
    assert first.status == "pending"
    # A partition is recomputed into the open batch (new content), and Bob approves the old message.
    _record_checked(catalog, "jan", [_paper_record("jan", "2025-01-02", version="v2")])
    slack.react(CHANNEL, first.message_ts, BOB, "white_check_mark")
    clock.at += timedelta(minutes=5)
    assert _tick(flow) is None
    old, new = ApprovalStore(catalog.store).for_batch("jan")
    assert old.request_id == first.request_id and old.status == "superseded"
    assert "content changed" in old.decision_summary
    assert any(reply["text"].startswith("Superseded:") for reply in slack.thread(CHANNEL, first.message_ts))
    assert new.fingerprint == catalog.get_batch("jan").fingerprint() != first.fingerprint
    assert new.status == "pending" and new.message_ts != first.message_ts and new.approvers == []
    with pytest.raises(BatchNotApprovedError, match="pending"):
        promote(catalog, RULES, NO_SPARK, "jan", requested_by="ops")

    slack.react(CHANNEL, new.message_ts, BOB, "white_check_mark")
    due = _tick(flow)
    assert due is not None and due.request_id == new.request_id
    assert verify_approval(
        ApprovalStore(catalog.store), RULES, catalog.get_batch("jan"), flow.now()
    ).approvers


@pytest.mark.parametrize(
    ("status", "last_day", "missing"),
    [
        # The run failed after staging all its days: only the run's outcome says the batch is incomplete.
        (DagsterRunStatus.FAILURE, "2025-01-03", None),
        # Canceled before staging Jan 4 and 5.
        (DagsterRunStatus.CANCELED, "2025-01-05", "customer_daily_txn: 2 partitions missing"),
    ],
)
def test_a_batch_whose_backfill_did_not_finish_gets_one_notice_and_no_request(
    catalog: ReleaseCatalog,
    slack: FakeSlack,
    dagster_instance: DagsterInstance,
    status: DagsterRunStatus,
    last_day: str,
    missing: str | None,
) -> None:
    _paper_batch(catalog, complete=False)  # Jan 1..3 staged
    runs = [
        ("run-1", "2025-01-01", "2025-01-02", DagsterRunStatus.SUCCESS),
        ("run-2", "2025-01-03", last_day, status),
    ]
    for run_id, start, end, run_status in runs:
        dagster_instance.add_run(
            DagsterRun(
                job_name="stage_features",
                run_id=run_id,
                status=run_status,
                tags={
                    BATCH_TAG: "jan",
                    "dagster/asset_partition_range_start": start,
                    "dagster/asset_partition_range_end": end,
                },
                asset_selection=frozenset({AssetKey(["staging", TABLE])}),
            )
        )
    lake = make_lake(Path(catalog.store.root))
    completion = dagster_completion(
        dagster_instance, build_definitions(lake.settings()).resolve_asset_graph()
    )
    flow = _flow(catalog, slack, RULES)
    for _ in range(3):
        assert _tick(flow, completion=completion) is None
    [notice] = slack.messages(CHANNEL)
    assert "finished incomplete and will not be sent for approval" in notice["text"]
    assert "1 of 2 runs did not succeed (run-2)" in notice["text"]
    assert (missing is None and "missing" not in notice["text"]) or missing in notice["text"]
    assert not notice.get("metadata") and ApprovalStore(catalog.store).for_batch("jan") == []
    with pytest.raises(BatchNotApprovedError, match="incomplete"):
        promote(catalog, RULES, NO_SPARK, "jan", requested_by="ops")


# Production metadata, and rollback that needs approval (through the job and the command line)


def test_each_production_change_records_what_serves_each_partition_and_why(paper: Lake) -> None:
    _paper_batch(paper.catalog, "jan")
    _paper_batch(paper.catalog, "fix", FIX)
    first = paper.catalog.promote("jan", actor="ops", reason="first load")
    first_facts = production_facts(paper.catalog, PublishedChange(first, None, {TABLE: ["2025-01-02"]}))
    assert (first_facts[TABLE]["2025-01-02"]["forced"], first_facts[TABLE]["2025-01-02"]["overrides"]) == (
        False,
        None,
    )
    approval = ApprovalFacts(
        requester=ALICE,
        approvers=[Approver(user_id=BOB, display_name="bob", at=datetime.now(UTC))],
        forced=True,
        overrides=["code_version"],
        code_versions={TABLE: TableCode(staged=[SPEC.code_version], deployed="code-deployed-since")},
    )
    second = paper.catalog.promote("fix", actor="ops", reason="the fix", approval=approval)
    facts = production_facts(paper.catalog, PublishedChange(second, first.release_id, {TABLE: FIX}))
    jan2 = facts[TABLE]["2025-01-02"]
    record = paper.catalog.get_batch("fix").tables[TABLE]["2025-01-02"]
    assert (jan2["kind"], jan2["release_id"], jan2["previous_release_id"]) == (
        "promotion",
        second.release_id,
        first.release_id,
    )
    assert (jan2["batch_id"], jan2["dagster/row_count"], jan2["content_hash"]) == (
        "fix",
        2,
        record.content_hash,
    )
    assert jan2["code_version"] == SPEC.code_version and jan2["reason"] == "the fix"
    assert "removed_from_production" not in jan2 and "rolled_back_to" not in jan2
    assert (jan2["requester"], jan2["approvers"], jan2["approver_ids"]) == (ALICE, "bob", BOB)
    # A forced promotion says what it overrode, and which code was deployed when it went out.
    assert (jan2["forced"], jan2["overrides"]) == (True, "code_version")
    assert jan2["deployed_code_version"] == "code-deployed-since"
    back = paper.catalog.rollback(first.release_id, actor="carol", reason="fix is wrong")
    facts = production_facts(paper.catalog, PublishedChange(back, second.release_id, {TABLE: FIX}))
    assert facts[TABLE]["2025-01-04"]["removed_from_production"] is True  # jan never had Jan 4
    restored = facts[TABLE]["2025-01-02"]
    assert "approvers" not in restored and "deployed_code_version" not in restored
    assert (restored["kind"], restored["rolled_back_to"], restored["batch_id"]) == (
        "rollback",
        first.release_id,
        "jan",
    )


def _defs(lake: Lake, slack: FakeSlack, **settings: object):
    return build_definitions(
        lake.settings(
            slack_bot_token=slack.token,
            slack_channel=CHANNEL,
            slack_api_url=slack.base_url,
            spark_remote=SPARK_REMOTE,
            **settings,
        )
    )


def _sensor_tick(defs, instance: DagsterInstance):
    sensor = defs.resolve_sensor_def(APPROVAL_SENSOR)
    context = build_sensor_context(instance=instance, definitions=defs, resources=defs.resources)
    return sensor.evaluate_tick(context)


@pytest.fixture
def slack_env(slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> FakeSlack:
    monkeypatch.setenv("SLACK_BOT_TOKEN", slack.token)  # resources read it through EnvVar
    return slack


def _rollback_config(requested_by: str, approved_by: list[str]) -> dict:
    config = {"to_release": "previous", "reason": "fix double-counts", "requested_by": requested_by}
    return {"ops": {"rollback_op": {"config": config | {"approved_by": approved_by}}}}


@pytest.fixture
def two_releases(paper: Lake) -> tuple[str, str]:
    _paper_batch(paper.catalog, "jan")
    _paper_batch(paper.catalog, "fix", FIX)
    paper.lay_paper_files("jan")  # what a rollback to it restores must be there
    first = paper.catalog.promote("jan", actor="ops").release_id
    return first, paper.catalog.promote("fix", actor="ops").release_id


def test_the_rollback_job_needs_valid_approvers_when_rollback_requires_approval(
    paper: Lake, slack_env: FakeSlack, dagster_instance: DagsterInstance, two_releases: tuple[str, str]
) -> None:
    first, second = two_releases
    defs = _defs(paper, slack_env, approvers=frozenset({BOB, CAROL}), rollback_requires_approval=True)
    job = defs.resolve_job_def("rollback_release")
    for requested_by, approved_by in ((BOB, []), (BOB, [MALLORY]), (CAROL, [CAROL])):
        result = job.execute_in_process(
            run_config=_rollback_config(requested_by, approved_by),
            instance=dagster_instance,
            raise_on_error=False,
        )
        assert not result.success, (requested_by, approved_by)
        assert paper.catalog.current_release_id() == second
    result = job.execute_in_process(run_config=_rollback_config(CAROL, [BOB]), instance=dagster_instance)
    assert result.success
    current = paper.catalog.current_release()
    assert current.rolled_back_to == first and current.reason == f"fix double-counts (approved by {BOB})"
    events = dagster_instance.fetch_materializations(AssetKey(["production", TABLE]), limit=10).records
    assert {e.partition_key for e in events} == {"2025-01-02", "2025-01-03", "2025-01-04"}


def test_the_rollback_job_needs_no_approvers_by_default(
    paper: Lake, slack_env: FakeSlack, dagster_instance: DagsterInstance, two_releases: tuple[str, str]
) -> None:
    first, _ = two_releases
    defs = _defs(paper, slack_env, approvers=frozenset({BOB, CAROL}))
    job = defs.resolve_job_def("rollback_release")
    assert job.execute_in_process(run_config=_rollback_config(CAROL, []), instance=dagster_instance).success
    assert paper.catalog.current_release().rolled_back_to == first


def test_rollback_from_the_command_line_needs_approved_by_when_required(
    paper: Lake, two_releases: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    first, second = two_releases
    for name in ("SLACK_BOT_TOKEN", "BACKFILLS_SLACK_CHANNEL", "BACKFILLS_APPROVER_GROUP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BACKFILLS_STORAGE_ROOT", str(paper.root))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("BACKFILLS_APPROVERS", "bob,carol")
    monkeypatch.setenv("BACKFILLS_ROLLBACK_REQUIRES_APPROVAL", "true")
    monkeypatch.setenv("BACKFILLS_ONLINE_STORE", "none")  # a catalog on paper: no rows to sync
    rollback = ["rollback", "--to", "previous", "--reason", "fix double-counts", "--as", "carol"]
    for extra, reason in (
        ([], "needs approval"),
        (["--approved-by", "mallory"], "mallory is not on the approvers allowlist"),
        (["--approved-by", "carol"], "carol requested the batch"),
    ):
        assert main([*rollback, *extra]) == 2
        error = capsys.readouterr().err
        assert "BatchNotApprovedError" in error and reason in error, error
        assert paper.catalog.current_release_id() == second
    assert main([*rollback, "--approved-by", "bob"]) == 0
    assert f"rolled back to {first}" in capsys.readouterr().out
    assert paper.catalog.current_release().reason == "fix double-counts (approved by bob)"


# Staged content re-verified at promotion (Spark reads the files)


@pytest.fixture(scope="module")
def staged_template(tmp_path_factory: pytest.TempPathFactory, spark) -> Path:
    """`jan` (Jan 1..3, Jan 3 a quiet day), the later `fix` (Jan 2..4), and `old` (Jan 1..3, staged by code
    no longer deployed), all requested by Alice."""

    def build(root: Path) -> None:
        lake = make_lake(root)
        _staged_batch(spark, lake, "jan", JAN, spend="30.00")
        _staged_batch(spark, lake, "fix", FIX, spend="31.00")
        _staged_batch(spark, lake, "old", JAN, spend="30.00", code=OLD_CODE)

    return built_once("promotion", tmp_path_factory, build)


@pytest.fixture
def lake(staged_template: Path, tmp_path: Path) -> Lake:
    root = tmp_path / "lake"
    shutil.copytree(staged_template, root)
    return make_lake(root)


def _file_of(lake: Lake, day: str) -> Path:
    [key] = lake.catalog.get_batch("jan").tables[TABLE][day].files
    return lake.root / key


def _drop_checksum(path: Path) -> None:
    # The local Hadoop file system keeps a CRC beside each file; S3 has none. Without it Spark reads the
    # replaced file as it is, so only the content hash can tell.
    path.with_name(f".{path.name}.crc").unlink(missing_ok=True)


def test_an_approved_batch_with_untouched_files_is_promoted_with_its_approval(
    lake: Lake, slack: FakeSlack, spark
) -> None:
    request = _approve(_flow(lake.catalog, slack, RULES), slack)
    assert verify_content(spark, lake.store, lake.catalog.get_batch("jan")) == 3  # the quiet day too
    # Reading the rows back agrees too, the quiet day (recorded without rows, no file) included.
    assert verify_content(spark, lake.store, lake.catalog.get_batch("jan"), deep=True) == 3
    change = promote(lake.catalog, RULES, spark, "jan", requested_by="ops", run_id="run-1")
    release = lake.catalog.current_release()
    assert release.release_id == change.release.release_id and change.previous_release_id is None
    assert change.changed == {TABLE: JAN}
    assert (release.batch_id, release.requester, release.actor) == ("jan", ALICE, "ops")
    assert [a.user_id for a in release.approvers] == [BOB] and release.request_id == request.request_id
    assert release.reason == request.decision_summary and not release.forced
    assert {day: part.content_hash for day, part in lake.catalog.served(release, TABLE).items()} == {
        day: record.content_hash for day, record in lake.catalog.get_batch("jan").tables[TABLE].items()
    }
    assert lake.catalog.get_batch("jan").state == "promoted"
    promoted = _request(lake.catalog)
    assert (promoted.status, promoted.release_id, promoted.promotion_run_id) == (
        "promoted",
        release.release_id,
        "run-1",
    )
    # Run again (a retried run): nothing changes, the same release stays current, and the request still
    # names the run that published it.
    again = promote(lake.catalog, RULES, spark, "jan", requested_by="ops", run_id="run-2")
    assert again.release.release_id == release.release_id and again.changed == {}
    assert len(lake.catalog.list_releases()) == 1
    assert _request(lake.catalog).promotion_run_id == "run-1"


def test_promotion_refuses_a_staged_file_replaced_after_approval(lake: Lake, slack: FakeSlack, spark) -> None:
    """The file is replaced by a valid Parquet file with the same schema and rows, one value changed."""
    _approve(_flow(lake.catalog, slack, RULES), slack)
    path = _file_of(lake, "2025-01-02")
    original = pq.ParquetFile(path).read()
    field = original.schema.field("amount_sum_usd")
    spend = original.column("amount_sum_usd").to_pylist()
    assert original.column("customer_id").to_pylist() == ["cus-1", "cus-2"] and spend[1] == Decimal("5.00")
    changed = original.set_column(
        original.schema.get_field_index(field.name), field, pa.array([spend[0], Decimal("50.00")], field.type)
    )
    assert changed.schema == original.schema and changed.num_rows == original.num_rows == 2
    assert changed != original
    pq.write_table(changed, path)
    _drop_checksum(path)
    assert spark.read.parquet(str(path)).count() == 2  # Spark reads it fine: only the hash can tell
    with pytest.raises(StagedContentChangedError) as refused:
        promote(lake.catalog, RULES, spark, "jan", requested_by="ops")
    assert f"{TABLE} 2025-01-02 (recorded 2 rows, files now hold 2). Nothing was published" in str(
        refused.value
    )
    assert "2025-01-01" not in str(refused.value)
    assert _nothing_published(lake.catalog) and lake.catalog.get_batch("jan").state == "approved"


@pytest.mark.parametrize("damage", ["emptied", "cut short", "deleted"])
def test_promotion_refuses_a_staged_file_emptied_cut_short_or_deleted_after_approval(
    lake: Lake, slack: FakeSlack, spark, damage: str
) -> None:
    _approve(_flow(lake.catalog, slack, RULES), slack)
    path = _file_of(lake, "2025-01-01")
    if damage == "emptied":  # a valid Parquet file with the same schema and no rows
        pq.write_table(pq.ParquetFile(path).read().slice(0, 0), path)
        expected = rf"{TABLE} 2025-01-01 \(recorded 2 rows, files now hold 0\)"
    elif damage == "cut short":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        expected = rf"{TABLE} 2025-01-01 \(its files cannot be read: [^)]{{5}}"  # with the reader's error
    else:
        path.unlink()
        expected = re.escape(f"{TABLE} 2025-01-01 ({path.relative_to(lake.root)} is missing)")
    _drop_checksum(path)
    with pytest.raises(StagedContentChangedError, match=expected) as refused:
        promote(lake.catalog, RULES, spark, "jan", requested_by="ops")
    assert "2025-01-02" not in str(refused.value)
    assert _nothing_published(lake.catalog)


def test_a_refusal_names_the_first_five_problems_once_each_and_counts_the_rest() -> None:
    problems = [f"{TABLE} 2025-01-0{day} (missing)" for day in range(1, 8)]
    listed = _listed([*problems, problems[0]])  # one problem found twice
    assert listed == "; ".join(problems[:5]) + " and 2 more"
    assert _listed(problems[:5]) == "; ".join(problems[:5])  # five: no "more"


def test_an_older_batch_is_refused_over_newer_production_data_unless_forced(
    lake: Lake, slack: FakeSlack, spark
) -> None:
    flow = _flow(lake.catalog, slack, RULES)
    _approve(flow, slack, "jan")
    _approve(flow, slack, "fix")
    newer = promote(lake.catalog, RULES, spark, "fix", requested_by="ops").release
    with pytest.raises(StaleBatchError, match="older than batch fix"):
        promote(lake.catalog, RULES, spark, "jan", requested_by="ops")
    assert lake.catalog.current_release_id() == newer.release_id
    with pytest.raises(StaleBatchError, match="needs a reason"):
        promote(lake.catalog, RULES, spark, "jan", requested_by="ops", force=True)
    reason = "the fix double-counts refunds: put jan's values back"
    forced = promote(lake.catalog, RULES, spark, "jan", requested_by="ops", force=True, reason=reason)
    assert forced.release.forced and forced.release.parent_id == newer.release_id
    assert forced.changed == {TABLE: JAN}
    current = lake.catalog.current_release()
    assert current is not None and lake.catalog.served(current, TABLE)["2025-01-04"].batch_id == "fix"
    # Production moved on: promoting `fix` again would put it back over `jan`, which takes a rollback.
    with pytest.raises(InvalidRequestError, match="promoted already and production has moved on"):
        promote(lake.catalog, RULES, spark, "fix", requested_by="ops")


def test_a_forced_promotion_over_changed_code_records_the_staged_and_deployed_versions(
    lake: Lake, slack: FakeSlack, spark
) -> None:
    _approve(_flow(lake.catalog, slack, RULES), slack, "old")
    reason = "the new daily code only renames a helper; reviewed by the risk lead"
    release = promote(
        lake.catalog, RULES, spark, "old", requested_by="ops", force=True, reason=reason
    ).release
    assert release.forced and release.reason == reason and release.batch_id == "old"
    assert release.code_versions[TABLE] == TableCode(staged=[OLD_CODE], deployed=SPEC.code_version)
    assert lake.catalog.current_release_id() == release.release_id


# Through Dagster: approvers from a Slack user group


def test_members_of_the_approver_group_count_as_approvers_and_are_checked_again_at_promotion(
    lake: Lake,
    slack_env: FakeSlack,
    dagster_instance: DagsterInstance,
    spark,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Configured as an operator would, through the environment.
    environment = {
        "BACKFILLS_STORAGE_ROOT": str(lake.root),
        "BACKFILLS_PARTITIONS_START": "2025-01-01",
        "BACKFILLS_SLACK_CHANNEL": CHANNEL,
        "BACKFILLS_SLACK_API_URL": slack_env.base_url,
        "BACKFILLS_APPROVERS": CAROL,
        "BACKFILLS_APPROVER_GROUP": APPROVER_GROUP,
        "BACKFILLS_SPARK_REMOTE": SPARK_REMOTE or "",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    defs = build_definitions(load_settings())
    _sensor_tick(defs, dagster_instance)
    for request in (_request(lake.catalog, "jan"), _request(lake.catalog, "fix")):
        slack_env.react(CHANNEL, request.message_ts, MALLORY, "white_check_mark")  # outside the group
        slack_env.react(CHANNEL, request.message_ts, DAVE, "white_check_mark")  # in it
    launched = {r.tags[BATCH_TAG]: r for r in _sensor_tick(defs, dagster_instance).run_requests}
    assert set(launched) == {"jan", "fix"}
    [mallory] = [vote for vote in _request(lake.catalog).votes if vote.user_id == MALLORY]
    assert not mallory.counted and "not on the approvers allowlist" in mallory.ignored_because

    job = defs.resolve_job_def(launched["jan"].job_name)
    result = job.execute_in_process(
        run_config=launched["jan"].run_config, instance=dagster_instance, tags=launched["jan"].tags
    )
    assert result.success
    assert [a.user_id for a in lake.catalog.current_release().approvers] == [DAVE]
    [event, *_] = dagster_instance.fetch_materializations(AssetKey(["production", TABLE]), limit=5).records
    metadata = event.asset_materialization.metadata
    assert (metadata["approvers"].value, metadata["approver_ids"].value) == ("dave", DAVE)

    # Dave leaves the group before `fix` is promoted: his approval no longer counts.
    slack_env.add_usergroup(APPROVER_GROUP, [ERIN])
    before = lake.catalog.current_release_id()
    result = job.execute_in_process(
        run_config=launched["fix"].run_config,
        instance=dagster_instance,
        tags=launched["fix"].tags,
        raise_on_error=False,
    )
    assert not result.success and lake.catalog.current_release_id() == before
    refused = lake.catalog.events(batch_id="fix")[-1]
    assert refused.kind == "promotion_refused" and "BatchNotApprovedError" in refused.details["error"]
