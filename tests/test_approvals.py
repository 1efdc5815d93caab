"""Approval in Slack, atomic promotion and rollback, and the audit trail: the stories of approvers,
operators and auditors, through the real slack_sdk client against a local Slack Web API server."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from conftest import Lake, make_lake
from slack_api import FakeSlack, RateLimited, ServerError, Timeout

from backfills.assets.generator import Fault, write_landing_zone
from backfills.assets.reader import FeatureReader
from backfills.assets.registry import FEATURES
from backfills.errors import (
    BatchNotApprovedError,
    ContractViolationError,
    CurrentChangedError,
    SlackUnavailableError,
    StagedContentChangedError,
    StaleBatchError,
)
from backfills.orchestration.approval_channels import SlackChannel
from backfills.orchestration.approval_flow import ApprovalFlow
from backfills.orchestration.approval_message import Links
from backfills.orchestration.approval_policy import ApprovalRules
from backfills.orchestration.audit import audit_trail, render
from backfills.orchestration.promotion import promote, roll_back
from backfills.resources.approvals_store import ApprovalStore
from backfills.resources.slack import SlackClient

ALICE, BOB, CAROL, MALLORY, ROBOT = "U0ALICE", "U0BOB", "U0CAROL", "U0MALLORY", "U0ROBOT"
DAVE = "U0DAVE"  # an approver who left: his Slack account is deactivated
CHANNEL = "C0APPROVALS"
JAN_1, JAN_4 = date(2025, 1, 1), date(2025, 1, 4)
TABLES = sorted(spec.name for spec in FEATURES)


@pytest.fixture
def lake(staged_template: Path, tmp_path: Path) -> Lake:
    root = tmp_path / "lake"
    shutil.copytree(staged_template, root)
    return make_lake(root)


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        server.add_channel(CHANNEL, "feature-approvals")
        for user, name in ((ALICE, "alice"), (BOB, "bob"), (CAROL, "carol"), (MALLORY, "mallory")):
            server.add_user(user, name)
        server.add_user(ROBOT, "deploy-bot", is_bot=True)
        server.add_user(DAVE, "dave", deleted=True)
        yield server


class Clock:
    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.at


def _flow(
    lake: Lake,
    slack: FakeSlack,
    clock: Clock | None = None,
    approvers: frozenset[str] = frozenset({BOB, CAROL, DAVE, ROBOT}),
    **rules: object,
) -> ApprovalFlow:
    client = SlackClient(slack.token, base_url=slack.base_url, timeout=0.5, backoff=0.01)
    return ApprovalFlow(
        lake.catalog,
        SlackChannel(client, CHANNEL),
        ApprovalRules(approvers=approvers, **rules),
        Links("http://dagster.test"),
        now=clock or Clock(),
    )


def _tick(flow: ApprovalFlow, batch: str = "jan"):
    return flow.process(batch, lambda manifest: None)


def _requests(slack: FakeSlack) -> list[dict]:
    return [m for m in slack.messages(CHANNEL) if m.get("metadata")]


def message_permalink(slack: FakeSlack, message: dict) -> str:
    return f"https://fake-slack.example/archives/{CHANNEL}/p{message['ts'].replace('.', '')}"


def _request(lake: Lake, batch: str = "jan"):
    return ApprovalStore(lake.store).latest(batch)


def test_a_checked_batch_asks_once_and_an_approval_promotes_every_table_at_once(
    lake: Lake, slack: FakeSlack, spark
) -> None:
    flow = _flow(lake, slack)
    for _ in range(3):
        assert _tick(flow) is None
    [message] = _requests(slack)
    text = json.dumps(message["blocks"])
    assert "Approve backfill jan?" in text and f"<@{ALICE}>" in text and "Blast radius" in text
    assert "4 tables, 16 partitions" in text and "4 new days, no production data for them yet" in text

    slack.react(CHANNEL, message["ts"], BOB, "white_check_mark")
    due = _tick(flow)
    assert due is not None and due.run_key == f"promote:{_request(lake).request_id}"
    [vote] = _request(lake).votes
    assert (vote.user_id, vote.display_name, vote.counted) == (BOB, "bob", True)
    assert vote.permalink == message_permalink(slack, message) and vote.at is not None
    assert lake.catalog.get_batch("jan").state == "approved"
    assert "Approved: approved by bob (1 of 1)" in slack.thread(CHANNEL, message["ts"])[0]["text"]

    change = promote(lake.catalog, flow.rules, spark, "jan", requested_by="approval_sensor")
    release = lake.catalog.current_release()
    assert release.release_id == change.release.release_id and release.batch_id == "jan"
    assert release.served_tables() == TABLES  # every table switched in the one release
    assert [approver.user_id for approver in release.approvers] == [BOB]
    assert release.requester == ALICE and release.approved_at is not None
    rows = FeatureReader(spark, lake.store).read("customer_txn_7d", JAN_1, JAN_4).count()
    assert rows == sum(r.row_count for r in lake.catalog.get_batch("jan").tables["customer_txn_7d"].values())
    assert lake.catalog.get_batch("jan").state == "promoted" and _request(lake).status == "promoted"
    assert len(_requests(slack)) == 1 and _tick(flow) is None


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        (ALICE, "requested this batch and cannot approve it"),
        (MALLORY, "is not on the approvers allowlist"),
        (ROBOT, "is a bot"),
        (DAVE, "is a deactivated account"),
    ],
)
def test_votes_that_do_not_count_never_promote_and_say_why(
    lake: Lake, slack: FakeSlack, spark, who: str, reason: str
) -> None:
    flow = _flow(lake, slack)
    _tick(flow)
    [message] = _requests(slack)
    slack.react(CHANNEL, message["ts"], who, "+1")
    assert _tick(flow) is None
    request = _request(lake)
    assert request.status == "pending"
    [vote] = request.votes
    assert vote.user_id == who and not vote.counted and reason in vote.ignored_because
    with pytest.raises(BatchNotApprovedError, match="pending"):
        promote(lake.catalog, flow.rules, spark, "jan", requested_by="ops")
    assert lake.catalog.current_release_id() is None


def test_whoever_reran_partitions_into_someone_elses_batch_cannot_approve_it(
    lake: Lake, slack: FakeSlack, spark
) -> None:
    flow = _flow(lake, slack)
    _tick(flow)
    [message] = _requests(slack)
    # Bob reruns Jan 1 into Alice's batch: the same content, so the same request.
    lake.stage(spark, "customer_daily_txn", JAN_1, JAN_1, "jan", requester=BOB)
    batch = lake.catalog.get_batch("jan")
    assert (batch.requester, batch.contributors, batch.state) == (ALICE, [ALICE, BOB], "checked")

    slack.react(CHANNEL, message["ts"], BOB, "white_check_mark")
    assert _tick(flow) is None
    request = _request(lake)
    assert request.status == "pending" and len(_requests(slack)) == 1
    [vote] = request.votes
    assert not vote.counted
    assert vote.ignored_because == f"{BOB} (bob) staged partitions of this batch and cannot approve it"
    assert "bob's approval was ignored because bob staged partitions of the batch" in request.decision_summary
    with pytest.raises(BatchNotApprovedError, match="bob staged partitions of the batch"):
        promote(lake.catalog, flow.rules, spark, "jan", requested_by="ops")

    slack.react(CHANNEL, message["ts"], CAROL, "white_check_mark")  # who wrote nothing into it
    assert _tick(flow) is not None
    assert [approver.user_id for approver in _request(lake).approvers] == [CAROL]


def _rerun(lake: Lake, batch: str, requester: str) -> None:
    """A run tagged `requester` that records Jan 1 of customer_daily_txn into `batch` again, with the same
    content (as a deterministic rerun has): the batch's fingerprint, hence its request, stay the same."""
    record = lake.catalog.get_batch(batch).tables["customer_daily_txn"]["2025-01-01"]
    run_id = f"run-{requester}"
    rerun = record.model_copy(update={"run_id": run_id})
    lake.catalog.record_partitions(batch, [rerun], run_id=run_id, requester=requester)


