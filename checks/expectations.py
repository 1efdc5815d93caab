"""Great Expectations checks on the staged partitions of one run, generated from the feature spec.

Every check comes back as a CheckOutcome with its evidence (observed value, threshold, unexpected count
and percent, a sample of offending rows with their keys). An expectation that raised is a failed check
with the exception in its evidence, never a silent pass.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from backfills.checks.outcome import CheckOutcome
from backfills.checks.samples import SAMPLE_SIZE, plain_rows
from backfills.specs import FeatureSpec

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402  (analytics must be off before the import)
import great_expectations.expectations as gxe  # noqa: E402

RANGE_CHECK = "value_ranges"
UNIQUE_KEYS_CHECK = "unique_keys"
NULL_RATES_CHECK = "null_rates"
ROW_CONSISTENCY_CHECK = "row_consistency"
SAMPLE_VIEW = "backfills_offending_rows"


@cache
def _batch_definition() -> Any:
    # One ephemeral context per process; persist=False because GX never unpersists what it caches.
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    source = context.data_sources.add_spark(name="staged_partitions", persist=False)
    asset = source.add_dataframe_asset(name="run")
    return asset.add_batch_definition_whole_dataframe("whole_run")


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


def check_names(spec: FeatureSpec) -> list[str]:
    return sorted({name for name, _ in expectations_for(spec)})


def _offending(staged: DataFrame, spec: FeatureSpec, column: str, condition: Any) -> list[dict[str, Any]]:
    # An aggregation, not a filtered read: Parquet pushdown would skip NaN rows (statistics ignore NaN).
    keys = [F.col(key) for key in (*spec.entity_keys, spec.date_column)]
    order = F.struct(*keys)
    [sample] = staged.agg(
        F.min_by(F.struct(*keys, F.col(column)), F.when(condition, order), SAMPLE_SIZE)
    ).first()
    return plain_rows(sample or [])


def _evidence(
    check: str, expectation: gxe.Expectation, result: Any, spec: FeatureSpec, staged: DataFrame
) -> dict[str, Any]:
    """What an approver needs to see for one expectation: figures, threshold and offending rows."""
    info = result.exception_info or {}
    raised = [value for value in info.values() if isinstance(value, dict) and value.get("raised_exception")]
    if info.get("raised_exception"):
        raised.append(info)
    if raised:
        return {"error": raised[0].get("exception_message") or "expectation raised"}
    outcome = result.result or {}
    if check == UNIQUE_KEYS_CHECK or check == ROW_CONSISTENCY_CHECK:
        figures: dict[str, Any] = {"unexpected_count": outcome.get("observed_value", 0)}
        if not result.success:
            # GX lists the rows only in its COMPLETE format, which would also collect every unexpected value.
            staged.createOrReplaceTempView(SAMPLE_VIEW)
            query = expectation.unexpected_rows_query.replace("{batch}", SAMPLE_VIEW)
            figures["sample"] = plain_rows(staged.sparkSession.sql(query).limit(SAMPLE_SIZE).collect())
        if check == ROW_CONSISTENCY_CHECK:
            figures["rule"] = expectation.description
        return figures
    column = expectation.column
    figures = {
        "column": column,
        "unexpected_count": outcome.get("unexpected_count", 0),
        "unexpected_percent": round(float(outcome.get("unexpected_percent") or 0.0), 4),
        "element_count": outcome.get("element_count"),
    }
    if check == RANGE_CHECK:
        figures["threshold"] = {
            "min": expectation.min_value,
            "max": expectation.max_value,
            "mostly": expectation.mostly,
        }
        if not result.success:
            outside = (
                F.col(column) < expectation.min_value if expectation.min_value is not None else F.lit(False)
            )
            if expectation.max_value is not None:
                outside = outside | (F.col(column) > expectation.max_value)
            figures["sample"] = _offending(staged, spec, column, outside)
    else:
        figures["threshold"] = {"max_null_rate": round(1.0 - expectation.mostly, 6)}
        if not result.success:
            figures["sample"] = _offending(staged, spec, column, F.col(column).isNull())
    return figures


def _suite(spec: FeatureSpec, expectations: list[gxe.Expectation]) -> gx.ExpectationSuite:
    return gx.ExpectationSuite(name=f"{spec.name}_staged", expectations=expectations)


def run_expectations(spec: FeatureSpec, staged: DataFrame) -> list[CheckOutcome]:
    """Validate the run's staged rows against the spec's expectations, one outcome per check."""
    tagged = expectations_for(spec)
    batch = _batch_definition().get_batch(batch_parameters={"dataframe": staged})
    # Verdicts first, in BOOLEAN_ONLY (one Spark job per expectation, about half the time of SUMMARY);
    # only the expectations that failed or raised are validated again for their evidence.
    verdicts = batch.validate(_suite(spec, [e for _, e in tagged]), result_format="BOOLEAN_ONLY")
    failed = [r.expectation_config.to_domain_obj() for r in verdicts.results if not r.success]
    evidence_of = {}
    if failed:
        detailed = batch.validate(_suite(spec, failed), result_format="SUMMARY")
        evidence_of = {id(config): r for config, r in zip(failed, detailed.results, strict=True)}
    grouped: dict[str, list[tuple[bool, dict[str, Any]]]] = {}
    failed_results = iter(failed)
    for result in verdicts.results:
        check = result.expectation_config.meta["check"]
        if result.success:
            grouped.setdefault(check, []).append((True, {}))
            continue
        expectation = next(failed_results)
        evidence = _evidence(check, expectation, evidence_of[id(expectation)], spec, staged)
        passed = bool(evidence_of[id(expectation)].success) and "error" not in evidence
        grouped.setdefault(check, []).append((passed, evidence))
    outcomes = []
    for check, results in sorted(grouped.items()):
        failures = [evidence for passed, evidence in results if not passed]
        summary = (
            f"{len(results)} expectations passed"
            if not failures
            else f"{len(failures)} of {len(results)} expectations failed: "
            + "; ".join(_describe(check, evidence) for evidence in failures[:3])
        )
        outcomes.append(
            CheckOutcome(
                name=check,
                passed=not failures,
                blocking=True,
                summary=summary,
                figures={"failures": failures} if failures else {"expectations": len(results)},
            )
        )
    return outcomes


def _describe(check: str, evidence: dict[str, Any]) -> str:
    if "error" in evidence:
        return f"expectation raised: {evidence['error']}"
    if check in (UNIQUE_KEYS_CHECK, ROW_CONSISTENCY_CHECK):
        what = evidence.get("rule", "duplicate keys")
        return f"{what} ({evidence['unexpected_count']} rows)"
    return (
        f"{evidence['column']} {evidence['unexpected_count']} rows ({evidence['unexpected_percent']}%) "
        f"outside {evidence['threshold']}"
    )
