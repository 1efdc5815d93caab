"""The blocking gate on one run's staged partitions: every check of the spec, as manifest verdicts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pyspark.sql import DataFrame

from backfills.checks.cross_table import CROSS_TABLE_CHECK, cross_table_outcome, has_cross_table_checks
from backfills.checks.diff_check import DIFF_CHECK, diff_outcome
from backfills.checks.duplicates import DUPLICATE_EVENTS_CHECK, duplicate_events_outcome
from backfills.checks.expectations import check_names, run_expectations
from backfills.checks.outcome import CheckOutcome
from backfills.resources.catalog_models import CheckRecord, PartitionRecord
from backfills.specs import RAW_TRANSACTIONS, DateRange, FeatureSpec

NON_EMPTY_CHECK = "non_empty_partitions"


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
    staged: DataFrame  # the rows as written, read back from staging
    records: Sequence[PartitionRecord]
    inputs: Mapping[str, DataFrame]  # what the transformation read, by table
    production: ProductionRows
    empty_landing_days: Sequence[str] = ()  # run days whose landing file has no rows
    # Every landed copy of the run's event days, marked re-delivered or not (for specs that read raw events).
    deliveries: DataFrame | None = None


def _reads_raw(spec: FeatureSpec) -> bool:
    return any(item.table == RAW_TRANSACTIONS for item in spec.inputs)


def gate_check_names(spec: FeatureSpec) -> list[str]:
    """Names of the asset checks a staged feature table carries."""
    names = [*check_names(spec), NON_EMPTY_CHECK, DIFF_CHECK]
    if has_cross_table_checks(spec):
        names.append(CROSS_TABLE_CHECK)
    if _reads_raw(spec):
        names.append(DUPLICATE_EVENTS_CHECK)
    return sorted(names)


def non_empty(
    spec: FeatureSpec, records: Sequence[PartitionRecord], empty_landing_days: Sequence[str] = ()
) -> CheckOutcome:
    """Every staged day has rows and read a landing file with rows; an empty day blocks unless the spec
    says it only warns."""
    empty = sorted(record.partition for record in records if record.row_count == 0)
    problems = []
    if empty:
        problems.append(f"{len(empty)} of {len(records)} days have no rows: {', '.join(empty[:5])}")
    if empty_landing_days:
        problems.append(f"landing files with no rows: {', '.join(empty_landing_days[:5])}")
    return CheckOutcome(
        name=NON_EMPTY_CHECK,
        passed=not problems,
        blocking=spec.empty_partition_blocks,
        summary="; ".join(problems) or f"all {len(records)} days have rows",
        figures={
            "empty_partitions": empty,
            "empty_landing_days": list(empty_landing_days),
            "rows_per_partition": {r.partition: r.row_count for r in records},
        },
    )


def run_gate(spec: FeatureSpec, gate: GateInputs) -> list[CheckOutcome]:
    """All checks of the spec over the rows a run staged, in the order of `gate_check_names`."""
    outcomes = [
        *run_expectations(spec, gate.staged),
        non_empty(spec, gate.records, gate.empty_landing_days),
        diff_outcome(
            spec,
            gate.staged,
            gate.production.rows,
            release_id=gate.production.release_id,
            released_days=gate.production.days,
            staged_days=[record.partition for record in gate.records],
        ),
    ]
    if has_cross_table_checks(spec):
        outcomes.append(cross_table_outcome(spec, gate.staged, gate.inputs, gate.dates))
    if _reads_raw(spec) and gate.deliveries is not None:
        outcomes.append(duplicate_events_outcome(gate.deliveries, warn_rate=spec.duplicate_events_warn_rate))
    return sorted(outcomes, key=lambda outcome: outcome.name)


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
