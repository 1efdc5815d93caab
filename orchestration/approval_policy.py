"""Approval policy: decides from the votes on a request whether a batch is approved, rejected or expired.

Also closes superseded batches. Pure and deterministic given `now`: no I/O, no Dagster, no Slack.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

from backfills.errors import ConfigurationError, InvalidRequestError

Decision = Literal["approve", "reject"]
Outcome = Literal["pending", "approved", "rejected", "expired", "superseded"]
VoteSource = Literal["reaction", "reply", "cli"]


@dataclass(frozen=True)
class Vote:
    """One approve or reject by one user: a Slack reaction or reply, or `backfills approve --as USER`."""

    user_id: str
    decision: Decision
    at: datetime
    display_name: str | None = None
    is_bot: bool = False
    is_deactivated: bool = False  # the account was deactivated (a Slack user whom users.info says is deleted)
    source: VoteSource = "reaction"
    permalink: str | None = None

    def __post_init__(self) -> None:
        if not self.user_id:
            raise InvalidRequestError("a vote needs the user ID of who cast it")
        if self.decision not in get_args(Decision):
            raise InvalidRequestError(
                f"vote by {self.user_id}: decision must be 'approve' or 'reject', got {self.decision!r}"
            )
        if self.source not in get_args(VoteSource):
            raise InvalidRequestError(
                f"vote by {self.user_id}: source must be one of {', '.join(get_args(VoteSource))}, "
                f"got {self.source!r}"
            )
        _require_aware(self.at, f"vote by {self.user_id}")


@dataclass(frozen=True)
class ApprovalRules:
    """Who may approve, how many approvals a batch needs, and how long a request stays open.

    `approvers` holds user IDs; the caller resolves a Slack user group to its members' IDs.
    """

    approvers: frozenset[str]
    quorum: int = 1
    expires_after: timedelta = timedelta(hours=72)

    def __post_init__(self) -> None:
        # A string would pass `in` checks by substring ("U1" in "U12,U3"), so refuse it outright.
        if isinstance(self.approvers, str):
            raise ConfigurationError(
                f"approvers must be a collection of user IDs, not the string {self.approvers!r}"
            )
        object.__setattr__(self, "approvers", frozenset(self.approvers))
        if not self.approvers:
            raise ConfigurationError(
                "the approvers allowlist is empty: name at least one user ID (or a Slack user group) "
                "allowed to approve batches"
            )
        if any(not isinstance(user, str) or not user.strip() for user in self.approvers):
            raise ConfigurationError(
                f"the approvers allowlist has a blank or non-text entry: {sorted(map(repr, self.approvers))}"
            )
        if isinstance(self.quorum, bool) or not isinstance(self.quorum, int) or self.quorum < 1:
            raise ConfigurationError(
                f"approval quorum must be a whole number of at least 1, got {self.quorum!r}"
            )
        if self.quorum > len(self.approvers):
            raise ConfigurationError(
                f"approval quorum {self.quorum} is more than the {len(self.approvers)} approvers on the "
                f"allowlist ({', '.join(sorted(self.approvers))}): no batch could ever be approved; "
                "lower the quorum or add approvers"
            )
        if not isinstance(self.expires_after, timedelta) or self.expires_after <= timedelta(0):
            raise ConfigurationError(
                f"approval expiry must be a positive duration, got {self.expires_after!r}"
            )


@dataclass(frozen=True)
class RequestFacts:
    """What the policy needs to know about one approval request.

    `requester` is the user ID of who launched the backfill, None when unknown. `contributors` are the user
    IDs of everyone else who wrote into the batch (a rerun into someone else's batch makes its author one);
    `unknown_contributors` names, as written, those who wrote into it but are no known user (a run that
    named nobody, a name no user ID resolves to). `superseded_by` names a newer promoted batch covering the
    same partitions.
    """

    batch_id: str
    requester: str | None
    requested_at: datetime
    superseded_by: str | None = None
    contributors: frozenset[str] = frozenset()
    unknown_contributors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.batch_id:
            raise InvalidRequestError("an approval request needs the ID of its batch")
        if self.requester == "":
            raise InvalidRequestError(
                f"batch {self.batch_id}: requester must be a user ID, or None when unknown, not ''"
            )
        if "" in self.contributors:
            raise InvalidRequestError(
                f"batch {self.batch_id}: contributors must be user IDs, not '' (name an unknown one in "
                "unknown_contributors)"
            )
        _require_aware(self.requested_at, f"approval request for batch {self.batch_id}")

    def wrote_into_batch(self, user_id: str) -> bool:
        """Whether the user requested the batch or wrote into it: such a user may not decide on it."""
        return user_id == self.requester or user_id in self.contributors


def required_approvals(request: RequestFacts, rules: ApprovalRules) -> int:
    """The quorum, or one more when who requested or wrote into the batch is not all known: one of the
    approvers could be one of them."""
    return rules.quorum if why_one_more(request) is None else rules.quorum + 1


def why_one_more(request: RequestFacts) -> str | None:
    """Why the request needs one approval more than the quorum, in the users' words; None when it does not."""
    if request.unknown_contributors:
        return f"not everyone who wrote into the batch is known: {', '.join(request.unknown_contributors)}"
    if request.requester is None:
        return "the batch's requester is unknown"
    return None


@dataclass(frozen=True)
class IgnoredVote:
    """A vote that does not count, with the reason in the users' words."""

    vote: Vote
    reason: str


@dataclass(frozen=True)
class PolicyDecision:
    """The outcome of an approval request and the evidence for it.

    `decided_at` is the time of the vote that reached quorum (approved), of the first counted rejection
    (rejected), or the expiry time (expired); None while pending or when superseded.
    """

    outcome: Outcome
    approvals: tuple[Vote, ...]
    rejections: tuple[Vote, ...]
    ignored: tuple[IgnoredVote, ...]
    required: int
    decided_at: datetime | None
    expires_at: datetime
    summary: str


def decide(
    request: RequestFacts, votes: Sequence[Vote], rules: ApprovalRules, now: datetime
) -> PolicyDecision:
    """Decide an approval request from every vote seen on it so far.

    Which votes count, in this order:
    - Votes from bots, from deactivated accounts, from the requester and everyone else who wrote into the
      batch (who can neither approve nor reject what they wrote) and from users not on the allowlist are
      ignored. With no known requester, or anyone unknown among those who wrote into the batch,
      `quorum + 1` approvals are required, since one of the approvers could be one of them.
    - Votes dated before the request, or after it expired (`requested_at + expires_after`), are ignored.
      The deadline itself is inclusive: the request is open up to and including `expires_at`.
    - Each user counts once: their latest remaining vote, so they can change their mind until the deadline.
      If their latest votes tie on time and disagree, the rejection counts (the safe side).

    Then the outcome:
    - superseded, whatever the votes, if a newer promoted batch covers the same partitions;
    - rejected if any counted vote is a rejection. A "no" from an allowed approver is a veto: it wins over
      approvals cast at any time before the deadline, even when quorum was reached before the rejection came.
      While the request is open the batch has not been promoted, so the veto is the safe side. Once the
      sensor has acted on "approved" (launched promotion), it records that decision and stops asking;
    - approved if the counted approvals reach the required number, even when `now` is past the deadline;
    - expired if `now` is past the deadline;
    - pending otherwise.

    Every tuple in the result is sorted by (time, user ID), so the same votes in any order decide the same.
    """
    _require_aware(now, f"the time of the decision on batch {request.batch_id}")
    expires_at = request.requested_at + rules.expires_after
    required = required_approvals(request, rules)

    ignored: list[IgnoredVote] = []
    notes: list[str] = []
    by_user: dict[str, list[Vote]] = {}
    for vote in sorted(votes, key=_vote_order):
        exclusion = _exclusion(vote, request, rules, expires_at)
        if exclusion is None:
            by_user.setdefault(vote.user_id, []).append(vote)
        else:
            reason, note = exclusion
            ignored.append(IgnoredVote(vote, reason))
            notes.append(note)

    counted: list[Vote] = []
    for user_votes in by_user.values():
        # `_vote_order` puts a rejection after an approval cast at the same time, so the last vote is the one
        # that counts, ties going to the rejection.
        final = user_votes[-1]
        counted.append(final)
        ignored.extend(IgnoredVote(vote, _superseded_reason(vote, final)) for vote in user_votes[:-1])

    approvals = tuple(sorted((v for v in counted if v.decision == "approve"), key=_vote_order))
    rejections = tuple(sorted((v for v in counted if v.decision == "reject"), key=_vote_order))
    outcome: Outcome
    decided_at: datetime | None = None
    if request.superseded_by is not None:
        outcome = "superseded"
    elif rejections:
        outcome, decided_at = "rejected", rejections[0].at
    elif len(approvals) >= required:
        outcome, decided_at = "approved", approvals[required - 1].at
    elif now > expires_at:
        outcome, decided_at = "expired", expires_at
    else:
        outcome = "pending"

    return PolicyDecision(
        outcome=outcome,
        approvals=approvals,
        rejections=rejections,
        ignored=tuple(sorted(ignored, key=lambda item: _vote_order(item.vote))),
        required=required,
        decided_at=decided_at,
        expires_at=expires_at,
        summary=_summary(outcome, request, rules, approvals, rejections, required, expires_at, notes),
    )


def _require_aware(moment: datetime, what: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidRequestError(
            f"{what}: time {moment.isoformat()} has no time zone; pass a timezone-aware UTC time "
            "such as datetime.now(UTC)"
        )


def _vote_order(vote: Vote) -> tuple[datetime, str, bool, str, str]:
    return (vote.at, vote.user_id, vote.decision == "reject", vote.source, vote.permalink or "")


def _exclusion(
    vote: Vote, request: RequestFacts, rules: ApprovalRules, expires_at: datetime
) -> tuple[str, str] | None:
    """Why a vote does not count, as (reason for the record, clause for the summary); None if it may count."""
    ignored_because = f"{_name(vote)}'s {_kind(vote)} was ignored because"
    if vote.is_bot:
        return (
            f"{_who(vote)} is a bot; votes from bots do not count",
            f"{ignored_because} {_name(vote)} is a bot",
        )
    if vote.is_deactivated:
        return (
            f"{_who(vote)} is a deactivated account; votes from deactivated accounts do not count",
            f"{ignored_because} {_name(vote)}'s account is deactivated",
        )
    verb = "approve" if vote.decision == "approve" else "reject"
    if vote.user_id == request.requester:
        return (
            f"{_who(vote)} requested this batch and cannot {verb} it",
            f"{ignored_because} {_name(vote)} requested the batch",
        )
    if vote.user_id in request.contributors:
        return (
            f"{_who(vote)} staged partitions of this batch and cannot {verb} it",
            f"{ignored_because} {_name(vote)} staged partitions of the batch",
        )
    if vote.user_id not in rules.approvers:
        return (
            f"{_who(vote)} is not on the approvers allowlist",
            f"{ignored_because} {_name(vote)} is not on the approvers allowlist",
        )
    if vote.at < request.requested_at:
        return (
            f"the {_kind(vote)} by {_who(vote)} at {_time(vote.at)} was cast before this batch was "
            f"requested at {_time(request.requested_at)}, so it cannot be about this request",
            f"{ignored_because} it was cast before the batch was requested",
        )
    if vote.at > expires_at:
        return (
            f"the {_kind(vote)} by {_who(vote)} at {_time(vote.at)} was cast after the request expired "
            f"at {_time(expires_at)}",
            f"{ignored_because} it was cast after the request expired",
        )
    return None


def _superseded_reason(vote: Vote, final: Vote) -> str:
    this = f"the {_kind(vote)} by {_who(vote)} at {_time(vote.at)}"
    if final.at > vote.at:
        return f"{this} was superseded by their later {_kind(final)} at {_time(final.at)}"
    if final.decision != vote.decision:
        return f"{this} conflicts with their {_kind(final)} at the same time; the {_kind(final)} counts"
    return f"{this} repeats their {_kind(final)} at the same time, which counts once"


def _summary(
    outcome: Outcome,
    request: RequestFacts,
    rules: ApprovalRules,
    approvals: tuple[Vote, ...],
    rejections: tuple[Vote, ...],
    required: int,
    expires_at: datetime,
    notes: list[str],
) -> str:
    """One sentence for the Slack thread, the logs and error messages."""
    if outcome == "superseded":
        return (
            f"superseded by batch {request.superseded_by}, a newer promoted batch covering the same "
            f"partitions; votes on batch {request.batch_id} no longer count"
        )
    if outcome == "rejected":
        head = f"rejected by {_names(rejections)}"
        if approvals:
            head += f", a veto over the approvals of {_names(approvals)} ({_count(approvals, required)})"
    elif outcome == "approved":
        head = f"approved by {_names(approvals)} ({_count(approvals, required)})"
    else:
        status = "pending:" if outcome == "pending" else f"expired at {_time(expires_at)} with"
        head = f"{status} {_count(approvals, required)} approvals"
        if approvals:
            head += f" ({_names(approvals)})"
    clauses = [head]
    unknown = why_one_more(request)
    if unknown is not None and outcome != "rejected":
        more = f"{required} approvals are required, one more than the quorum of {rules.quorum}"
        clauses.append(f"{more}, because {unknown}")
    eligible = {user for user in rules.approvers if not request.wrote_into_batch(user)}
    if outcome in ("pending", "expired") and required > len(eligible):
        clauses.append(f"it can never be approved: only {len(eligible)} allowlisted approvers may vote on it")
    clauses.extend(dict.fromkeys(notes))
    return "; ".join(clauses)


def _who(vote: Vote) -> str:
    """A user as the record names them: ID, and display name when known."""
    if vote.display_name and vote.display_name != vote.user_id:
        return f"{vote.user_id} ({vote.display_name})"
    return vote.user_id


def _name(vote: Vote) -> str:
    return vote.display_name or vote.user_id


def _names(votes: Iterable[Vote]) -> str:
    names = list(dict.fromkeys(_name(vote) for vote in votes))
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _count(approvals: tuple[Vote, ...], required: int) -> str:
    if len(approvals) > required:
        return f"{len(approvals)} approvals, {required} required"
    return f"{len(approvals)} of {required}"


def _kind(vote: Vote) -> str:
    return "approval" if vote.decision == "approve" else "rejection"


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
