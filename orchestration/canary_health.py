"""Is the open canary healthy? The reference models score the canary slice (its entities' rows in the canary
release) and the control slice (every other entity's rows in production) on the newest partitions the canary
changes, and compare the two.

Two slices of a population differ a little even when nothing changed, so each gap is taken net of the gap the
same two slices had in production (the slice's own production rows, the `baseline`): a decline rate gap of
(canary - control) - (baseline - control), and the same for the mean score. A gap above the table's
`CanaryHealthPolicy` is a breach. Free of Dagster: the jobs, the sensor and `expose` call it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from backfills.assets.reader import FeatureReader
from backfills.assets.registry import FEATURES
from backfills.resources.canary_slice import slice_column
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import Canary
from backfills.specs import FeatureSpec, ReferenceModel

SIDE = "__side"
CANARY, CONTROL, BASELINE = "canary", "control", "baseline"


@dataclass(frozen=True)
class SliceScores:
    """A model's scores over one side: rows scored, mean score, share of rows it declines."""

    rows: int
    score_mean: float | None
    decline_rate: float | None


@dataclass(frozen=True)
class ModelHealth:
    """One reference model on one table: the three sides, the net gaps and the breaches they make."""

    table: str
    model: str
    days: list[str]
    canary: SliceScores
    control: SliceScores
    baseline: SliceScores
    decline_rate_gap: float | None
    score_mean_gap: float | None
    breaches: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CanaryHealth:
    """The verdict on a canary at one moment: every model compared, and what could not be compared."""

    batch_id: str
    release_id: str
    percent: float
    models: list[ModelHealth]
    notes: list[str]

    @property
    def healthy(self) -> bool:
        return not any(model.breaches for model in self.models)

    def describe(self) -> str:
        verdict = "healthy" if self.healthy else "UNHEALTHY"
        lines = [
            f"canary of batch {self.batch_id} at {self.percent:g}% (release {self.release_id}): {verdict}"
        ]
        for model in self.models:
            lines.append(
                f"{model.model} on {model.table} {model.days[0]}..{model.days[-1]}: decline rate "
                f"{_rate(model.canary.decline_rate)} in the canary slice ({model.canary.rows} rows), "
                f"{_rate(model.control.decline_rate)} in the control slice ({model.control.rows} rows), "
                f"{_rate(model.baseline.decline_rate)} in the canary slice before; net gap "
                f"{_rate(model.decline_rate_gap)}, mean score gap {_rate(model.score_mean_gap)}"
                + (f"; {'; '.join(model.breaches)}" if model.breaches else "")
            )
        lines.extend(self.notes)
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _gap(canary: float | None, baseline: float | None, control: float | None) -> float | None:
    if canary is None or baseline is None or control is None:
        return None
    return round((canary - control) - (baseline - control), 6)


def _sides(
    reader: FeatureReader, spec: FeatureSpec, canary: Canary, production_id: str, days: list[str]
) -> DataFrame:
    """The rows of `days`, each tagged: the slice's rows in the canary release (`canary`), and in production
    every other entity's rows (`control`) and the slice's own (`baseline`)."""
    date, key = F.col(spec.date_column).cast("string"), F.col(spec.entity_keys[0])
    exposed = slice_column(key, canary.percent)
    canary_rows = reader.read(spec.name, days[0], days[-1], release=canary.release_id)
    production_rows = reader.read(spec.name, days[0], days[-1], release=production_id)
    return (
        canary_rows.where(date.isin(days) & exposed)
        .withColumn(SIDE, F.lit(CANARY))
        .unionByName(
            production_rows.where(date.isin(days)).withColumn(
                SIDE, F.when(exposed, F.lit(BASELINE)).otherwise(F.lit(CONTROL))
            )
        )
    )


def _model_health(model: ReferenceModel, spec: FeatureSpec, sides: DataFrame, days: list[str]) -> ModelHealth:
    scored = model.score(sides.select(SIDE, *model.features))
    found = {
        row[SIDE]: SliceScores(row["rows"], row["score_mean"], row["decline_rate"])
        for row in scored.groupBy(SIDE)
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.round(F.avg("score"), 6).alias("score_mean"),
            F.round(F.avg((F.col("decision") == "decline").cast("double")), 6).alias("decline_rate"),
        )
        .collect()
    }
    empty = SliceScores(0, None, None)
    canary, control, baseline = (found.get(side, empty) for side in (CANARY, CONTROL, BASELINE))
    decline_gap = _gap(canary.decline_rate, baseline.decline_rate, control.decline_rate)
    score_gap = _gap(canary.score_mean, baseline.score_mean, control.score_mean)
    policy = spec.canary_health
    breaches = []
    if decline_gap is not None and abs(decline_gap) > policy.max_decline_rate_gap:
        breaches.append(
            f"the decline rate gap {decline_gap:+.2%} is beyond {policy.max_decline_rate_gap:.2%}"
        )
    if score_gap is not None and abs(score_gap) > policy.max_score_mean_gap:
        breaches.append(f"the mean score gap {score_gap:+.4f} is beyond {policy.max_score_mean_gap:.4f}")
    return ModelHealth(
        spec.name, model.name, days, canary, control, baseline, decline_gap, score_gap, breaches
    )


def canary_health(spark: SparkSession, catalog: ReleaseCatalog, canary: Canary) -> CanaryHealth:
    """Judge the canary on the newest partitions (the table's `canary_health.days`) it changes that
    production also serves, for every table with reference models."""
    release = catalog.get_release(canary.release_id)
    production = catalog.current_release()
    reader = FeatureReader(spark, catalog.store)
    models, notes = [], []
    for spec in FEATURES:
        if not spec.reference_models:
            continue
        changed = release.changed.get(spec.name, [])
        served = catalog.served(production, spec.name, days=changed) if production and changed else {}
        days = sorted(served)[-spec.canary_health.days :]
        if not days:
            notes.append(
                f"{spec.name}: the canary changes no partition production serves, so its models have "
                "nothing to compare"
            )
            continue
        sides = _sides(reader, spec, canary, production.release_id, days).cache()
        try:
            models.extend(_model_health(model, spec, sides, days) for model in spec.reference_models)
        finally:
            sides.unpersist()
    return CanaryHealth(canary.batch_id, canary.release_id, canary.percent, models, notes)
