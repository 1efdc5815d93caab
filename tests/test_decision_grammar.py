"""What Slack reactions and thread replies mean: only an unambiguous decision is a vote."""

from __future__ import annotations

import pytest

from backfills.orchestration.approval_policy import Decision
from backfills.orchestration.decision_grammar import ReplyReading, reaction_decision, read_reply

# Reading Slack reactions and replies


@pytest.mark.parametrize(
    "name",
    ["white_check_mark", "heavy_check_mark", "+1", "thumbsup", "+1::skin-tone-2", "thumbsup::skin-tone-6"],
)
def test_approving_reactions(name: str) -> None:
    assert reaction_decision(name) == "approve"


@pytest.mark.parametrize(
    "name", ["x", "no_entry", "no_entry_sign", "-1", "thumbsdown", "-1::skin-tone-3", ":x:"]
)
def test_rejecting_reactions(name: str) -> None:
    assert reaction_decision(name) == "reject"


@pytest.mark.parametrize("name", ["eyes", "tada", "heavy_multiplication_x", "white_check", "", "skin-tone-2"])
def test_other_reactions_are_not_votes(name: str) -> None:
    assert reaction_decision(name) is None


# Thread replies: only an unambiguous decision is a vote. Each case is a reply as Slack delivers its text
# (mentions as <@U…>, a quote as "&gt;"), with the decision, or with the words its reason must contain.

VOTES: list[tuple[str, Decision]] = [
    ("approve", "approve"),
    ("Approved!", "approve"),
    ("LGTM", "approve"),
    ("lgtm.", "approve"),
    ("lgtm, ship it", "approve"),
    ("approve: checked the diff", "approve"),
    ("Approve — the 30d sums match production", "approve"),
    ("approve -- the diff matches the ticket", "approve"),
    ("  approved.\nthanks all", "approve"),
    ("LGTM! Thanks for the quick fix", "approve"),
    ("approve\n\nthe diff is what we expected for customer_txn_7d", "approve"),
    ("*Approve*", "approve"),
    ("_approved_ :tada:", "approve"),
    ("*approve*: diff within bounds", "approve"),
    ("approve :white_check_mark: :rocket:", "approve"),
    ("approved 🎉🚀", "approve"),
    ("lgtm :+1::skin-tone-3:", "approve"),
    ("<@U0BACKFILLS> approve", "approve"),
    ("<@U0BACKFILLS|backfills>: approved, the diff looks right", "approve"),
    ("approve: see <https://dagster.test/runs/b-1?tab=checks|the checks>", "approve"),
    ("approve: diff ~0.1% on ~3 days", "approve"),
    ("reject", "reject"),
    ("Rejected.", "reject"),
    ("REJECT: the 30d sums look off", "reject"),
    ("reject - the 7d spend looks off", "reject"),
    ("Rejected :x:", "reject"),
]

NOT_VOTES: list[tuple[str, str]] = [
    ("Approve? not yet", "question mark"),
    ("approve?", "question mark"),
    ("can someone approve this?", "question mark"),
    ("<@U0BOB> approved？", "question mark"),
    ("lgtm after the fix lands", '"lgtm" is followed by words without a separator ("after the fix lands")'),
    ("approve once CI passes", "`approve: reason`"),
    ("approve (after the fix lands)", "without a separator"),
    ("<@U0BOB> approve please", "without a separator"),
    ("approve -1", "without a separator"),
    ("I approve", '"I" comes before "approve"'),
    ("not approved", '"not" comes before "approved"'),
    ("re-approve", "comes before"),
    ("thanks <@U0CAROL>, approved", "comes before"),
    ("<!here> approve", '"@here" comes before "approve"'),
    ("approve: not yet", 'says "not"'),
    ("approved, but only for the 7d table", 'says "but"'),
    ("approve; assuming the 30d check passes", 'says "assuming"'),
    ("approve: don't promote until monday", 'says "don\'t"'),
    ("approve: isn’t ready", 'says "isn\'t"'),
    ("Approve. After the fix lands.", 'says "after"'),
    ("LGTM: wait for carol", 'says "wait"'),
    ("approved: jk", 'says "jk"'),
    ("approve - should be fine", 'says "should"'),
    ("approve\nreject", 'also says "reject"'),
    ("reject: lgtm otherwise", 'also says "lgtm"'),
    ("approve :x:", ":x:, which stands for the opposite decision"),
    ("lgtm 👎", "opposite decision"),
    ("approve: 🤔", "question or hedge"),
    ("~approve~ reject: nulls in customer_id", "struck-through"),
    ("`approve`", "code formatting"),
    ("```approve```", "code formatting"),
    ("&gt; approve\nagreed", "quotes a message"),
    ("approve:\n&gt; rows changed: 0", "quotes a message"),
]


@pytest.mark.parametrize(("text", "decision"), VOTES)
def test_an_unambiguous_reply_is_a_vote(text: str, decision: Decision) -> None:
    assert read_reply(text) == ReplyReading(decision, None)


@pytest.mark.parametrize(("text", "problem"), NOT_VOTES)
def test_a_reply_naming_a_decision_ambiguously_is_not_a_vote_and_says_why(text: str, problem: str) -> None:
    reading = read_reply(text)

    assert reading.decision is None
    assert reading.not_a_vote_because is not None and problem in reading.not_a_vote_because


@pytest.mark.parametrize(
    "text", ["", "   ", "thanks!", "looking now", "approval pending", "approving now", "<@U0BOB> ping"]
)
def test_thread_chatter_is_neither_a_vote_nor_recorded(text: str) -> None:
    assert read_reply(text) == ReplyReading(None, None)
