"""The blocking gate on one run's staged partitions: every check of the spec, as manifest verdicts."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from backfills.checks.check import Check, GateInputs
from backfills.checks.outcome import CheckOutcome
from backfills.checks.registry import checks_of
from backfills.checks.staged_pass import Measure, merge_measures
from backfills.resources.catalog_models import CheckRecord
from backfills.specs import FeatureSpec


def gate_measures(spec: FeatureSpec) -> list[Measure]:
    """What every check of the spec needs counted in the one pass over the run's rows."""
    return merge_measures(measure for check in checks_of(spec) for measure in check.measures(spec))


def run_gate(
    spec: FeatureSpec, gate: GateInputs, progress: Callable[[str], None] = lambda _: None
) -> list[CheckOutcome]:
    """All checks of the spec over the rows a run staged, by name. A check that raises is a failed blocking
    check carrying the exception, never a silent pass. `progress` hears which check runs, and its verdict."""
    checks = checks_of(spec)
    outcomes = []
    for number, check in enumerate(checks, 1):
        progress(f"{spec.name}: check {check.name} running ({number} of {len(checks)})")
        started = time.monotonic()
        outcome = _judged(check, spec, gate)
        progress(f"{spec.name}: check {check.name} {outcome.verdict} in {time.monotonic() - started:.1f}s")
        outcomes.append(outcome)
    return outcomes


def day_outcomes(
    spec: FeatureSpec, gate: GateInputs, outcomes: Sequence[CheckOutcome]
) -> dict[str, list[CheckOutcome]]:
    """What each partition of the run shows per check (see `Check.judge_day`), from the run's outcomes."""
    checks = {check.name: check for check in checks_of(spec)}
    result: dict[str, list[CheckOutcome]] = {}
    for record in gate.records:
        day = record.partition
        result[day] = []
        for outcome in outcomes:
            try:
                judged = checks[outcome.name].judge_day(spec, gate, outcome, day)
            except Exception:  # noqa: BLE001  (the run's verdict stands for the day)
                judged = outcome
            result[day].append(judged)
    return result


def _judged(check: Check, spec: FeatureSpec, gate: GateInputs) -> CheckOutcome:
    try:
        return check.judge(spec, gate)
    except Exception as error:  # noqa: BLE001  (the verdict carries it; the batch is blocked)
        message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        return CheckOutcome(
            name=check.name,
            passed=False,
            blocking=True,
            summary=f"the check raised {message}",
            figures={"error": message},
        )


def check_records(
    outcomes: Sequence[CheckOutcome], *, table: str, partitions: Sequence[str], run_id: str
) -> list[CheckRecord]:
    now = datetime.now(UTC)
    return [
        CheckRecord(
            table=table,
            check=outcome.name,
            partitions=list(partitions),
            verdict=outcome.verdict,
            blocking=outcome.blocking,
            summary=outcome.summary,
            figures=outcome.figures,
            run_id=run_id,
            checked_at=now,
        )
        for outcome in outcomes
    ]
