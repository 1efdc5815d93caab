"""The shape every check of the gate has: a name, whether it applies to a spec, the measures it adds to the
one pass over the run's rows, and how it turns the figures (and, for a few, one join) into a verdict with
its evidence. checks/registry.py lists them all: the single source of check names for Dagster and the run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pyspark.sql import DataFrame

from backfills.checks.outcome import CheckOutcome
from backfills.checks.staged_pass import Measure, PassFigures
from backfills.resources.catalog_models import PartitionRecord
from backfills.specs import DateRange, FeatureSpec


@dataclass(frozen=True)
class ProductionRows:
    """What the current release serves of the run's days: its ID, those days and their rows."""

    release_id: str | None
    days: list[str]
    rows: DataFrame | None


@dataclass(frozen=True)
class GateInputs:
    """Everything the checks of one run look at."""

    dates: DateRange
    staged: DataFrame  # the rows the run wrote
    figures: PassFigures  # the one pass over them: rows, hashes and every check's measures, per day
    records: Sequence[PartitionRecord]
    inputs: Mapping[str, DataFrame]  # what the transformation read, by table
    production: ProductionRows
    empty_landing_days: Sequence[str] = ()  # run days whose landing file has no rows
    # Every landed copy of the run's event days, marked re-delivered or not (for specs that read raw events).
    deliveries: DataFrame | None = None


class Check(ABC):
    """One check of the gate. Subclasses set `name` and `description` and implement `judge`."""

    name: str
    description: str

    def applies(self, spec: FeatureSpec) -> bool:
        """Whether a staged table of this spec carries the check (an asset check, a manifest verdict)."""
        return True

    def measures(self, spec: FeatureSpec) -> list[Measure]:
        """What the check needs counted in the one pass over the run's rows (names unique to the check)."""
        return []

    @abstractmethod
    def judge(self, spec: FeatureSpec, gate: GateInputs) -> CheckOutcome:
        """The verdict from the pass's figures (and at most one join of the check's own)."""

    def judge_day(self, spec: FeatureSpec, gate: GateInputs, run: CheckOutcome, day: str) -> CheckOutcome:
        """The result one partition of the run shows in Dagster, given the run's verdict `run` (which the
        batch records and which decides whether the run is blocked). By default the day shares it; checks
        that can tell which days hold the problem override this, from the figures they already have (no
        Spark work per day). A day never passes a check the run failed unless the problem is elsewhere."""
        return run
