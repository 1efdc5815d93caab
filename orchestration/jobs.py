"""The promotion and rollback jobs: thin Dagster ops around `orchestration.promotion`, recording each change
as materializations of the production assets and telling the approvals channel; then the online store is
synced to the new release (`serving.online_sync`), each table an observation of `online/<table>`."""

from collections.abc import Callable

from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    Config,
    In,
    Nothing,
    OpExecutionContext,
    Out,
    job,
    op,
)
from pydantic import Field

from backfills.assets.factory import online_key, production_key
from backfills.errors import ApprovalNotFoundError, BackfillsError, DrillFailedError, OnlineStoreError
from backfills.orchestration.approval_channels import ApprovalsResource
from backfills.orchestration.approval_message import ChannelMessage
from backfills.orchestration.drills import deep_rows, run_drill
from backfills.orchestration.promotion import PublishedChange, production_facts, promote, roll_back
from backfills.resources.approvals_store import ApprovalStore
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_resource import CatalogResource
from backfills.resources.spark import SparkResource
from backfills.serving.online_resource import OnlineStoreResource
from backfills.serving.online_sync import sync_release

PROMOTE_JOB = "promote_batch"
ROLLBACK_JOB = "rollback_release"
DRILL_JOB = "rollback_drill"
DRILLS_ASSET = AssetKey(["audit", "rollback_drills"])


class PromoteConfig(Config):
    batch_id: str = Field(description="The batch to publish (its Dagster backfill ID).")
    requested_by: str | None = Field(default=None, description="Who launches the promotion.")
    force: bool = Field(
        default=False,
        description=(
            "Publish even if production serves newer batches for some partitions, or other code is deployed "
            "than staged the batch (then a reason is required). Recorded on the release."
        ),
    )
    reason: str | None = Field(default=None, description="Why (recorded on the release).")
    deep_verify: bool = Field(
        default=False,
        description="Also recompute every staged partition's content hash with Spark (default: file sizes "
        "and checksums, no Spark).",
    )


class DrillConfig(Config):
    to_release: str = Field(
        default="previous", description="The release to drill a rollback to, or 'previous'."
    )
    deep: bool = Field(default=False, description="Also hash every partition's rows again with Spark.")
    requested_by: str | None = Field(default=None, description="Who runs the drill (the schedule: none).")


class RollbackConfig(Config):
    to_release: str = Field(default="previous", description="A release ID, or 'previous'.")
    tables: list[str] | None = Field(default=None, description="Roll back only these tables.")
    reason: str = Field(description="Why (required; recorded on the release and announced).")
    requested_by: str | None = Field(default=None, description="Who asks for the rollback.")
    approved_by: list[str] = Field(
        default=[], description="Approvers, when BACKFILLS_ROLLBACK_REQUIRES_APPROVAL is set."
    )


def _record(context: OpExecutionContext, catalog: ReleaseCatalog, change: PublishedChange) -> None:
    facts = production_facts(catalog, change)
    for table, days in sorted(facts.items()):
        for day, metadata in sorted(days.items()):
            context.log_event(
                AssetMaterialization(
                    asset_key=production_key(table),
                    partition=day,
                    description=f"{change.release.kind} {change.release.release_id}",
                    metadata={name: value for name, value in metadata.items() if value is not None},
                )
            )
    count = sum(len(days) for days in facts.values())
    context.log.info(
        f"release {change.release.release_id} is current (previous {change.previous_release_id}); "
        f"{count} production partitions changed"
    )


@op(
    description="Verify the batch's approval and staged content, then publish it atomically.",
    out=Out(Nothing),
)
def promote_op(
    context: OpExecutionContext,
    config: PromoteConfig,
    catalog: CatalogResource,
    approvals: ApprovalsResource,
    spark: SparkResource,
) -> None:
    store = catalog.store()
    release_catalog = catalog.catalog()
    channel = approvals.channel(context.log.info)
    try:
        request = ApprovalStore(store).latest(config.batch_id)
    except ApprovalNotFoundError:
        request = None
    try:
        change = promote(
            release_catalog,
            approvals.rules(),
            spark.session(),
            config.batch_id,
            requested_by=config.requested_by,
            force=config.force,
            reason=config.reason,
            run_id=context.run_id,
            deep_verify=config.deep_verify,
        )
    except BackfillsError as error:
        release_catalog.append_event(
            "promotion_refused",
            batch_id=config.batch_id,
            actor=config.requested_by,
            details={"error": f"{type(error).__name__}: {error}", "run_id": context.run_id},
        )
        if request is not None:
            failure = f"Promotion failed: {error}"
            _tell(context, lambda: channel.reply(request, failure))
        raise
    _record(context, release_catalog, change)
    if request is not None and change.changed:
        _tell(
            context,
            lambda: channel.reply(
                request,
                f"In production: release {change.release.release_id} (previous "
                f"{change.previous_release_id or 'none'}), {sum(len(d) for d in change.changed.values())} "
                "partitions switched at once.",
            ),
        )


