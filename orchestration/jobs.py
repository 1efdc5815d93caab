"""The promotion, canary and rollback jobs: thin Dagster ops around `orchestration.promotion` and
`orchestration.canary`, recording each change of production as materializations of the production assets
and telling the approvals channel; then the online store is synced to the new release (`serving.online_sync`),
each table an observation of `online/<table>`, and its canary routes to the canary pointer
(`serving.online_canary`). A step that fails skips the sync after it, so a failure hook brings the canary
routes in step instead: whatever a run did to the canary, its routes follow the pointer before it ends."""

from collections.abc import Callable

from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    Config,
    HookContext,
    In,
    Nothing,
    OpExecutionContext,
    Out,
    failure_hook,
    job,
    op,
)
from pydantic import Field

from backfills.assets.factory import online_key, production_key
from backfills.errors import (
    ApprovalNotFoundError,
    BackfillsError,
    CanaryUnhealthyError,
    DrillFailedError,
    InvalidRequestError,
    OnlineSyncFailedError,
)
from backfills.orchestration.approval_channels import ApprovalChannel, ApprovalsResource
from backfills.orchestration.approval_message import ChannelMessage
from backfills.orchestration.canary import HealthJudge, expose, judge, promote_to_canary
from backfills.orchestration.canary_health import canary_health
from backfills.orchestration.drills import deep_rows, run_drill
from backfills.orchestration.freshness_checks import FreshnessResource
from backfills.orchestration.freshness_checks import evaluation as freshness_evaluation
from backfills.orchestration.promotion import PublishedChange, production_facts, promote, roll_back
from backfills.resources import canary as canary_channel
from backfills.resources.approvals_store import ApprovalStore
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import ApprovalRequest
from backfills.resources.catalog_resource import CatalogResource
from backfills.resources.spark import SparkResource
from backfills.serving.freshness import TableFreshness
from backfills.serving.online_canary import sync_canary
from backfills.serving.online_resource import OnlineStoreResource
from backfills.serving.online_sync import sync_release

PROMOTE_JOB = "promote_batch"
EXPOSE_JOB = "expose_canary"
CANARY_HEALTH_JOB = "canary_health"
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
            "than staged the batch, or production's downstream partitions would be left stale (these two "
            "need a reason). Recorded on the release, with the refusals it overrode."
        ),
    )
    reason: str | None = Field(default=None, description="Why (recorded on the release).")
    deep_verify: bool = Field(
        default=False,
        description="Also recompute every staged partition's content hash with Spark (default: file sizes "
        "and checksums, no Spark).",
    )
    canary_percent: float | None = Field(
        default=None,
        description=(
            "Publish to a canary first: this percent of the entities (a stable slice by a hash of the "
            "entity key) reads the batch, the rest production; widen it with expose_canary. Unset: "
            "straight to production."
        ),
    )


class ExposeConfig(Config):
    batch_id: str = Field(description="The batch whose open canary to widen or complete.")
    to_percent: float = Field(description="The new share of entities (more than now); 100 completes it.")
    requested_by: str | None = Field(default=None, description="Who widens it.")
    force: bool = Field(
        default=False,
        description=(
            "Complete even though other code is deployed than staged the batch (then a reason is required). "
            "Recorded on the completion."
        ),
    )
    reason: str | None = Field(default=None, description="Why (recorded on the completion step).")


class DrillConfig(Config):
    to_release: str = Field(
        default="previous", description="The release to drill a rollback to, or 'previous'."
    )
    deep: bool = Field(default=False, description="Also hash every partition's rows again with Spark.")
    requested_by: str | None = Field(default=None, description="Who runs the drill (the schedule: none).")


