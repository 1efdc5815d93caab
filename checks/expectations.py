"""The declared expectations of a staged table, in Great Expectations: the layer users see.

The suite is generated from the spec (GX expectation types and arguments), and every result is in GX's own
result format (SUMMARY, built by GX's formatter), so the evidence reads as GX reads. The figures behind the
results come from the one pass over the run's rows (checks/staged_pass.py): each expectation adds the counts
it needs to the pass instead of costing one Spark job per metric. tests/test_checks.py validates
the same suites with GX itself on planted defects and requires the same verdicts and counts.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from datetime import date
from functools import partial
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from backfills.checks.check import Check, GateInputs, ProductionRows
from backfills.checks.outcome import CheckOutcome
from backfills.checks.staged_pass import Measure, PassFigures, merge_measures, run_pass
from backfills.specs import DateRange, FeatureSpec

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402  (analytics must be off before the import)
import great_expectations.expectations as gxe  # noqa: E402
from great_expectations.core import (  # noqa: E402
    ExpectationSuiteValidationResult,
    ExpectationValidationResult,
)
from great_expectations.expectations.expectation import (  # noqa: E402
    _format_map_output,
    _mostly_success,
    parse_result_format,
)

RANGE_CHECK = "value_ranges"
UNIQUE_KEYS_CHECK = "unique_keys"
NULL_RATES_CHECK = "null_rates"
ROW_CONSISTENCY_CHECK = "row_consistency"
RESULT_FORMAT = parse_result_format("SUMMARY")


def null_measure(column: str) -> str:
    """The pass's measure of a column's nulls (shared by null rates, ranges and the manifest)."""
    return f"null:{column}"


def _null_threshold(spec: FeatureSpec, column: str) -> float:
    item = next(c for c in spec.columns if c.name == column)
    if item.max_null_rate is not None:
        return item.max_null_rate
    return 0.5 if item.nullable else 0.0


def expectations_for(spec: FeatureSpec) -> list[tuple[str, gxe.Expectation]]:
    """The GX expectations of a spec, each with the check it belongs to (also in its `meta`)."""
    keys = ", ".join(f"`{name}`" for name in (*spec.entity_keys, spec.date_column))
    found: list[tuple[str, gxe.Expectation]] = []
    for column in spec.columns:
        if column.min_value is not None or column.max_value is not None:
            found.append(
                (
                    RANGE_CHECK,
                    gxe.ExpectColumnValuesToBeBetween(
                        column=column.name,
                        min_value=column.min_value,
                        max_value=column.max_value,
                        mostly=spec.range_mostly,
                    ),
                )
            )
        found.append(
            (
                NULL_RATES_CHECK,
                gxe.ExpectColumnValuesToNotBeNull(
                    column=column.name, mostly=1.0 - _null_threshold(spec, column.name)
                ),
            )
        )
    # One aggregation instead of GX's window-based compound uniqueness (slow on Spark).
    found.append(
        (
            UNIQUE_KEYS_CHECK,
            gxe.UnexpectedRowsExpectation(
                unexpected_rows_query=(
                    f"SELECT {keys}, COUNT(*) AS copies FROM {{batch}} GROUP BY {keys} HAVING COUNT(*) > 1"
                ),
                description="entity key and feature date identify one row",
            ),
        )
    )
    for rule in spec.row_rules:
        found.append(
            (
                ROW_CONSISTENCY_CHECK,
                gxe.UnexpectedRowsExpectation(
                    unexpected_rows_query=f"SELECT * FROM {{batch}} WHERE NOT ({rule.condition})",
                    description=f"{rule.name}: {rule.condition}",
                ),
            )
        )
    for check, expectation in found:
        expectation.meta = {"check": check}
    return found


def suite(spec: FeatureSpec) -> gx.ExpectationSuite:
    """The table's declared expectations as one GX suite (what `backfills` shows and GX can run itself)."""
    return gx.ExpectationSuite(
        name=f"{spec.name}_staged", expectations=[e for _, e in expectations_for(spec)]
    )


def _outside(expectation: gxe.ExpectColumnValuesToBeBetween) -> Any:
    value = F.col(expectation.column)
    outside = F.lit(False)
    if expectation.min_value is not None:
        outside = outside | (value < F.lit(expectation.min_value))
    if expectation.max_value is not None:
        outside = outside | (value > F.lit(expectation.max_value))
    return value.isNotNull() & outside


def _referenced(spec: FeatureSpec, condition: str) -> tuple[str, ...]:
    return tuple(c for c in spec.column_names if re.search(rf"\b{re.escape(c)}\b", condition))


def _fails_mostly(unexpected: int, rows: int, *, mostly: float) -> bool:
    """Whether `unexpected` of `rows` fail an expectation that `mostly` of them must meet (GX's rule)."""
    return rows > 0 and not _mostly_success(rows, unexpected, mostly)


