"""Cross-table consistency of one run's staged rows: their keys against the same-day keys of the tables they
were computed from, and the spec's conditions over those inputs joined on the keys."""

from __future__ import annotations

from collections.abc import Mapping
from functools import reduce
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from backfills.checks.check import Check, GateInputs
from backfills.checks.outcome import CheckOutcome
from backfills.checks.samples import SAMPLE_SIZE, plain_rows
from backfills.specs import DateRange, FeatureSpec, KeyCoverage

CROSS_TABLE_CHECK = "cross_table_consistency"


def _day_keys(frame: DataFrame, spec: FeatureSpec, date_expression: str, dates: DateRange) -> DataFrame:
    day = F.expr(date_expression)
    return (
        frame.where(day.between(F.lit(dates.start), F.lit(dates.end)))
        .select(*spec.entity_keys, day.alias(spec.date_column))
        .distinct()
    )


def _coverage(
    spec: FeatureSpec, rule: KeyCoverage, staged: DataFrame, upstream: DataFrame, dates: DateRange
) -> dict[str, Any]:
    """Keys only here and keys only upstream, counted and sampled in one full outer join."""
    keys = [*spec.entity_keys, spec.date_column]
    here = _day_keys(staged, spec, spec.date_column, dates).withColumn("_here", F.lit(True))
    there = _day_keys(upstream, spec, rule.upstream_date, dates).withColumn("_upstream", F.lit(True))
    joined = here.join(there, keys, "full_outer")
    only_here = F.col("_upstream").isNull()
    only_upstream = F.col("_here").isNull()
    order = F.struct(*[F.col(key) for key in keys])
    counted = joined.agg(
        F.count_if(only_here).alias("only_here"),
        F.count_if(only_upstream).alias("only_upstream"),
        F.min_by(order, F.when(only_here, order), SAMPLE_SIZE).alias("sample_here"),
        F.min_by(order, F.when(only_upstream, order), SAMPLE_SIZE).alias("sample_upstream"),
    ).first()
    violations = []
    if rule.relation in ("subset", "equal") and counted["only_here"]:
        violations.append(
            {
                "problem": f"rows whose key is not in {rule.upstream} that day",
                "count": counted["only_here"],
                "sample": plain_rows(counted["sample_here"] or []),
            }
        )
    if rule.relation in ("covers", "equal") and counted["only_upstream"]:
        violations.append(
            {
                "problem": f"keys of {rule.upstream} that day with no row here",
                "count": counted["only_upstream"],
                "sample": plain_rows(counted["sample_upstream"] or []),
            }
        )
    return {"upstream": rule.upstream, "relation": rule.relation, "violations": violations}


def _input_rule_violations(
    spec: FeatureSpec, inputs: Mapping[str, DataFrame], dates: DateRange
) -> list[dict[str, Any]]:
    keys = [*spec.entity_keys, spec.date_column]
    joined = reduce(
        lambda left, right: left.join(right, keys, "inner"),
        [
            inputs[item.table].where(F.col(spec.date_column).between(F.lit(dates.start), F.lit(dates.end)))
            for item in spec.feature_inputs
        ],
    )
    found = []
    for rule in spec.input_rules:
        broken = joined.where(~F.expr(rule.condition))
        counted = broken.agg(
            F.count(F.lit(1)).alias("count"),
            F.min_by(F.struct(*keys), F.struct(*keys), SAMPLE_SIZE).alias("sample"),
        ).first()
        if counted["count"]:
            found.append(
                {
                    "problem": f"{rule.name}: {rule.condition}",
                    "count": counted["count"],
                    "sample": plain_rows(counted["sample"] or []),
                }
            )
    return found


def cross_table_outcome(
    spec: FeatureSpec, staged: DataFrame, inputs: Mapping[str, DataFrame], dates: DateRange
) -> CheckOutcome:
    """Blocking: the staged keys agree with their inputs' keys, and the inputs meet the spec's rules."""
    coverage = [_coverage(spec, rule, staged, inputs[rule.upstream], dates) for rule in spec.key_coverage]
    violations = [v | {"upstream": c["upstream"]} for c in coverage for v in c["violations"]]
    violations += _input_rule_violations(spec, inputs, dates) if spec.input_rules else []
    described = [f"{rule.upstream} ({rule.relation})" for rule in spec.key_coverage]
    described += [rule.name for rule in spec.input_rules]
    if violations:
        summary = "; ".join(f"{v['count']} {v['problem']}" for v in violations[:3])
    else:
        summary = f"keys and inputs agree: {', '.join(described)}"
    return CheckOutcome(
        name=CROSS_TABLE_CHECK,
        passed=not violations,
        blocking=True,
        summary=summary,
        figures={
            "rules": described,
            "violations": violations,
            "key_coverage": [{"upstream": c["upstream"], "relation": c["relation"]} for c in coverage],
        },
    )


class CrossTableConsistency(Check):
    name = CROSS_TABLE_CHECK
    description = "keys agree with the same-day keys of the inputs, and the inputs meet the spec's rules"

    def applies(self, spec: FeatureSpec) -> bool:
        return bool(spec.key_coverage or spec.input_rules)

    def judge(self, spec: FeatureSpec, gate: GateInputs) -> CheckOutcome:
        return cross_table_outcome(spec, gate.staged, gate.inputs, gate.dates)
