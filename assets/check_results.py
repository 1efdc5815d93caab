"""Check results as Dagster shows them: one quality-gate result per partition, also in range runs.

Every event Dagster records costs a commit (tens of milliseconds on SQLite, whatever its size), and a
result per partition and check made the bookkeeping of a year's backfill cost more than its checks
(benchmarks/dagster_bookkeeping.py). So a staged table carries one partitioned blocking asset check, the
quality gate, whose result on each partition says whether every check of the gate passed there: a table of
each check's verdict, and for a check that failed or warned its numbers (prefixed with its name, so the UI
plots them across partitions), its offending rows and its evidence. The partition's own figures (rows,
content hash, null rates, what the diff found) ride on the same result, and the run-wide evidence of every
check goes once per step, as an observation of the table.

Dagster records a partition on a check result only in a single-partition run; in a range run the
per-partition executions it plans would end SKIPPED. So the asset yields, after its materialization, one
`AssetCheckEvaluation` per partition, tied to that partition's materialization, and then the check's
(empty) output. A failed gate of ERROR severity (a blocking check failed) still fails the step after every
result is recorded, so nothing downstream runs in that run (Dagster's blocking semantics); a partition whose
checks only warned fails the gate with WARN severity, which blocks nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetObservation,
    AssetRecordsFilter,
    MetadataValue,
    Output,
    PartitionsDefinition,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from backfills.checks.outcome import CheckOutcome
from backfills.resources.catalog_models import CheckRecord

GATE_CHECK = "quality_gate"  # the one asset check of a staged table
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


def gate_spec(
    key: AssetKey, partitions_def: PartitionsDefinition, check_names: Sequence[str]
) -> AssetCheckSpec:
    """The staged table's quality gate, partitioned like the table and blocking: a failed blocking check on
    any partition fails the step, so Dagster runs nothing downstream of it."""
    return AssetCheckSpec(
        GATE_CHECK,
        asset=key,
        blocking=True,
        partitions_def=partitions_def,
        description=(
            "Every check of the gate, per partition: " + ", ".join(check_names) + ". A partition passes when "
            "every check passes; the result names each check's verdict, and for a check that failed or "
            "warned its numbers, offending rows and evidence."
        ),
    )


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


def _verdicts_markdown(outcomes: Sequence[CheckOutcome]) -> str:
    lines = ["| check | verdict | summary |", "|---|---|---|"]
    lines += [f"| {o.name} | {o.verdict} | {_cell(o.summary)} |" for o in outcomes]
    return "\n".join(lines)


def gate_metadata(
    batch_id: str,
    partition: str,
    outcomes: Sequence[CheckOutcome],
    keys: Sequence[str],
    facts: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """One partition's gate result: each check's verdict as a table, the partition's own figures (`facts`),
    and for each check that failed or warned its numbers under its name, its offending rows and evidence."""
    metadata: dict[str, object] = {"batch_id": batch_id, "partition": partition, **(facts or {})}
    metadata["checks"] = MetadataValue.md(_verdicts_markdown(outcomes))
    for verdict in ("passed", "warned", "failed"):
        metadata[f"checks_{verdict}"] = sum(outcome.verdict == verdict for outcome in outcomes)
    noticed = [outcome for outcome in outcomes if not outcome.passed]
    numbers = [(f"{o.name}/{path}", value) for o in noticed for path, value in _numbers(o.figures)]
    metadata.update(dict(numbers[:MAX_FIGURES]))
    rows = [row for outcome in noticed for row in _rows(outcome.figures)]
    if rows:
        metadata["offending_rows"] = MetadataValue.md(offending_rows_markdown(rows, keys))
    if noticed:
        metadata["evidence"] = MetadataValue.json({outcome.name: outcome.figures for outcome in noticed})
    return metadata


def _description(outcomes: Sequence[CheckOutcome]) -> str:
    noticed = [outcome for outcome in outcomes if not outcome.passed]
    if not noticed:
        summaries = {outcome.summary for outcome in outcomes}
        planned_out = len(summaries) == 1 and next(iter(summaries)).startswith("not checked")
        return next(iter(summaries)) if planned_out else f"all {len(outcomes)} checks passed"
    parts = [
        f"{verdict}: " + "; ".join(f"{o.name} ({o.summary})" for o in noticed if o.verdict == verdict)
        for verdict in ("failed", "warned")
        if any(o.verdict == verdict for o in noticed)
    ]
    return " / ".join(parts)


def gate_evaluation(
    asset_key: AssetKey,
    *,
    batch_id: str,
    day: str,
    outcomes: Sequence[CheckOutcome],
    keys: Sequence[str],
    facts: Mapping[str, object] | None = None,
    target: AssetCheckEvaluationTargetMaterializationData | None = None,
) -> AssetCheckEvaluation:
    """The gate's result on one partition: passed when every check passed there. A failed blocking check
    makes it an ERROR (the step fails, nothing downstream runs); checks that only warned, or a partition
    planned out and not checked, make it a WARN."""
    verdicts = {outcome.verdict for outcome in outcomes}
    checked = any(outcome.blocking for outcome in outcomes)
    error = "failed" in verdicts or ("warned" not in verdicts and checked)
    return AssetCheckEvaluation(
        asset_key=asset_key,
        check_name=GATE_CHECK,
        passed=all(outcome.passed for outcome in outcomes),
        metadata=gate_metadata(batch_id, day, outcomes, keys, facts),
        target_materialization_data=target,
        severity=AssetCheckSeverity.ERROR if error else AssetCheckSeverity.WARN,
        description=_description(outcomes),
        blocking=True,
        partition=day,
    )


def partition_check_results(
    context: AssetExecutionContext,
    *,
    batch_id: str,
    by_day: Mapping[str, Sequence[CheckOutcome]],
    keys: Sequence[str],
    facts: Mapping[str, Mapping[str, object]],
) -> Iterator[AssetCheckEvaluation | Output]:
    """The gate's result on each partition of the run (`by_day`: what each day shows per check; `facts`:
    each day's own figures), then the check's output. Call after the materialization was yielded."""
    targets = _materializations(context, list(by_day))
    for day, outcomes in by_day.items():
        yield gate_evaluation(
            context.asset_key,
            batch_id=batch_id,
            day=day,
            outcomes=outcomes,
            keys=keys,
            facts=facts.get(day),
            target=targets.get(day),
        )
    for output_name in context.assets_def.check_specs_by_output_name:
        yield Output(None, output_name=output_name)


def step_evidence(
    key: AssetKey, batch_id: str, span: str, outcomes: Sequence[CheckOutcome]
) -> AssetObservation:
    """Every check's run-wide verdict and full evidence, once per step (not once per partition)."""
    metadata: dict[str, object] = {"batch_id": batch_id, "partitions": span}
    metadata["checks"] = MetadataValue.md(_verdicts_markdown(outcomes))
    metadata.update(
        {
            f"evidence/{outcome.name}": MetadataValue.json(
                {"verdict": outcome.verdict, "summary": outcome.summary, "figures": outcome.figures}
            )
            for outcome in outcomes
        }
    )
    return AssetObservation(key, metadata=metadata)


def blocked_check_results(
    context: AssetExecutionContext, *, batch_id: str, records: Sequence[CheckRecord], keys: Sequence[str]
) -> Iterator[AssetCheckEvaluation]:
    """What a run that staged nothing shows before its step fails: the gate failed on each partition a
    failed blocking check the batch recorded for it (a contract) covered, with its counts and offending
    rows. There is no materialization to point at."""
    by_day: dict[str, list[CheckOutcome]] = {}
    for record in records:
        outcome = CheckOutcome(
            name=record.check, passed=False, blocking=True, summary=record.summary, figures=record.figures
        )
        for day in record.partitions:
            by_day.setdefault(day, []).append(outcome)
    for day, outcomes in sorted(by_day.items()):
        yield gate_evaluation(context.asset_key, batch_id=batch_id, day=day, outcomes=outcomes, keys=keys)
