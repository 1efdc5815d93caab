"""The plan of a launch (a Dagster backfill, or a run on its own), made by its first run and kept in the
batch manifest, and the refusal of a launch that cannot be computed (see assets/launch_plan.py)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta

from dagster import AssetExecutionContext, AssetKey, DagsterInstance, Failure
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
from dagster._core.execution.asset_backfill import AssetBackfillData
from dagster._core.execution.backfill import BulkActionStatus

from backfills.assets.backfill_plan import plan_backfill
from backfills.assets.launch_plan import plan_launch
from backfills.assets.registry import FEATURES, dependency_order
from backfills.errors import BatchNotFoundError
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import CheckRecord, LaunchPlan
from backfills.specs import DateRange

STAGING_PREFIX = "staging"
BACKFILL_TAG = "dagster/backfill"
LAUNCH_CHECK = "launch_plan"


def backfill_targets(
    instance: DagsterInstance, backfill_id: str, asset_graph: BaseAssetGraph
) -> dict[str, list[str]] | None:
    """The staged partitions a Dagster asset backfill targets, per table (after Dagster widened the
    selection downstream), or None when `backfill_id` is not an asset backfill."""
    backfill = instance.get_backfill(backfill_id)
    if backfill is None or not backfill.is_asset_backfill:
        return None
    return staged_targets(backfill.get_asset_backfill_data(asset_graph))


def staged_targets(data: AssetBackfillData) -> dict[str, list[str]]:
    """The staged partitions in an asset backfill's target, per table."""
    targets: dict[str, set[str]] = defaultdict(set)
    for item in data.target_subset.iterate_asset_partitions():
        if item.asset_key.path[0] == STAGING_PREFIX and item.partition_key:
            targets[item.asset_key.path[-1]].add(item.partition_key)
    return {table: sorted(days) for table, days in sorted(targets.items())}


def make_plan(catalog: ReleaseCatalog, targets: dict[str, list[str]], *, earliest: date) -> LaunchPlan:
    """Plan `targets` against what the current release serves."""
    release = catalog.current_release()
    served: dict[str, set[str]] = {}
    every_day = [day for days in targets.values() for day in days]
    if release is not None and every_day:
        lookback = max((item.lookback_days for spec in FEATURES for item in spec.feature_inputs), default=0)
        start = (date.fromisoformat(min(every_day)) - timedelta(days=lookback)).isoformat()
        for spec in FEATURES:
            served[spec.name] = set(catalog.served(release, spec.name, start=start, end=max(every_day)))
    production = f"current release {release.release_id}" if release else "production (nothing promoted yet)"
    planned = plan_launch(
        dependency_order(), targets, served=served, earliest=earliest, production=production
    )
    return LaunchPlan(
        planned_at=datetime.now(UTC),
        release_id=release.release_id if release else None,
        targets=targets,
        planned_out=planned.planned_out,
        planned_out_summary=planned.planned_out_summary,
        refusal=planned.refusal,
    )


def launch_plan(
    context: AssetExecutionContext,
    catalog: ReleaseCatalog,
    *,
    batch_id: str,
    earliest: date,
    requester: str | None,
) -> LaunchPlan | None:
    """The plan of the launch this run belongs to, made now if this is its first run: a Dagster asset
    backfill (all its runs write one batch), or a run launched on its own (its selected tables over its
    partitions). None when there is nothing to plan (not an asset backfill)."""
    try:
        existing = catalog.get_batch(batch_id).plan
    except BatchNotFoundError:
        existing = None
    if existing is not None:
        return existing
    backfill_id = context.run.tags.get(BACKFILL_TAG)
    if backfill_id is not None:
        targets = backfill_targets(context.instance, backfill_id, context.repository_def.asset_graph)
    else:
        selected = context.run.asset_selection or {context.asset_key}
        days = list(context.partition_keys)
        targets = {key.path[-1]: days for key in sorted(selected) if key.path[0] == STAGING_PREFIX}
    if not targets:
        return None
    plan = catalog.record_plan(batch_id, make_plan(catalog, targets, earliest=earliest), requester=requester)
    try:
        context.log.info(f"backfill {batch_id}: {_backfill_plan(context, catalog, targets)}")
    except Exception as error:  # noqa: BLE001 -- an estimate that cannot be made never stops a backfill
        context.log.warning(f"backfill {batch_id}: no plan to show ({type(error).__name__}: {error})")
    return plan


def _backfill_plan(
    context: AssetExecutionContext, catalog: ReleaseCatalog, targets: Mapping[str, Sequence[str]]
) -> str:
    """What the launch will do, for its first log line: its tables' partitions and runs (as their backfill
    policies split them), rows and time."""
    graph = context.repository_def.asset_graph
    ranges, per_run = {}, {}
    for table, days in targets.items():
        ranges[table] = DateRange(date.fromisoformat(min(days)), date.fromisoformat(max(days)))
        policy = graph.get(AssetKey([STAGING_PREFIX, table])).backfill_policy
        per_run[table] = policy.max_partitions_per_run if policy else None
    return plan_backfill(ranges, per_run, catalog.store, catalog).describe()


def refuse(
    context: AssetExecutionContext, catalog: ReleaseCatalog, plan: LaunchPlan, *, table: str, batch_id: str
) -> Failure:
    """Block the batch with the refusal as its failed check, stop the backfill, and return the failure
    that ends this run with the reason (the run computed nothing)."""
    assert plan.refusal is not None
    days = plan.targets.get(table, [])
    batch = catalog.get_batch(batch_id)
    if not any(record.check == LAUNCH_CHECK for record in batch.checks):
        catalog.record_checks(
            batch_id,
            [
                CheckRecord(
                    table=table,
                    check=LAUNCH_CHECK,
                    partitions=days,
                    verdict="failed",
                    blocking=True,
                    summary=plan.refusal,
                    figures={"targets": plan.targets},
                    run_id=context.run.run_id,
                    checked_at=datetime.now(UTC),
                )
            ],
            table=table,
            partitions=days,
            run_id=context.run.run_id,
        )
    backfill = context.instance.get_backfill(batch_id)
    if backfill is not None and backfill.status == BulkActionStatus.REQUESTED:
        context.instance.update_backfill(backfill.with_status(BulkActionStatus.CANCELING))
    return Failure(description=plan.refusal, metadata={"batch_id": batch_id}, allow_retries=False)
