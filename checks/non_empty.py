"""Every staged day has rows and read a landing file with rows; an empty day blocks unless the spec says empty
days only warn. From the pass's row counts: no Spark work of its own."""

from __future__ import annotations

from backfills.checks.check import Check, GateInputs
from backfills.checks.outcome import CheckOutcome
from backfills.specs import FeatureSpec

NON_EMPTY_CHECK = "non_empty_partitions"


class NonEmptyDays(Check):
    name = NON_EMPTY_CHECK
    description = "every day of the run has rows, and read a landing file with rows"

    def judge(self, spec: FeatureSpec, gate: GateInputs) -> CheckOutcome:
        days = [record.partition for record in gate.records]
        rows = {day: gate.figures.days[day].rows if day in gate.figures.days else 0 for day in days}
        empty = sorted(day for day, count in rows.items() if count == 0)
        problems = []
        if empty:
            problems.append(f"{len(empty)} of {len(days)} days have no rows: {', '.join(empty[:5])}")
        if gate.empty_landing_days:
            problems.append(f"landing files with no rows: {', '.join(list(gate.empty_landing_days)[:5])}")
        return CheckOutcome(
            name=self.name,
            passed=not problems,
            blocking=spec.empty_partition_blocks,
            summary="; ".join(problems) or f"all {len(days)} days have rows",
            figures={
                "empty_partitions": empty,
                "empty_landing_days": list(gate.empty_landing_days),
                "rows_per_partition": rows,
            },
        )

    def judge_day(self, spec: FeatureSpec, gate: GateInputs, run: CheckOutcome, day: str) -> CheckOutcome:
        rows = run.figures["rows_per_partition"].get(day, 0)
        empty_landing = day in gate.empty_landing_days
        problem = "no rows" if rows == 0 else "its landing file has no rows" if empty_landing else None
        return CheckOutcome(
            name=self.name,
            passed=run.passed or problem is None,
            blocking=run.blocking,
            summary=f"{day}: {problem or f'{rows} rows'}",
            figures={"rows": rows, "empty_landing_file": empty_landing},
        )
