"""The approval sensor: each tick moves every open batch through the approval flow and launches the
promotion of approved ones (one run per approval, by run key), straight to production or to a canary first.
It decides nothing itself: completion comes from the Dagster instance, everything else from the flow and its
policy. The canary health sensor launches a health check of the open canary at most once per interval."""

import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import date, timedelta

from dagster import (
    DagsterInstance,
    DagsterRun,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
from dagster._core.execution.backfill import (
    BULK_ACTION_TERMINAL_STATUSES,
    BulkActionsFilter,
    BulkActionStatus,
)

from backfills.assets.factory import BACKFILL_TAG, BATCH_TAG, STAGING_PREFIX
from backfills.assets.launch import staged_targets
from backfills.errors import BackfillsError
from backfills.orchestration.approval_channels import ApprovalsResource
from backfills.orchestration.approval_flow import ApprovalFlow, Completion, CompletionProbe
from backfills.orchestration.jobs import CANARY_HEALTH_JOB, PROMOTE_JOB, canary_health_job, promote_batch_job
from backfills.resources.canary import open_canary
from backfills.resources.catalog_models import BatchManifest
from backfills.resources.catalog_resource import CatalogResource

APPROVAL_SENSOR = "approval_sensor"
CANARY_HEALTH_SENSOR = "canary_health_sensor"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
PARTITION_TAG = "dagster/partition"
REQUEST_TAG = "backfills/request_id"
RUNNING_BACKFILL = [status for status in BulkActionStatus if status not in BULK_ACTION_TERMINAL_STATUSES]


def _run_partitions(run: DagsterRun) -> list[str]:
    tags = run.tags
    if PARTITION_TAG in tags:
        return [tags[PARTITION_TAG]]
    if RANGE_START_TAG in tags:
        start, end = date.fromisoformat(tags[RANGE_START_TAG]), date.fromisoformat(tags[RANGE_END_TAG])
        return [(start + timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]
    return []


def _from_runs(runs: list[DagsterRun]) -> Completion | None:
    if not runs or any(not run.is_finished for run in runs):
        return None
    expected: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        for key in run.asset_selection or ():
            if key.path[0] == STAGING_PREFIX:
                expected[key.path[-1]].update(_run_partitions(run))
    failed = [run.run_id for run in runs if not run.is_success]
    note = f"{len(failed)} of {len(runs)} runs did not succeed ({', '.join(failed[:3])})" if failed else None
    return Completion({table: sorted(days) for table, days in expected.items()}, note)


def dagster_completion(instance: DagsterInstance, asset_graph: BaseAssetGraph) -> CompletionProbe:
    """Completion of a batch from the instance: its backfill, or the runs tagged with it, or its own run."""

    def probe(batch: BatchManifest) -> Completion | None:
        backfill = instance.get_backfill(batch.batch_id)
        if backfill is not None:
            if backfill.status not in BULK_ACTION_TERMINAL_STATUSES or not backfill.is_asset_backfill:
                return None
            data = backfill.get_asset_backfill_data(asset_graph)
            note = None
            if backfill.status != BulkActionStatus.COMPLETED_SUCCESS:
                failed = data.failed_and_downstream_subset.num_partitions_and_non_partitioned_assets
                note = f"backfill {batch.batch_id} ended {backfill.status.value}: {failed} partitions failed"
            return Completion(staged_targets(data), note)
        tagged = list(instance.get_runs(RunsFilter(tags={BATCH_TAG: batch.batch_id})))
        if tagged:
            # A batch shared by several backfills (the batch tag) is complete when none of them is running.
            running = instance.get_backfills(
                filters=BulkActionsFilter(statuses=RUNNING_BACKFILL, tags={BATCH_TAG: batch.batch_id}),
                limit=1,
            )
            return None if running else _from_runs(tagged)
        run = instance.get_run_by_id(batch.batch_id)
        if run is not None and BACKFILL_TAG not in run.tags:
            return _from_runs([run])
        return None

    return probe


def build_approval_sensor(interval_seconds: int, canary_percent: float | None = None) -> SensorDefinition:
    """The approval sensor; with `canary_percent`, an approved batch is published to a canary of that share
    of the entities first (widened with expose_canary), else straight to production."""
    promote_config: dict[str, object] = {"requested_by": APPROVAL_SENSOR}
    if canary_percent is not None:
        promote_config["canary_percent"] = canary_percent

    @sensor(
        name=APPROVAL_SENSOR,
        job=promote_batch_job,
        minimum_interval_seconds=interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Asks for approval of each complete, checked batch in the approvals channel, reads the "
            "decisions, and launches promote_batch for approved batches"
            + (f" (to a canary of {canary_percent:g}% first)." if canary_percent is not None else ".")
        ),
    )
    def approval_sensor(
        context: SensorEvaluationContext, catalog: CatalogResource, approvals: ApprovalsResource
    ) -> Iterator[RunRequest | SkipReason]:
        try:
            rules = approvals.rules()
        except BackfillsError as error:
            # Misconfigured, or Slack down while resolving the approvers' user group: try on the next tick.
            yield SkipReason(f"approvals cannot run now: {type(error).__name__}: {error}")
            return
        channel = approvals.channel(context.log.info)
        if channel.kind == "local":
            context.log.info("approvals use the local channel (backfills approve), for local use only")
        flow = ApprovalFlow(catalog.catalog(), channel, rules, approvals.links())
        report = flow.run(dagster_completion(context.instance, context.repository_def.asset_graph))
        for error in report.errors:
            # Slack down, rate limited or misconfigured: this batch waits for the next tick; others moved on.
            context.log.warning(error)
        for note in report.notes:
            context.log.info(note)
        for due in report.promotions:
            yield RunRequest(
                run_key=due.run_key,
                job_name=PROMOTE_JOB,
                run_config={"ops": {"promote_op": {"config": {"batch_id": due.batch_id, **promote_config}}}},
                tags={BATCH_TAG: due.batch_id, REQUEST_TAG: due.request_id},
            )
        if not report.promotions:
            yield SkipReason("; ".join([*report.errors, *report.notes][:5]) or "no open batches")

    return approval_sensor


def build_canary_health_sensor(interval_seconds: int) -> SensorDefinition:
    """While a canary is open, a run of canary_health once per `interval_seconds` (the run key is the
    canary's release and the interval, so a tick never launches a second run for the same interval)."""

    @sensor(
        name=CANARY_HEALTH_SENSOR,
        job=canary_health_job,
        minimum_interval_seconds=min(interval_seconds, 60),
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            f"While a canary is open, judges its slice against the control slice every {interval_seconds} s "
            "(canary_health); a breach rolls it back and is told in the approvals channel."
        ),
    )
    def canary_health_sensor(
        context: SensorEvaluationContext, catalog: CatalogResource
    ) -> Iterator[RunRequest | SkipReason]:
        canary = open_canary(catalog.catalog())
        if canary is None:
            yield SkipReason("no canary is open")
            return
        window = int(time.time() // interval_seconds)
        yield RunRequest(
            run_key=f"canary-health:{canary.release_id}:{window}",
            job_name=CANARY_HEALTH_JOB,
            tags={BATCH_TAG: canary.batch_id},
        )

    return canary_health_sensor
