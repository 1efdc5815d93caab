"""Turns feature specs into Dagster assets: partitions, window mappings, backfill policy, lineage metadata.

The asset body is thin: resolve the batch from the run's tags, stage the partitions, report metadata.
"""

import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, timedelta

from dagster import (
    AssetCheckEvaluation,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetObservation,
    AssetsDefinition,
    AssetSpec,
    BackfillPolicy,
    BetaWarning,
    DailyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    Output,
    PreviewWarning,
    TableColumn,
    TableColumnConstraints,
    TableColumnDep,
    TableColumnLineage,
    TableSchema,
    TimeWindowPartitionMapping,
    asset,
)

from backfills.assets.check_results import (
    blocked_check_results,
    gate_spec,
    not_checked,
    partition_check_results,
    step_evidence,
)
from backfills.assets.launch import BACKFILL_TAG, STAGING_PREFIX, launch_plan, refuse
from backfills.assets.raw_transactions import LANDING_PREFIX
from backfills.assets.run_history import record_run, timing
from backfills.assets.staging import StagedRun, stage_partitions
from backfills.checks.diff_check import DIFF_CHECK
from backfills.checks.outcome import CheckOutcome
from backfills.checks.registry import check_names
from backfills.errors import InvalidInputError
from backfills.resources.catalog_models import BatchManifest, LaunchPlan, PartitionRecord
from backfills.resources.catalog_resource import CatalogResource
from backfills.resources.spark import SparkResource
from backfills.specs import RAW_SCHEMA_DDL, RAW_TRANSACTIONS, DateRange, FeatureSpec

# Multi-run backfill policies and nonexistent-upstream mappings are the designed path, though marked beta.
warnings.filterwarnings("ignore", category=BetaWarning)
# Partitioned asset checks (one result per partition) are the designed path too, though marked preview.
warnings.filterwarnings("ignore", category=PreviewWarning)

PRODUCTION_PREFIX = "production"
ONLINE_PREFIX = "online"
# Runs outside a Dagster backfill that should join one batch (scripted ranges) carry this tag.
BATCH_TAG = "backfills/batch_id"
REQUESTER_TAG = "backfills/requester"


def staging_key(table: str) -> AssetKey:
    return AssetKey([STAGING_PREFIX, table])


def online_key(table: str) -> AssetKey:
    return AssetKey([ONLINE_PREFIX, table])


def production_key(table: str) -> AssetKey:
    return AssetKey([PRODUCTION_PREFIX, table])


def upstream_key(table: str) -> AssetKey:
    return AssetKey(RAW_TRANSACTIONS) if table == RAW_TRANSACTIONS else staging_key(table)


def batch_id_for(tags: Mapping[str, str], run_id: str) -> str:
    """The batch a run writes to: an explicit batch tag, else its Dagster backfill, else the run itself."""
    return tags.get(BATCH_TAG) or tags.get(BACKFILL_TAG) or run_id


def daily_partitions(start: str, end: str | None = None) -> DailyPartitionsDefinition:
    """Daily partitions from `start` to `end` (the last day, inclusive), or to yesterday when `end` is None:
    ending them at the last landed day keeps the Materialize dialog from offering days without data."""
    if end is None:
        return DailyPartitionsDefinition(start_date=start, timezone="UTC")
    after = (date.fromisoformat(end) + timedelta(days=1)).isoformat()
    return DailyPartitionsDefinition(start_date=start, end_date=after, timezone="UTC")


def raw_transactions_spec(partitions_def: DailyPartitionsDefinition) -> AssetSpec:
    columns = [
        TableColumn(name, kind) for name, kind in (part.split() for part in RAW_SCHEMA_DDL.split(", "))
    ]
    return AssetSpec(
        RAW_TRANSACTIONS,
        description=(
            f"Card transactions as landed: one folder of Parquet files per file day under {LANDING_PREFIX}/. "
            "A day's events may arrive in the next day's file."
        ),
        group_name="raw",
        partitions_def=partitions_def,
        kinds={"parquet"},
        metadata={"dagster/column_schema": TableSchema(columns=columns)},
    )