def test_a_rerun_recorded_while_votes_are_read_cannot_carry_the_approval_at_promotion(
    lake: Lake, slack: FakeSlack, spark
) -> None:
    flow = _flow(lake, slack)
    _tick(flow)
    [message] = _requests(slack)
    slack.react(CHANNEL, message["ts"], BOB, "white_check_mark")
    read_votes = flow.channel.read_votes

    def bob_reruns_meanwhile(*args: object):
        _rerun(lake, "jan", BOB)
        return read_votes(*args)  # type: ignore[arg-type]

    flow.channel.read_votes = bob_reruns_meanwhile  # type: ignore[method-assign]
    assert _tick(flow) is not None  # the flow judged the batch as it had read it: Alice's alone
    assert lake.catalog.get_batch("jan").contributors == [ALICE, BOB]

    with pytest.raises(BatchNotApprovedError) as refused:
        promote(lake.catalog, flow.rules, spark, "jan", requested_by="ops")
    assert "bob's approval was ignored because bob staged partitions of the batch" in str(refused.value)
    assert f'not everyone who wrote into the batch is known: "{BOB}"' in str(refused.value)
    assert lake.catalog.current_release_id() is None


def test_a_display_name_as_requester_tag_is_resolved_through_the_user_list_or_counts_as_unknown(
    lake: Lake, slack: FakeSlack, spark
) -> None:
    slack.add_user(ALICE, "alice", real_name="Alice Smith")
    lake.stage(spark, "customer_daily_txn", JAN_1, JAN_1, "named", requester="Alice Smith")
    lake.catalog.mark_complete("named", {"customer_daily_txn": ["2025-01-01"]})
    flow = _flow(lake, slack, approvers=frozenset({ALICE, BOB, CAROL}))
    _tick(flow, "named")
    [message] = _requests(slack)
    assert "1 approval needed" in message["text"]

    # Alice Smith is U0ALICE (users.list): she requested the batch and cannot approve it.
    slack.react(CHANNEL, message["ts"], ALICE, "white_check_mark")
    assert _tick(flow, "named") is None
    request = _request(lake, "named")
    assert request.contributors == {"Alice Smith": ALICE}
    [vote] = request.votes
    assert vote.ignored_because == f"{ALICE} (alice) requested this batch and cannot approve it"

    # A rerun tagged with a name no member has: whoever it is could be any approver, so one more is needed.
    _rerun(lake, "named", "Alice Smth")
    slack.react(CHANNEL, message["ts"], BOB, "white_check_mark")
    assert _tick(flow, "named") is None
    request = _request(lake, "named")
    assert request.status == "pending"
    assert request.contributors == {"Alice Smith": ALICE, "Alice Smth": None}
    assert request.decision_summary == (
        "pending: 1 of 2 approvals (bob); 2 approvals are required, one more than the quorum of 1, because "
        'not everyone who wrote into the batch is known: "Alice Smth"; alice\'s approval was ignored because '
        "alice requested the batch"
    )
    slack.react(CHANNEL, message["ts"], CAROL, "white_check_mark")
    assert _tick(flow, "named") is not None
    assert [approver.user_id for approver in _request(lake, "named").approvers] == [BOB, CAROL]


