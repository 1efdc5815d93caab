"""The online store's canary channel, kept in step with the catalog's canary pointer.

While a canary is open, each online table whose newest partition differs in the canary release gets that
partition written as a version of its own (read back against the offline rows, like any sync) and a route:
the keys of the canary slice read it, every other key keeps reading the current version. A table whose
newest partition the canary does not change needs no route (the slice reads the same rows). Once the canary
is closed every route goes; a completed canary's version is then the one the production sync switches to,
without reloading it. The routes are checked against the pointer again after they are set, so a sync that
read the pointer before another step changed it (a health check rolling the canary back) never leaves its
routes behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from pyspark.sql import SparkSession

from backfills.assets.registry import FEATURES
from backfills.errors import OnlineVersionChangedError
from backfills.resources.canary import open_canary
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import Canary
from backfills.serving.online_store import OnlineStore
from backfills.serving.online_sync import (
    SYNC_ATTEMPTS,
    TableSync,
    newest_served,
    online_version,
    record_parity,
    stage_version,
)
from backfills.serving.parity import DEFAULT_SAMPLE_SIZE

RouteAction = Literal["loaded", "routed", "unrouted", "untouched"]


@dataclass(frozen=True)
class CanaryRouteSync:
    """What one canary sync did to one online table's route."""

    table: str
    action: RouteAction
    version: str | None = None
    percent: float | None = None

    def describe(self) -> str:
        if self.action == "loaded":
            return f"{self.table}: canary version {self.version} loaded, {self.percent:g}% of keys read it"
        if self.action == "routed":
            return f"{self.table}: {self.percent:g}% of keys read canary version {self.version}"
        if self.action == "unrouted":
            return f"{self.table}: every key reads the current version"
        return f"{self.table}: no canary route, nothing to do"


def sync_canary(
    session: Callable[[], SparkSession],
    catalog: ReleaseCatalog,
    online: OnlineStore,
    *,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    progress: Callable[[str], None] = lambda _: None,
) -> list[CanaryRouteSync]:
    """Route each online table's canary slice as the open canary says (or remove every route without one),
    until the pointer is the same after the routes were set as before; one `online_canary_synced` audit
    event. A failure loading a table's canary version (OnlineParityError) leaves its route as it was."""
    for _ in range(SYNC_ATTEMPTS):
        canary = open_canary(catalog)
        results = [_route(session, catalog, online, canary, spec.name, sample_size) for spec in FEATURES]
        if _same(open_canary(catalog), canary):
            break
    else:
        raise OnlineVersionChangedError(
            f"the canary changed {SYNC_ATTEMPTS} times while its online routes were set in "
            f"{online.describe()}; sync again"
        )
    for result in results:
        progress(result.describe())
    catalog.append_event(
        "online_canary_synced",
        batch_id=canary.batch_id if canary else None,
        release_id=canary.release_id if canary else None,
        details={
            "store": online.describe(),
            "tables": {item.table: {"action": item.action, "version": item.version} for item in results},
        },
    )
    return results


def _same(now: Canary | None, before: Canary | None) -> bool:
    """Whether the open canary is the one the routes were set for, at the same share."""
    if now is None or before is None:
        return now is before
    return (now.release_id, now.percent) == (before.release_id, before.percent)


def _route(
    session: Callable[[], SparkSession],
    catalog: ReleaseCatalog,
    online: OnlineStore,
    canary: Canary | None,
    table: str,
    sample_size: int,
) -> CanaryRouteSync:
    """Bring one table's route in step with `canary` (None: no canary open)."""
    release = catalog.get_release(canary.release_id) if canary else None
    newest = newest_served(catalog, release, table) if release else None
    current = online.current(table)
    if canary is None or release is None or newest is None or current is None:
        return _unrouted(online, table)
    day, entry = newest
    version = online_version(day, entry.content_hash)
    if current.version == version:
        return _unrouted(online, table)
    staged = stage_version(
        session,
        catalog,
        online,
        release,
        table,
        day,
        entry,
        sample_size=sample_size,
        readers_on=current.version,
    )
    if staged.loaded:
        loaded = TableSync(
            table, release.release_id, "loaded", day, version, current.version, staged.keys_written
        )
        record_parity(catalog, replace(loaded, parity=staged.parity))
    online.route_canary(table, version, percent=canary.percent, release_id=canary.release_id)
    return CanaryRouteSync(table, "loaded" if staged.loaded else "routed", version, canary.percent)


def _unrouted(online: OnlineStore, table: str) -> CanaryRouteSync:
    had_route = online.canary_route(table) is not None
    if had_route:
        online.clear_canary(table)
    return CanaryRouteSync(table, "unrouted" if had_route else "untouched")