def column_schema(spec: FeatureSpec) -> TableSchema:
    return TableSchema(
        columns=[
            TableColumn(
                column.name,
                column.type,
                column.description,
                constraints=TableColumnConstraints(nullable=column.nullable),
            )
            for column in spec.columns
        ]
    )


def column_lineage(spec: FeatureSpec) -> TableColumnLineage:
    return TableColumnLineage(
        deps_by_column={
            column.name: [TableColumnDep(upstream_key(table), name) for table, name in column.derived_from]
            for column in spec.columns
            if column.derived_from
        }
    )


def _partition_mapping(lookback_days: int, lateness_days: int) -> TimeWindowPartitionMapping:
    # Days before the first partition (or late files not yet landed) simply do not exist upstream.
    return TimeWindowPartitionMapping(
        start_offset=-lookback_days, end_offset=lateness_days, allow_nonexistent_upstream_partitions=True
    )


def _span(days: Sequence[str]) -> str:
    return days[0] if len(days) == 1 else f"{days[0]}..{days[-1]}"


def _run_metadata(spec: FeatureSpec, runs: Sequence[StagedRun]) -> dict[str, object]:
    records = [record for staged in runs for record in staged.records]
    days = [record.partition for record in records]
    upstream = [source.model_dump() for staged in runs for source in staged.upstream]
    return {
        "batch_id": runs[0].batch_id,
        "partitions": _span(days),
        "partition_count": len(days),
        "dagster/row_count": sum(record.row_count for record in records),
        "upstream": MetadataValue.json(upstream),
        "storage_location": MetadataValue.path(runs[0].location),
        "code_version": spec.code_version,
        "replaced_partitions": sum(staged.replaced for staged in runs),
        "dagster/column_schema": column_schema(spec),
        "dagster/column_lineage": column_lineage(spec),
    }


def _note_planned_out(
    context: AssetExecutionContext, batch_id: str, days: Sequence[str], planned_out: Mapping[str, str]
) -> list[str]:
    """Say which of the run's days are planned out, and why: a warning in the log and an observation on
    each such partition. Returns those days."""
    left_out = [day for day in days if day in planned_out]
    for day in left_out:
        context.log_event(
            AssetObservation(
                context.asset_key,
                partition=day,
                metadata={"batch_id": batch_id, "planned_out": True, "reason": planned_out[day]},
            )
        )
    if left_out:
        context.log.warning(
            f"{len(left_out)} partitions of {context.asset_key.path[-1]} ({_span(left_out)}) are planned out "
            f"of batch {batch_id}: blast radius that cannot be computed; the approval request lists them"
        )
    return left_out


def _done_of_targeted(table: str, batch: BatchManifest, plan: LaunchPlan | None) -> str:
    """Where the table stands in its batch: partitions staged of those the backfill targets."""
    staged = batch.tables.get(table, {})
    rows = sum(record.row_count for record in staged.values())
    if plan is None:
        return f"{table}: {len(staged)} partitions ({rows:,} rows) staged in batch {batch.batch_id} so far"
    targeted = plan.targets.get(table, [])
    planned_out = len(plan.planned_out.get(table, {}))
    done = len(staged.keys() & set(targeted))
    return (
        f"{table}: {done} of {len(targeted)} targeted partitions staged in batch {batch.batch_id} "
        f"({rows:,} rows)" + (f", {planned_out} planned out" if planned_out else "")
    )


def _spans(days: Sequence[str]) -> list[list[str]]:
    """Consecutive runs of days: a run stages each span of its computable days in one go."""
    spans: list[list[str]] = []
    for day in days:
        if spans and date.fromisoformat(day) - date.fromisoformat(spans[-1][-1]) == timedelta(days=1):
            spans[-1].append(day)
        else:
            spans.append([day])
    return spans


def _partition_facts(record: PartitionRecord, diff: dict[str, object] | None) -> dict[str, object]:
    """A partition's own figures, on its gate result: rows, content hash, null rates of nullable columns,
    what the diff found (numbers the UI plots per partition)."""
    rows = record.row_count
    metadata: dict[str, object] = {"rows": rows, "content_hash": record.content_hash}
    for column, nulls in sorted(record.null_counts.items()):
        metadata[f"null_rate/{column}"] = nulls / rows if rows else 0.0
    if diff is not None:
        for figure in ("changed", "added", "removed", "unchanged"):
            metadata[f"diff/{figure}_rows"] = diff[figure]
    return metadata


