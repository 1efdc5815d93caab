"""The approval rules hold whatever their caller does afterwards, and the policy refuses what it cannot judge.

Pure: no Spark, Dagster or Slack (tests/mutants.py runs this module without conftest's fixtures).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo

import pytest

from backfills.errors import InvalidRequestError
from backfills.orchestration.approval_policy import ApprovalRules, RequestFacts, Vote, decide

ALICE, BOB, MALLORY = "U0ALICE", "U0BOB", "U0MALLORY"
REQUESTED = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def test_an_allowlist_changed_after_the_rules_were_made_lets_no_one_else_approve() -> None:
    allowlist = {BOB}
    rules = ApprovalRules(approvers=allowlist)
    allowlist.add(MALLORY)  # the caller's set changes later (a reloaded setting, a shared object)
    request = RequestFacts(batch_id="jan", requester=ALICE, requested_at=REQUESTED)
    vote = Vote(MALLORY, "approve", REQUESTED + timedelta(minutes=5))
    decision = decide(request, [vote], rules, REQUESTED + timedelta(minutes=10))
    assert decision.outcome == "pending" and decision.approvals == ()
    assert rules.approvers == frozenset({BOB})


def test_a_request_without_a_batch_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="needs the ID of its batch"):
        RequestFacts(batch_id="", requester=ALICE, requested_at=REQUESTED)


class _NoOffset(tzinfo):
    """A time zone that cannot say its offset from UTC: such a time cannot be ordered against others."""

    def utcoffset(self, moment: datetime | None) -> None:
        return None

    def dst(self, moment: datetime | None) -> None:
        return None

    def tzname(self, moment: datetime | None) -> str:
        return "unknown"


def test_a_vote_time_whose_zone_gives_no_offset_is_refused() -> None:
    moment = datetime(2025, 3, 3, 9, 30, tzinfo=_NoOffset())
    assert moment.tzinfo is not None and moment.utcoffset() is None
    with pytest.raises(InvalidRequestError, match="has no time zone"):
        Vote(BOB, "approve", moment)
