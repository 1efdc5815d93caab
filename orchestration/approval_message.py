"""What the approvals channel says: the approval request of a checked batch (Block Kit and plain text), the
notice for a blocked or incomplete batch, and the outcomes told in the request's thread."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from backfills.checks.diff_check import DIFF_CHECK
from backfills.checks.summary import batch_check_summary
from backfills.orchestration.approval_policy import why_one_more
from backfills.orchestration.contributors import request_facts
from backfills.resources.catalog_models import ApprovalRequest, BatchManifest, StaleDownstream
from backfills.resources.slack import is_user_id
from backfills.specs import day_ranges

# Slack refuses a section text over 3000 characters; leave room for the markup.
_MAX_SECTION = 2800


@dataclass(frozen=True)
class ChannelMessage:
    """One message: Block Kit blocks for Slack and the same content as plain text (logs, CLI, fallback)."""

    text: str
    blocks: list[dict[str, Any]]


@dataclass(frozen=True)
class Links:
    """Where the Dagster UI shows a batch and its assets."""

    dagster_url: str

    def batch(self, batch_id: str) -> str:
        # A Dagster backfill (8 lowercase letters) has a page of its own; a batch of tagged runs is found
        # through the run list.
        if re.fullmatch(r"[a-z]{8}", batch_id):
            return f"{self.dagster_url}/runs/b/{batch_id}?tab=partitions"
        return f"{self.dagster_url}/runs?q%5B0%5D=tag%3Abackfills%2Fbatch_id%3D{batch_id}"

    def asset(self, prefix: str, table: str) -> str:
        return f"{self.dagster_url}/assets/{prefix}/{table}"


def _section(text: str) -> dict[str, Any]:
    if len(text) > _MAX_SECTION:
        text = text[: _MAX_SECTION - 1] + "…"
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _span(batch: BatchManifest) -> str:
    days = sorted({day for partitions in batch.tables.values() for day in partitions})
    return "nothing staged" if not days else f"{days[0]}..{days[-1]}"


def blast_radius(batch: BatchManifest) -> str:
    """Tables x partitions the batch would replace or add in production."""
    per_table = ", ".join(f"{table} {len(days)}" for table, days in sorted(batch.tables.items()))
    return f"{len(batch.tables)} tables, {batch.partition_count()} partitions ({per_table})"


def _changes(batch: BatchManifest) -> list[str]:
    lines = []
    for table, entry in batch_check_summary(batch)["tables"].items():
        diff = entry.get("diff")
        if not diff:
            continue
        if not diff["compared_days"]:
            lines.append(f"{table}: {diff['new_days']} new days, no production data for them yet")
            continue
        line = (
            f"{table}: {diff['changed']:,} rows changed, {diff['added']:,} added, {diff['removed']:,} "
            f"removed of {diff['production_rows']:,} ({diff['changed_fraction']:.1%}) in "
            f"{diff['compared_days']} days"
        )
        if diff["new_days"]:
            line += f"; {diff['new_days']} new days"
        if diff["reasons"]:
            line += f"; {'; '.join(diff['reasons'][:3])}"
        lines.append(line)
    return lines


def not_recomputed(batch: BatchManifest) -> list[str]:
    """Blast-radius partitions the batch planned out (their window includes a recomputed day, but their
    inputs are neither in the batch nor in production): production keeps what it serves of them, if any."""
    if batch.plan is None:
        return []
    return [
        f"{table} {day_ranges(sorted(days))} NOT recomputed ({len(days)} partitions, blast radius): "
        f"{batch.plan.planned_out_summary.get(table) or next(iter(days.values()))}"
        for table, days in sorted(batch.plan.planned_out.items())
    ]


def left_stale(stale: dict[str, StaleDownstream]) -> list[str]:
    """Production partitions of downstream tables the batch would leave stale, per table: their windows read
    days the batch changes, and it does not recompute them."""
    return [
        f"{table} {day_ranges(entry.days)} left STALE ({len(entry.days)} production partitions computed from "
        f"{', '.join(entry.upstream)} rows this batch replaces, not recomputed): promotion refuses this "
        "unless forced with a reason; a backfill with --downstream recomputes them"
        for table, entry in sorted(stale.items())
    ]


def model_impact(batch: BatchManifest) -> list[str]:
    """Per table and reference model: how many entity-days' decisions flip, each way, and the score PSI."""
    lines = []
    for table, entry in batch_check_summary(batch)["tables"].items():
        for name, facts in entry.get("model_impact", {}).get("models", {}).items():
            line = (
                f"{name} on {table}: {facts['decision_flips']:,} of {facts['rows_scored']:,} entity-days "
                f"change decision ({facts['flip_rate']:.2%}): {facts['approve_to_decline']:,} "
                f"approve->decline, {facts['decline_to_approve']:,} decline->approve"
            )
            if "score_psi" in facts:
                line += f"; score PSI {facts['score_psi']:.3f}"
            lines.append(line + f" ({entry['model_impact']['verdict']})")
    return lines


def _checks(batch: BatchManifest) -> list[str]:
    lines = []
    for table, entry in batch_check_summary(batch)["tables"].items():
        verdicts = entry["checks"]
        passed = sum(1 for check in verdicts.values() if check["verdict"] == "passed")
        line = f"{table}: {passed} of {len(verdicts)} checks passed"
        # The diff's figures are in the section above; other warnings are told here in full.
        flagged = [
            f"{name} {check['verdict']}" + ("" if name == DIFF_CHECK else f": {check['summary']}")
            for name, check in verdicts.items()
            if check["verdict"] != "passed"
        ]
        if flagged:
            line += "; " + "; ".join(flagged[:3])
        lines.append(line)
    return lines