def _diff_by_partition(checks: Sequence[CheckOutcome]) -> dict[str, dict[str, object]]:
    return {
        entry["partition"]: entry
        for outcome in checks
        if outcome.name == DIFF_CHECK
        for entry in outcome.figures.get("partitions", [])
    }


def build_feature_asset(
    spec: FeatureSpec, partitions_def: DailyPartitionsDefinition, max_partitions_per_run: int | None
) -> AssetsDefinition:
    """One staged feature asset from its spec; a backfill stages it in one run, or in runs of at most
    `max_partitions_per_run` partitions when that is fewer than all (assets/run_layout.py)."""
    if max_partitions_per_run is not None and max_partitions_per_run >= len(
        partitions_def.get_partition_keys()
    ):
        max_partitions_per_run = None
    key = staging_key(spec.name)
    earliest = date.fromisoformat(partitions_def.start.strftime("%Y-%m-%d"))

    @asset(
        key=key,
        description=spec.description,
        group_name=spec.group,
        partitions_def=partitions_def,
        deps=[
            AssetDep(
                upstream_key(item.table),
                # Earlier raw files are read to recognise re-delivered events: they are inputs too.
                partition_mapping=_partition_mapping(
                    item.lookback_days + item.redelivery_days, item.lateness_days
                ),
            )
            for item in spec.inputs
        ],
        backfill_policy=(
            BackfillPolicy.single_run()
            if max_partitions_per_run is None
            else BackfillPolicy.multi_run(max_partitions_per_run=max_partitions_per_run)
        ),
        # Blocking: a failed check fails the step, so Dagster runs nothing downstream of it.
        check_specs=[gate_spec(key, partitions_def, check_names(spec))],
        code_version=spec.code_version,
        owners=[spec.owner],
        kinds={"spark", "parquet"},
        tags=dict(spec.tags),
        metadata={
            "dagster/column_schema": column_schema(spec),
            "dagster/column_lineage": column_lineage(spec),
            "entity_keys": ", ".join(spec.entity_keys),
            "inputs": ", ".join(
                f"{item.table} (lookback {item.lookback_days}d, lateness {item.lateness_days}d"
                + (f", re-deliveries {item.redelivery_days}d" if item.redelivery_days else "")
                + ")"
                for item in spec.inputs
            ),
        },
    )
    def feature_asset(
        context: AssetExecutionContext, spark: SparkResource, catalog: CatalogResource
    ) -> Iterator[MaterializeResult | AssetCheckEvaluation | Output]:
        days = context.partition_keys
        tags = context.run.tags
        batch_id = batch_id_for(tags, context.run.run_id)
        requester = tags.get(REQUESTER_TAG)
        release_catalog = catalog.catalog()
        # Scripted runs sharing a batch (`backfills backfill`) stage exactly the ranges their script planned.
        plan = (
            None
            if BATCH_TAG in tags
            else launch_plan(
                context, release_catalog, batch_id=batch_id, earliest=earliest, requester=requester
            )
        )
        if plan is not None and plan.refusal is not None:
            raise refuse(context, release_catalog, plan, table=spec.name, batch_id=batch_id)
        planned_out = plan.planned_out.get(spec.name, {}) if plan else {}
        left_out = _note_planned_out(context, batch_id, days, planned_out)
        spans = _spans([day for day in days if day not in planned_out])
        if spans:
            context.log.info(f"staging {spec.name} {_span(days)} into batch {batch_id}")
        keys = [*spec.entity_keys, spec.date_column]
        runs: list[StagedRun] = []
        started = time.monotonic()
        try:
            for span in spans:
                runs.append(
                    stage_partitions(
                        spec,
                        DateRange(date.fromisoformat(span[0]), date.fromisoformat(span[-1])),
                        batch_id=batch_id,
                        run_id=context.run.run_id,
                        requester=requester,
                        earliest=earliest,
                        spark=spark.session(),
                        store=catalog.store(),
                        catalog=release_catalog,
                        progress=context.log.info,
                    )
                )
        except InvalidInputError:
            # Bad input data blocked the batch before anything was staged: its failed contract shows per
            # partition, with the offending rows, and the step fails (nothing downstream runs).
            failures = release_catalog.get_batch(batch_id).blocking_failures(table=spec.name)
            mine = [record for record in failures if record.run_id == context.run.run_id]
            yield from blocked_check_results(context, batch_id=batch_id, records=mine, keys=keys)
            raise
        if runs:
            # What the next backfill's plan estimates its time from (assets/run_history.py).
            record_run(
                catalog.store(),
                timing(
                    spec.name,
                    context.run.run_id,
                    batch_id,
                    partitions=sum(len(staged.records) for staged in runs),
                    rows=sum(staged.row_count for staged in runs),
                    seconds=time.monotonic() - started,
                ),
            )
        by_day = {day: list(outcomes) for staged in runs for day, outcomes in staged.checks_by_day.items()}
        for day in left_out:
            by_day[day] = not_checked(check_names(spec), batch_id=batch_id, reason=planned_out[day])
        # Dagster gives every partition of a range run the same materialization metadata: each partition's
        # own figures ride on its gate result (and are in the batch manifest); the run-wide evidence of
        # every check goes once per staged span.
        diff = _diff_by_partition([outcome for staged in runs for outcome in staged.checks])
        facts = {
            record.partition: _partition_facts(record, diff.get(record.partition))
            for staged in runs
            for record in staged.records
        }
        for staged in runs:
            span = _span([record.partition for record in staged.records])
            context.log_event(step_evidence(key, batch_id, span, staged.checks))
        if runs:
            context.log.info(_done_of_targeted(spec.name, release_catalog.get_batch(batch_id), plan))
        yield MaterializeResult(
            metadata={
                **(_run_metadata(spec, runs) if runs else {"batch_id": batch_id, "partitions": _span(days)}),
                "planned_out_partitions": len(left_out),
            }
        )
        yield from partition_check_results(
            context,
            batch_id=batch_id,
            by_day=dict(sorted(by_day.items())),
            keys=keys,
            facts=facts,
        )

    return feature_asset


