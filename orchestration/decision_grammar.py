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
REJECT_REPLIES = frozenset({"reject", "rejected"})
# Words that, in the reason after a decision word, may negate it, make it conditional, hedge it, put it off or
# ask someone else to decide ("approve: once CI passes"). A reply whose reason has one is not a vote; so is
# one with a word ending in n't.
DOUBT_WORDS = frozenset(
    {
        # conditions and exceptions
        *("if", "unless", "after", "once", "when", "whenever", "until", "till", "pending", "assuming"),
        *("provided", "providing", "before", "first", "only", "except", "but", "though", "although"),
        "however",
        # hedges
        *("should", "would", "could", "might", "may", "maybe", "perhaps", "probably", "possibly", "think"),
        # negations and retractions
        *("not", "no", "nope", "nah", "never", "cannot", "dont", "doesnt", "didnt", "isnt", "wasnt", "arent"),
        *("cant", "wont", "shouldnt", "wouldnt", "couldnt", "havent", "hasnt", "nvm", "jk", "kidding"),
        *("cancel", "retract"),
        # delays, and asking someone else
        *("wait", "waiting", "hold", "holding", "later", "tomorrow", "tbd", "yet", "soon"),
        *("please", "pls", "plz"),
    }
)
# Emoji that question or hedge a decision; those standing for the opposite decision are the reactions'.
DOUBT_EMOJI = frozenset(
    {"question", "grey_question", "interrobang", "thinking_face", "face_with_raised_eyebrow", "shrug"}
)
QUESTION_MARKS = frozenset("?？¿⁇⁈⁉")

_DECISION_WORD = re.compile(r"\b(?:approved|approve|lgtm|rejected|reject)\b", re.IGNORECASE)
# Only people: "@here approve" asks everyone else to approve.
_LEADING_MENTIONS = re.compile(r"\A\s*(?:<@[^<>]*>[\s,:]*)+")
_SLACK_TOKEN = re.compile(r"<([^<>|]*)(?:\|([^<>]*))?>")  # <@U1>, <#C1|name>, <!here>, <https://…|label>
_EMPHASIS = re.compile(r"(?<![^\W_])[*_]+|[*_]+(?![^\W_])")  # *bold*, _italic_, not snake_case
_QUOTE = re.compile(r"^[ \t]*>", re.MULTILINE)
_STRIKE = re.compile(r"(?<![^\s(])~[^~\s](?:[^~\n]*[^~\s])?~(?![^\s.,;:!)])")
_END_MARKS = re.compile(r"[.!]*")
_SEPARATOR = re.compile(r"[ \t]*(?:[:,;\n]|[–—][ \t]*)|[ \t]+--?[ \t]+")
_SHORTCODE = re.compile(r":([a-z0-9_+'-]+):(?::skin-tone-[2-6]:)?", re.IGNORECASE)
_EMOJI_JOINERS = frozenset("\u200d\ufe0f\u20e3")
_UNICODE_EMOJI = {
    **{"👍": "+1", "✅": "white_check_mark", "✔": "heavy_check_mark"},
    **{"👎": "-1", "❌": "x", "⛔": "no_entry", "🚫": "no_entry_sign"},
    **{"❓": "question", "❔": "grey_question", "🤔": "thinking_face", "🤨": "face_with_raised_eyebrow"},
    "🤷": "shrug",
}
_REACTION_DECISIONS: dict[str, Decision] = {
    **{name: "approve" for name in APPROVE_REACTIONS},
    **{name: "reject" for name in REJECT_REACTIONS},
}


