"""The audit trail of a table or one of its partitions, read from the catalog's append-only events: staged
batches, check verdicts, approval requests and decisions, promotions, refusals and rollbacks, in time order,
as text, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from typing import Any

from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import AuditEvent

AUDIT_FIELDS = ("at", "event", "batch_id", "release_id", "actor", "partitions", "what")


@dataclass(frozen=True)
class AuditEntry:
    at: str
    event: str
    batch_id: str | None
    release_id: str | None
    actor: str | None
    partitions: str  # the table's days the event touched, as ranges
    what: str  # one line in the users' words


def _ranges(days: list[str]) -> str:
    if not days:
        return ""
    return days[0] if len(days) == 1 else f"{days[0]}..{days[-1]} ({len(days)} days)"


def _describe(event: AuditEvent) -> str:
    d: dict[str, Any] = event.details
    kind = event.kind
    if kind == "staged":
        replaced = sum(len(days) for days in d.get("replaced", {}).values())
        return f"run {d.get('run_id')} staged {d.get('row_count')} rows" + (
            f", replacing {replaced} earlier partitions" if replaced else ""
        )
    if kind == "planned":
        if d.get("refusal"):
            return f"launch refused: {d['refusal']}"
        return (
            f"launch planned: {d.get('planned_out', 0)} blast-radius partitions cannot be computed, left out"
        )
    if kind == "checked":
        verdicts = d.get("verdicts", {})
        flagged = [f"{name} {verdict}" for name, verdict in sorted(verdicts.items()) if verdict != "passed"]
        return f"checks of run {d.get('run_id')}: batch {d.get('state')}" + (
            f" ({', '.join(flagged)})" if flagged else f", all {len(verdicts)} passed"
        )
    if kind == "approval_requested":
        where = d.get("permalink") or f"the {d.get('channel')} channel"
        return (
            f"approval requested in {where}: {d.get('required')} approvals needed, by {d.get('expires_at')}"
        )
    if kind in ("approved", "rejected", "expired", "superseded"):
        return str(d.get("summary", kind))
    if kind == "reply_not_counted":
        text = " ".join(str(d.get("text", "")).split())
        who = d.get("display_name") or event.actor
        return f'reply by {who} not counted as a vote: "{text}": {d.get("reason")}'
    if kind == "promoted":
        approvers = ", ".join(d.get("approvers") or []) or "nobody"
        changed = [
            f"{table} staged by {', '.join(code['staged'])}, deployed {code['deployed']}"
            for table, code in (d.get("code_versions") or {}).items()
            if code["staged"] != [code["deployed"]]
        ]
        overrides = f" (overrides: {', '.join(d['overrides'])})" if d.get("overrides") else ""
        forced = f"; FORCED: {d.get('reason')}{overrides}" if d.get("forced") else ""
        code = f"; other code deployed: {'; '.join(changed)}" if changed else _approved_code(d)
        return (
            f"published (previous release {d.get('previous_release_id')}), requested by "
            f"{d.get('requester') or 'unknown'}, approved by {approvers} at {d.get('approved_at')}"
            + forced
            + code
            + _stale_changes(d)
        )
    if kind == "rolled_back":
        return (
            f"rolled back to release {d.get('rolled_back_to')} (previous {d.get('previous_release_id')}): "
            f"{d.get('reason')}"
            + ("; FORCED over files changed since staging" if d.get("forced") else "")
            + _served_code(d)
            + _stale_changes(d)
        )
    if kind == "downstream_stale":
        upstream = sorted({table for tables in d.get("upstream", {}).values() for table in tables})
        return (
            f"left STALE by this release: computed from {', '.join(upstream)} rows production no longer "
            f"serves (forced: {d.get('reason')}); stale until a batch recomputes it"
        )
    if kind == "rollback_forced":
        problems = d.get("problems") or []
        shown = "; ".join(problems[:3])
        return f"rollback forced over {len(problems)} file problems ({shown}): {d.get('reason')}"
    if kind == "promotion_refused":
        return str(d.get("error"))
    if kind.startswith("canary_"):
        return _canary_step(kind, d)
    if kind.endswith("_notice"):
        return str(d.get("message", "")).splitlines()[0]
    return json.dumps(d, sort_keys=True, default=str)


def _approved_code(d: dict[str, Any]) -> str:
    """'; code as approved: customer_daily_txn 1a2b…' when the deployed code is the approved code."""
    code = d.get("code_versions") or {}
    if not code:
        return ""
    return "; code as approved: " + ", ".join(f"{table} {c['deployed']}" for table, c in sorted(code.items()))


def _served_code(d: dict[str, Any]) -> str:
    """'; serves code: customer_daily_txn 1a2b… (4 partitions)' for the tables a rollback changed."""
    served = [
        f"{table} " + ", ".join(f"{version} ({count} partitions)" for version, count in versions.items())
        for table, versions in sorted((d.get("served_code_versions") or {}).items())
        if versions
    ]
    return f"; serves code: {'; '.join(served)}" if served else ""


def _stale_changes(d: dict[str, Any]) -> str:
    left = d.get("left_stale") or {}
    replaced = d.get("stale_replaced") or {}
    text = ""
    if left:
        text += "; left STALE: " + ", ".join(
            f"{table} {_ranges(entry['days'])}" for table, entry in sorted(left.items())
        )
    if replaced:
        text += "; no longer stale: " + ", ".join(
            f"{table} {_ranges(days)}" for table, days in sorted(replaced.items())
        )
    return text


def _canary_step(kind: str, d: dict[str, Any]) -> str:
    if kind == "canary_opened":
        return (
            f"canary opened: {d.get('percent'):g}% of entities read this batch (on production "
            f"{d.get('base_release_id')}; slice: {d.get('slice_rule')})"
        )
    if kind == "canary_widened":
        return f"canary widened from {d.get('previous_percent'):g}% to {d.get('percent'):g}% of entities"
    if kind == "canary_completed":
        forced = f"; FORCED over other code deployed: {d.get('reason')}" if d.get("forced") else ""
        return "canary completed: its release became production" + forced
    if kind == "canary_rolled_back":
        reason = (str(d.get("reason") or "").splitlines() or [""])[0]
        return f"canary rolled back at {d.get('percent'):g}% of entities: {reason}"
    if kind == "canary_health":
        verdict = "healthy" if d.get("healthy") else "UNHEALTHY"
        gaps = "; ".join(
            f"{model['model']} on {model['table']}: decline rate gap {model['decline_rate_gap']}, mean score "
            f"gap {model['score_mean_gap']}"
            for model in d.get("models", [])
        )
        return f"canary health at {d.get('percent'):g}%: {verdict}" + (f" ({gaps})" if gaps else "")
    return json.dumps(d, sort_keys=True, default=str)


def audit_trail(catalog: ReleaseCatalog, table: str, day: str | None = None) -> list[AuditEntry]:
    """Every event touching the table (or that day of it), oldest first."""
    return [
        AuditEntry(
            at=event.at.isoformat(),
            event=event.kind,
            batch_id=event.batch_id,
            release_id=event.release_id,
            actor=event.actor,
            partitions=day if day else _ranges(event.tables.get(table, [])),
            what=_describe(event),
        )
        for event in catalog.events(table=table, partition=day)
    ]


def production_now(catalog: ReleaseCatalog, table: str, day: str) -> str:
    """Which batch production serves for one partition, since which release, and whether it is stale."""
    release = catalog.current_release()
    served = catalog.served(release, table, days=[day]).get(day) if release else None
    if release is None or served is None:
        return f"production serves no {table} for {day}"
    line = (
        f"production serves {table} {day} from batch {served.batch_id} in release {release.release_id} "
        f"({served.row_count} rows, content {served.content_hash[:16]})"
    )
    for mark in release.stale_marks(table, day):
        line += (
            f"; STALE since release {mark.since} (batch {catalog.get_release(mark.since).batch_id}): "
            f"computed from {', '.join(mark.upstream)} rows production no longer serves, until a batch "
            "recomputes it (backfill with --downstream)"
        )
    return line


def stale_now(catalog: ReleaseCatalog, table: str) -> str | None:
    """The table's stale partitions in production, with the release that left them stale; None if none."""
    release = catalog.current_release()
    marks = release.stale.get(table, []) if release else []
    if not marks:
        return None
    count = len({day for mark in marks for day in mark.days})
    return f"production serves {count} STALE partitions of {table}: " + "; ".join(
        f"{_ranges(mark.days)} since release {mark.since} (computed from {', '.join(mark.upstream)} rows "
        "production no longer serves)"
        for mark in marks
    )


def render(entries: list[AuditEntry], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([asdict(entry) for entry in entries], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=AUDIT_FIELDS)
        writer.writeheader()
        writer.writerows(asdict(entry) for entry in entries)
        return out.getvalue()
    lines = [
        f"{entry.at[:19]}Z  {entry.event:<19} batch={entry.batch_id or '-'}  "
        f"release={entry.release_id or '-'}  {entry.partitions}  by {entry.actor or '-'}: {entry.what}"
        for entry in entries
    ]
    return "\n".join(lines) if lines else "no events yet"
