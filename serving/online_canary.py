"""The online store's canary channel, kept in step with the catalog's canary pointer.

While a canary is open, each online table whose newest partition differs in the canary release gets that
partition written as a version of its own (read back against the offline rows, like any sync) and a route:
the keys of the canary slice read it, every other key keeps reading the current version. A table whose
newest partition the canary does not change needs no route (the slice reads the same rows). Once the canary
is closed every route goes; a completed canary's version is then the one the production sync switches to,
without reloading it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pyspark.sql import SparkSession

from backfills.assets.registry import FEATURES
from backfills.resources.canary import open_canary
from backfills.resources.catalog import ReleaseCatalog
from backfills.serving.online_store import OnlineStore
from backfills.serving.online_sync import load_version, newest_served, online_version
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
    """Route each online table's canary slice as the open canary says (or remove every route without one);
    one `online_canary_synced` audit event. A parity failure (OnlineParityError) leaves the table's route
    as it was."""
    canary = open_canary(catalog)
    release = catalog.get_release(canary.release_id) if canary else None
    results = []
    for spec in FEATURES:
        table = spec.name
        newest = newest_served(catalog, release, table) if release else None
        current = online.current(table)
        version = online_version(newest[0], newest[1].content_hash) if newest else None
        if canary is None or newest is None or current is None or current.version == version:
            had_route = online.canary_route(table) is not None
            if had_route:
                online.clear_canary(table)
            results.append(CanaryRouteSync(table, "unrouted" if had_route else "untouched"))
            continue
        action: RouteAction = "routed"
        if not online.has_version(table, version):
            day, entry = newest
            load_version(
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
            action = "loaded"
        online.route_canary(table, version, percent=canary.percent, release_id=canary.release_id)
        results.append(CanaryRouteSync(table, action, version, canary.percent))
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