@op(description="Republish an earlier release, whole or some tables, atomically.", out=Out(Nothing))
def rollback_op(
    context: OpExecutionContext,
    config: RollbackConfig,
    catalog: CatalogResource,
    approvals: ApprovalsResource,
) -> None:
    release_catalog = catalog.catalog()
    change = roll_back(
        release_catalog,
        to=config.to_release,
        reason=config.reason,
        requested_by=config.requested_by,
        tables=config.tables,
        approved_by=config.approved_by,
        rules=approvals.rules() if approvals.rollback_requires_approval else None,
    )
    _record(context, release_catalog, change)
    release = change.release
    scope = ", ".join(config.tables) if config.tables else "all tables"
    text = (
        f"Rolled back {scope} to release {release.rolled_back_to}: release {release.release_id} is now "
        f"current (previous {change.previous_release_id}). Requested by {config.requested_by or 'unknown'}: "
        f"{config.reason}"
    )
    channel = approvals.channel(context.log.info)
    _tell(context, lambda: channel.announce(ChannelMessage(text=text, blocks=[])))


@op(
    description=(
        "Bring the online store in step with the current release: per table, the rows of its newest "
        "partition, written under a new version, read back against the offline rows, then switched to."
    ),
    ins={"published": In(Nothing)},
)
def sync_online_op(
    context: OpExecutionContext,
    catalog: CatalogResource,
    online: OnlineStoreResource,
    spark: SparkResource,
    approvals: ApprovalsResource,
) -> None:
    store = online.open()
    if store is None:
        context.log.info("no online store is configured (BACKFILLS_ONLINE_STORE): nothing to sync")
        return
    with store:
        try:
            synced = sync_release(spark.session, catalog.catalog(), store, progress=context.log.info)
        except OnlineStoreError as error:
            # Production changed; the online store stays on the version it had, and the approvers hear why.
            text = f"The online store was not updated ({store.describe()}): {error}"
            channel = approvals.channel(context.log.info)
            _tell(context, lambda: channel.announce(ChannelMessage(text=text, blocks=[])))
            raise
    for sync in synced:
        context.log_event(AssetObservation(asset_key=online_key(sync.table), metadata=sync.metadata()))


@op(description="Drill a rollback on a shadow pointer (readers unaffected): every partition restorable?")
def drill_op(
    context: OpExecutionContext,
    config: DrillConfig,
    catalog: CatalogResource,
    online: OnlineStoreResource,
    spark: SparkResource,
    approvals: ApprovalsResource,
) -> None:
    release_catalog = catalog.catalog()
    with online.opened() as store:
        result = run_drill(
            release_catalog,
            to=config.to_release,
            online=store,
            actor=config.requested_by or context.run.tags.get("dagster/schedule_name"),
            deep_check=deep_rows(spark.session(), release_catalog) if config.deep else None,
        )
    context.log_event(
        AssetObservation(
            asset_key=DRILLS_ASSET,
            description=result.describe(),
            metadata={
                "drill_id": result.drill_id,
                "passed": result.passed,
                "target_release_id": result.target_release_id,
                "current_release_id": result.current_release_id,
                "seconds_to_restore": result.seconds_to_restore,
                "partitions_checked": result.partitions_checked,
                "files_checked": result.files_checked,
                "problems": result.problem_count,
            },
        )
    )
    if not result.passed:
        channel = approvals.channel(context.log.info)
        _tell(context, lambda: channel.announce(ChannelMessage(text=result.describe(), blocks=[])))
        raise DrillFailedError(result.describe())
    context.log.info(result.describe())


def _tell(context: OpExecutionContext, send: Callable[[], None]) -> None:
    # Production already changed (or the refusal is recorded): a Slack outage must not fail the run.
    try:
        send()
    except BackfillsError as error:
        context.log.warning(f"could not tell the approvals channel: {type(error).__name__}: {error}")


@job(
    name=PROMOTE_JOB, description="Publish an approved batch to production (launched by the approval sensor)."
)
def promote_batch_job() -> None:
    sync_online_op(promote_op())


@job(name=DRILL_JOB, description="Prove a rollback would restore production, without touching it.")
def rollback_drill_job() -> None:
    drill_op()


@job(name=ROLLBACK_JOB, description="Roll production back to an earlier release, whole or some tables.")
def rollback_release_job() -> None:
    sync_online_op(rollback_op())
