"""Turns feature specs into Dagster assets: partitions, window mappings, backfill policy, lineage metadata.

The asset body is thin: resolve the batch from the run's tags, stage the partitions, report metadata.
"""

import warnings
from collections.abc import Mapping, Sequence
from datetime import date

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
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
    TableColumn,
    TableColumnConstraints,
    TableColumnDep,
    TableColumnLineage,
    TableSchema,
    TimeWindowPartitionMapping,
    asset,
)

from backfills.assets.raw_transactions import LANDING_PREFIX
from backfills.assets.staging import StagedRun, stage_partitions
from backfills.checks.diff_check import DIFF_CHECK
from backfills.checks.outcome import CheckOutcome
from backfills.checks.registry import checks_of
from backfills.resources.catalog_models import PartitionRecord
from backfills.resources.catalog_resource import CatalogResource
from backfills.resources.spark import SparkResource
from backfills.specs import RAW_SCHEMA_DDL, RAW_TRANSACTIONS, DateRange, FeatureSpec

# Multi-run backfill policies and nonexistent-upstream mappings are the designed path, though marked beta.
warnings.filterwarnings("ignore", category=BetaWarning)

STAGING_PREFIX = "staging"
PRODUCTION_PREFIX = "production"
# Runs outside a Dagster backfill that should join one batch (scripted ranges) carry this tag.
BATCH_TAG = "backfills/batch_id"
BACKFILL_TAG = "dagster/backfill"
REQUESTER_TAG = "backfills/requester"


def staging_key(table: str) -> AssetKey:
    return AssetKey([STAGING_PREFIX, table])


def production_key(table: str) -> AssetKey:
    return AssetKey([PRODUCTION_PREFIX, table])


def upstream_key(table: str) -> AssetKey:
    return AssetKey(RAW_TRANSACTIONS) if table == RAW_TRANSACTIONS else staging_key(table)


def batch_id_for(tags: Mapping[str, str], run_id: str) -> str:
    """The batch a run writes to: an explicit batch tag, else its Dagster backfill, else the run itself."""
    return tags.get(BATCH_TAG) or tags.get(BACKFILL_TAG) or run_id


def daily_partitions(start: str) -> DailyPartitionsDefinition:
    return DailyPartitionsDefinition(start_date=start, timezone="UTC")


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


def _run_metadata(spec: FeatureSpec, staged: StagedRun) -> dict[str, object]:
    days = [record.partition for record in staged.records]
    return {
        "batch_id": staged.batch_id,
        "partitions": _span(days),
        "partition_count": len(days),
        "dagster/row_count": staged.row_count,
        "rows_per_partition": MetadataValue.json({r.partition: r.row_count for r in staged.records}),
        "content_hash_per_partition": MetadataValue.json(
            {r.partition: r.content_hash for r in staged.records}
        ),
        "upstream": MetadataValue.json([source.model_dump() for source in staged.upstream]),
        "storage_location": MetadataValue.path(staged.location),
        "code_version": spec.code_version,
        "replaced_partitions": staged.replaced,
        "dagster/column_schema": column_schema(spec),
        "dagster/column_lineage": column_lineage(spec),
    }


def _partition_metadata(
    batch_id: str, record: PartitionRecord, diff: dict[str, object] | None
) -> dict[str, object]:
    """Per-partition numbers the UI can plot: rows, null rates of nullable columns, what the diff found."""
    rows = record.row_count
    metadata: dict[str, object] = {
        "batch_id": batch_id,
        "dagster/row_count": rows,
        "content_hash": record.content_hash,
    }
    for column, nulls in sorted(record.null_counts.items()):
        metadata[f"null_rate/{column}"] = nulls / rows if rows else 0.0
    if diff is not None:
        for figure in ("changed", "added", "removed", "unchanged"):
            metadata[f"diff/{figure}_rows"] = diff[figure]
    return metadata


def _diff_by_partition(checks: Sequence[CheckOutcome]) -> dict[str, dict[str, object]]:
    diff = next((outcome for outcome in checks if outcome.name == DIFF_CHECK), None)
    return {entry["partition"]: entry for entry in diff.figures.get("partitions", [])} if diff else {}


def _check_metadata(batch_id: str, days: Sequence[str], outcome: CheckOutcome) -> dict[str, object]:
    # Top-level numbers of the evidence also go in as plain entries, so the UI can plot them over runs.
    numbers = {
        name: value
        for name, value in outcome.figures.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    return {
        "batch_id": batch_id,
        "partitions": _span(days),
        **numbers,
        "evidence": MetadataValue.json(outcome.figures),
    }


def build_feature_asset(
    spec: FeatureSpec, partitions_def: DailyPartitionsDefinition, max_partitions_per_run: int
) -> AssetsDefinition:
    """One staged feature asset from its spec."""
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
        backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=max_partitions_per_run),
        # Blocking: a failed check fails the step, so Dagster runs nothing downstream of it.
        check_specs=[
            AssetCheckSpec(check.name, asset=key, blocking=True, description=check.description)
            for check in checks_of(spec)
        ],
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
    ) -> MaterializeResult:
        days = context.partition_keys
        tags = context.run.tags
        batch_id = batch_id_for(tags, context.run.run_id)
        context.log.info(f"staging {spec.name} {_span(days)} into batch {batch_id}")
        staged = stage_partitions(
            spec,
            DateRange(date.fromisoformat(days[0]), date.fromisoformat(days[-1])),
            batch_id=batch_id,
            run_id=context.run.run_id,
            requester=tags.get(REQUESTER_TAG),
            earliest=earliest,
            spark=spark.session(),
            store=catalog.store(),
            catalog=catalog.catalog(),
        )
        # Dagster gives every partition of a range run the same materialization metadata; the per-partition
        # facts go out as observations (and are in the batch manifest).
        diff = _diff_by_partition(staged.checks)
        for record in staged.records:
            context.log_event(
                AssetObservation(
                    key,
                    partition=record.partition,
                    metadata=_partition_metadata(batch_id, record, diff.get(record.partition)),
                )
            )
        context.log.info(f"staged {staged.row_count} rows in {len(days)} partitions of batch {batch_id}")
        return MaterializeResult(
            metadata=_run_metadata(spec, staged),
            check_results=[
                AssetCheckResult(
                    check_name=outcome.name,
                    passed=outcome.passed,
                    severity=AssetCheckSeverity.ERROR if outcome.blocking else AssetCheckSeverity.WARN,
                    description=outcome.summary,
                    metadata=_check_metadata(batch_id, days, outcome),
                )
                for outcome in staged.checks
            ],
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


def build_feature_assets(
    specs: Sequence[FeatureSpec], partitions_def: DailyPartitionsDefinition, max_partitions_per_run: int
) -> list[AssetsDefinition]:
    return [build_feature_asset(spec, partitions_def, max_partitions_per_run) for spec in specs]
