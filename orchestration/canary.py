"""Canary releases, step by step: publish an approved batch to a slice of entities, widen the slice, complete
it into production or roll it back, with the canary's health judged at every step (a breach rolls it back by
itself). Free of Dagster: the jobs in `orchestration/jobs.py` and the CLI drive it.

Widening needs no new approval (the approval covered the batch), but every step is an audit event with who or
what made it. Completing is a promotion: the approval is judged again, the deployed code compared with the
code that staged the batch, and the files it publishes verified, before CURRENT moves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pyspark.sql import SparkSession

from backfills.errors import (
    BatchNotApprovedError,
    CanaryUnhealthyError,
    CodeVersionChangedError,
    StagedContentChangedError,
)
from backfills.orchestration.approval_policy import ApprovalRules
from backfills.orchestration.canary_health import CanaryHealth
from backfills.orchestration.promotion import (
    PublishedChange,
    code_versions,
    finish_promotion,
    judge_approval,
    verified_publication,
    verify_code,
    verify_content,
)
from backfills.resources import canary as canary_channel
from backfills.resources.approvals_store import ApprovalStore
from backfills.resources.canary_slice import check_percent
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import Canary
from backfills.resources.lifecycle import BatchState

HEALTH_GUARD = "canary_health"  # the actor of an automatic rollback
HEALTH_EVENT = "canary_health"

# Judges an open canary (orchestration/canary_health.canary_health with a Spark session).
HealthJudge = Callable[[Canary], CanaryHealth]


@dataclass(frozen=True)
class Exposure:
    """Where a canary stands after a step: the pointer, and, once completed, the change of production."""

    canary: Canary
    health: CanaryHealth | None = None
    published: PublishedChange | None = None


def promote_to_canary(
    catalog: ReleaseCatalog,
    rules: ApprovalRules,
    spark: SparkSession,
    batch_id: str,
    percent: float,
    *,
    requested_by: str | None,
    force: bool = False,
    reason: str | None = None,
    now: datetime | None = None,
    deep_verify: bool = False,
) -> Canary:
    """Publish an approved batch to the canary channel at `percent` of the entities: the same verification
    as a promotion, then a promotion release staged on production and exposed to the slice only. A retry
    of an opening that went through returns the open canary."""
    check_percent(percent)
    open_now = canary_channel.open_canary(catalog)
    if open_now is not None and open_now.batch_id == batch_id:
        catalog.move_batch(batch_id, BatchState.CANARY)  # a retry after a crash between the two writes
        return open_now
    canary_channel.refuse_while_open(catalog, f"open a canary of batch {batch_id}")
    batch = catalog.get_batch(batch_id)
    request, approval = verified_publication(
        catalog,
        ApprovalStore(catalog.store),
        rules,
        spark,
        batch,
        now=now or datetime.now(UTC),
        force=force,
        reason=reason,
        deep_verify=deep_verify,
    )
    release = catalog.stage_promotion(
        batch_id, actor=requested_by, reason=reason or request.decision_summary, approval=approval
    )
    return canary_channel.open_release(catalog, release, percent, actor=requested_by)


def judge(catalog: ReleaseCatalog, canary: Canary, health: HealthJudge, *, actor: str | None) -> CanaryHealth:
    """Judge the open canary and record the verdict; a breach rolls it back (the health guard is the actor,
    the figures the reason) before CanaryUnhealthyError is raised. Who asked is the event's actor."""
    verdict = health(canary)
    catalog.append_event(
        HEALTH_EVENT,
        batch_id=canary.batch_id,
        release_id=canary.release_id,
        actor=actor,
        tables={model.table: model.days for model in verdict.models},
        details=verdict.as_dict(),
    )
    if not verdict.healthy:
        canary_channel.roll_back(catalog, actor=HEALTH_GUARD, reason=verdict.describe())
        raise CanaryUnhealthyError(
            f"{verdict.describe()}\nThe canary was rolled back: its slice reads production again; batch "
            f"{canary.batch_id} is rolled_back"
        )
    return verdict


