"""The check summary of a batch, derived from its manifest: what an approver reads in ten seconds.

Per table: the partition range and rows, each check's worst verdict over the table's runs with its key
figures, and the diff against production summed over the compared days.
"""

from __future__ import annotations

from typing import Any

from backfills.checks.diff_check import DIFF_CHECK
from backfills.checks.model_impact import MODEL_IMPACT_CHECK
from backfills.resources.catalog_models import BatchManifest, CheckRecord

_SEVERITY = {"passed": 0, "warned": 1, "failed": 2}
_DIFF_COUNTS = ("production_rows", "staged_rows", "added", "removed", "changed", "unchanged")


def _span(days: list[str]) -> str:
    return "" if not days else days[0] if len(days) == 1 else f"{days[0]}..{days[-1]}"


def _worst(records: list[CheckRecord]) -> CheckRecord:
    return max(records, key=lambda record: (_SEVERITY[record.verdict], record.checked_at))


def _diff_summary(records: list[CheckRecord]) -> dict[str, Any]:
    """The diff of a table summed over its runs; column reasons (PSI, mean shift) once per column."""
    totals = {name: 0 for name in _DIFF_COUNTS}
    compared: set[str] = set()
    new: set[str] = set()
    column_reasons: dict[str, str] = {}
    releases: set[str] = set()
    for record in records:
        for name in _DIFF_COUNTS:
            totals[name] += int(record.figures.get(name, 0) or 0)
        compared.update(record.figures.get("compared_days", []))
        new.update(record.figures.get("new_days", []))
        for reason in record.figures.get("reasons", []):
            column = reason.split(":", 1)[0]
            if column != "rows":  # the amount of change is summed above, not repeated per run
                column_reasons.setdefault(column, reason)
        if record.figures.get("release_id"):
            releases.add(record.figures["release_id"])
    touched = totals["changed"] + totals["added"] + totals["removed"]
    return {
        **totals,
        "changed_fraction": round(touched / totals["production_rows"], 6)
        if totals["production_rows"]
        else 0.0,
        "compared_days": len(compared),
        "new_days": len(new),
        "against_releases": sorted(releases),
        "verdict": _worst(records).verdict,
        "reasons": list(column_reasons.values())[:5],
    }


def _impact_summary(records: list[CheckRecord]) -> dict[str, Any]:
    """Per reference model, its flips summed over the table's runs, and the largest score PSI of a run."""
    models: dict[str, dict[str, Any]] = {}
    for record in records:
        for name, facts in record.figures.get("models", {}).items():
            total = models.setdefault(
                name,
                {"rows_scored": 0, "decision_flips": 0, "approve_to_decline": 0, "decline_to_approve": 0},
            )
            for count in ("rows_scored", "decision_flips", "approve_to_decline", "decline_to_approve"):
                total[count] += int(facts.get(count, 0) or 0)
            psi = facts.get("score_psi")
            if psi is not None:
                total["score_psi"] = max(psi, total.get("score_psi", 0.0))
    for total in models.values():
        total["flip_rate"] = (
            round(total["decision_flips"] / total["rows_scored"], 6) if total["rows_scored"] else 0.0
        )
    return {"verdict": _worst(records).verdict, "models": models}


def batch_check_summary(manifest: BatchManifest) -> dict[str, Any]:
    """State, blocking reasons and, per table, partitions, rows, check verdicts and the production diff."""
    by_table: dict[str, dict[str, list[CheckRecord]]] = {}
    for record in manifest.checks:
        by_table.setdefault(record.table, {}).setdefault(record.check, []).append(record)
    tables: dict[str, Any] = {}
    for table in sorted(manifest.tables.keys() | by_table.keys()):
        staged = manifest.tables.get(table, {})
        days = sorted(staged)
        checks = by_table.get(table, {})
        entry: dict[str, Any] = {
            "partitions": _span(days),
            "partition_count": len(days),
            "rows": sum(record.row_count for record in staged.values()),
            "checks": {
                name: {
                    "verdict": (worst := _worst(records)).verdict,
                    "blocking": worst.blocking,
                    "summary": worst.summary,
                    "partitions": _span(sorted({day for record in records for day in record.partitions})),
                }
                for name, records in sorted(checks.items())
            },
        }
        if DIFF_CHECK in checks:
            entry["diff"] = _diff_summary(checks[DIFF_CHECK])
        if MODEL_IMPACT_CHECK in checks:
            entry["model_impact"] = _impact_summary(checks[MODEL_IMPACT_CHECK])
        tables[table] = entry
    return {
        "batch_id": manifest.batch_id,
        "state": manifest.state,
        "blocking_failures": [
            f"{record.table} {record.check} ({_span(record.partitions)}): {record.summary}"
            for record in manifest.blocking_failures()
        ],
        "warnings": [
            f"{record.table} {record.check} ({_span(record.partitions)}): {record.summary}"
            for record in manifest.checks
            if record.verdict == "warned"
        ],
        "tables": tables,
    }
