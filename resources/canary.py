"""The canary channel of the release catalog: `catalog/CANARY`, a pointer beside CURRENT, changed only by
compare-and-swap.

A canary is a promotion release staged on top of production (its parent, the base) but not made current:
the entities of a stable slice (resources/canary_slice.py) read it, everyone else reads CURRENT. Opening,
widening, completing and rolling back are each one conditional write of the pointer and one audit event
with the actor; completion is the ordinary commit of the release (compare-and-swap of CURRENT from the base),
so it fails, changing nothing, if production moved since the canary opened. Batch states follow
(`canary`, `promoted`, `rolled_back`). Approval and content checks are the caller's (orchestration).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from backfills.errors import (
    CanaryConflictError,
    CanaryNotOpenError,
    CurrentChangedError,
    InvalidRequestError,
    ObjectNotFoundError,
)
from backfills.resources.canary_slice import SLICE_RULE, check_percent
from backfills.resources.cas import update_object
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import Canary, CanaryStep, Release
from backfills.resources.lifecycle import BatchState, check_transition

CANARY_KEY = "catalog/CANARY"


def _now() -> datetime:
    return datetime.now(UTC)


def last_canary(catalog: ReleaseCatalog) -> Canary | None:
    """The last canary recorded in the root, open or closed; None if there never was one."""
    try:
        return Canary.model_validate_json(catalog.store.get(CANARY_KEY))
    except ObjectNotFoundError:
        return None


def open_canary(catalog: ReleaseCatalog) -> Canary | None:
    """The canary readers of the canary channel follow now, or None."""
    canary = last_canary(catalog)
    return canary if canary is not None and canary.is_open else None


def _conflict(canary: Canary, action: str) -> CanaryConflictError:
    return CanaryConflictError(
        f"cannot {action}: the canary of batch {canary.batch_id} (release {canary.release_id}, "
        f"{canary.percent:g}% of entities) is open; complete it (`backfills expose {canary.batch_id} "
        "--to 100`) or roll it back (`backfills rollback --reason ...`) first; nothing was changed"
    )


def refuse_while_open(catalog: ReleaseCatalog, action: str) -> None:
    """CanaryConflictError if a canary is open: production must not move under it (its slice would read
    a release built on an older production)."""
    canary = open_canary(catalog)
    if canary is not None:
        raise _conflict(canary, action)


def _update(
    catalog: ReleaseCatalog,
    change: Callable[[Canary], Canary],
    *,
    create: Callable[[], Canary] | None = None,
) -> Canary:
    return update_object(
        catalog.store,
        CANARY_KEY,
        Canary,
        change,
        create=create,
        missing=lambda: CanaryNotOpenError(f"no canary was ever opened under {catalog.store.root}"),
        what="the canary pointer",
        max_attempts=catalog.max_attempts,
    )


def _last_open(catalog: ReleaseCatalog, batch_id: str | None, action: str) -> Canary:
    canary = last_canary(catalog)
    if canary is None:
        raise CanaryNotOpenError(f"no canary was ever opened under {catalog.store.root}: nothing to {action}")
    return _the_open_one(canary, batch_id, action)


def _advance(
    catalog: ReleaseCatalog,
    batch_id: str,
    verb: str,
    step: CanaryStep,
    update: dict[str, object],
    *,
    check: Callable[[Canary], None] | None = None,
) -> Canary:
    """One step of the batch's open canary, written with compare-and-swap: `update` and the step appended
    (after `check`, which may refuse it, on every fresh read)."""

    def advanced(current: Canary) -> Canary:
        current = _the_open_one(current, batch_id, verb)
        if check is not None:
            check(current)
        return current.model_copy(update={**update, "steps": [*current.steps, step]})

    return _update(catalog, advanced)


def _the_open_one(canary: Canary, batch_id: str | None, action: str) -> Canary:
    if not canary.is_open:
        raise CanaryNotOpenError(
            f"no canary is open (the last one, of batch {canary.batch_id}, was "
            f"{canary.status.replace('_', ' ')}), so there is nothing to {action}"
        )
    if batch_id is not None and canary.batch_id != batch_id:
        raise CanaryConflictError(
            f"the open canary is of batch {canary.batch_id}, not {batch_id}: nothing to {action} for "
            f"{batch_id}; nothing was changed"
        )
    return canary


def open_release(catalog: ReleaseCatalog, release: Release, percent: float, *, actor: str | None) -> Canary:
    """Expose a staged promotion release (not yet current, its parent production now) to `percent` of the
    entities. CanaryConflictError if a canary is open already; CurrentChangedError if production is no
    longer the release's parent."""
    percent = check_percent(percent)
    if percent == 100:
        raise InvalidRequestError("a canary at 100% is a promotion: promote the batch without --canary")
    if release.kind != "promotion" or release.batch_id is None:
        raise InvalidRequestError(f"release {release.release_id} is not a promotion of a batch")
    batch = catalog.get_batch(release.batch_id)
    check_transition(batch.batch_id, batch.state, BatchState.CANARY)
    current = catalog.current_release_id()
    if current != release.parent_id:
        raise CurrentChangedError(
            f"production moved to {current} since release {release.release_id} was staged on "
            f"{release.parent_id}; nothing was opened; promote to the canary again"
        )
    now = _now()
    opened = Canary(
        release_id=release.release_id,
        base_release_id=release.parent_id,
        batch_id=release.batch_id,
        percent=percent,
        slice_rule=SLICE_RULE,
        opened_at=now,
        steps=[CanaryStep(action="opened", percent=percent, at=now, actor=actor)],
    )

    def replace_closed(canary: Canary) -> Canary:
        if not canary.is_open:
            return opened
        if canary.release_id != opened.release_id:
            raise _conflict(canary, f"open a canary of batch {opened.batch_id}")
        return canary  # a retry of this very opening

    canary = _update(catalog, replace_closed, create=lambda: opened)
    catalog.move_batch(opened.batch_id, BatchState.CANARY)
    catalog.append_event(
        "canary_opened",
        batch_id=canary.batch_id,
        release_id=canary.release_id,
        actor=actor,
        tables=release.changed,
        details={"percent": percent, "base_release_id": canary.base_release_id, "slice_rule": SLICE_RULE},
    )
    return canary


