"""The blocking gate on one run's staged partitions: every check of the spec, as manifest verdicts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from pyspark.sql import DataFrame

from backfills.assets.registry import FeatureSpec
from backfills.checks.expectations import CheckOutcome, check_names, run_expectations
from backfills.resources.catalog_models import CheckRecord, PartitionRecord

NON_EMPTY_CHECK = "non_empty_partitions"


def gate_check_names(spec: FeatureSpec) -> list[str]:
    """Names of the asset checks a staged feature table carries."""
    return sorted([*check_names(spec), NON_EMPTY_CHECK])


def non_empty(spec: FeatureSpec, records: Sequence[PartitionRecord]) -> CheckOutcome:
    """Every staged day has rows; an empty day blocks unless the spec says it only warns."""
    empty = sorted(record.partition for record in records if record.row_count == 0)
    return CheckOutcome(
        name=NON_EMPTY_CHECK,
        passed=not empty,
        blocking=spec.empty_partition_blocks,
        summary=f"{len(empty)} of {len(records)} days have no rows: {', '.join(empty[:5])}"
        if empty
        else f"all {len(records)} days have rows",
        figures={
            "empty_partitions": empty,
            "rows_per_partition": {r.partition: r.row_count for r in records},
        },
    )


def run_gate(spec: FeatureSpec, staged: DataFrame, records: Sequence[PartitionRecord]) -> list[CheckOutcome]:
    """All checks of the spec over the rows a run staged."""
    return [*run_expectations(spec, staged), non_empty(spec, records)]


def verdict(outcome: CheckOutcome) -> str:
    if outcome.passed:
        return "passed"
    return "failed" if outcome.blocking else "warned"


def check_records(
    outcomes: Sequence[CheckOutcome], *, table: str, partitions: Sequence[str], run_id: str
) -> list[CheckRecord]:
    now = datetime.now(UTC)
    return [
        CheckRecord(
            table=table,
            check=outcome.name,
            partitions=list(partitions),
            verdict=verdict(outcome),
            blocking=outcome.blocking,
            summary=outcome.summary,
            figures=outcome.figures,
            run_id=run_id,
            checked_at=now,
        )
        for outcome in outcomes
    ]