def _who(user: str | None) -> str:
    # Slack renders <@U123> as the user's name; a name that is not a user ID is shown as it is.
    if user and is_user_id(user):
        return f"<@{user}>"
    return user or "unknown (no backfills/requester tag)"


def request_message(
    batch: BatchManifest,
    request: ApprovalRequest,
    approvers: frozenset[str],
    links: Links,
    stale: dict[str, StaleDownstream] | None = None,
) -> ChannelMessage:
    """The approval request of a complete, checked batch; `stale`: the production partitions of downstream
    tables it would leave stale (orchestration/stale_downstream.py)."""
    requester = _who(batch.requester)
    stale = stale or {}
    stale_count = sum(len(entry.days) for entry in stale.values())
    facts = [
        f"*Requester:* {requester}",
        f"*Tables:* {', '.join(sorted(batch.tables))}",
        f"*Partitions:* {_span(batch)}",
        f"*Rows:* {sum(r.row_count for p in batch.tables.values() for r in p.values()):,}",
        f"*Blast radius:* {blast_radius(batch)}",
        *(
            [f"*Left stale:* {stale_count} production partitions of {', '.join(sorted(stale))}"]
            if stale
            else []
        ),
        f"*Content:* `{request.fingerprint[:16]}`",
        "*Code:* "
        + ", ".join(f"{table} `{', '.join(versions)}`" for table, versions in batch.code_versions().items()),
    ]
    changes = _changes(batch) + not_recomputed(batch) + left_stale(stale)
    impact = model_impact(batch)
    checks = _checks(batch)
    unknown = why_one_more(request_facts(batch, request.created_at, request.contributors))
    needed = f"{request.required} approval{'s' if request.required != 1 else ''} needed" + (
        f" (one more than usual: {unknown})" if unknown else ""
    )
    ways = (
        "React :white_check_mark: to approve or :x: to reject, or reply in this thread: exactly `approve` "
        "(nothing else) approves, `reject: reason` rejects; any other reply is not a vote."
        if request.channel == "slack"
        else f"Run `backfills approve {batch.batch_id} --as USER` (or `backfills reject`)."
    )
    how = (
        f"{ways} {needed}, from {', '.join(_who(user) for user in sorted(approvers))}; no one who wrote into "
        "the batch (its requester or anyone who reran partitions of it) can decide on it; any rejection "
        f"rejects. Expires {request.expires_at:%Y-%m-%d %H:%M} UTC."
    )
    dagster = f"<{links.batch(batch.batch_id)}|Batch in Dagster> · " + " · ".join(
        f"<{links.asset('staging', table)}|{table}>" for table in sorted(batch.tables)
    )
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": f"Approve backfill {batch.batch_id}?"}},
        _section("\n".join(facts)),
        _section("*What changes in production*\n" + "\n".join(f"• {line}" for line in changes)),
        *([_section("*Model impact*\n" + "\n".join(f"• {line}" for line in impact))] if impact else []),
        _section("*Checks*\n" + "\n".join(f"• {line}" for line in checks)),
        _section(f"*How to decide*\n{how}"),
        {"type": "context", "elements": [{"type": "mrkdwn", "text": dagster}]},
    ]
    text = "\n".join(
        [
            f"Approve backfill {batch.batch_id}?",
            *[fact.replace("*", "") for fact in facts],
            "What changes in production:",
            *[f"  {line}" for line in changes],
            *(["Model impact:", *[f"  {line}" for line in impact]] if impact else []),
            "Checks:",
            *[f"  {line}" for line in checks],
            f"How to decide: {how}",
            f"Dagster: {links.batch(batch.batch_id)}",
        ]
    )
    return ChannelMessage(text=text, blocks=blocks)


def blocked_message(batch: BatchManifest, links: Links) -> ChannelMessage:
    """A short notice for a batch that failed blocking checks: no request, the failing checks named."""
    failures = batch_check_summary(batch)["blocking_failures"]
    text = (
        f"Backfill {batch.batch_id} (requested by {_who(batch.requester)}) is blocked and will not be sent "
        f"for approval. Failing checks:\n" + "\n".join(f"• {line}" for line in failures[:5])
    )
    return _notice(text, links.batch(batch.batch_id))


def incomplete_message(batch: BatchManifest, links: Links) -> ChannelMessage:
    """A notice for a batch whose backfill finished without staging every partition it targeted."""
    missing = batch.missing_partitions()
    lines = [
        f"{table}: {len(days)} partitions missing ({days[0]}..{days[-1]})" for table, days in missing.items()
    ]
    if batch.completion_note:
        lines.insert(0, batch.completion_note)
    text = (
        f"Backfill {batch.batch_id} (requested by {_who(batch.requester)}) finished incomplete and will not "
        "be sent for approval:\n" + "\n".join(f"• {line}" for line in lines[:6])
    )
    return _notice(text, links.batch(batch.batch_id))


def _notice(text: str, link: str) -> ChannelMessage:
    blocks = [
        _section(text),
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"<{link}|Dagster>"}]},
    ]
    return ChannelMessage(text=f"{text}\nDagster: {link}", blocks=blocks)
