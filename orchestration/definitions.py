"""The code location: every asset, job, sensor and resource, built from the settings in one place."""

from __future__ import annotations

import logging
import os

from dagster import (
    AssetSelection,
    AssetSpec,
    DefaultScheduleStatus,
    Definitions,
    EnvVar,
    ScheduleDefinition,
    define_asset_job,
    in_process_executor,
)

from backfills.assets.factory import (
    build_feature_assets,
    daily_partitions,
    online_spec,
    production_spec,
    raw_transactions_spec,
)
from backfills.assets.registry import FEATURES
from backfills.assets.run_layout import layout
from backfills.orchestration.approval_channels import ApprovalsResource
from backfills.orchestration.freshness_checks import (
    FRESHNESS_JOB,
    FRESHNESS_SENSOR,
    FreshnessResource,
    build_freshness_checks,
    build_freshness_sensor,
    freshness_check_key,
)
from backfills.orchestration.jobs import (
    DRILLS_ASSET,
    canary_health_job,
    expose_canary_job,
    promote_batch_job,
    rollback_drill_job,
    rollback_release_job,
)
from backfills.orchestration.sensors import build_approval_sensor, build_canary_health_sensor
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_resource import CatalogResource
from backfills.resources.settings import Settings, load_settings
from backfills.resources.spark import SparkResource
from backfills.resources.storage import open_store
from backfills.serving.online_resource import OnlineStoreResource

STAGE_FEATURES_JOB = "stage_features"
DRILL_SCHEDULE = "weekly_rollback_drill"


def approvals_resource(settings: Settings, *, in_dagster: bool = True) -> ApprovalsResource:
    """The approvals resource; outside Dagster (the CLI) it carries the token itself, as EnvVar is resolved
    only when Dagster initialises resources for a run or a sensor."""
    token = None
    if settings.uses_slack:
        # In Dagster the token never appears in the run config or the UI: only the variable's name does.
        token = EnvVar("SLACK_BOT_TOKEN") if in_dagster else settings.slack_bot_token
    return ApprovalsResource(
        slack_bot_token=token,
        slack_channel=settings.slack_channel,
        slack_api_url=settings.slack_api_url,
        approvers=sorted(settings.approvers),
        approver_group=settings.approver_group,
        quorum=settings.approval_quorum,
        expiry_hours=settings.approval_expiry_hours,
        rollback_requires_approval=settings.rollback_requires_approval,
        dagster_url=settings.dagster_url,
    )


def online_resource(settings: Settings) -> OnlineStoreResource:
    """The online store resource; a URL set in BACKFILLS_ONLINE_STORE (it may hold a Redis password) reaches
    Dagster as the variable's name only, like the Slack token."""
    if settings.online_store_url and os.environ.get("BACKFILLS_ONLINE_STORE"):
        return OnlineStoreResource(url=EnvVar("BACKFILLS_ONLINE_STORE"))
    return OnlineStoreResource(url=settings.online_store_url)


def partitions_per_run(settings: Settings) -> dict[str, int | None]:
    """Each table's run length for backfills, from the data stored when the code location loads
    (assets/run_layout.py); when the storage cannot be read, one run per table, said in the log."""
    try:
        store = open_store(settings.storage_root)
        return layout(
            FEATURES,
            store,
            ReleaseCatalog(store),
            max_rows_per_run=settings.max_rows_per_run,
            max_partitions_per_run=settings.max_partitions_per_run,
        )
    except Exception as error:  # noqa: BLE001 -- the code location must load whatever the storage says
        logging.getLogger(__name__).warning(
            "could not estimate the rows per day under %s (%s): each table's backfill runs in one run; set "
            "BACKFILLS_MAX_PARTITIONS_PER_RUN to bound them",
            settings.storage_root,
            error,
        )
        return {spec.name: settings.max_partitions_per_run for spec in FEATURES}


def build_definitions(settings: Settings) -> Definitions:
    partitions = daily_partitions(settings.partitions_start, settings.partitions_end)
    feature_assets = build_feature_assets(FEATURES, partitions, partitions_per_run(settings))
    check_freshness = define_asset_job(
        FRESHNESS_JOB,
        selection=AssetSelection.checks(*(freshness_check_key(spec.name) for spec in FEATURES)),
        description=f"Evaluates the freshness check of production tables; launched by {FRESHNESS_SENSOR}.",
    )
    stage_features = define_asset_job(
        STAGE_FEATURES_JOB,
        selection=AssetSelection.assets(*feature_assets),
        description="Stage feature partitions into a batch (launch a backfill of it to recompute history).",
    )
    return Definitions(
        assets=[
            raw_transactions_spec(partitions),
            *feature_assets,
            *[production_spec(spec, partitions) for spec in FEATURES],
            *[online_spec(spec) for spec in FEATURES],
            AssetSpec(
                DRILLS_ASSET,
                group_name="audit",
                description=(
                    "Rollback drills: each is an observation (passed, target release, time to restore, "
                    "partitions and files checked, problems). Written by the rollback_drill job."
                ),
            ),
        ],
        jobs=[
            stage_features,
            promote_batch_job,
            expose_canary_job,
            canary_health_job,
            rollback_release_job,
            rollback_drill_job,
            check_freshness,
        ],
        schedules=[
            ScheduleDefinition(
                name=DRILL_SCHEDULE,
                job=rollback_drill_job,
                cron_schedule="0 4 * * 1",  # Mondays 04:00 UTC
                execution_timezone="UTC",
                default_status=DefaultScheduleStatus.STOPPED,
                description="The weekly rollback drill (turn it on in the UI; off by default).",
            )
        ],
        asset_checks=build_freshness_checks(),
        sensors=[
            build_approval_sensor(settings.sensor_interval_seconds, settings.canary_percent),
            build_canary_health_sensor(settings.canary_health_interval_seconds),
            build_freshness_sensor(),
        ],
        # Feature steps share the run's process and its Spark session instead of one JVM per step.
        executor=in_process_executor,
        resources={
            "spark": SparkResource.from_settings(settings),
            "catalog": CatalogResource(storage_root=settings.storage_root),
            "approvals": approvals_resource(settings),
            "online": online_resource(settings),
            "freshness": FreshnessResource(last_partition=settings.partitions_end),
        },
    )


defs = build_definitions(load_settings())
