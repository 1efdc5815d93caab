"""Is the open canary healthy? The reference models score the canary slice (its entities' rows in the canary
release) and the control slice (every other entity's rows in production) on the newest partitions the canary
changes, and compare the two.

Two slices of a population differ a little even when nothing changed, so each gap is taken net of the gap the
same two slices had in production (the slice's own production rows, the `baseline`): (canary - control) -
(baseline - control), which is canary - baseline, the same entities on the same days in either release. The
control slice cancels out: it is reported for context, and a slice that leaves no entity outside it is
judged all the same. A gap above the table's `CanaryHealthPolicy` is a breach, and so is a slice with no
rows in the canary release where production has some (nothing to compare is no pass). The health checks a
table declares on its own columns (`ColumnHealth`: the column's mean and null rate) are judged the same
way, net of the baseline. Free of Dagster: the jobs, the sensor and `expose` call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from backfills.assets.reader import FeatureReader
from backfills.assets.registry import FEATURES
from backfills.resources.canary_slice import slice_column
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import Canary
from backfills.specs import ColumnHealth, FeatureSpec, ReferenceModel

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
class ColumnSides:
    """A column's mean and null rate on one side."""

    mean: float | None
    null_rate: float | None


@dataclass(frozen=True)
class ColumnHealthResult:
    """One of a table's own health checks (`ColumnHealth`): the three sides, the net shifts, the breaches."""

    table: str
    column: str
    days: list[str]
    canary: ColumnSides
    control: ColumnSides
    baseline: ColumnSides
    mean_shift: float | None  # net gap of the mean, relative to the slice's production mean
    null_rate_gap: float | None
    breaches: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"{self.column} of {self.table} {self.days[0]}..{self.days[-1]}: mean "
            f"{_number(self.canary.mean)} in the canary slice, {_number(self.control.mean)} in the control "
            f"slice, {_number(self.baseline.mean)} in the canary slice before; net shift "
            f"{_rate(self.mean_shift)}, null rate gap {_rate(self.null_rate_gap)}"
            + (f"; {'; '.join(self.breaches)}" if self.breaches else "")
        )


@dataclass(frozen=True)
class CanaryHealth:
    """The verdict on a canary at one moment: every model and column health check compared, and what could
    not be compared."""

    batch_id: str
    release_id: str
    percent: float
    models: list[ModelHealth]
    notes: list[str]
    columns: list[ColumnHealthResult] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not any(item.breaches for item in [*self.models, *self.columns])

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
        lines.extend(item.describe() for item in self.columns)
        lines.extend(self.notes)
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _lost_slice(days: list[str], baseline_rows: int) -> list[str]:
    """The breach of a canary slice with no rows where production has some: nothing to compare is no pass."""
    return [f"the canary slice has no rows on {days[0]}..{days[-1]}, where production has {baseline_rows}"]


def _gap(canary: float | None, baseline: float | None) -> float | None:
    """The canary side net of the slice's own production rows; None when either side has no figure (no rows,
    or only nulls)."""
    if canary is None or baseline is None:
        return None
    return round(canary - baseline, 6)


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
    decline_gap = _gap(canary.decline_rate, baseline.decline_rate)
    score_gap = _gap(canary.score_mean, baseline.score_mean)
    policy = spec.canary_health
    breaches = _lost_slice(days, baseline.rows) if baseline.rows and not canary.rows else []
    if decline_gap is not None and abs(decline_gap) > policy.max_decline_rate_gap:
        breaches.append(
            f"the decline rate gap {decline_gap:+.2%} is beyond {policy.max_decline_rate_gap:.2%}"
        )
    if score_gap is not None and abs(score_gap) > policy.max_score_mean_gap:
        breaches.append(f"the mean score gap {score_gap:+.4f} is beyond {policy.max_score_mean_gap:.4f}")
    return ModelHealth(
        spec.name, model.name, days, canary, control, baseline, decline_gap, score_gap, breaches
    )


def _column_health(
    checks: Sequence[ColumnHealth], spec: FeatureSpec, sides: DataFrame, days: list[str]
) -> list[ColumnHealthResult]:
    """The table's own health checks, all columns in one aggregation over the sides."""
    figures = {
        row[SIDE]: row
        for row in sides.groupBy(SIDE)
        .agg(
            F.count(F.lit(1)).alias("rows"),
            *(
                F.round(F.avg(F.col(check.column).cast("double")), 6).alias(f"mean_{n}")
                for n, check in enumerate(checks)
            ),
            *(
                F.round(F.avg(F.col(check.column).isNull().cast("double")), 6).alias(f"nulls_{n}")
                for n, check in enumerate(checks)
            ),
        )
        .collect()
    }
    results = []
    for n, check in enumerate(checks):
        canary, control, baseline = (
            ColumnSides(
                figures[side][f"mean_{n}"] if side in figures else None,
                figures[side][f"nulls_{n}"] if side in figures else None,
            )
            for side in (CANARY, CONTROL, BASELINE)
        )
        gap = _gap(canary.mean, baseline.mean)
        shift = None if gap is None or not baseline.mean else round(gap / abs(baseline.mean), 6)
        null_gap = _gap(canary.null_rate, baseline.null_rate)
        breaches = (
            _lost_slice(days, figures[BASELINE]["rows"])
            if BASELINE in figures and CANARY not in figures
            else []
        )
        if shift is not None and abs(shift) > check.max_mean_shift:
            breaches.append(
                f"the mean of {check.column} moved {shift:+.2%}, beyond {check.max_mean_shift:.2%}"
            )
        if null_gap is not None and abs(null_gap) > check.max_null_rate_gap:
            breaches.append(
                f"the null rate of {check.column} moved {null_gap:+.2%}, beyond {check.max_null_rate_gap:.2%}"
            )
        results.append(
            ColumnHealthResult(
                spec.name, check.column, days, canary, control, baseline, shift, null_gap, breaches
            )
        )
    return results


def canary_health(
    spark: SparkSession, catalog: ReleaseCatalog, canary: Canary, specs: Sequence[FeatureSpec] = FEATURES
) -> CanaryHealth:
    """Judge the canary on the newest partitions (the table's `canary_health.days`) it changes that
    production also serves, for every table with reference models or health checks of its own."""
    release = catalog.get_release(canary.release_id)
    production = catalog.current_release()
    reader = FeatureReader(spark, catalog.store)
    models, columns, notes = [], [], []
    for spec in specs:
        if not spec.reference_models and not spec.canary_health.columns:
            continue
        changed = release.changed.get(spec.name, [])
        served = catalog.served(production, spec.name, days=changed) if production and changed else {}
        days = sorted(served)[-spec.canary_health.days :]
        if not days:
            notes.append(
                f"{spec.name}: the canary changes no partition production serves, so its models and health "
                "checks have nothing to compare"
            )
            continue
        sides = _sides(reader, spec, canary, production.release_id, days).cache()
        try:
            models.extend(_model_health(model, spec, sides, days) for model in spec.reference_models)
            if spec.canary_health.columns:
                columns.extend(_column_health(spec.canary_health.columns, spec, sides, days))
        finally:
            sides.unpersist()
    return CanaryHealth(canary.batch_id, canary.release_id, canary.percent, models, notes, columns)