def production_spec(spec: FeatureSpec, partitions_def: DailyPartitionsDefinition) -> AssetSpec:
    """The production view of a feature table: what readers see. Its materializations are the promotions and
    rollbacks that changed each partition, with release, batch, approvers and reason."""
    return AssetSpec(
        production_key(spec.name),
        description=(
            f"{spec.name} as production readers see it (the current release). Changed only by the "
            "promote_batch and rollback_release jobs; each materialization is one such change."
        ),
        deps=[staging_key(spec.name)],
        group_name=PRODUCTION_PREFIX,
        partitions_def=partitions_def,
        owners=[spec.owner],
        kinds={"parquet"},
        metadata={"dagster/column_schema": column_schema(spec), "entity_keys": ", ".join(spec.entity_keys)},
    )


def online_spec(spec: FeatureSpec) -> AssetSpec:
    """The online copy of a production table: the rows of its newest partition per entity in the online
    store. Each sync (a step of the promotion and rollback jobs, or `backfills online sync`) is an
    observation with the release, partition, keys written, duration and parity figures."""
    return AssetSpec(
        online_key(spec.name),
        description=(
            f"{spec.name} in the online store: the rows of the newest partition the current release serves, "
            "keyed by entity. Synced by the promote_batch and rollback_release jobs."
        ),
        deps=[production_key(spec.name)],
        group_name=ONLINE_PREFIX,
        owners=[spec.owner],
        metadata={"entity_keys": ", ".join(spec.entity_keys)},
    )


def build_feature_assets(
    specs: Sequence[FeatureSpec],
    partitions_def: DailyPartitionsDefinition,
    partitions_per_run: Mapping[str, int | None],
) -> list[AssetsDefinition]:
    return [build_feature_asset(spec, partitions_def, partitions_per_run.get(spec.name)) for spec in specs]
