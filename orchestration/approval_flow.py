"""The approval flow of each batch, one step per call: once its backfill has finished, a blocked or incomplete
batch gets a notice; a checked one gets exactly one approval request; the votes on a pending request go to the
approval policy, whose outcome is recorded (catalog first, channel second) and told in the request's thread.

Free of Dagster: the approval sensor calls it every tick and the CLI calls it for one batch. Every step is
idempotent, so a crash, a restart or two callers at once never post twice or lose a decision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from backfills.assets.batch_progress import waiting_summary
from backfills.assets.registry import FEATURES_BY_NAME
from backfills.errors import ApprovalNotFoundError, BackfillsError
from backfills.orchestration.approval_channels import ApprovalChannel
from backfills.orchestration.approval_message import (
    ChannelMessage,
    Links,
    blocked_message,
    incomplete_message,
    request_message,
)
from backfills.orchestration.approval_policy import (
    ApprovalRules,
    PolicyDecision,
    Vote,
    decide,
    required_approvals,
)
from backfills.orchestration.contributors import contributor_tags, request_facts
from backfills.orchestration.stale_downstream import stale_downstream
from backfills.resources.approvals_store import ApprovalStore, request_id_for
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import ApprovalRequest, BatchManifest, NotAVote, Release, VoteRecord
from backfills.resources.lifecycle import BatchState

# A poster that crashed mid-post holds the lease this long; then the next caller looks for the message first.
POSTING_LEASE = timedelta(minutes=2)
OPEN_REQUEST_STATES = frozenset({"posting", "pending"})
VETOED = "vetoed"  # the audit event and the request's notice of a rejection counted after approval


@dataclass(frozen=True)
class Completion:
    """The end of the backfill that wrote a batch: the partitions it targeted, and what went wrong."""

    expected: dict[str, list[str]]
    note: str | None = None  # why the batch is incomplete (failed or canceled runs); None when all succeeded


# Asked for a batch whose completion is not recorded yet; None while its runs are still going.
CompletionProbe = Callable[[BatchManifest], Completion | None]


@dataclass(frozen=True)
class PromotionDue:
    """An approved batch whose promotion should run (the run key makes a second launch a no-op)."""

    batch_id: str
    request_id: str

    @property
    def run_key(self) -> str:
        return f"promote:{self.request_id}"


@dataclass
class FlowReport:
    """What one pass did, for the sensor's log and skip reason."""

    promotions: list[PromotionDue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def newer_batch_serving(catalog: ReleaseCatalog, batch: BatchManifest, release: Release | None) -> str | None:
    """A batch created after this one that production serves for some of this batch's partitions, if any.

    Publishing this batch would put older data over it: the request is superseded, promotion is stale.
    """
    if release is None:
        return None
    created: dict[str, datetime] = {}
    for table, days in batch.tables.items():
        served = catalog.served(release, table, days=days)
        for day in days:
            entry = served.get(day)
            if entry is None or entry.batch_id == batch.batch_id:
                continue
            if entry.batch_id not in created:
                created[entry.batch_id] = catalog.get_batch(entry.batch_id).created_at
            if created[entry.batch_id] > batch.created_at:
                return entry.batch_id
    return None


def policy_votes(records: Sequence[VoteRecord]) -> list[Vote]:
    return [
        Vote(
            user_id=record.user_id,
            decision=record.decision,
            at=record.at,
            display_name=record.display_name,
            is_bot=record.is_bot,
            is_deactivated=record.deactivated,
            source=record.source,  # type: ignore[arg-type]
            permalink=record.permalink,
        )
        for record in records
    ]


def _vote_key(record: VoteRecord) -> tuple[str, str, str, str]:
    # A reaction has no time of its own in Slack: the same user's same reaction is the same vote.
    moment = "" if record.source == "reaction" else record.at.isoformat()
    return (record.user_id, record.decision, record.source, moment)


def _reply_key(record: NotAVote) -> tuple[str, str]:
    # A reply is read again on every pass: who wrote it and when is what makes it the same reply.
    return (record.user_id, record.at.isoformat())


def merge_votes(seen: Sequence[VoteRecord], observed: Sequence[VoteRecord]) -> list[VoteRecord]:
    """The votes observed now, each keeping the time it was first seen (how reactions get a time)."""
    first_seen = {_vote_key(record): record.at for record in seen}
    return [
        record.model_copy(update={"at": first_seen.get(_vote_key(record), record.at)}) for record in observed
    ]


def _judged(records: list[VoteRecord], decision: PolicyDecision) -> list[VoteRecord]:
    counted = {(v.user_id, v.decision, v.source, v.at) for v in (*decision.approvals, *decision.rejections)}
    reasons = {
        (i.vote.user_id, i.vote.decision, i.vote.source, i.vote.at): i.reason for i in decision.ignored
    }
    judged = []
    for record in records:
        key = (record.user_id, record.decision, record.source, record.at)
        judged.append(
            record.model_copy(update={"counted": key in counted, "ignored_because": reasons.get(key)})
        )
    return judged


_OUTCOME_TEXT = {
    "approved": "Approved: {summary}. Promotion (promote_batch) follows; its outcome will be told here.",
    "rejected": "Rejected: {summary}. Nothing is promoted; the batch stays in staging for inspection.",
    "expired": "Expired: {summary}. Nothing is promoted; launch the backfill again to ask anew.",
    "superseded": "Superseded: {summary}. Nothing is promoted.",
}
# One line, once per reply: how to decide in a way that counts.
_NOT_COUNTED_TEXT = (
    "{name}'s reply was not counted: {reason}. To approve, reply exactly `approve` (nothing else) or react "
    ":white_check_mark:; to reject, reply `reject: reason` or react :x:."
)


class ApprovalFlow:
    """Moves batches through notice, request and decision. `now` is a function so tests can set the clock."""

    def __init__(
        self,
        catalog: ReleaseCatalog,
        channel: ApprovalChannel,
        rules: ApprovalRules,
        links: Links,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.catalog = catalog
        self.approvals = ApprovalStore(catalog.store)
        self.channel = channel
        self.rules = rules
        self.links = links
        self.now = now

    def run(self, completion: CompletionProbe) -> FlowReport:
        """One pass over every batch not yet settled (rejected or published); a failure on one batch (Slack
        down, a bad manifest) is reported and the others still move."""
        report = FlowReport()
        for batch in self.catalog.list_batches():
            if batch.state.settled and batch.state != BatchState.CANARY:
                continue
            try:
                due = self.process(batch.batch_id, completion, report)
            except BackfillsError as error:
                report.errors.append(f"batch {batch.batch_id}: {type(error).__name__}: {error}")
                continue
            if due is not None:
                report.promotions.append(due)
        return report

    def process(
        self, batch_id: str, completion: CompletionProbe, report: FlowReport | None = None
    ) -> PromotionDue | None:
        """Move one batch as far as it can go now; a promotion to launch when it is approved."""
        report = report if report is not None else FlowReport()
        batch = self.catalog.get_batch(batch_id)
        if batch.state == BatchState.CANARY:
            self._watch_for_veto(batch, self.approvals.latest(batch_id))
            return None
        if batch.state.settled:
            return None
        if batch.completed_at is None:
            done = completion(batch)
            if done is None:
                waits = waiting_summary(batch, FEATURES_BY_NAME)
                report.notes.append(
                    f"batch {batch_id}: its backfill is still running" + (f"; {waits}" if waits else "")
                )
                return None
            batch = self.catalog.mark_complete(batch_id, done.expected, note=done.note)
        if batch.state == BatchState.BLOCKED:
            self._notice_once(batch, "blocked", blocked_message(batch, self.links), report)
            return None
        if batch.completion_note or batch.missing_partitions():
            self._notice_once(batch, "incomplete", incomplete_message(batch, self.links), report)
            return None
        if not batch.state.promotable:
            report.notes.append(f"batch {batch_id}: {batch.state}, waiting for its checks")
            return None
        request = self._current_request(batch)
        if request.status == "approved" and self._watch_for_veto(batch, request):
            report.notes.append(f"batch {batch_id}: approved, then vetoed: not promoted")
            return None
        if request.status == "posting":
            request = self._post(batch, request)
        if request.status == "pending":
            request = self._decide(batch, request)
        self._tell_not_counted(batch, request)
        self._tell_outcome(request)
        report.notes.append(f"batch {batch_id}: request {request.status}")
        if request.status == "approved":
            return PromotionDue(batch_id, request.request_id)
        return None

    # Notices

    def _notice_once(
        self, batch: BatchManifest, kind: str, message: ChannelMessage, report: FlowReport
    ) -> None:
        if not self.approvals.claim_notice(batch.batch_id, kind):
            return
        try:
            self.channel.announce(message)
        except BackfillsError:
            self.approvals.release_notice(batch.batch_id, kind)  # try again on the next pass
            raise
        self.catalog.append_event(
            f"{kind}_notice",
            batch_id=batch.batch_id,
            actor=batch.requester,
            tables=batch.partitions_by_table(),
            details={"message": message.text},
        )
        report.notes.append(f"batch {batch.batch_id}: {kind} notice sent")

    # Requests

    def _current_request(self, batch: BatchManifest) -> ApprovalRequest:
        """The request for the batch's content now, created if needed; older content's open requests close."""
        fingerprint = batch.fingerprint()
        request_id = request_id_for(batch.batch_id, fingerprint)
        for old in self.approvals.for_batch(batch.batch_id):
            if old.request_id != request_id and old.status in OPEN_REQUEST_STATES:
                closed = self._close(
                    batch,
                    old,
                    "superseded",
                    f"the batch's content changed after this request (partitions were recomputed); "
                    f"request {request_id} asks about the new content",
                )
                self._tell_outcome(closed)
        try:
            return self.approvals.get(batch.batch_id, request_id)
        except ApprovalNotFoundError:
            pass
        now = self.now()
        identities = self._identities(batch)
        self.approvals.create(
            ApprovalRequest(
                request_id=request_id,
                batch_id=batch.batch_id,
                fingerprint=fingerprint,
                requester=batch.requester,
                channel=self.channel.kind,
                contributors=identities,
                created_at=now,
                expires_at=now + self.rules.expires_after,
                required=required_approvals(request_facts(batch, now, identities), self.rules),
            )
        )
        return self.approvals.get(batch.batch_id, request_id)

    def _post(self, batch: BatchManifest, request: ApprovalRequest) -> ApprovalRequest:
        """Post the request once: take the posting lease, look for an earlier attempt's post, post, record."""
        now = self.now()

        def lease(current: ApprovalRequest) -> ApprovalRequest:
            if current.status != "posting":
                return current
            if current.posting_claimed_at is not None and now - current.posting_claimed_at < POSTING_LEASE:
                raise _LeaseHeld()
            return current.model_copy(
                update={"posting_claimed_at": now, "post_attempts": current.post_attempts + 1}
            )

        try:
            request = self.approvals.update(batch.batch_id, request.request_id, lease)
        except _LeaseHeld:
            return self.approvals.get(batch.batch_id, request.request_id)
        if request.status != "posting":
            return request
        stale = stale_downstream(self.catalog, batch, self.catalog.current_release())
        message = request_message(batch, request, self.rules.approvers, self.links, stale)
        try:
            # An earlier attempt may have posted, then crashed or lost Slack's answer, before recording it.
            posted = self.channel.find_request(request) if request.post_attempts > 1 else None
            if posted is None:
                posted = self.channel.post_request(request, message)
        except BackfillsError:
            self.approvals.update(
                batch.batch_id,
                request.request_id,
                lambda current: current.model_copy(update={"posting_claimed_at": None}),
            )
            raise

        def record(current: ApprovalRequest) -> ApprovalRequest:
            if current.status != "posting":
                return current
            return current.model_copy(
                update={
                    "status": "pending",
                    "slack_channel": posted.slack_channel,
                    "message_ts": posted.ts,
                    "permalink": posted.permalink,
                    "posted_at": self.now(),
                    "summary": message.text,
                }
            )

        request = self.approvals.update(batch.batch_id, request.request_id, record)
        self.catalog.append_event(
            "approval_requested",
            batch_id=batch.batch_id,
            actor=batch.requester,
            tables=batch.partitions_by_table(),
            details={
                "request_id": request.request_id,
                "channel": request.channel,
                "permalink": request.permalink,
                "fingerprint": request.fingerprint,
                "required": request.required,
                "expires_at": request.expires_at.isoformat(),
            },
        )
        return request

    # Decisions

    def _decide(self, batch: BatchManifest, request: ApprovalRequest) -> ApprovalRequest:
        now = self.now()
        reading = self.channel.read_votes(request, now)
        request = self._note_not_votes(batch, request, reading.not_votes)
        observed = merge_votes(request.votes, reading.votes)
        # Resolved on every reading: a rerun may add a contributor without changing the batch's content.
        identities = self._identities(batch)
        facts = request_facts(
            batch,
            request.created_at,
            identities,
            superseded_by=newer_batch_serving(self.catalog, batch, self.catalog.current_release()),
        )
        decision = decide(facts, policy_votes(observed), self.rules, now)
        judged = {
            "votes": _judged(observed, decision),
            "contributors": identities,
            "required": decision.required,
        }
        if decision.outcome == "pending":

            def note_votes(current: ApprovalRequest) -> ApprovalRequest:
                if current.status != "pending":
                    return current
                return current.model_copy(update={**judged, "decision_summary": decision.summary})

            return self.approvals.update(batch.batch_id, request.request_id, note_votes)
        return self._close(batch, request, decision.outcome, decision.summary, judged, decision.decided_at)

    def _watch_for_veto(self, batch: BatchManifest, request: ApprovalRequest) -> bool:
        """Between approval and production (promotion not yet run, or a canary open), a counted rejection
        still vetoes the batch: the votes read now go onto the request, so that promotion and canary
        completion, which judge the recorded votes again, refuse it; the thread and the audit trail are told
        once. Nothing else changes (an open canary keeps serving its slice until an operator rolls it back).
        New votes that do not veto are recorded with why they did not count. Returns whether the batch is
        vetoed."""
        if request.status != "approved":
            return False
        now = self.now()
        observed = merge_votes(request.votes, self.channel.read_votes(request, now).votes)
        if {_vote_key(vote) for vote in observed} <= {_vote_key(vote) for vote in request.votes}:
            return VETOED in request.notices  # nothing new since the last reading
        facts = request_facts(batch, request.created_at, request.contributors)
        decision = decide(facts, policy_votes(observed), self.rules, now)
        veto = decision.outcome == "rejected"
        first = veto and VETOED not in request.notices

        def vetoed(current: ApprovalRequest) -> ApprovalRequest:
            if current.status != "approved":
                return current
            notices = [*current.notices, VETOED] if first else current.notices
            return current.model_copy(update={"votes": _judged(observed, decision), "notices": notices})

        request = self.approvals.update(batch.batch_id, request.request_id, vetoed)
        if first:
            self.catalog.append_event(
                VETOED,
                batch_id=batch.batch_id,
                actor=", ".join(vote.user_id for vote in decision.rejections),
                tables=batch.partitions_by_table(),
                details={"request_id": request.request_id, "summary": decision.summary},
            )
            after = (
                "its open canary cannot complete; roll it back with `backfills rollback --reason ...`"
                if batch.state == BatchState.CANARY
                else "it will not be promoted"
            )
            self.channel.reply(request, f"Vetoed after approval: {decision.summary}; {after}.")
        return veto

    def _identities(self, batch: BatchManifest) -> dict[str, str | None]:
        """The user ID of the channel that each requester tag of the batch stands for (None: no one)."""
        return self.channel.approver_ids(contributor_tags(batch))

    def _note_not_votes(
        self, batch: BatchManifest, request: ApprovalRequest, read: Sequence[NotAVote]
    ) -> ApprovalRequest:
        """Keep each reply that names a decision but is not a vote, and record it in the audit trail once,
        however many passes read it (the compare-and-swap lets only one caller find it new)."""
        new: list[NotAVote] = []

        def note(current: ApprovalRequest) -> ApprovalRequest:
            nonlocal new
            seen = {_reply_key(record) for record in current.not_votes}
            unseen = {_reply_key(record): record for record in read if _reply_key(record) not in seen}
            new = list(unseen.values()) if current.status in OPEN_REQUEST_STATES else []
            if not new:
                return current
            return current.model_copy(update={"not_votes": [*current.not_votes, *new]})

        if not read:
            return request
        request = self.approvals.update(batch.batch_id, request.request_id, note)
        for record in new:
            self.catalog.append_event(
                "reply_not_counted",
                batch_id=batch.batch_id,
                actor=record.user_id,
                tables=batch.partitions_by_table(),
                details={
                    "request_id": request.request_id,
                    "display_name": record.display_name,
                    "text": record.text,
                    "reason": record.reason,
                    "at": record.at.isoformat(),
                    "permalink": record.permalink,
                },
            )
        return request

    def _close(
        self,
        batch: BatchManifest,
        request: ApprovalRequest,
        outcome: str,
        summary: str,
        judged: dict[str, object] | None = None,
        decided_at: datetime | None = None,
    ) -> ApprovalRequest:
        """Record a final outcome, with what the policy judged it on (the votes, the contributors and the
        approvals required) when it decided (catalog first: the batch is sealed before anyone is told)."""

        def close(current: ApprovalRequest) -> ApprovalRequest:
            if current.status not in OPEN_REQUEST_STATES:
                return current
            update: dict[str, object] = {
                "status": outcome,
                "decision_summary": summary,
                "decided_at": decided_at or self.now(),
                **(judged or {}),
            }
            return current.model_copy(update=update)

        closed = self.approvals.update(batch.batch_id, request.request_id, close)
        if closed.status != outcome:
            return closed  # another caller decided first
        if outcome in (BatchState.APPROVED, BatchState.REJECTED):
            self.catalog.move_batch(batch.batch_id, BatchState(outcome))
        self.catalog.append_event(
            outcome,
            batch_id=batch.batch_id,
            actor=", ".join(a.user_id for a in closed.approvers) if outcome == "approved" else None,
            tables=batch.partitions_by_table(),
            details={
                "request_id": closed.request_id,
                "summary": summary,
                "votes": [vote.model_dump(mode="json") for vote in closed.votes],
                "not_votes": [record.model_dump(mode="json") for record in closed.not_votes],
            },
        )
        return closed

    def _tell_not_counted(self, batch: BatchManifest, request: ApprovalRequest) -> None:
        """While the request is open, tell the thread once per reply of an approver that was not counted, so
        they can decide in a way that counts; a failure to tell is retried on the next pass."""
        if request.status != "pending":
            return
        facts = request_facts(batch, request.created_at, request.contributors)
        for record in request.not_votes:
            notice = f"not_counted:{record.user_id}:{record.at.isoformat()}"
            may_decide = record.user_id in self.rules.approvers and not facts.wrote_into_batch(record.user_id)
            if not may_decide or notice in request.notices:
                continue
            name = record.display_name or record.user_id
            self.channel.reply(request, _NOT_COUNTED_TEXT.format(name=name, reason=record.reason))
            request = self.approvals.update(
                request.batch_id,
                request.request_id,
                lambda current, notice=notice: current.model_copy(
                    update={"notices": [*current.notices, notice]}
                ),
            )

    def _tell_outcome(self, request: ApprovalRequest) -> None:
        """Tell the thread a final outcome once; a failure to tell is retried on the next pass."""
        template = _OUTCOME_TEXT.get(request.status)
        if template is None or request.status in request.notices:
            return
        self.channel.reply(request, template.format(summary=request.decision_summary or request.status))
        self.approvals.update(
            request.batch_id,
            request.request_id,
            lambda current: current.model_copy(update={"notices": [*current.notices, request.status]}),
        )


class _LeaseHeld(Exception):
    """Another caller is posting this request right now."""