def _rule_condition(expectation: gxe.UnexpectedRowsExpectation) -> str:
    return expectation.description.split(": ", 1)[1]


class ExpectationCheck(Check):
    """The expectations of the suite that belong to one check, judged from the pass's figures."""

    def __init__(self, name: str, description: str) -> None:
        self.name = name
        self.description = description

    def _expectations(self, spec: FeatureSpec) -> list[tuple[int, gxe.Expectation]]:
        return [(i, e) for i, (check, e) in enumerate(expectations_for(spec)) if check == self.name]

    def applies(self, spec: FeatureSpec) -> bool:
        return bool(self._expectations(spec))

    def measures(self, spec: FeatureSpec) -> list[Measure]:
        measures = []
        for index, expectation in self._expectations(spec):
            if isinstance(expectation, gxe.ExpectColumnValuesToBeBetween):
                shown = (expectation.column,)
                measures.append(Measure(f"{self.name}:{index}", _outside(expectation), shown))
                measures.append(Measure(null_measure(expectation.column), F.col(expectation.column).isNull()))
            elif isinstance(expectation, gxe.ExpectColumnValuesToNotBeNull):
                column, mostly = expectation.column, expectation.mostly
                # The nulls a nullable column may hold need no sample: only a null rate that fails does.
                offends = partial(_fails_mostly, mostly=mostly)
                measures.append(Measure(null_measure(column), F.col(column).isNull(), (column,), offends))
            elif self.name == ROW_CONSISTENCY_CHECK:
                condition = _rule_condition(expectation)
                broken = ~F.expr(condition)
                measures.append(Measure(f"{self.name}:{index}", broken, _referenced(spec, condition)))
        return measures

    def judge(self, spec: FeatureSpec, gate: GateInputs) -> CheckOutcome:
        results = [
            (expectation, _result(self.name, index, expectation, gate.figures))
            for index, expectation in self._expectations(spec)
        ]
        return _outcome(self.name, results)

    def judge_day(self, spec: FeatureSpec, gate: GateInputs, run: CheckOutcome, day: str) -> CheckOutcome:
        # The same expectations over the day's figures: its own counts and offending rows. A day of a run
        # that passed passes (a `mostly` threshold holds over the run's rows, not each day's).
        judged = self.judge(spec, replace(gate, figures=gate.figures.only(day)))
        return judged if not run.passed else replace(judged, passed=True)


def validate_on_pass(spec: FeatureSpec, figures: PassFigures) -> ExpectationSuiteValidationResult:
    """The spec's whole suite validated from a pass that counted every expectation check's measures: GX's
    result of each expectation, in suite order, as `Validator.validate` would give it."""
    results = [
        _result(check, index, expectation, figures)
        for index, (check, expectation) in enumerate(expectations_for(spec))
    ]
    return ExpectationSuiteValidationResult(
        success=all(result.success for result in results), results=results, suite_name=f"{spec.name}_staged"
    )


def _result(
    check: str, index: int, expectation: gxe.Expectation, figures: PassFigures
) -> ExpectationValidationResult:
    """GX's result of one expectation, built from the pass's figures by GX's own formatter."""
    rows = figures.rows
    config = expectation.configuration
    if isinstance(expectation, gxe.ExpectColumnValuesToBeBetween | gxe.ExpectColumnValuesToNotBeNull):
        nulls = figures.total(null_measure(expectation.column))
        if isinstance(expectation, gxe.ExpectColumnValuesToNotBeNull):
            unexpected, nonnull, considered = nulls, None, rows
            sample = figures.sample(null_measure(expectation.column))
        else:
            unexpected, nonnull, considered = figures.total(f"{check}:{index}"), rows - nulls, rows - nulls
            sample = figures.sample(f"{check}:{index}")
        success = considered == 0 or _mostly_success(considered, unexpected, expectation.mostly)
        formatted = _format_map_output(
            result_format=RESULT_FORMAT,
            success=success,
            element_count=rows,
            nonnull_count=nonnull,
            unexpected_count=unexpected,
            unexpected_list=[row.get(expectation.column) for row in sample],
        )
        result = formatted["result"] | {"sample": sample}
        return ExpectationValidationResult(success=success, expectation_config=config, result=result)
    if check == UNIQUE_KEYS_CHECK:
        unexpected = sum(day.duplicate_keys for day in figures.days.values())
        sample = [
            {**{k: v for k, v in row.items() if k != "rows"}, "copies": row["rows"]}
            for row in figures.duplicate_sample()
        ]
    else:
        unexpected = figures.total(f"{check}:{index}")
        sample = figures.sample(f"{check}:{index}")
    result = {"observed_value": unexpected, "details": {"unexpected_rows": sample}, "sample": sample}
    return ExpectationValidationResult(success=unexpected == 0, expectation_config=config, result=result)


