"""The approval sensor: each tick moves every open batch through the approval flow and launches the
promotion of approved ones (one run per approval, by run key). It decides nothing itself: completion comes
from the Dagster instance, everything else from the flow and its policy."""

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
from backfills.orchestration.jobs import PROMOTE_JOB, promote_batch_job
from backfills.resources.catalog_models import BatchManifest
from backfills.resources.catalog_resource import CatalogResource

APPROVAL_SENSOR = "approval_sensor"
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


def build_approval_sensor(interval_seconds: int) -> SensorDefinition:
    @sensor(
        name=APPROVAL_SENSOR,
        job=promote_batch_job,
        minimum_interval_seconds=interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Asks for approval of each complete, checked batch in the approvals channel, reads the "
            "decisions, and launches promote_batch for approved batches."
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
                run_config={
                    "ops": {
                        "promote_op": {"config": {"batch_id": due.batch_id, "requested_by": APPROVAL_SENSOR}}
                    }
                },
                tags={BATCH_TAG: due.batch_id, REQUEST_TAG: due.request_id},
            )
        if not report.promotions:
            yield SkipReason("; ".join([*report.errors, *report.notes][:5]) or "no open batches")

    return approval_sensor
