"""What Slack reactions and thread replies mean: only an unambiguous decision is a vote."""

from __future__ import annotations

import pytest

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


# Thread replies. Each case is a reply as Slack delivers its text (mentions as <@U…>, a quote as "&gt;"),
# with the decision, or with the words the reason it is not a vote must contain.

APPROVALS = [
    "approve",
    "Approved!",
    "LGTM",
    "lgtm.",
    "  approved.\n",
    "(approve)",
    "*Approve*",
    "_approved_",
    "approve :white_check_mark:",
    ":heavy_check_mark: approved",
    "lgtm :+1::skin-tone-3:",
    "approve :thumbsup:",
    "✅ approve",
    "approved ✔️",
    "👍🏽 LGTM",
    "<@U0BACKFILLS> approve",
    "<@U0BACKFILLS|backfills>: approved",
    "<https://dagster.test/runs/b-1|approve>",  # a link reads as its label
]

# The conditional approvals of issue 26, which used to approve: a list of doubt words always has holes.
CONDITIONAL_APPROVALS = [
    "approve: as long as CI passes",
    "approve: conditional on the 30d fix",
    "approve: subject to carol signing off",
    "approve: provisionally",
    "approve :warning:",
    "Approve: I guess",
]

# Replies that lean towards approval but say more than the approval word (they used to approve, or were
# not votes for a reason of their own): nothing, so the approver is told how to approve.
MORE_THAN_AN_APPROVAL = [
    *CONDITIONAL_APPROVALS,
    "approve: checked the diff",
    "lgtm, ship it",
    "Approve — the 30d sums match production",
    "approve -- the diff matches the ticket",
    "approved.\nthanks all",
    "Approved. Thanks for the fix",
    "LGTM! Thanks for the quick fix",
    "approve\n\nthe diff is what we expected for customer_txn_7d",
    "_approved_ :tada:",
    "*approve*: diff within bounds",
    "approve :white_check_mark: :rocket:",
    "approved 🎉🚀",
    "approve: see <https://dagster.test/runs/b-1?tab=checks|the checks>",
    "approve: diff ~0.1% on ~3 days",
    "lgtm after the fix lands",
    "approve once CI passes",
    "approve (after the fix lands)",
    "<@U0BOB> approve please",
    "approve -1",
    "approve approve",
    "I approve",
    "not approved",
    "re-approve",
    "thanks <@U0CAROL>, approved",
    "<!here> approve",
    "approve <@U0CAROL>",
    "approve <https://dagster.test/runs/b-1?tab=checks>",  # a bare address is a word, not nothing
    "~approve~",
    "`approve`",
    "```approve```",
    "&gt; approve\nagreed",
    "✅",
    "looks good 👍",
]

REJECTIONS = [
    "reject",
    "Rejected.",
    "REJECT: the 30d sums look off",
    "reject - the 7d spend looks off",
    "reject the 7d spend looks off",
    "Rejected :x:",
    "❌ reject: nulls in customer_id",
    "*Reject*: `customer_id` has nulls",
    "reject:\n&gt; rows changed: 0",
    "reject: not yet, wait for carol",
    "<@U0BACKFILLS> rejected, the diff is too large",
    "reject: see <https://dagster.test/runs/b-1?tab=checks>",  # the address's `?` is not the approver's
]

NOT_VOTES: list[tuple[str, str]] = [
    ("Approve? not yet", "question mark"),
    ("approve?", "question mark"),
    ("can someone approve this?", "question mark"),
    ("<@U0BOB> approved？", "question mark"),
    ("reject?", "question mark"),
    ("reject: is the 7d sum right?", "question mark"),
    ("approve\nreject", "both approve and reject"),
    ("reject: lgtm otherwise", "both approve and reject"),
    ("~approve~ reject: nulls in customer_id", "both approve and reject"),
    ("reject :+1:", "both approve and reject"),
    ("approve :x:", "both approve and reject"),
    ("lgtm 👎", "both approve and reject"),
    ("not rejected", 'does not start with "reject"'),
    ("I would not reject this", 'does not start with "reject"'),
    ("~reject~", 'does not start with "reject"'),
    ("`reject`", 'does not start with "reject"'),
    ("&gt; reject", 'does not start with "reject"'),
    ("❌", 'does not start with "reject"'),
]


@pytest.mark.parametrize("text", APPROVALS)
def test_a_reply_that_is_exactly_an_approval_word_approves(text: str) -> None:
    assert read_reply(text) == ReplyReading("approve", None)


@pytest.mark.parametrize("text", MORE_THAN_AN_APPROVAL)
def test_a_conditional_approval_or_any_reply_saying_more_than_the_approval_word_counts_as_nothing(
    text: str,
) -> None:
    assert read_reply(text) == ReplyReading(None, 'it is not just "approve", "approved" or "lgtm"')


@pytest.mark.parametrize("text", REJECTIONS)
def test_a_rejection_may_carry_any_reason(text: str) -> None:
    assert read_reply(text) == ReplyReading("reject", None)


@pytest.mark.parametrize(("text", "problem"), NOT_VOTES)
def test_a_question_both_decisions_or_a_late_rejection_word_is_not_a_vote_and_says_why(
    text: str, problem: str
) -> None:
    reading = read_reply(text)

    assert reading.decision is None
    assert reading.not_a_vote_because is not None and problem in reading.not_a_vote_because


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "thanks!",
        "looking now",
        "approval pending",
        "approving now",
        "the rejection rate is up",
        "<@U0BOB> ping",
    ],
)
def test_thread_chatter_is_neither_a_vote_nor_recorded(text: str) -> None:
    assert read_reply(text) == ReplyReading(None, None)
