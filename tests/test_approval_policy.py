"""The approval policy as approvers and requesters live it: who counts, quorum, veto, expiry, supersession."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest

from backfills.errors import ConfigurationError, InvalidRequestError
from backfills.orchestration.approval_policy import (
    ApprovalRules,
    Decision,
    PolicyDecision,
    RequestFacts,
    Vote,
    decide,
)
from backfills.orchestration.contributors import request_facts
from backfills.resources.catalog_models import BatchManifest

REQUESTED_AT = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
EXPIRES_AT = REQUESTED_AT + timedelta(hours=72)
NOW = REQUESTED_AT + timedelta(hours=1)
NAMES = {"U_ALICE": "alice", "U_BOB": "bob", "U_CAROL": "carol", "U_DAVE": "dave", "U_EVE": "eve"}
TEAM = frozenset({"U_ALICE", "U_BOB", "U_CAROL", "U_DAVE"})
TWO_OF_TEAM = ApprovalRules(approvers=TEAM, quorum=2)


def vote(user: str, decision: Decision = "approve", minutes: float = 10, **fields: object) -> Vote:
    """A vote by a team member, `minutes` after the request was posted."""
    return Vote(
        user_id=user,
        decision=decision,
        at=REQUESTED_AT + timedelta(minutes=minutes),
        display_name=NAMES.get(user),
        **fields,  # type: ignore[arg-type]
    )


def request(
    requester: str | None = "U_BOB", superseded_by: str | None = None, **facts: object
) -> RequestFacts:
    return RequestFacts(
        batch_id="b-9f2c",
        requester=requester,
        requested_at=REQUESTED_AT,
        superseded_by=superseded_by,
        **facts,  # type: ignore[arg-type]
    )


def reasons(result: PolicyDecision) -> list[str]:
    return [item.reason for item in result.ignored]


# Who counts


def test_requester_cannot_approve_their_own_batch() -> None:
    votes = [vote("U_ALICE"), vote("U_BOB", minutes=5), vote("U_BOB", minutes=6, source="reply")]

    result = decide(request(requester="U_BOB"), votes, TWO_OF_TEAM, NOW)

    assert result.outcome == "pending"
    assert [v.user_id for v in result.approvals] == ["U_ALICE"]
    assert reasons(result) == ["U_BOB (bob) requested this batch and cannot approve it"] * 2
    # Two ignored votes by the same person make one clause, not two.
    assert result.summary == (
        "pending: 1 of 2 approvals (alice); bob's approval was ignored because bob requested the batch"
    )


def test_requester_cannot_reject_their_own_batch_either() -> None:
    votes = [vote("U_ALICE"), vote("U_CAROL", minutes=20), vote("U_BOB", "reject", minutes=30)]

    result = decide(request(requester="U_BOB"), votes, TWO_OF_TEAM, NOW)

    assert result.outcome == "approved"
    assert result.rejections == ()
    assert reasons(result) == ["U_BOB (bob) requested this batch and cannot reject it"]


def test_requester_off_the_allowlist_is_told_they_requested_the_batch() -> None:
    result = decide(request(requester="U_EVE"), [vote("U_EVE")], TWO_OF_TEAM, NOW)

    assert reasons(result) == ["U_EVE (eve) requested this batch and cannot approve it"]


def test_votes_from_users_off_the_allowlist_do_not_count() -> None:
    votes = [vote("U_ALICE"), vote("U_EVE", minutes=11), vote("U_MALLORY", "reject", minutes=12)]

    result = decide(request(), votes, TWO_OF_TEAM, NOW)

    assert result.outcome == "pending"
    assert [v.user_id for v in result.approvals] == ["U_ALICE"]
    assert result.rejections == ()
    assert reasons(result) == [
        "U_EVE (eve) is not on the approvers allowlist",
        "U_MALLORY is not on the approvers allowlist",
    ]
    assert "eve's approval was ignored because eve is not on the approvers allowlist" in result.summary
    assert "U_MALLORY's rejection was ignored because U_MALLORY is not on" in result.summary


def test_bot_votes_do_not_count_even_under_an_allowlisted_id() -> None:
    votes = [vote("U_ALICE"), vote("U_CAROL", is_bot=True), vote("U_DAVE", "reject", is_bot=True)]

    result = decide(request(), votes, TWO_OF_TEAM, NOW)

    assert result.outcome == "pending"
    assert [v.user_id for v in result.approvals] == ["U_ALICE"]
    assert reasons(result) == [
        "U_CAROL (carol) is a bot; votes from bots do not count",
        "U_DAVE (dave) is a bot; votes from bots do not count",
    ]


def test_votes_from_deactivated_accounts_do_not_count_not_even_as_a_veto() -> None:
    votes = [
        vote("U_ALICE"),
        vote("U_CAROL", is_deactivated=True),
        vote("U_DAVE", "reject", minutes=20, is_deactivated=True),
    ]

    result = decide(request(), votes, TWO_OF_TEAM, NOW)

    assert result.outcome == "pending" and result.rejections == ()
    assert [v.user_id for v in result.approvals] == ["U_ALICE"]
    assert reasons(result) == [
        "U_CAROL (carol) is a deactivated account; votes from deactivated accounts do not count",
        "U_DAVE (dave) is a deactivated account; votes from deactivated accounts do not count",
    ]
    assert "carol's approval was ignored because carol's account is deactivated" in result.summary


def test_unknown_requester_needs_one_more_approval_than_the_quorum() -> None:
    two = [vote("U_ALICE"), vote("U_CAROL", minutes=20)]

    pending = decide(request(requester=None), two, TWO_OF_TEAM, NOW)
    approved = decide(request(requester=None), [*two, vote("U_DAVE", minutes=30)], TWO_OF_TEAM, NOW)

    assert (pending.outcome, pending.required) == ("pending", 3)
    assert pending.summary == (
        "pending: 2 of 3 approvals (alice and carol); 3 approvals are required, one more than the quorum "
        "of 2, because the batch's requester is unknown"
    )
    assert (approved.outcome, approved.required) == ("approved", 3)
    assert approved.decided_at == REQUESTED_AT + timedelta(minutes=30)


def test_known_requester_needs_exactly_the_quorum() -> None:
    result = decide(request(requester="U_BOB"), [vote("U_ALICE"), vote("U_CAROL")], TWO_OF_TEAM, NOW)

    assert (result.outcome, result.required) == ("approved", 2)


def test_no_one_who_wrote_into_the_batch_can_approve_or_reject_it() -> None:
    # Alice reran partitions into Bob's batch: she is a contributor, as Bob is its requester.
    votes = [vote("U_ALICE"), vote("U_CAROL", minutes=20), vote("U_ALICE", "reject", minutes=30)]

    result = decide(request(contributors=frozenset({"U_ALICE"})), votes, TWO_OF_TEAM, NOW)

    assert (result.outcome, result.required) == ("pending", 2)
    assert [v.user_id for v in result.approvals] == ["U_CAROL"] and result.rejections == ()
    assert reasons(result) == [
        "U_ALICE (alice) staged partitions of this batch and cannot approve it",
        "U_ALICE (alice) staged partitions of this batch and cannot reject it",
    ]
    assert result.summary == (
        "pending: 1 of 2 approvals (carol); alice's approval was ignored because alice staged partitions of "
        "the batch; alice's rejection was ignored because alice staged partitions of the batch"
    )


def test_anyone_unknown_among_who_wrote_into_the_batch_needs_one_more_approval_and_is_named() -> None:
    unknown = ('"Alice Smth"', "a run without a backfills/requester tag")
    two = [vote("U_ALICE"), vote("U_CAROL", minutes=20)]

    pending = decide(request(unknown_contributors=unknown), two, TWO_OF_TEAM, NOW)
    approved = decide(
        request(unknown_contributors=unknown), [*two, vote("U_DAVE", minutes=30)], TWO_OF_TEAM, NOW
    )

    assert (pending.outcome, pending.required) == ("pending", 3)
    assert pending.summary == (
        "pending: 2 of 3 approvals (alice and carol); 3 approvals are required, one more than the quorum "
        'of 2, because not everyone who wrote into the batch is known: "Alice Smth", a run without a '
        "backfills/requester tag"
    )
    assert (approved.outcome, approved.required) == ("approved", 3)


def test_a_batch_everyone_on_the_allowlist_wrote_into_says_it_can_never_be_approved() -> None:
    facts = request(contributors=frozenset({"U_ALICE", "U_CAROL"}))

    result = decide(facts, [vote("U_DAVE")], TWO_OF_TEAM, NOW)

    assert "it can never be approved: only 1 allowlisted approvers may vote on it" in result.summary


def written_by(requester: str, contributors: list[str | None]) -> BatchManifest:
    """Batch b-9f2c as its manifest records who wrote into it (requester tags as written)."""
    return BatchManifest(
        batch_id="b-9f2c",
        created_at=REQUESTED_AT,
        updated_at=REQUESTED_AT,
        requester=requester,
        contributors=contributors,
    )


def test_who_wrote_into_a_batch_is_judged_by_the_user_ids_their_tags_resolve_to() -> None:
    batch = written_by("Bob Jones", ["Bob Jones", "alice@example.com", None, "U_DAVE"])
    # As the channel resolved them at the last reading; U_DAVE's rerun came in after it.
    resolved = {"Bob Jones": "U_BOB", "alice@example.com": "U_ALICE"}

    facts = request_facts(batch, REQUESTED_AT, resolved)

    assert (facts.requester, facts.contributors) == ("U_BOB", {"U_ALICE", "U_DAVE"})
    assert facts.unknown_contributors == ("a run without a backfills/requester tag", '"U_DAVE"')
    result = decide(facts, [vote("U_BOB"), vote("U_ALICE"), vote("U_DAVE")], TWO_OF_TEAM, NOW)
    assert (result.outcome, result.approvals, result.required) == ("pending", (), 3)
    # A request recorded before contributors were resolved takes each tag as the user ID it names.
    assert request_facts(batch, REQUESTED_AT, None).requester == "Bob Jones"


def test_a_blank_requester_tag_names_no_one_and_counts_as_untagged() -> None:
    batch = written_by(" ", [" ", "", "U_DAVE"])

    for identities in ({"U_DAVE": "U_DAVE"}, None):
        facts = request_facts(batch, REQUESTED_AT, identities)
        assert (facts.requester, facts.contributors) == (None, {"U_DAVE"})
        assert facts.unknown_contributors == ("a run without a backfills/requester tag",)


def test_a_request_naming_an_empty_contributor_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="b-9f2c: contributors must be user IDs, not ''"):
        request(contributors=frozenset({"U_ALICE", ""}))


# Each user counts once


def test_an_approver_who_approves_twice_counts_once() -> None:
    votes = [vote("U_ALICE", minutes=10), vote("U_ALICE", minutes=15, source="reply")]

    result = decide(request(), votes, TWO_OF_TEAM, NOW)

    assert result.outcome == "pending"
    assert result.approvals == (votes[1],)
    assert reasons(result) == [
        "the approval by U_ALICE (alice) at 2025-03-03 09:10:00 UTC was superseded by their later approval "
        "at 2025-03-03 09:15:00 UTC"
    ]


def test_an_approver_can_change_their_mind_from_reject_to_approve() -> None:
    votes = [vote("U_ALICE", "reject", minutes=10), vote("U_ALICE", minutes=20), vote("U_CAROL", minutes=30)]

    result = decide(request(), votes, TWO_OF_TEAM, NOW)

    assert result.outcome == "approved"
    assert result.rejections == ()
    assert "superseded by their later approval" in reasons(result)[0]


def test_an_approver_can_withdraw_an_approval_by_rejecting_later() -> None:
    votes = [vote("U_ALICE", minutes=10), vote("U_CAROL", minutes=15), vote("U_ALICE", "reject", minutes=20)]

    result = decide(request(), votes, TWO_OF_TEAM, NOW)

    assert result.outcome == "rejected"
    assert [v.user_id for v in result.approvals] == ["U_CAROL"]
    assert "superseded by their later rejection" in reasons(result)[0]


def test_a_change_of_mind_after_the_deadline_does_not_count() -> None:
    late = (EXPIRES_AT - REQUESTED_AT) / timedelta(minutes=1) + 1
    votes = [vote("U_ALICE"), vote("U_CAROL", minutes=20), vote("U_ALICE", "reject", minutes=late)]

    result = decide(request(), votes, TWO_OF_TEAM, EXPIRES_AT + timedelta(hours=1))

    assert result.outcome == "approved"
    assert result.rejections == ()
    assert reasons(result) == [
        "the rejection by U_ALICE (alice) at 2025-03-06 09:01:00 UTC was cast after the request expired "
        "at 2025-03-06 09:00:00 UTC"
    ]


def test_simultaneous_approve_and_reject_from_one_user_counts_as_the_rejection() -> None:
    # Reaction order must not matter: both orders give the same, safe answer.
    for votes in ([vote("U_ALICE", "reject"), vote("U_ALICE")], [vote("U_ALICE"), vote("U_ALICE", "reject")]):
        result = decide(request(), [*votes, vote("U_CAROL")], TWO_OF_TEAM, NOW)

        assert result.outcome == "rejected"
        assert [v.user_id for v in result.rejections] == ["U_ALICE"]
        assert reasons(result) == [
            "the approval by U_ALICE (alice) at 2025-03-03 09:10:00 UTC conflicts with their rejection "
            "at the same time; the rejection counts"
        ]


# Rejection is a veto


def test_rejection_from_an_allowed_approver_vetoes_a_reached_quorum() -> None:
    votes = [vote("U_ALICE", minutes=10), vote("U_CAROL", minutes=20), vote("U_DAVE", "reject", minutes=30)]

    result = decide(request(), votes, TWO_OF_TEAM, NOW)

    assert result.outcome == "rejected"
    assert result.decided_at == REQUESTED_AT + timedelta(minutes=30)
    assert result.summary == "rejected by dave, a veto over the approvals of alice and carol (2 of 2)"


def test_rejection_cast_before_the_approvals_still_rejects() -> None:
    votes = [vote("U_DAVE", "reject", minutes=5), vote("U_ALICE", minutes=10), vote("U_CAROL", minutes=20)]

    result = decide(request(), votes, TWO_OF_TEAM, NOW)

    assert result.outcome == "rejected"
    assert result.decided_at == REQUESTED_AT + timedelta(minutes=5)


def test_first_counted_rejection_is_the_time_of_the_decision() -> None:
    votes = [vote("U_DAVE", "reject", minutes=40), vote("U_CAROL", "reject", minutes=25)]

    result = decide(request(), votes, TWO_OF_TEAM, NOW)

    assert result.decided_at == REQUESTED_AT + timedelta(minutes=25)
    assert result.summary == "rejected by carol and dave"


def test_rejected_request_stays_rejected_after_the_deadline() -> None:
    result = decide(request(), [vote("U_DAVE", "reject")], TWO_OF_TEAM, EXPIRES_AT + timedelta(days=1))

    assert result.outcome == "rejected"


# Expiry and time


def test_votes_cast_after_the_request_expired_are_ignored() -> None:
    result = decide(
        request(), [Vote("U_ALICE", "approve", EXPIRES_AT + timedelta(seconds=1), "alice")], TWO_OF_TEAM, NOW
    )

    assert result.approvals == ()
    assert reasons(result) == [
        "the approval by U_ALICE (alice) at 2025-03-06 09:00:01 UTC was cast after the request expired "
        "at 2025-03-06 09:00:00 UTC"
    ]


def test_vote_cast_at_the_expiry_instant_still_counts() -> None:
    votes = [vote("U_ALICE"), Vote("U_CAROL", "approve", EXPIRES_AT, "carol")]

    result = decide(request(), votes, TWO_OF_TEAM, EXPIRES_AT)

    assert result.outcome == "approved"
    assert result.decided_at == EXPIRES_AT


def test_request_is_still_pending_at_the_expiry_instant() -> None:
    result = decide(request(), [vote("U_ALICE")], TWO_OF_TEAM, EXPIRES_AT)

    assert (result.outcome, result.decided_at) == ("pending", None)


def test_request_without_enough_approvals_expires_after_the_deadline() -> None:
    result = decide(request(), [vote("U_ALICE")], TWO_OF_TEAM, EXPIRES_AT + timedelta(seconds=1))

    assert result.outcome == "expired"
    assert result.decided_at == EXPIRES_AT
    assert result.summary == "expired at 2025-03-06 09:00:00 UTC with 1 of 2 approvals (alice)"


def test_quorum_reached_before_the_deadline_stays_approved_after_it() -> None:
    votes = [vote("U_ALICE"), vote("U_CAROL", minutes=20)]

    result = decide(request(), votes, TWO_OF_TEAM, EXPIRES_AT + timedelta(days=30))

    assert result.outcome == "approved"
    assert result.decided_at == REQUESTED_AT + timedelta(minutes=20)


def test_expiry_follows_the_configured_duration() -> None:
    rules = ApprovalRules(approvers=TEAM, quorum=1, expires_after=timedelta(hours=1))

    result = decide(request(), [vote("U_ALICE", minutes=61)], rules, REQUESTED_AT + timedelta(hours=2))

    assert result.expires_at == REQUESTED_AT + timedelta(hours=1)
    assert result.outcome == "expired"


def test_votes_dated_before_the_request_are_ignored() -> None:
    result = decide(request(), [vote("U_ALICE", minutes=-1), vote("U_CAROL")], TWO_OF_TEAM, NOW)

    assert result.outcome == "pending"
    assert [v.user_id for v in result.approvals] == ["U_CAROL"]
    assert reasons(result) == [
        "the approval by U_ALICE (alice) at 2025-03-03 08:59:00 UTC was cast before this batch was requested "
        "at 2025-03-03 09:00:00 UTC, so it cannot be about this request"
    ]


def test_times_in_other_zones_are_compared_and_shown_in_utc() -> None:
    paris = timezone(timedelta(hours=1))
    # 10:30 in Paris is 09:30 UTC, so carol's 09:10 UTC vote came first and alice's reached quorum.
    votes = [Vote("U_ALICE", "approve", datetime(2025, 3, 3, 10, 30, tzinfo=paris), "alice"), vote("U_CAROL")]
    late = Vote("U_DAVE", "reject", datetime(2025, 3, 6, 10, 0, 1, tzinfo=paris), "dave")

    result = decide(request(), [*votes, late], TWO_OF_TEAM, NOW)

    assert result.outcome == "approved"
    assert result.decided_at == datetime(2025, 3, 3, 9, 30, tzinfo=UTC)
    assert reasons(result) == [
        "the rejection by U_DAVE (dave) at 2025-03-06 09:00:01 UTC was cast after the request expired "
        "at 2025-03-06 09:00:00 UTC"
    ]


# Superseded batches


@pytest.mark.parametrize(
    "votes",
    [
        [vote("U_ALICE"), vote("U_CAROL")],
        [vote("U_DAVE", "reject")],
        [],
    ],
    ids=["approved", "rejected", "no votes"],
)
def test_superseded_batch_is_closed_whatever_the_votes(votes: list[Vote]) -> None:
    result = decide(request(superseded_by="b-7a1d"), votes, TWO_OF_TEAM, EXPIRES_AT + timedelta(days=1))

    assert result.outcome == "superseded"
    assert result.decided_at is None
    assert result.summary == (
        "superseded by batch b-7a1d, a newer promoted batch covering the same partitions; "
        "votes on batch b-9f2c no longer count"
    )


# Pending and approved, as the thread reads them


def test_pending_request_says_how_many_of_how_many_and_who() -> None:
    nothing_yet = decide(request(), [], TWO_OF_TEAM, NOW)
    one = decide(request(), [vote("U_CAROL")], TWO_OF_TEAM, NOW)

    assert (nothing_yet.outcome, nothing_yet.decided_at, nothing_yet.summary) == (
        "pending",
        None,
        "pending: 0 of 2 approvals",
    )
    assert one.summary == "pending: 1 of 2 approvals (carol)"


def test_approval_is_dated_by_the_vote_that_reached_quorum() -> None:
    votes = [vote("U_DAVE", minutes=45), vote("U_ALICE", minutes=10), vote("U_CAROL", minutes=20)]

    result = decide(request(), votes, TWO_OF_TEAM, NOW)

    assert result.outcome == "approved"
    assert result.decided_at == REQUESTED_AT + timedelta(minutes=20)
    assert result.summary == "approved by alice, carol and dave (3 approvals, 2 required)"


def test_approved_summary_names_the_approvers() -> None:
    result = decide(request(), [vote("U_ALICE"), vote("U_CAROL", minutes=20)], TWO_OF_TEAM, NOW)

    assert result.summary == "approved by alice and carol (2 of 2)"


def test_pending_request_says_when_quorum_is_out_of_reach() -> None:
    rules = ApprovalRules(approvers=frozenset({"U_ALICE", "U_BOB"}), quorum=2)

    result = decide(request(requester="U_BOB"), [vote("U_ALICE")], rules, NOW)

    assert result.outcome == "pending"
    assert "it can never be approved: only 1 allowlisted approvers may vote on it" in result.summary


# Determinism


def test_same_votes_in_any_order_give_the_same_decision() -> None:
    votes = [
        vote("U_ALICE", minutes=10),
        vote("U_ALICE", minutes=10, source="reply"),
        vote("U_CAROL", "reject", minutes=10),
        vote("U_CAROL", minutes=30),
        vote("U_EVE", minutes=5),
        vote("U_BOB", minutes=10),
    ]

    decisions = {decide(request(), list(order), TWO_OF_TEAM, NOW) for order in itertools.permutations(votes)}

    assert len(decisions) == 1
    (result,) = decisions
    assert result.outcome == "approved"
    ignored_order = [(item.vote.at, item.vote.user_id) for item in result.ignored]
    assert ignored_order == sorted(ignored_order)
    assert [v.user_id for v in result.approvals] == ["U_ALICE", "U_CAROL"]


def test_votes_cast_at_the_same_time_are_listed_by_user_id() -> None:
    votes = [vote("U_DAVE"), vote("U_CAROL"), vote("U_ALICE")]

    result = decide(request(), votes, ApprovalRules(approvers=TEAM, quorum=3), NOW)

    assert [v.user_id for v in result.approvals] == ["U_ALICE", "U_CAROL", "U_DAVE"]


# Configuration and inputs


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"approvers": frozenset()}, "allowlist is empty"),
        ({"approvers": "U_ALICE,U_BOB"}, "not the string 'U_ALICE,U_BOB'"),
        ({"approvers": frozenset({"U_ALICE", " "})}, "blank or non-text entry"),
        ({"approvers": TEAM, "quorum": 0}, "quorum must be a whole number of at least 1, got 0"),
        ({"approvers": TEAM, "quorum": -1}, "at least 1, got -1"),
        ({"approvers": TEAM, "quorum": 5}, "quorum 5 is more than the 4 approvers"),
        ({"approvers": TEAM, "expires_after": timedelta(0)}, "expiry must be a positive duration"),
        ({"approvers": TEAM, "expires_after": timedelta(hours=-1)}, "expiry must be a positive duration"),
    ],
    ids=["empty", "string", "blank id", "zero quorum", "negative quorum", "quorum over team", "0s", "-1h"],
)
def test_misconfigured_rules_are_refused_with_a_clear_message(fields: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ApprovalRules(**fields)  # type: ignore[arg-type]


def test_rules_accept_any_collection_of_user_ids() -> None:
    rules = ApprovalRules(approvers={"U_ALICE", "U_BOB"})  # type: ignore[arg-type]

    assert rules.approvers == frozenset({"U_ALICE", "U_BOB"})
    assert (rules.quorum, rules.expires_after) == (1, timedelta(hours=72))


def test_times_without_a_zone_are_refused() -> None:
    naive = datetime(2025, 3, 3, 9, 0)

    with pytest.raises(InvalidRequestError, match="vote by U_ALICE: time 2025-03-03T09:00:00 has no time"):
        Vote("U_ALICE", "approve", naive)
    with pytest.raises(InvalidRequestError, match="approval request for batch b-1: .* has no time zone"):
        RequestFacts("b-1", "U_BOB", naive)
    with pytest.raises(InvalidRequestError, match="decision on batch b-9f2c: .* has no time zone"):
        decide(request(), [], TWO_OF_TEAM, naive)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"user_id": "U_ALICE", "decision": "maybe"}, "decision must be 'approve' or 'reject', got 'maybe'"),
        ({"user_id": "U_ALICE", "decision": "approve", "source": "email"}, "source must be one of"),
        ({"user_id": "", "decision": "approve"}, "needs the user ID"),
    ],
)
def test_malformed_votes_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        Vote(at=REQUESTED_AT, **fields)  # type: ignore[arg-type]


def test_an_empty_requester_is_refused_rather_than_read_as_known() -> None:
    with pytest.raises(InvalidRequestError, match="requester must be a user ID, or None when unknown"):
        RequestFacts("b-1", "", REQUESTED_AT)