def _evidence(
    check: str, expectation: gxe.Expectation, result: ExpectationValidationResult
) -> dict[str, Any]:
    """What an approver reads of one failed expectation: figures, threshold, offending rows with keys."""
    found = result.result
    if check in (UNIQUE_KEYS_CHECK, ROW_CONSISTENCY_CHECK):
        figures: dict[str, Any] = {"unexpected_count": found["observed_value"], "sample": found["sample"]}
        if check == ROW_CONSISTENCY_CHECK:
            figures["rule"] = expectation.description
        return figures | {"gx_result": result.to_json_dict()["result"] | {"sample": None}}
    figures = {
        "column": expectation.column,
        "unexpected_count": found["unexpected_count"],
        "unexpected_percent": round(float(found["unexpected_percent"] or 0.0), 4),
        "element_count": found["element_count"],
        "sample": found["sample"],
    }
    if check == RANGE_CHECK:
        figures["threshold"] = {
            "min": expectation.min_value,
            "max": expectation.max_value,
            "mostly": expectation.mostly,
        }
    else:
        figures["threshold"] = {"max_null_rate": round(1.0 - expectation.mostly, 6)}
    return figures


def _observed(
    check: str, expectation: gxe.Expectation, result: ExpectationValidationResult
) -> dict[str, Any]:
    """Each expectation's observed figures beside its threshold, failed or not (no rows)."""
    figures = _evidence(check, expectation, result)
    if "rule" in figures:
        figures["rule"] = figures["rule"].split(":")[0]
    return {name: value for name, value in figures.items() if name not in ("sample", "gx_result")}


def _outcome(check: str, results: list[tuple[gxe.Expectation, ExpectationValidationResult]]) -> CheckOutcome:
    failures = [_evidence(check, e, r) for e, r in results if not r.success]
    summary = (
        f"{len(results)} expectations passed"
        if not failures
        else f"{len(failures)} of {len(results)} expectations failed: "
        + "; ".join(_describe(check, evidence) for evidence in failures[:3])
    )
    validation = ExpectationSuiteValidationResult(
        success=not failures, results=[r for _, r in results], suite_name=check
    )
    return CheckOutcome(
        name=check,
        passed=not failures,
        blocking=True,
        summary=summary,
        figures=({"failures": failures} if failures else {"expectations": len(results)})
        | {"observed": [_observed(check, e, r) for e, r in results]}
        | {"gx_statistics": validation.to_json_dict()["statistics"]},
    )


def _describe(check: str, evidence: dict[str, Any]) -> str:
    if check in (UNIQUE_KEYS_CHECK, ROW_CONSISTENCY_CHECK):
        what = evidence.get("rule", "duplicate keys")
        return f"{what} ({evidence['unexpected_count']} rows)"
    return (
        f"{evidence['column']} {evidence['unexpected_count']} rows ({evidence['unexpected_percent']}%) "
        f"outside {evidence['threshold']}"
    )


EXPECTATION_CHECKS = (
    ExpectationCheck(RANGE_CHECK, "each column within its bounds (GX expect_column_values_to_be_between)"),
    ExpectationCheck(
        NULL_RATES_CHECK,
        "each column's null rate under its threshold (GX expect_column_values_to_not_be_null)",
    ),
    ExpectationCheck(UNIQUE_KEYS_CHECK, "entity keys and date identify one row"),
    ExpectationCheck(ROW_CONSISTENCY_CHECK, "every row meets the spec's row rules"),
)


def expectation_figures(spec: FeatureSpec, staged: DataFrame) -> PassFigures:
    """One pass over `staged` counting what every expectation check of `spec` needs."""
    checks = [check for check in EXPECTATION_CHECKS if check.applies(spec)]
    return run_pass(
        staged,
        keys=[*spec.entity_keys, spec.date_column],
        date_column=spec.date_column,
        schema_ddl=spec.schema_ddl,
        measures=merge_measures(m for check in checks for m in check.measures(spec)),
    )


def run_expectations(spec: FeatureSpec, staged: DataFrame) -> list[CheckOutcome]:
    """The expectation checks of `spec` over `staged` on their own: one pass, then every verdict."""
    checks = [check for check in EXPECTATION_CHECKS if check.applies(spec)]
    figures = expectation_figures(spec, staged)
    days = sorted(date.fromisoformat(day) for day in figures.days) or [date.today()]
    gate = GateInputs(
        dates=DateRange(days[0], days[-1]),
        staged=staged,
        figures=figures,
        records=(),
        inputs={},
        production=ProductionRows(release_id=None, days=[], rows=None),
    )
    return sorted((check.judge(spec, gate) for check in checks), key=lambda outcome: outcome.name)