HOW_TO_DECIDE = (
    "To approve, reply exactly `approve` (nothing else) or react :white_check_mark:; to reject, reply "
    "`reject: reason` or react :x:."
)


def test_conditional_approvals_never_approve_and_the_thread_is_told_once_how_to_approve(
    lake: Lake, slack: FakeSlack, spark
) -> None:
    flow = _flow(lake, slack)
    _tick(flow)
    [message] = _requests(slack)
    slack.reply(CHANNEL, message["ts"], BOB, "approve: as long as CI passes")
    slack.reply(CHANNEL, message["ts"], CAROL, "Approve: I guess")
    slack.reply(CHANNEL, message["ts"], BOB, "Approve? not yet")
    slack.reply(CHANNEL, message["ts"], MALLORY, "approve: checked the diff")  # not an approver: not told
    slack.reply(CHANNEL, message["ts"], CAROL, "looking at the 30d table now")  # chatter: not recorded
    for _ in range(3):
        assert _tick(flow) is None

    request = _request(lake)
    assert request.status == "pending" and request.votes == []
    assert lake.catalog.get_batch("jan").state == "checked"
    with pytest.raises(BatchNotApprovedError, match="pending"):
        promote(lake.catalog, flow.rules, spark, "jan", requested_by="ops")
    not_just = 'it is not just "approve", "approved" or "lgtm"'
    assert [(reply.user_id, reply.display_name, reply.text, reply.reason) for reply in request.not_votes] == [
        (BOB, "bob", "approve: as long as CI passes", not_just),
        (CAROL, "carol", "Approve: I guess", not_just),
        (BOB, "bob", "Approve? not yet", "it contains a question mark"),
        (MALLORY, "mallory", "approve: checked the diff", not_just),
    ]
    assert request.not_votes[0].permalink == message_permalink(slack, message)
    trail = [e for e in audit_trail(lake.catalog, "customer_daily_txn") if e.event == "reply_not_counted"]
    assert [(entry.actor, entry.batch_id) for entry in trail] == [
        (BOB, "jan"),
        (CAROL, "jan"),
        (BOB, "jan"),
        (MALLORY, "jan"),
    ]
    assert trail[0].what == f'reply by bob not counted as a vote: "approve: as long as CI passes": {not_just}'
    told = [reply["text"] for reply in slack.thread(CHANNEL, message["ts"]) if reply.get("bot_id")]
    assert told == [  # once per reply, however many passes read it, each one line
        f"bob's reply was not counted: {not_just}. {HOW_TO_DECIDE}",
        f"carol's reply was not counted: {not_just}. {HOW_TO_DECIDE}",
        f"bob's reply was not counted: it contains a question mark. {HOW_TO_DECIDE}",
    ]
    assert not any("\n" in line for line in told)

    slack.reply(CHANNEL, message["ts"], BOB, "Approve")
    assert _tick(flow) is not None
    request = _request(lake)
    assert request.status == "approved" and [approver.user_id for approver in request.approvers] == [BOB]
    [approved] = [event for event in lake.catalog.events(batch_id="jan") if event.kind == "approved"]
    assert [reply["text"] for reply in approved.details["not_votes"]] == [
        "approve: as long as CI passes",
        "Approve: I guess",
        "Approve? not yet",
        "approve: checked the diff",
    ]
    not_counted = [
        event for event in lake.catalog.events(batch_id="jan") if event.kind == "reply_not_counted"
    ]
    assert len(not_counted) == 4  # still once each, after four passes


