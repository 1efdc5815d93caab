"""What a Slack reaction or thread reply means for an approval: approve, reject, or not a vote (and why).

Pure text rules, no Slack calls: the channel reads reactions and replies, this module reads their meaning,
and the approval policy decides what the votes add up to.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from backfills.orchestration.approval_policy import Decision

APPROVE_REACTIONS = frozenset({"white_check_mark", "heavy_check_mark", "+1", "thumbsup"})
REJECT_REACTIONS = frozenset({"x", "no_entry", "no_entry_sign", "-1", "thumbsdown"})
APPROVE_REPLIES = frozenset({"approve", "approved", "lgtm"})
QUESTION_MARKS = frozenset("?？¿⁇⁈⁉")
# Why a reply that leans towards approval is not a vote; the thread is told this, with how to approve.
NOT_JUST_APPROVAL = 'it is not just "approve", "approved" or "lgtm"'


def _emoji(shortcodes: frozenset[str], unicode: str) -> re.Pattern[str]:
    """Emoji standing for one decision, as Slack writes them in a reply's text (`:+1::skin-tone-3:`), or as
    characters (with any skin tone or presentation selector)."""
    names = "|".join(re.escape(name) for name in sorted(shortcodes))
    return re.compile(
        rf":(?:{names}):(?::skin-tone-[2-6]:)?|[{unicode}][\ufe0f\U0001F3FB-\U0001F3FF]*", re.IGNORECASE
    )


_APPROVING_EMOJI = _emoji(APPROVE_REACTIONS, "\u2705\u2714\U0001f44d")  # ✅ ✔ 👍
_REJECTING_EMOJI = _emoji(REJECT_REACTIONS, "\U0001f44e\u274c\u26d4\U0001f6ab")  # 👎 ❌ ⛔ 🚫
# Whole words only: not "approval", "rejection" or "unapproved", but "_approved_" (italic) is the word.
_APPROVAL_WORD = re.compile(r"(?<![^\W_])(?:approved?|lgtm)(?![^\W_])", re.IGNORECASE)
_REJECTION_WORD = re.compile(r"(?<![^\W_])reject(?:ed)?(?![^\W_])", re.IGNORECASE)
# Only people: "@here approve" asks everyone else to approve.
_LEADING_MENTIONS = re.compile(r"\A\s*(?:<@[^<>]*>[\s,:]*)+")
_SLACK_TOKEN = re.compile(r"<([^<>|]*)(?:\|([^<>]*))?>")  # <@U1>, <#C1|name>, <!here>, <https://…|label>


@dataclass(frozen=True)
class ReplyReading:
    """What a thread reply says: a decision; or, for a reply that names a decision (a word or an emoji) but
    is not a vote, why not, in the users' words. Both are None for chatter ("thanks!", "looking now")."""

    decision: Decision | None
    not_a_vote_because: str | None


def reaction_decision(name: str) -> Decision | None:
    """The decision a Slack reaction stands for, or None for any other reaction.

    Skin-tone variants ("+1::skin-tone-2") count as their base reaction; surrounding colons are tolerated.
    """
    base = name.strip().strip(":").split("::")[0].lower()
    if base in APPROVE_REACTIONS:
        return "approve"
    if base in REJECT_REACTIONS:
        return "reject"
    return None


def read_reply(text: str) -> ReplyReading:
    """What a thread reply says: a decision, not a vote (and why), or nothing (chatter).

    The rule (the README's "How to decide" states it for approvers) is asymmetric, because a false approval
    can publish data nobody approved, while a false "not a vote" costs one more reply:
    - Slack markup first: leading mentions (`<@U123>`, optionally followed by `:` or `,`) are dropped, and
      a link stands for its label (its address is not read), any other mention for one neutral word.
    - It approves only when, with case, whitespace, punctuation around it (`*bold*` and `_italic_`
      markers are punctuation, a question mark is not) and approving emoji (:white_check_mark:,
      :heavy_check_mark:, :+1:, ✅, ✔️, 👍) set aside, it is exactly one of `approve`, `approved`, `lgtm`.
      Anything more ("approve: once CI passes", "approve :warning:", "Approve: I guess") is not a vote.
    - It rejects when it starts with `reject` or `rejected` (punctuation and rejecting emoji aside), with
      any reason after it.
    - Never a vote: a reply with a question mark; a reply that says both decisions (in words or emoji);
      a rejection word after other words ("do not reject").
    - A reply without a decision word or emoji is chatter.
    """
    visible = _visible(text)
    if _trimmed(_APPROVING_EMOJI.sub(" ", visible)).lower() in APPROVE_REPLIES:
        return ReplyReading("approve", None)
    approving = _APPROVAL_WORD.search(visible) or _APPROVING_EMOJI.search(visible)
    rejecting = _REJECTION_WORD.search(visible) or _REJECTING_EMOJI.search(visible)
    if not (approving or rejecting):
        return ReplyReading(None, None)
    if any(mark in visible for mark in QUESTION_MARKS):
        return ReplyReading(None, "it contains a question mark")
    if approving and rejecting:
        return ReplyReading(None, "it says both approve and reject")
    if approving:
        return ReplyReading(None, NOT_JUST_APPROVAL)
    if _REJECTION_WORD.match(_trimmed(_REJECTING_EMOJI.sub(" ", visible))):
        return ReplyReading("reject", None)
    return ReplyReading(None, 'it does not start with "reject"')


def _visible(text: str) -> str:
    """The reply as people read it: leading mentions dropped, links as their labels, escapes undone."""
    text = _LEADING_MENTIONS.sub("", text)
    text = _SLACK_TOKEN.sub(_token_label, text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").strip()


def _token_label(token: re.Match[str]) -> str:
    """A link reads as its label; a mention, a channel or a bare address as one neutral word: its text (a
    name, the `?` of an address) is not the approver's."""
    label = token.group(2)
    return label if label is not None else "link"


def _trimmed(text: str) -> str:
    """The text without the whitespace and punctuation around it; a question mark stays. Quote marks (`>`),
    code (backticks) and strike-through (`~`) are not punctuation."""
    start, stop = 0, len(text)
    while start < stop and _is_edge(text[start]):
        start += 1
    while stop > start and _is_edge(text[stop - 1]):
        stop -= 1
    return text[start:stop]


def _is_edge(char: str) -> bool:
    return char.isspace() or (unicodedata.category(char).startswith("P") and char not in QUESTION_MARKS)