@dataclass(frozen=True)
class ReplyReading:
    """What a thread reply says: a decision; or, for a reply that names a decision word but is not a vote, why
    not, in the users' words. Both are None for chatter ("thanks!", "looking now")."""

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

    The grammar (the README's "How to decide" states it for approvers):
    - Slack markup first: leading mentions (`<@U123>`, optionally followed by `:` or `,`) are dropped, a link
      stands for its label (its address is not read), `*bold*` and `_italic_` markers are ignored.
    - A reply without a decision word (approve, approved, lgtm; reject, rejected; any case) is chatter.
    - A vote is the decision word first, then optionally `.`/`!` and emoji, then either nothing, or a
      separator (`:` `,` `;` ` - ` ` -- ` ` — ` a new line, or a space right after `.`/`!`) and a reason.
    - Never a vote: a question mark anywhere; a quote, code or struck-through text anywhere; words before the
      decision word; words after it without a separator; an emoji standing for the opposite decision or a
      doubt (:x:, :thinking_face:); a reason that also says the opposite decision word or one of
      DOUBT_WORDS (or a word ending in n't).

    A false "not a vote" costs the approver one more reply; a false approval could publish data nobody
    approved, so every doubt reads as "not a vote".
    """
    visible = _visible(text)
    found = _DECISION_WORD.search(visible)
    if found is None:
        return ReplyReading(None, None)
    word = found.group(0).lower()
    decision: Decision = "approve" if word in APPROVE_REPLIES else "reject"
    problem = _markup_problem(visible)
    if problem is None:
        before = visible[: found.start()].strip()
        rest = visible[found.end() :]
        if before:
            problem = f'it does not start with the decision: "{_clip(before)}" comes before "{word}"'
        else:
            problem = _tail_problem(word, decision, rest)
    if problem is not None:
        return ReplyReading(None, problem)
    return ReplyReading(decision, None)


def _visible(text: str) -> str:
    """The reply as people read it, for the grammar: leading mentions dropped, links as their labels, Slack's
    escapes undone, bold and italic markers gone."""
    text = _LEADING_MENTIONS.sub("", text)
    text = _SLACK_TOKEN.sub(_token_label, text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return _EMPHASIS.sub("", text).strip()


def _token_label(token: re.Match[str]) -> str:
    target, label = token.group(1), token.group(2)
    if label is not None:
        return label
    if target.startswith(("@", "#")):
        return target
    if target.startswith("!"):
        return "@" + target[1:]
    return "link"  # a bare address: its `?` or words are not the approver's


def _markup_problem(visible: str) -> str | None:
    if any(mark in visible for mark in QUESTION_MARKS):
        return "it contains a question mark"
    if _QUOTE.search(visible):
        return "it quotes a message (a line starting with >)"
    if "`" in visible:
        return "it has code formatting (backticks)"
    if _STRIKE.search(visible):
        return "it has struck-through text (~…~)"
    return None


def _tail_problem(word: str, decision: Decision, rest: str) -> str | None:
    """Why what follows the decision word makes the reply not a vote; None when it is a vote."""
    reason = _reason(rest)
    if reason is None:
        return (
            f'"{word}" is followed by words without a separator ("{_clip(rest.strip())}"): write '
            f"`{word}: reason` to give a reason"
        )
    for emoji, name in _emoji(rest):
        if _REACTION_DECISIONS.get(name, decision) != decision:
            return f"it has {emoji}, which stands for the opposite decision"
        if name in DOUBT_EMOJI:
            return f"it has {emoji}, which may question or hedge it"
    plain = _SHORTCODE.sub(" ", reason).lower().replace("\u2019", "'")
    words = re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)*", plain)
    opposite = REJECT_REPLIES if decision == "approve" else APPROVE_REPLIES
    for found in words:
        if found in opposite:
            return f'its reason also says "{found}", the opposite decision, so it is ambiguous'
    for found in words:
        if found in DOUBT_WORDS or found.endswith("n't"):
            return f'its reason says "{found}", which may negate or condition it'
    return None


def _reason(rest: str) -> str | None:
    """The reason after the decision word and its decoration (`.`/`!`, emoji), "" when there is none; None
    when words follow without a separator."""
    marks = _END_MARKS.match(rest).end()  # type: ignore[union-attr]  # matches the empty string at least
    at = marks
    while True:
        start = at + len(rest[at:]) - len(rest[at:].lstrip(" \t"))
        shortcode = _SHORTCODE.match(rest, start)
        if shortcode is not None:
            at = shortcode.end()
        elif start < len(rest) and _is_emoji(rest[start]):
            at = start
            while at < len(rest) and _is_emoji(rest[at]):
                at += 1
        else:
            break
    after = rest[at:]
    if not after.strip():
        return ""
    separator = _SEPARATOR.match(after)
    if separator is not None:
        return after[separator.end() :]
    if marks and at == marks and after[0].isspace():  # "Approved. Checked the diff": the sentence ended
        return after
    return None


def _emoji(rest: str) -> list[tuple[str, str]]:
    """Every emoji after the decision word, as written and by shortcode name (skin tones dropped)."""
    found = [(match.group(0), match.group(1).lower()) for match in _SHORTCODE.finditer(rest)]
    found.extend((char, _UNICODE_EMOJI[char]) for char in rest if char in _UNICODE_EMOJI)
    return found


def _is_emoji(char: str) -> bool:
    return (
        unicodedata.category(char) == "So"
        or char in _EMOJI_JOINERS
        or 0x1F3FB <= ord(char) <= 0x1F3FF  # skin tone modifiers
    )


def _clip(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
