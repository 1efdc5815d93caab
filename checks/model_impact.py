"""Model impact: what a batch does to the decisions of the reference models that read the table.

The run's staged rows and production's rows of the same days and keys are scored by each reference model
(`FeatureSpec.reference_models`), joined on the keys, and compared in one aggregation: rows scored, the mean
and quantiles (p10, p50, p90) of the score on both sides, the score's population stability index over ten
bins of 0..1, and the entity-days whose decision flips, in each direction; then the top movers (largest
score change) with their keys. The spec's `ModelImpactPolicy` warns above one share of flips and blocks
above another. Days production does not serve yet have nothing to compare and pass.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from backfills.checks.check import Check, GateInputs
from backfills.checks.diff import population_stability_index
from backfills.checks.outcome import CheckOutcome
from backfills.checks.samples import SAMPLE_SIZE, plain_rows
from backfills.specs import FeatureSpec, ModelImpactPolicy, ReferenceModel

MODEL_IMPACT_CHECK = "model_impact"
SCORE_BINS = 10
QUANTILES = (0.1, 0.5, 0.9)


def _bin(score: Column) -> Column:
    return F.least(F.floor(score * SCORE_BINS), F.lit(SCORE_BINS - 1))


def _scored(model: ReferenceModel, rows: DataFrame, keys: list[str], side: str) -> DataFrame:
    scored = model.score(rows.select(*keys, *model.features))
    return scored.select(
        *keys, F.col("score").alias(f"{side}_score"), F.col("decision").alias(f"{side}_decision")
    )


def model_figures(
    model: ReferenceModel, keys: list[str], staged: DataFrame, production: DataFrame
) -> dict[str, Any]:
    """The impact figures of one model: staged (`new`) against production (`old`) on the same keys."""
    joined = _scored(model, staged, keys, "new").join(_scored(model, production, keys, "old"), keys, "inner")
    new, old = F.col("new_score"), F.col("old_score")
    flips = F.col("new_decision") != F.col("old_decision")
    row = joined.agg(
        F.count(F.lit(1)).alias("rows"),
        F.avg(new).alias("new_mean"),
        F.avg(old).alias("old_mean"),
        F.percentile_approx(new, list(QUANTILES), 100_000).alias("new_quantiles"),
        F.percentile_approx(old, list(QUANTILES), 100_000).alias("old_quantiles"),
        F.count_if(flips).alias("flips"),
        F.count_if(flips & (F.col("new_decision") == "decline")).alias("to_decline"),
        F.count_if(flips & (F.col("old_decision") == "decline")).alias("to_approve"),
        *[F.count_if(_bin(new) == index).alias(f"new_bin{index}") for index in range(SCORE_BINS)],
        *[F.count_if(_bin(old) == index).alias(f"old_bin{index}") for index in range(SCORE_BINS)],
    ).first()
    rows = row["rows"]
    movers = (
        joined.withColumn("score_change", F.round(new - old, 6))
        .where(F.col("score_change") != 0)
        .orderBy(F.abs(F.col("score_change")).desc(), *keys)
        .limit(SAMPLE_SIZE)
        .collect()
    )
    psi = population_stability_index(
        [row[f"old_bin{index}"] for index in range(SCORE_BINS)],
        [row[f"new_bin{index}"] for index in range(SCORE_BINS)],
    )

    def quantiles(values: list[float] | None) -> dict[str, float]:
        return {f"p{round(q * 100)}": value for q, value in zip(QUANTILES, values or [], strict=False)}

    return {
        "rows_scored": rows,
        "decision_flips": row["flips"],
        "flip_rate": round(row["flips"] / rows, 6) if rows else 0.0,
        "approve_to_decline": row["to_decline"],
        "decline_to_approve": row["to_approve"],
        "score_mean": {"production": row["old_mean"], "staged": row["new_mean"]},
        "score_quantiles": {
            "production": quantiles(row["old_quantiles"]),
            "staged": quantiles(row["new_quantiles"]),
        },
        "score_psi": round(psi, 6) if psi is not None else None,
        "sample": [{"model": model.name, **item} for item in plain_rows(movers)],
    }


def _verdict(figures: dict[str, dict[str, Any]], policy: ModelImpactPolicy) -> tuple[str, list[str]]:
    worst, reasons = "passed", []
    for name, facts in figures.items():
        rate = facts["flip_rate"]
        line = (
            f"{name}: {facts['decision_flips']} of {facts['rows_scored']} entity-days flip ({rate:.2%}; "
            f"{facts['approve_to_decline']} approve->decline, {facts['decline_to_approve']} decline->approve)"
        )
        if rate > policy.block_flip_rate:
            worst = "block"
            reasons.append(f"{line}, above {policy.block_flip_rate:.2%}")
        elif rate > policy.warn_flip_rate:
            worst = "block" if worst == "block" else "warn"
            reasons.append(f"{line}, above {policy.warn_flip_rate:.2%}")
        else:
            reasons.append(line)
    return worst, reasons


class ModelImpact(Check):
    name = MODEL_IMPACT_CHECK
    description = (
        "what the batch does to the reference models' scores and decisions: flips, score shift and PSI, "
        "top movers, against production's rows of the same days"
    )

    def applies(self, spec: FeatureSpec) -> bool:
        return bool(spec.reference_models)

    def judge(self, spec: FeatureSpec, gate: GateInputs) -> CheckOutcome:
        policy = spec.model_impact
        threshold = {"warn_flip_rate": policy.warn_flip_rate, "block_flip_rate": policy.block_flip_rate}
        if gate.production.rows is None or not gate.production.days:
            return CheckOutcome(
                name=self.name,
                passed=True,
                blocking=True,
                summary="production serves none of these days yet: no decisions to compare",
                figures={"rows_scored": 0, "threshold": threshold},
            )
        keys = [*spec.entity_keys, spec.date_column]
        per_model = {
            model.name: model_figures(model, keys, gate.staged, gate.production.rows)
            for model in spec.reference_models
        }
        verdict, reasons = _verdict(per_model, policy)
        sample = [row for facts in per_model.values() for row in facts.pop("sample")]
        return CheckOutcome(
            name=self.name,
            passed=verdict == "passed",
            blocking=verdict != "warn",
            summary="; ".join(reasons),
            figures={
                "models": per_model,
                "threshold": threshold,
                "release_id": gate.production.release_id,
                "sample": sample,
            },
        )
