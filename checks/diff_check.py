"""The diff-against-production check of one run: its staged days that production already serves, compared
with the current release's rows, judged by the spec's diff policy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from backfills.checks.check import Check, GateInputs
from backfills.checks.diff import diff_against_production, judge
from backfills.checks.outcome import CheckOutcome
from backfills.specs import FeatureSpec

DIFF_CHECK = "diff_vs_production"
_NUMERIC_TYPES = ("tinyint", "smallint", "int", "bigint", "float", "double", "decimal")


def numeric_columns(spec: FeatureSpec) -> list[str]:
    return [c.name for c in spec.columns if c.type.split("(")[0] in _NUMERIC_TYPES]


def diff_outcome(
    spec: FeatureSpec,
    staged: DataFrame,
    production: DataFrame | None,
    *,
    release_id: str | None,
    released_days: Sequence[str],
    staged_days: Sequence[str],
) -> CheckOutcome:
    """Rows added, removed and changed and each numeric column's shift, for the days production serves.

    Days production does not serve yet are new: nothing to compare, so they pass (and are named).
    """
    new_days = sorted(set(staged_days) - set(released_days))
    if production is None or not released_days:
        where = f"release {release_id}" if release_id else "production (nothing promoted yet)"
        return CheckOutcome(
            name=DIFF_CHECK,
            passed=True,
            blocking=True,
            summary=f"no partition of these days is in {where}: nothing to compare, all {len(new_days)} new",
            figures={"release_id": release_id, "compared_days": [], "new_days": new_days},
        )
    compared = staged.where(F.col(spec.date_column).cast("string").isin(list(released_days)))
    report = diff_against_production(
        compared,
        production,
        keys=[*spec.entity_keys, spec.date_column],
        date_column=spec.date_column,
        numeric_columns=numeric_columns(spec),
    )
    judged = judge(report, spec.diff_policy)
    figures = report.to_metadata()
    changes = (
        f"{report.changed} changed, {report.added} added, {report.removed} removed of "
        f"{report.production_rows} production rows in {len(released_days)} days"
    )
    summary = changes if not judged.reasons else f"{changes}; " + "; ".join(judged.reasons[:3])
    return CheckOutcome(
        name=DIFF_CHECK,
        passed=judged.verdict == "pass",
        blocking=judged.verdict != "warn",
        summary=summary,
        figures={
            "release_id": release_id,
            "compared_days": list(released_days),
            "new_days": new_days,
            "verdict": judged.verdict,
            "reasons": judged.reasons,
            "policy": vars(spec.diff_policy),
            **figures,
        },
    )


class DiffVsProduction(Check):
    name = DIFF_CHECK
    description = "what the run changes against the current release: rows and each column's distribution"

    def judge(self, spec: FeatureSpec, gate: GateInputs) -> CheckOutcome:
        return diff_outcome(
            spec,
            gate.staged,
            gate.production.rows,
            release_id=gate.production.release_id,
            released_days=gate.production.days,
            staged_days=[record.partition for record in gate.records],
        )

    def judge_day(self, spec: FeatureSpec, gate: GateInputs, run: CheckOutcome, day: str) -> CheckOutcome:
        # The policy judges the run's change as a whole; each day shows its own rows changed, added and
        # removed, beside the run's column shifts (PSI, mean shift), which the policy judged.
        entry = next((item for item in run.figures.get("partitions", []) if item["partition"] == day), None)
        if entry is None:
            return run
        day_figures = {key: value for key, value in entry.items() if key != "partition"}
        run_level = {name: run.figures.get(name) for name in ("release_id", "columns", "reasons")}
        return replace(run, figures={**day_figures, **run_level})