def test_an_expired_request_cannot_be_approved_any_more(lake: Lake, slack: FakeSlack) -> None:
    clock = Clock()
    flow = _flow(lake, slack, clock, expires_after=timedelta(hours=1))
    _tick(flow)
    [message] = _requests(slack)
    clock.at += timedelta(hours=2)
    slack.react(CHANNEL, message["ts"], BOB, "white_check_mark")  # first seen two hours on: too late
    assert _tick(flow) is None
    request = _request(lake)
    assert request.status == "expired" and "expired" in request.decision_summary
    assert lake.catalog.get_batch("jan").state == "checked"
    assert any("Expired" in reply["text"] for reply in slack.thread(CHANNEL, message["ts"]))
    [vote] = request.votes
    assert not vote.counted and "after the request expired" in vote.ignored_because


def test_a_rejection_promotes_nothing_tells_the_thread_and_keeps_the_batch(
    lake: Lake, slack: FakeSlack, spark
) -> None:
    flow = _flow(lake, slack)
    _tick(flow)
    [message] = _requests(slack)
    slack.reply(CHANNEL, message["ts"], CAROL, "Rejected - not yet, the 7d spend looks off")  # any reason
    slack.react(CHANNEL, message["ts"], BOB, "white_check_mark")
    assert _tick(flow) is None
    assert _request(lake).status == "rejected"
    manifest = lake.catalog.get_batch("jan")
    assert manifest.state == "rejected" and manifest.partition_count() == 16
    assert all(
        lake.store.exists(key)
        for record in manifest.tables["customer_daily_txn"].values()
        for key in record.files
    )
    told = [
        reply["text"]
        for reply in slack.thread(CHANNEL, message["ts"])
        if reply.get("bot_id") or "Rejected:" in reply["text"]
    ]
    assert any(text.startswith("Rejected: rejected by carol") for text in told)
    with pytest.raises(BatchNotApprovedError, match="rejected"):
        promote(lake.catalog, flow.rules, spark, "jan", requested_by="ops")
    assert lake.catalog.current_release_id() is None


