"""The two contracts as checks Dagster shows per partition, like every other check of the gate.

Both are enforced while a run stages (assets/staging.py), before the gate: the raw input contract on the
landing rows of specs that read raw events, the output contract on the computed rows before they are
written. A violation blocks the batch right there, with its evidence, and nothing is staged; the failed
results Dagster shows then come from that record (assets/check_results.py, `blocked_check_results`). A run
that reaches the gate held both contracts, so here they only report that, with the rows they covered.
"""

from __future__ import annotations

from backfills.checks.check import Check, GateInputs
from backfills.checks.outcome import CheckOutcome
from backfills.specs import RAW_TRANSACTIONS, FeatureSpec

RAW_INPUT_CHECK = "raw_input_contract"
CONTRACT_CHECK = "output_contract"


def _held(name: str, summary: str, rows: int | None = None) -> CheckOutcome:
    figures: dict[str, object] = {"violations": 0}
    if rows is not None:
        figures["rows"] = rows
    return CheckOutcome(name=name, passed=True, blocking=True, summary=summary, figures=figures)


class RawInputContract(Check):
    name = RAW_INPUT_CHECK
    description = (
        "the landing files the run read hold the raw contract (schema, identifiers, amounts, currencies, "
        "statuses, event days); checked before anything is computed, a violation stages nothing"
    )

    def applies(self, spec: FeatureSpec) -> bool:
        return any(item.table == RAW_TRANSACTIONS for item in spec.inputs)

    def judge(self, spec: FeatureSpec, gate: GateInputs) -> CheckOutcome:
        return _held(self.name, "the landing rows of the run's days hold the raw contract")


class OutputContract(Check):
    name = CONTRACT_CHECK
    description = (
        "the computed rows hold the table's contract (columns, types, nullability, bounds, finite values, "
        "one row per key and day); checked before they are written, a violation stages nothing"
    )

    def judge(self, spec: FeatureSpec, gate: GateInputs) -> CheckOutcome:
        rows = gate.figures.rows
        return _held(self.name, f"{rows} rows hold the contract of {spec.name}", rows)

    def judge_day(self, spec: FeatureSpec, gate: GateInputs, run: CheckOutcome, day: str) -> CheckOutcome:
        rows = gate.figures.days[day].rows if day in gate.figures.days else 0
        return _held(self.name, f"{day}: {rows} rows hold the contract of {spec.name}", rows)