class RollbackConfig(Config):
    to_release: str | None = Field(
        default=None,
        description=(
            "The release to roll production back to: a release ID, or 'previous'. Unset: remove the open "
            "canary and leave production as it is (refused when no canary is open, so that running a "
            "canary's rollback again never rolls production back)."
        ),
    )
    tables: list[str] | None = Field(default=None, description="Roll back only these tables.")
    reason: str = Field(description="Why (required; recorded on the release and announced).")
    requested_by: str | None = Field(default=None, description="Who asks for the rollback.")
    approved_by: list[str] = Field(
        default=[], description="Approvers, when BACKFILLS_ROLLBACK_REQUIRES_APPROVAL is set."
    )
    force: bool = Field(
        default=False,
        description=(
            "Restore partitions whose files no longer match what their batches recorded at staging. "
            "Recorded on the release and in the audit trail, with the reason."
        ),
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
        if config.canary_percent is not None:
            _open_canary(
                context, config, config.canary_percent, release_catalog, approvals, spark, channel, request
            )
            return
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
    except CanaryUnhealthyError:
        raise  # rolled back and told by _open_canary
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


def _open_canary(
    context: OpExecutionContext,
    config: PromoteConfig,
    percent: float,
    catalog: ReleaseCatalog,
    approvals: ApprovalsResource,
    spark: SparkResource,
    channel: ApprovalChannel,
    request: ApprovalRequest | None,
) -> None:
    """Publish the batch to the canary channel, then judge it once (the first step is judged like all)."""
    canary = promote_to_canary(
        catalog,
        approvals.rules(),
        spark.session(),
        config.batch_id,
        percent,
        requested_by=config.requested_by,
        force=config.force,
        reason=config.reason,
        deep_verify=config.deep_verify,
    )
    text = (
        f"Canary: batch {canary.batch_id} serves {canary.percent:g}% of entities (release "
        f"{canary.release_id} on production {canary.base_release_id or '(none)'}); the rest read production. "
        f"Widen it with `backfills expose {canary.batch_id} --to PERCENT` (100 completes it)."
    )
    if request is not None:
        _tell(context, lambda: channel.reply(request, text))
    _judge(context, catalog, _judge_with(spark, catalog), channel, actor=config.requested_by)
    context.log.info(text)


def _judge_with(spark: SparkResource, catalog: ReleaseCatalog) -> HealthJudge:
    return lambda canary: canary_health(spark.session(), catalog, canary)


def _judge(
    context: OpExecutionContext,
    catalog: ReleaseCatalog,
    health: HealthJudge,
    channel: ApprovalChannel,
    *,
    actor: str | None,
) -> None:
    """Judge the open canary (if any); a breach has rolled it back: tell the channel and fail the run."""
    canary = canary_channel.open_canary(catalog)
    if canary is None:
        context.log.info("no canary is open: nothing to judge")
        return
    try:
        verdict = judge(catalog, canary, health, actor=actor)
    except CanaryUnhealthyError as error:
        _tell_unhealthy(context, channel, error)
        raise
    context.log.info(verdict.describe())


def _tell_unhealthy(
    context: OpExecutionContext, channel: ApprovalChannel, error: CanaryUnhealthyError
) -> None:
    text = f"Canary rolled back automatically: {error}"
    _tell(context, lambda: channel.announce(ChannelMessage(text=text, blocks=[])))


@op(
    description=(
        "Judge the open canary's health, then widen it (no new approval), or at 100% make its release "
        "production atomically; an unhealthy canary is rolled back instead."
    ),
    out=Out(Nothing),
)
def expose_op(
    context: OpExecutionContext,
    config: ExposeConfig,
    catalog: CatalogResource,
    approvals: ApprovalsResource,
    spark: SparkResource,
) -> None:
    release_catalog = catalog.catalog()
    channel = approvals.channel(context.log.info)
    try:
        exposure = expose(
            release_catalog,
            approvals.rules(),
            spark.session(),
            config.batch_id,
            config.to_percent,
            requested_by=config.requested_by,
            health=_judge_with(spark, release_catalog),
            force=config.force,
            reason=config.reason,
            run_id=context.run_id,
        )
    except CanaryUnhealthyError as error:
        _tell_unhealthy(context, channel, error)
        raise
    if exposure.health is not None:
        context.log.info(exposure.health.describe())
    canary = exposure.canary
    if exposure.published is None:
        text = f"Canary of batch {canary.batch_id} widened to {canary.percent:g}% of entities"
    else:
        _record(context, release_catalog, exposure.published)
        text = (
            f"Canary of batch {canary.batch_id} completed: release {canary.release_id} is production "
            f"(previous {exposure.published.previous_release_id or 'none'})"
        )
    text += f" by {config.requested_by or 'unknown'}."
    _tell(context, lambda: channel.announce(ChannelMessage(text=text, blocks=[])))


@op(description="Judge the open canary's health; a breach rolls it back and is told.", out=Out(Nothing))
def canary_health_op(
    context: OpExecutionContext,
    catalog: CatalogResource,
    approvals: ApprovalsResource,
    spark: SparkResource,
) -> None:
    release_catalog = catalog.catalog()
    actor = context.run.tags.get("dagster/sensor_name") or context.run.tags.get("backfills/requested_by")
    channel = approvals.channel(context.log.info)
    _judge(context, release_catalog, _judge_with(spark, release_catalog), channel, actor=actor)


@op(description="Republish an earlier release, whole or some tables, atomically.", out=Out(Nothing))
def rollback_op(
    context: OpExecutionContext,
    config: RollbackConfig,
    catalog: CatalogResource,
    approvals: ApprovalsResource,
) -> None:
    release_catalog = catalog.catalog()
    channel = approvals.channel(context.log.info)
    canary = canary_channel.open_canary(release_catalog)
    if canary is not None and config.to_release is None:
        if config.tables:
            raise InvalidRequestError(
                f"the canary of batch {canary.batch_id} is open: a rollback now removes the whole canary, so "
                "name no tables; nothing was changed"
            )
        canary = canary_channel.roll_back(release_catalog, actor=config.requested_by, reason=config.reason)
        text = (
            f"Canary of batch {canary.batch_id} rolled back (it served {canary.percent:g}% of entities); its "
            f"slice reads production again. Requested by {config.requested_by or 'unknown'}: {config.reason}"
        )
        context.log.info(text)
        _tell(context, lambda: channel.announce(ChannelMessage(text=text, blocks=[])))
        return
    if config.to_release is None:
        raise InvalidRequestError(
            "no canary is open, and this rollback names no release to roll production back to; set "
            "to_release ('previous' or a release ID) to roll production back; nothing was changed"
        )
    change = roll_back(
        release_catalog,
        to=config.to_release,
        reason=config.reason,
        requested_by=config.requested_by,
        tables=config.tables,
        approved_by=config.approved_by,
        rules=approvals.rules() if approvals.rollback_requires_approval else None,
        force=config.force,
    )
    _record(context, release_catalog, change)
    release = change.release
    scope = ", ".join(config.tables) if config.tables else "all tables"
    text = (
        f"Rolled back {scope} to release {release.rolled_back_to}: release {release.release_id} is now "
        f"current (previous {change.previous_release_id}). Requested by {config.requested_by or 'unknown'}: "
        f"{config.reason}"
    )
    _tell(context, lambda: channel.announce(ChannelMessage(text=text, blocks=[])))


@op(
    description=(
        "Bring the online store in step with the current release: per table, the rows of its newest "
        "partition, written under a new version, read back against the offline rows, then switched to; "
        "and its canary routes in step with the open canary (if any)."
    ),
    ins={"published": In(Nothing)},
)
def sync_online_op(
    context: OpExecutionContext,
    catalog: CatalogResource,
    online: OnlineStoreResource,
    spark: SparkResource,
    approvals: ApprovalsResource,
    freshness: FreshnessResource,
) -> None:
    release_catalog = catalog.catalog()
    try:
        with online.opened() as store:
            if store is None:
                context.log.info("no online store is configured (BACKFILLS_ONLINE_STORE): nothing to sync")
                judged = freshness.judge(release_catalog, None)
                synced = []
            else:
                synced = sync_release(spark.session, release_catalog, store, progress=context.log.info)
                sync_canary(spark.session, release_catalog, store, progress=context.log.info)
                judged = freshness.judge(release_catalog, store)
    except Exception as error:
        # Production changed all the same: say so, then what failed and how to retry it.
        text = (
            f"{_in_production(release_catalog)}; the online store was not updated: "
            f"{type(error).__name__}: {error}; retry with `backfills online sync`"
        )
        channel = approvals.channel(context.log.info)
        _tell(context, lambda: channel.announce(ChannelMessage(text=text, blocks=[])))
        raise OnlineSyncFailedError(text) from None  # the message holds the cause; the CLI shows it whole
    for sync in synced:
        context.log_event(AssetObservation(asset_key=online_key(sync.table), metadata=sync.metadata()))
    _record_freshness(context, judged)


def _in_production(catalog: ReleaseCatalog) -> str:
    """What production (and an open canary) serve now, in one clause."""
    release = catalog.current_release()
    if release is None:
        serving = "nothing is in production"
    elif release.kind == "rollback":
        serving = f"release {release.release_id} (a rollback to {release.rolled_back_to}) is in production"
    else:
        serving = f"batch {release.batch_id} is in production as release {release.release_id}"
    canary = canary_channel.open_canary(catalog)
    if canary is None:
        return serving
    return (
        f"{serving}; the canary of batch {canary.batch_id} serves {canary.percent:g}% of entities as release "
        f"{canary.release_id}"
    )


@failure_hook(required_resource_keys={"catalog", "online", "spark"})
def canary_routes_follow_the_pointer(context: HookContext) -> None:
    """A failed step skips the steps after it, the online sync among them, yet the canary may have changed
    all the same (a health breach rolls it back, then fails the step): bring the online store's canary
    routes in step with the pointer before the run ends."""
    catalog = context.resources.catalog.catalog()
    try:
        with context.resources.online.opened() as store:
            if store is not None:
                sync_canary(context.resources.spark.session, catalog, store, progress=context.log.info)
    except Exception as error:
        context.log.error(
            f"the online store's canary routes could not be brought in step with the canary pointer "
            f"({_in_production(catalog)}): {type(error).__name__}: {error}; run `backfills online sync`"
        )


def _record_freshness(context: OpExecutionContext, judged: list[TableFreshness]) -> None:
    """Production just changed: each table's freshness check is evaluated in this run, after the change."""
    for item in judged:
        context.log_event(freshness_evaluation(item))


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
            session=spark.session,
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
    name=PROMOTE_JOB,
    hooks={canary_routes_follow_the_pointer},
    description=(
        "Publish an approved batch to production, or to a canary slice of entities first (launched by the "
        "approval sensor)."
    ),
)
def promote_batch_job() -> None:
    sync_online_op(promote_op())


@job(
    name=EXPOSE_JOB,
    hooks={canary_routes_follow_the_pointer},
    description="Widen a batch's canary to more entities, or complete it into production (100%).",
)
def expose_canary_job() -> None:
    sync_online_op(expose_op())


@job(
    name=CANARY_HEALTH_JOB,
    hooks={canary_routes_follow_the_pointer},
    description="Judge the open canary against the control slice; roll it back if it breaches (the sensor).",
)
def canary_health_job() -> None:
    sync_online_op(canary_health_op())


@job(name=DRILL_JOB, description="Prove a rollback would restore production, without touching it.")
def rollback_drill_job() -> None:
    drill_op()


@job(
    name=ROLLBACK_JOB,
    hooks={canary_routes_follow_the_pointer},
    description="Roll production back to an earlier release, whole or some tables.",
)
def rollback_release_job() -> None:
    sync_online_op(rollback_op())