def expose(
    catalog: ReleaseCatalog,
    rules: ApprovalRules,
    spark: SparkSession,
    batch_id: str,
    percent: float,
    *,
    requested_by: str | None,
    health: HealthJudge | None,
    force: bool = False,
    reason: str | None = None,
    run_id: str | None = None,
    now: datetime | None = None,
) -> Exposure:
    """Widen the open canary of the batch to `percent`; at 100, complete it: its release becomes production
    (compare-and-swap of CURRENT from the canary's base), recorded as a promotion, once the checks a
    promotion makes pass (`completion_checks`; other code deployed is accepted only with `force` and a
    `reason`, recorded on the completion). Then, before the step, the canary's health is judged (`health`,
    None to skip): a breach rolls it back instead (CanaryUnhealthyError)."""
    check_percent(percent)
    last = canary_channel.last_canary(catalog)
    if (
        percent == 100
        and last is not None
        and last.batch_id == batch_id
        and last.status == "completed"
        and catalog.current_release_id() == last.release_id
    ):
        return _completed(catalog, last, None, run_id)  # a retry after a crash: finish the bookkeeping
    canary = canary_channel.open_canary(catalog)
    verdict = None
    facts: dict[str, object] = {}
    if canary is not None and canary.batch_id == batch_id:
        # Refusals before judging: a step refused needs no verdict.
        if percent < 100:
            canary_channel.refuse_narrowing(canary, percent)
        elif catalog.current_release_id() != canary.release_id:  # else a retry after the swap
            facts = completion_checks(
                catalog, rules, spark, canary, force=force, reason=reason, now=now or datetime.now(UTC)
            )
        if health is not None:
            verdict = judge(catalog, canary, health, actor=requested_by)
    if percent < 100:
        return Exposure(canary_channel.widen(catalog, batch_id, percent, actor=requested_by), verdict)
    canary, _ = canary_channel.complete(catalog, batch_id, actor=requested_by, reason=reason, details=facts)
    return _completed(catalog, canary, verdict, run_id)


def completion_checks(
    catalog: ReleaseCatalog,
    rules: ApprovalRules,
    spark: SparkSession,
    canary: Canary,
    *,
    force: bool,
    reason: str | None,
    now: datetime,
) -> dict[str, object]:
    """What a promotion checks, checked again before the canary's release becomes production: the batch's
    approval judged now (expired, superseded or vetoed since?), the deployed code against the code that
    staged the batch (other code only with `force` and a reason), and the staged files the release publishes
    (sizes and checksums; rows with Spark only for partitions staged before checksums were kept). Returns
    the facts the completion records; a refusal leaves the canary open and production unchanged."""
    batch = catalog.get_batch(canary.batch_id)
    try:
        judge_approval(ApprovalStore(catalog.store), rules, batch, now)
        code = code_versions(batch)
        verify_code(batch, code, force=force, reason=reason)
        verify_content(spark, catalog.store, batch)
    except (BatchNotApprovedError, CodeVersionChangedError, StagedContentChangedError) as error:
        raise type(error)(
            f"{error} The canary of batch {canary.batch_id} stays open at {canary.percent:g}% of entities, "
            "production is unchanged; to take the canary away: `backfills rollback --reason ...`"
        ) from None
    return {
        "forced": any(versions.changed for versions in code.values()),
        "code_versions": {table: versions.model_dump() for table, versions in sorted(code.items())},
    }


def _completed(
    catalog: ReleaseCatalog, canary: Canary, verdict: CanaryHealth | None, run_id: str | None
) -> Exposure:
    release = catalog.get_release(canary.release_id)
    finish_promotion(
        catalog, ApprovalStore(catalog.store), catalog.get_batch(canary.batch_id), release, run_id
    )
    return Exposure(canary, verdict, PublishedChange(release, release.parent_id, release.changed))
