"""Freshness in the Dagster UI and the approvals channel: a `freshness` check on each production table, and
a sensor that evaluates it every few minutes and tells the channel about a late table once per day.

Dagster's FreshnessPolicy (1.13) judges an asset by when it was last materialized, not by which partition is
newest: promoting a correction to an old partition would make a table look fresh. So freshness is an asset
check judged from the release catalog (serving/freshness.py): the newest partition production (and the
online store) serves against the newest one due.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime

from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    DefaultSensorStatus,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    asset_check,
    sensor,
)

from backfills.assets.factory import production_key
from backfills.assets.registry import FEATURES
from backfills.errors import BackfillsError
from backfills.orchestration.approval_channels import ApprovalsResource
from backfills.orchestration.approval_message import ChannelMessage
from backfills.resources.catalog_resource import CatalogResource
from backfills.serving.freshness import TableFreshness, freshness, table_freshness
from backfills.serving.online_resource import OnlineStoreResource
from backfills.specs import FeatureSpec

FRESHNESS_CHECK = "freshness"
FRESHNESS_SENSOR = "freshness_sensor"


def _metadata(item: TableFreshness) -> dict[str, object]:
    metadata: dict[str, object] = {
        "expected_partition": item.expected_partition,
        "due_hours": item.due_hours,
        "production_partition": item.production.partition or "",
        "production_days_behind": item.production.days_behind
        if item.production.days_behind is not None
        else -1,
        "production_hours_overdue": item.production.hours_overdue,
    }
    if item.online is not None:
        metadata.update(
            {
                "online_partition": item.online.partition or "",
                "online_days_behind": item.online.days_behind if item.online.days_behind is not None else -1,
                "online_hours_overdue": item.online.hours_overdue,
            }
        )
    return metadata


def _freshness_check(spec: FeatureSpec, last_partition: date | None) -> AssetChecksDefinition:
    @asset_check(
        asset=production_key(spec.name),
        name=FRESHNESS_CHECK,
        description=(
            f"The newest partition of {spec.name} in production and in the online store is the newest due: "
            f"day D by D+1 00:00 UTC + {spec.serving.due_hours:g}h. A warning, evaluated every few minutes "
            f"by {FRESHNESS_SENSOR}."
        ),
        blocking=False,
    )
    def check(catalog: CatalogResource, online: OnlineStoreResource) -> AssetCheckResult:
        with online.opened() as store:
            item = table_freshness(
                catalog.catalog(), spec, now=datetime.now(UTC), last_partition=last_partition, online=store
            )
        return AssetCheckResult(
            passed=not item.late,
            severity=AssetCheckSeverity.WARN,
            description=item.describe(),
            metadata=_metadata(item),
        )

    return check


def build_freshness_checks(last_partition: date | None) -> list[AssetChecksDefinition]:
    return [_freshness_check(spec, last_partition) for spec in FEATURES]


def build_freshness_sensor(last_partition: date | None, interval_seconds: int = 300) -> SensorDefinition:
    @sensor(
        name=FRESHNESS_SENSOR,
        minimum_interval_seconds=interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Judges each production table (and its online copy) against its freshness SLA, records the "
            "verdict as the table's freshness check when it changes, and tells the approvals channel about a "
            "late table once per day."
        ),
    )
    def freshness_sensor(
        context: SensorEvaluationContext,
        catalog: CatalogResource,
        online: OnlineStoreResource,
        approvals: ApprovalsResource,
    ) -> Iterator[SkipReason]:
        cursor = json.loads(context.cursor) if context.cursor else {}
        verdicts: dict[str, str] = cursor.get("verdicts", {})
        told: dict[str, str] = cursor.get("told", {})
        now = datetime.now(UTC)
        with online.opened() as store:
            items = freshness(catalog.catalog(), now=now, last_partition=last_partition, online=store)
        for item in items:
            signature = json.dumps(_metadata(item) | {"late": item.late}, sort_keys=True, default=str)
            if verdicts.get(item.table) != signature:
                context.instance.report_runless_asset_event(
                    AssetCheckEvaluation(
                        asset_key=production_key(item.table),
                        check_name=FRESHNESS_CHECK,
                        passed=not item.late,
                        severity=AssetCheckSeverity.WARN,
                        description=item.describe(),
                        metadata=_metadata(item),
                    )
                )
                verdicts[item.table] = signature
            if item.late and told.get(item.table) != now.date().isoformat():
                try:
                    approvals.channel(context.log.info).announce(
                        ChannelMessage(text=f"Late: {item.describe()}", blocks=[])
                    )
                    told[item.table] = now.date().isoformat()
                except BackfillsError as error:  # told on a later tick
                    context.log.warning(
                        f"could not tell the approvals channel: {type(error).__name__}: {error}"
                    )
        context.update_cursor(json.dumps({"verdicts": verdicts, "told": told}, sort_keys=True))
        late = [item.table for item in items if item.late]
        yield SkipReason(f"late: {', '.join(late)}" if late else "every table is fresh")

    return freshness_sensor