def _approve(lake: Lake, slack: FakeSlack, batch: str = "jan") -> ApprovalFlow:
    flow = _flow(lake, slack)
    _tick(flow, batch)
    message = next(m for m in _requests(slack) if batch in m["text"])
    slack.react(CHANNEL, message["ts"], BOB, "white_check_mark")
    assert _tick(flow, batch) is not None
    return flow


def test_staged_files_changed_after_approval_refuse_promotion(lake: Lake, slack: FakeSlack, spark) -> None:
    flow = _approve(lake, slack)
    record = lake.catalog.get_batch("jan").tables["customer_txn_30d"]["2025-01-02"]
    victim = lake.root / record.files[0]
    other = lake.root / lake.catalog.get_batch("jan").tables["customer_txn_30d"]["2025-01-03"].files[0]
    shutil.copyfile(other, victim)  # someone overwrote a staged file after the approval
    with pytest.raises(StagedContentChangedError, match="customer_txn_30d 2025-01-02"):
        promote(lake.catalog, flow.rules, spark, "jan", requested_by="ops")
    assert lake.catalog.current_release_id() is None


def test_two_approved_batches_racing_to_promote_one_wins_and_nothing_is_torn(
    lake: Lake, slack: FakeSlack, spark
) -> None:
    flow = _approve(lake, slack, "jan")
    _approve(lake, slack, "fix")
    barrier = threading.Barrier(2)
    stage = lake.catalog.stage_promotion

    def staged_together(*args, **kwargs):
        release = stage(*args, **kwargs)
        barrier.wait(timeout=30)  # both releases are written on the same parent before either swaps
        return release

    lake.catalog.stage_promotion = staged_together  # type: ignore[method-assign]
    outcomes: dict[str, object] = {}

    def run(batch: str) -> None:
        try:
            outcomes[batch] = promote(lake.catalog, flow.rules, spark, batch, requested_by="ops").release
        except CurrentChangedError as error:
            outcomes[batch] = error

    threads = [threading.Thread(target=run, args=(batch,)) for batch in ("jan", "fix")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    winners = [batch for batch, outcome in outcomes.items() if not isinstance(outcome, Exception)]
    [loser] = [outcome for outcome in outcomes.values() if isinstance(outcome, Exception)]
    assert len(winners) == 1 and "nothing was changed" in str(loser)
    current = lake.catalog.current_release()
    assert current.batch_id == winners[0] and current.parent_id is None
    served = {part.batch_id for parts in lake.catalog.snapshot(current).values() for part in parts.values()}
    assert served == {winners[0]}  # the loser left no partition behind


def test_a_crash_between_release_write_and_swap_leaves_production_and_a_retry_completes(
    lake: Lake, slack: FakeSlack, spark
) -> None:
    flow = _approve(lake, slack)
    orphan = lake.catalog.stage_promotion("jan", actor="approval_sensor")  # the crashed run got this far
    assert lake.catalog.current_release_id() is None
    change = promote(lake.catalog, flow.rules, spark, "jan", requested_by="approval_sensor")
    assert lake.catalog.current_release_id() == change.release.release_id != orphan.release_id
    again = promote(lake.catalog, flow.rules, spark, "jan", requested_by="approval_sensor")
    assert again.release.release_id == change.release.release_id and again.changed == {}


def test_an_older_batch_is_stale_over_newer_production_data_unless_forced(
    lake: Lake, slack: FakeSlack, spark
) -> None:
    flow = _approve(lake, slack, "jan")
    _approve(lake, slack, "fix")
    promote(lake.catalog, flow.rules, spark, "fix", requested_by="ops")  # fix now serves Jan 3..6
    with pytest.raises(StaleBatchError, match="older than batch fix"):
        promote(lake.catalog, flow.rules, spark, "jan", requested_by="ops")
    with pytest.raises(StaleBatchError, match="needs a reason"):
        promote(lake.catalog, flow.rules, spark, "jan", requested_by="ops", force=True)
    reason = "the fix double-counts refunds; the risk lead asked for jan's values back"
    forced = promote(lake.catalog, flow.rules, spark, "jan", requested_by="ops", force=True, reason=reason)
    assert forced.release.forced and forced.release.reason == reason
    assert lake.catalog.current_release().batch_id == "jan"


def test_a_pending_request_is_superseded_when_a_newer_batch_is_promoted(
    lake: Lake, slack: FakeSlack, spark
) -> None:
    flow = _flow(lake, slack)
    _tick(flow, "jan")
    flow_fix = _approve(lake, slack, "fix")
    promote(lake.catalog, flow_fix.rules, spark, "fix", requested_by="ops")
    assert _tick(flow, "jan") is None
    request = _request(lake, "jan")
    assert request.status == "superseded" and "batch fix" in request.decision_summary


def test_rollback_of_all_tables_and_of_one_table_with_the_audit_trail_in_order(
    lake: Lake, slack: FakeSlack, spark
) -> None:
    flow = _approve(lake, slack, "jan")
    first = promote(lake.catalog, flow.rules, spark, "jan", requested_by="ops").release
    _approve(lake, slack, "fix")
    second = promote(lake.catalog, flow.rules, spark, "fix", requested_by="ops").release

    one_table = roll_back(
        lake.catalog,
        to=first.release_id,
        reason="fix looks wrong",
        requested_by="ops",
        tables=["customer_daily_txn"],
    )
    assert one_table.changed == {
        "customer_daily_txn": ["2025-01-03", "2025-01-04", "2025-01-05", "2025-01-06"]
    }
    current = lake.catalog.current_release()
    assert {p.batch_id for p in lake.catalog.served(current, "customer_daily_txn").values()} == {"jan"}

    whole = roll_back(lake.catalog, to="previous", reason="undo the partial rollback", requested_by="ops")
    assert lake.catalog.snapshot(lake.catalog.current_release()) == lake.catalog.snapshot(second)
    assert whole.release.rolled_back_to == second.release_id

    trail = audit_trail(lake.catalog, "customer_daily_txn", "2025-01-03")
    kinds = [entry.event for entry in trail]
    assert kinds == [
        "staged",
        "checked",
        "staged",
        "checked",
        "approval_requested",
        "approved",
        "promoted",
        "approval_requested",
        "approved",
        "promoted",
        "rolled_back",
        "rolled_back",
    ]
    assert [entry.at for entry in trail] == sorted(entry.at for entry in trail)
    promoted = [entry for entry in trail if entry.event == "promoted"]
    assert [entry.batch_id for entry in promoted] == ["jan", "fix"] and "approved by U0BOB" in promoted[
        0
    ].what
    text = render(trail, "text")
    assert "fix looks wrong" in text and "rolled back to release" in text
    rows = render(trail, "csv").splitlines()
    assert rows[0] == "at,event,batch_id,release_id,actor,partitions,what" and len(rows) == 13


def test_slack_failures_while_posting_never_post_twice(lake: Lake, slack: FakeSlack) -> None:
    flow = _flow(lake, slack)
    slack.inject("chat.postMessage", RateLimited(retry_after=0))  # retried at once: Slack did not process it
    _tick(flow)
    assert len(_requests(slack)) == 1

    other = make_lake(lake.root)  # a second batch request, hit by a lost answer after Slack posted it
    flow = _flow(other, slack)
    slack.inject("chat.postMessage", Timeout(seconds=1.5, after_processing=True))
    with pytest.raises(SlackUnavailableError):
        _tick(flow, "fix")
    assert len(_requests(slack)) == 2 and _request(other, "fix").status == "posting"
    slack.inject("conversations.history", ServerError(503))  # the look-up itself is retried
    _tick(flow, "fix")
    assert len(_requests(slack)) == 2  # found the message it had posted: no second post
    assert _request(other, "fix").status == "pending" and _request(other, "fix").message_ts


def test_slack_failures_while_polling_lose_no_decision(lake: Lake, slack: FakeSlack) -> None:
    flow = _flow(lake, slack)
    _tick(flow)
    [message] = _requests(slack)
    slack.react(CHANNEL, message["ts"], BOB, "white_check_mark")
    # The first call and its three retries all fail: the tick gives up on this batch.
    slack.inject("reactions.get", *[ServerError(500)] * 4)
    with pytest.raises(SlackUnavailableError, match="reactions.get"):
        _tick(flow)
    assert _request(lake).status == "pending"
    slack.inject("reactions.get", RateLimited(retry_after=0), Timeout(seconds=1.0))
    assert _tick(flow) is not None  # the next tick reads the same reaction and decides
    assert _request(lake).status == "approved"


def test_a_blocked_batch_gets_one_notice_naming_its_failing_checks_and_no_request(
    tmp_path: Path, slack: FakeSlack, spark
) -> None:
    blocked = make_lake(tmp_path / "blocked")
    write_landing_zone(
        blocked.store,
        start=JAN_1,
        days=5,
        customers=60,
        rows_per_day=400,
        seed=3,
        faults=[Fault("null_customer_ids", date(2025, 1, 2))],
    )
    with pytest.raises(ContractViolationError):
        blocked.stage(spark, "customer_daily_txn", JAN_1, JAN_4, "bad", requester=ALICE)
    blocked.catalog.mark_complete("bad", {"customer_daily_txn": ["2025-01-01", "2025-01-02"]})
    flow = _flow(blocked, slack)
    for _ in range(3):
        assert _tick(flow, "bad") is None
    [notice] = slack.messages(CHANNEL)
    assert "Backfill bad (requested by <@U0ALICE>) is blocked" in notice["text"]
    assert "raw_input_contract" in notice["text"] and "customer_id" in notice["text"]
    assert not notice.get("metadata") and ApprovalStore(blocked.store).for_batch("bad") == []


def test_a_rollback_that_needs_approval_is_refused_without_it(lake: Lake, slack: FakeSlack, spark) -> None:
    flow = _approve(lake, slack, "jan")
    promote(lake.catalog, flow.rules, spark, "jan", requested_by="ops")
    _approve(lake, slack, "fix")
    promote(lake.catalog, flow.rules, spark, "fix", requested_by="ops")
    before = lake.catalog.current_release_id()
    refusals = [
        (BOB, [], "needs approval"),
        (BOB, [MALLORY], "not on the approvers allowlist"),
        (CAROL, [CAROL], "U0CAROL requested the batch"),  # who asks for the rollback cannot approve it
    ]
    for requested_by, approved_by, reason in refusals:
        with pytest.raises(BatchNotApprovedError, match=reason):
            roll_back(
                lake.catalog,
                to="previous",
                reason="bad fix",
                requested_by=requested_by,
                approved_by=approved_by,
                rules=flow.rules,
            )
    assert lake.catalog.current_release_id() == before
    change = roll_back(
        lake.catalog, to="previous", reason="bad fix", requested_by=BOB, approved_by=[CAROL], rules=flow.rules
    )
    assert change.release.reason == f"bad fix (approved by {CAROL})"