def _check_base(catalog: ReleaseCatalog, canary: Canary, action: str) -> None:
    current = catalog.current_release_id()
    if current not in (canary.base_release_id, canary.release_id):
        raise CurrentChangedError(
            f"cannot {action}: production moved from {canary.base_release_id or '(no release)'} to {current} "
            f"since the canary of batch {canary.batch_id} opened, so its release no longer builds on "
            "production; roll the canary back and promote the batch to a canary again; nothing was changed"
        )


def refuse_narrowing(canary: Canary, percent: float) -> None:
    """InvalidRequestError unless `percent` widens the canary: a slice only grows."""
    if percent <= canary.percent:
        raise InvalidRequestError(
            f"the canary of batch {canary.batch_id} is at {canary.percent:g}%: it can only widen (to more "
            f"than {canary.percent:g}%), never narrow to {percent:g}%; to take it away, roll it back"
        )


def widen(catalog: ReleaseCatalog, batch_id: str, percent: float, *, actor: str | None) -> Canary:
    """Expose the open canary of the batch to more entities (the slice only grows; narrowing is refused)."""
    percent = check_percent(percent)
    canary = _last_open(catalog, batch_id, "widen")
    _check_base(catalog, canary, f"widen the canary of batch {batch_id}")

    step = CanaryStep(action="widened", percent=percent, at=_now(), actor=actor)
    widened = {"percent": percent}
    canary = _advance(
        catalog, batch_id, "widen", step, widened, check=lambda now: refuse_narrowing(now, percent)
    )
    catalog.append_event(
        "canary_widened",
        batch_id=batch_id,
        release_id=canary.release_id,
        actor=actor,
        tables=catalog.get_release(canary.release_id).changed,
        details={"percent": percent, "previous_percent": canary.steps[-2].percent, "slice_rule": SLICE_RULE},
    )
    return canary


def complete(
    catalog: ReleaseCatalog,
    batch_id: str,
    *,
    actor: str | None,
    reason: str | None = None,
    details: dict[str, object] | None = None,
) -> tuple[Canary, Release]:
    """Make the open canary's release production: compare-and-swap CURRENT from the canary's base (a retry
    after a crash finds it current and finishes). CurrentChangedError if production moved meanwhile. The
    `reason` goes on the completion step, the `details` (what the caller checked) on its audit event."""
    canary = _last_open(catalog, batch_id, "complete")
    release = catalog.get_release(canary.release_id)
    if catalog.current_release_id() != release.release_id:
        _check_base(catalog, canary, f"complete the canary of batch {batch_id}")
        release = catalog.commit(release)

    step = CanaryStep(action="completed", percent=100.0, at=_now(), actor=actor, reason=reason)
    canary = _advance(catalog, batch_id, "complete", step, {"status": "completed", "percent": 100.0})
    catalog.append_event(
        "canary_completed",
        batch_id=batch_id,
        release_id=release.release_id,
        actor=actor,
        tables=release.changed,
        details={
            **(details or {}),
            "reason": reason,
            "steps": [step.model_dump(mode="json") for step in canary.steps],
        },
    )
    return canary, release


def roll_back(catalog: ReleaseCatalog, *, actor: str | None, reason: str) -> Canary:
    """Close the open canary: its slice reads production again, its batch is `rolled_back`. Production is
    untouched (it never served the canary)."""
    if not reason or not reason.strip():
        raise InvalidRequestError(
            "rolling a canary back needs a reason (who asked and why); nothing was changed"
        )
    canary = _last_open(catalog, None, "roll back")
    # The batch first: a crash before the pointer closes leaves a canary a retry closes, never the reverse.
    catalog.move_batch(canary.batch_id, BatchState.ROLLED_BACK)

    step = CanaryStep(action="rolled_back", percent=canary.percent, at=_now(), actor=actor, reason=reason)
    canary = _advance(catalog, canary.batch_id, "roll back", step, {"status": "rolled_back"})
    catalog.append_event(
        "canary_rolled_back",
        batch_id=canary.batch_id,
        release_id=canary.release_id,
        actor=actor,
        tables=catalog.get_release(canary.release_id).changed,
        details={"reason": reason, "percent": canary.percent, "base_release_id": canary.base_release_id},
    )
    return canary
