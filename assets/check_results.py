"""Check results as Dagster shows them: one evaluation per partition and check, also in range runs.

The checks of a staged table are partitioned like the table (`AssetCheckSpec(partitions_def=...)`). Dagster
records a partition on a check result only in a single-partition run; in a range run the per-partition
executions it plans would end SKIPPED. So the asset yields, after its materialization, one
`AssetCheckEvaluation` per partition and check, tied to that partition's materialization, and then the
checks' (empty) outputs. A failed blocking evaluation of ERROR severity still fails the step after all of
them are recorded, so nothing downstream runs in that run (Dagster's blocking semantics).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetRecordsFilter,
    MetadataValue,
    Output,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from backfills.checks.outcome import CheckOutcome
from backfills.resources.catalog_models import CheckRecord

MAX_FIGURES = 60  # numeric entries per result: Dagster plots each; beyond these the evidence JSON has all
MAX_ROWS = 10  # offending rows shown as a table


def _numbers(figures: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float | int]]:
    """Numeric figures by path (`amount/unexpected_percent`, `amount/threshold/max`), each failure and
    column under its name, so a threshold sits next to the value it bounds."""
    for name, value in figures.items():
        path = f"{prefix}{name}"
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            yield path, value
        elif isinstance(value, Mapping) and name != "policy":
            yield from _numbers(value, f"{path}/")
        elif isinstance(value, list) and (
            name in ("observed", "columns", "violations")
            or (name == "failures" and "observed" not in figures)
        ):
            for item in value:
                if isinstance(item, Mapping):
                    label = (
                        item.get("column") or item.get("upstream") or str(item.get("rule", "?")).split(":")[0]
                    )
                    if name == "violations":  # a contract's broken rules: several may bound one column
                        label = f"{label}/{item.get('check')}"
                    fields = {k: v for k, v in item.items() if k not in ("column", "rule", "upstream")}
                    yield from _numbers(fields, f"{label}/")


def _rows(figures: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The offending rows the evidence names (samples of failures, changed rows, re-delivered copies)."""
    rows: list[Mapping[str, Any]] = []
    for name, value in figures.items():
        if name in ("sample", "changed_sample") and isinstance(value, list):
            rows.extend(row for row in value if isinstance(row, Mapping))
        elif name in ("failures", "violations") and isinstance(value, list):
            for failure in value:
                rows.extend(failure.get("sample") or [])
    return rows


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def offending_rows_markdown(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    """At most MAX_ROWS rows as a markdown table, the entity keys and date first."""
    shown = list(rows[:MAX_ROWS])
    columns = [key for key in keys if any(key in row for row in shown)]
    columns += sorted({column for row in shown for column in row} - set(columns))
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(_cell(row.get(column, "")) for column in columns) + " |" for row in shown),
    ]
    more = f"\n\n{len(rows) - len(shown)} more in the evidence" if len(rows) > len(shown) else ""
    return "\n".join(lines) + more


def check_metadata(
    batch_id: str, partition: str, outcome: CheckOutcome, keys: Sequence[str]
) -> dict[str, object]:
    """The figures of one result: its numbers as plain entries (so the UI plots them across partitions and
    runs), thresholds beside them, the offending rows as a table, and the whole evidence as JSON."""
    metadata: dict[str, object] = {"batch_id": batch_id, "partition": partition}
    metadata.update(dict(list(_numbers(outcome.figures))[:MAX_FIGURES]))
    rows = _rows(outcome.figures)
    if rows:
        metadata["offending_rows"] = MetadataValue.md(offending_rows_markdown(rows, keys))
    metadata["evidence"] = MetadataValue.json(outcome.figures)
    return metadata


def _materializations(
    context: AssetExecutionContext, days: Sequence[str]
) -> dict[str, AssetCheckEvaluationTargetMaterializationData]:
    """This run's materialization of each day, which the day's check results point at."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=list(days)), limit=4 * len(days)
    ).records
    found: dict[str, AssetCheckEvaluationTargetMaterializationData] = {}
    for record in records:  # newest first
        if record.run_id == context.run.run_id and record.partition_key not in found:
            found[record.partition_key] = AssetCheckEvaluationTargetMaterializationData(
                storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
            )
    return found


def not_checked(check_names: Sequence[str], *, batch_id: str, reason: str) -> list[CheckOutcome]:
    """What a planned-out partition shows: every check a warning that it was not checked, and why."""
    summary = f"not checked: planned out of batch {batch_id}, nothing staged ({reason})"
    return [
        CheckOutcome(name=name, passed=True, blocking=False, summary=summary, figures={"planned_out": 1})
        for name in check_names
    ]


def _evaluation(
    context: AssetExecutionContext,
    *,
    batch_id: str,
    day: str,
    outcome: CheckOutcome,
    keys: Sequence[str],
    target: AssetCheckEvaluationTargetMaterializationData | None,
) -> AssetCheckEvaluation:
    specs = context.assets_def.check_specs_by_output_name.values()
    blocking = next(item.blocking for item in specs if item.name == outcome.name)
    return AssetCheckEvaluation(
        asset_key=context.asset_key,
        check_name=outcome.name,
        passed=outcome.passed,
        metadata=check_metadata(batch_id, day, outcome, keys),
        target_materialization_data=target,
        severity=AssetCheckSeverity.ERROR if outcome.blocking else AssetCheckSeverity.WARN,
        description=outcome.summary,
        blocking=blocking,
        partition=day,
    )


def partition_check_results(
    context: AssetExecutionContext,
    *,
    batch_id: str,
    by_day: Mapping[str, Sequence[CheckOutcome]],
    keys: Sequence[str],
) -> Iterator[AssetCheckEvaluation | Output]:
    """One evaluation per partition of the run and check (`by_day`: what each day shows), then the checks'
    outputs. Call after the materialization was yielded."""
    targets = _materializations(context, list(by_day))
    for day, outcomes in by_day.items():
        for outcome in outcomes:
            yield _evaluation(
                context, batch_id=batch_id, day=day, outcome=outcome, keys=keys, target=targets.get(day)
            )
    for output_name in context.assets_def.check_specs_by_output_name:
        yield Output(None, output_name=output_name)


def blocked_check_results(
    context: AssetExecutionContext, *, batch_id: str, records: Sequence[CheckRecord], keys: Sequence[str]
) -> Iterator[AssetCheckEvaluation]:
    """What a run that staged nothing shows before its step fails: each failed blocking check the batch
    recorded for it (a contract), once per partition it covered, with the offending rows. There is no
    materialization to point at."""
    for record in records:
        outcome = CheckOutcome(
            name=record.check, passed=False, blocking=True, summary=record.summary, figures=record.figures
        )
        for day in record.partitions:
            yield _evaluation(context, batch_id=batch_id, day=day, outcome=outcome, keys=keys, target=None)
