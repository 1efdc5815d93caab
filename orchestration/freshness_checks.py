"""Freshness in the Dagster UI and the approvals channel: a `freshness` check on each production table, and
a sensor that judges the tables every few minutes, launches the `check_freshness` job for the tables whose
verdict changed (so the check's result is an execution the UI shows, with its figures), and tells the channel
about a late table once per day.

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
    AssetCheckKey,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    ConfigurableResource,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    asset_check,
    sensor,
)
from pydantic import Field

from backfills.assets.factory import production_key
from backfills.assets.registry import FEATURES
from backfills.errors import BackfillsError
from backfills.orchestration.approval_channels import ApprovalsResource
from backfills.orchestration.approval_message import ChannelMessage
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_resource import CatalogResource
from backfills.serving.freshness import TableFreshness, freshness, table_freshness
from backfills.serving.online_resource import OnlineStoreResource
from backfills.serving.online_store import OnlineStore
from backfills.specs import FeatureSpec

FRESHNESS_CHECK = "freshness"
FRESHNESS_SENSOR = "freshness_sensor"
FRESHNESS_JOB = "check_freshness"


class FreshnessResource(ConfigurableResource):
    """Judges production tables (and their online copies) against their freshness SLAs."""

    last_partition: str | None = Field(
        default=None,
        description="The last landed day (BACKFILLS_PARTITIONS_END): no partition after it is ever due.",
    )

    def _last(self) -> date | None:
        return date.fromisoformat(self.last_partition) if self.last_partition else None

    def judge(self, catalog: ReleaseCatalog, online: OnlineStore | None) -> list[TableFreshness]:
        return freshness(catalog, now=datetime.now(UTC), last_partition=self._last(), online=online)

    def judge_table(
        self, catalog: ReleaseCatalog, spec: FeatureSpec, online: OnlineStore | None
    ) -> TableFreshness:
        return table_freshness(
            catalog, spec, now=datetime.now(UTC), last_partition=self._last(), online=online
        )


def _outcome(item: TableFreshness) -> dict[str, object]:
    """What the check records about a table, as a check result or as an evaluation logged by a run."""
    return {
        "passed": not item.late,
        "severity": AssetCheckSeverity.WARN,
        "description": item.describe(),
        "metadata": _metadata(item),
    }


def evaluation(item: TableFreshness) -> AssetCheckEvaluation:
    """The table's freshness check result, for a run that changed production (promotion, rollback, sync)."""
    return AssetCheckEvaluation(
        asset_key=production_key(item.table), check_name=FRESHNESS_CHECK, **_outcome(item)
    )


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


def _freshness_check(spec: FeatureSpec) -> AssetChecksDefinition:
    @asset_check(
        asset=production_key(spec.name),
        name=FRESHNESS_CHECK,
        description=(
            f"The newest partition of {spec.name} in production and in the online store is the newest due: "
            f"day D by D+1 00:00 UTC + {spec.serving.due_hours:g}h. A warning, evaluated by every promotion "
            f"and rollback, and by {FRESHNESS_SENSOR} when the verdict changes as time passes."
        ),
        blocking=False,
    )
    def check(
        catalog: CatalogResource, online: OnlineStoreResource, freshness: FreshnessResource
    ) -> AssetCheckResult:
        with online.opened() as store:
            item = freshness.judge_table(catalog.catalog(), spec, store)
        return AssetCheckResult(**_outcome(item))

    return check


def build_freshness_checks() -> list[AssetChecksDefinition]:
    return [_freshness_check(spec) for spec in FEATURES]


def freshness_check_key(table: str) -> AssetCheckKey:
    return AssetCheckKey(production_key(table), FRESHNESS_CHECK)


def _verdict(item: TableFreshness) -> str:
    """What the check says about the table, without the hours overdue that grow on every tick."""
    figures = {key: value for key, value in _metadata(item).items() if not key.endswith("_hours_overdue")}
    return json.dumps(figures | {"late": item.late}, sort_keys=True, default=str)


def build_freshness_sensor(interval_seconds: int = 300) -> SensorDefinition:
    @sensor(
        name=FRESHNESS_SENSOR,
        job_name=FRESHNESS_JOB,
        minimum_interval_seconds=interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Judges each production table (and its online copy) against its freshness SLA, runs the "
            "table's freshness check when the verdict changes, and tells the approvals channel about a "
            "late table once per day."
        ),
    )
    def freshness_sensor(
        context: SensorEvaluationContext,
        catalog: CatalogResource,
        online: OnlineStoreResource,
        approvals: ApprovalsResource,
        freshness: FreshnessResource,
    ) -> Iterator[RunRequest | SkipReason]:
        cursor = json.loads(context.cursor) if context.cursor else {}
        verdicts: dict[str, str] = cursor.get("verdicts", {})
        told: dict[str, str] = cursor.get("told", {})
        now = datetime.now(UTC)
        with online.opened() as store:
            items = freshness.judge(catalog.catalog(), store)
        judged = {item.table: _verdict(item) for item in items}
        changed = [table for table, verdict in judged.items() if verdicts.get(table) != verdict]
        verdicts.update(judged)
        for item in items:
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
        if changed:
            yield RunRequest(
                run_key=f"freshness-{now.isoformat()}",
                asset_check_keys=[freshness_check_key(table) for table in changed],
                tags={"backfills/freshness_changed": ", ".join(changed)},
            )
        else:
            yield SkipReason(f"late: {', '.join(late)}" if late else "every table is fresh")

    return freshness_sensor
