"""The production partitions a batch would leave stale: downstream partitions whose window reads a day the
batch changes, which the batch does not recompute. Promoting a one-day fix of `customer_daily_txn` alone
would leave production's 7-day, 30-day and profile partitions over that day computed from daily rows it no
longer serves; the approval request names them and promotion refuses them unless forced (with a reason).

A day counts as changed when the batch's content for it differs from production's (a batch that recomputes
the same rows changes nothing downstream). Staleness carries on downstream: a profile partition read from a
stale 7-day partition is stale too. Free of Dagster and Spark: it reads the catalog and the registry.
"""

from __future__ import annotations

from datetime import date, timedelta

from backfills.assets.registry import dependency_order
from backfills.errors import StaleDownstreamError
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import BatchManifest, Release, StaleDownstream
from backfills.specs import FeatureInput, day_ranges


def _changed_days(catalog: ReleaseCatalog, batch: BatchManifest, release: Release) -> dict[str, set[str]]:
    """Per table of the batch, the days whose staged content is not what production serves."""
    changed = {}
    for table, records in batch.tables.items():
        served = catalog.served(release, table, days=records)
        changed[table] = {
            day
            for day, record in records.items()
            if day not in served or served[day].content_hash != record.content_hash
        }
    return changed


def _readers(day: str, item: FeatureInput) -> list[str]:
    """The downstream days whose window reads the upstream `day` through `item` (lookback and lateness)."""
    upstream_day = date.fromisoformat(day)
    return [
        (upstream_day + timedelta(days=offset)).isoformat()
        for offset in range(-item.lateness_days, item.lookback_days + 1)
    ]


def stale_downstream(
    catalog: ReleaseCatalog, batch: BatchManifest, release: Release | None
) -> dict[str, StaleDownstream]:
    """Table -> the partitions of it that `release` (production) serves and promoting the batch on top of
    it would leave stale, with the batch's tables whose change reaches them. Reads only the days in reach."""
    if release is None:
        return {}
    changed = _changed_days(catalog, batch, release)
    # table -> day -> the batch's tables whose change reaches that day (directly, or through stale days)
    moved: dict[str, dict[str, set[str]]] = {
        table: {day: {table} for day in days} for table, days in changed.items()
    }
    stale: dict[str, StaleDownstream] = {}
    for spec in dependency_order():
        reach: dict[str, set[str]] = {}
        for item in spec.feature_inputs:
            for day, causes in moved.get(item.table, {}).items():
                for reader in _readers(day, item):
                    reach.setdefault(reader, set()).update(causes)
        staged = batch.tables.get(spec.name, {})
        reach = {day: causes for day, causes in reach.items() if day not in staged}
        if not reach:
            continue
        served = catalog.served(release, spec.name, start=min(reach), end=max(reach))
        left = {day: causes for day, causes in reach.items() if day in served}
        if not left:
            continue
        stale[spec.name] = StaleDownstream(upstream=sorted(set().union(*left.values())), days=sorted(left))
        moved.setdefault(spec.name, {}).update(left)
    return stale


def describe(stale: dict[str, StaleDownstream]) -> str:
    """'customer_txn_7d 2025-01-02..2025-01-04 (3 partitions, from customer_daily_txn); ...'."""
    return "; ".join(
        f"{table} {day_ranges(entry.days)} ({_partitions(len(entry.days))}, from {', '.join(entry.upstream)})"
        for table, entry in sorted(stale.items())
    )


def _partitions(count: int) -> str:
    return f"{count} partition" + ("" if count == 1 else "s")


def verify_downstream(
    batch: BatchManifest, stale: dict[str, StaleDownstream], *, force: bool, reason: str | None
) -> None:
    """Refuse a batch that would leave production's downstream partitions stale, unless forced with a
    reason (the stale partitions are then recorded on the release and shown by the audit trail).

    StaleDownstreamError names each stale table and its days, and what to do instead.
    """
    if not stale:
        return
    upstream = sorted({table for entry in stale.values() for table in entry.upstream})
    what = (
        f"it changes {', '.join(upstream)} without recomputing the downstream partitions production "
        f"computed from it: {describe(stale)}"
    )
    if not force:
        raise StaleDownstreamError(
            f"batch {batch.batch_id} cannot be promoted: {what}. Promoting it would leave those partitions "
            "computed from rows production no longer serves. Nothing was published; backfill the same days "
            "with --downstream (in the Dagster UI: select the downstream assets too) so the batch "
            "recomputes them, or promote with --force and a --reason to accept the stale partitions "
            "(recorded on the release; `backfills audit` shows them until a batch replaces them)"
        )
    if not reason or not reason.strip():
        raise StaleDownstreamError(
            f"batch {batch.batch_id}: promoting with force over stale downstream partitions needs a reason "
            f"({what}); nothing was published"
        )
