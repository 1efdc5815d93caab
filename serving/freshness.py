"""How late production and the online store are, per table, against the table's freshness SLA.

The partition of day D is due by D+1 00:00 UTC + `serving.due_hours` (6 by default: yesterday's partition in
production by 06:00 UTC). At a moment `now`, the newest partition due is the expected one (never past the
last partition of the deployment, `BACKFILLS_PARTITIONS_END`, when the partitions end at the landed data);
a table whose newest served partition is older is late, by that many days, and overdue since the due time
of its first missing partition. The online store is judged the same way, from the partition readers are on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from backfills.assets.registry import FEATURES
from backfills.resources.catalog import ReleaseCatalog
from backfills.serving.online_store import OnlineStore
from backfills.specs import FeatureSpec


def due_at(day: date, due_hours: float) -> datetime:
    """When the partition of `day` is due: the end of the day plus the SLA's hours (UTC)."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1, hours=due_hours)


def expected_partition(now: datetime, due_hours: float, last_partition: date | None = None) -> date:
    """The newest partition due at `now` (at most `last_partition`)."""
    day = (now - timedelta(hours=due_hours)).date() - timedelta(days=1)
    return min(day, last_partition) if last_partition else day


@dataclass(frozen=True)
class Lateness:
    """One copy of a table (production or online) against the newest partition due."""

    partition: str | None  # the newest it serves; None: nothing
    late: bool
    days_behind: int | None  # partitions missing up to the expected one; None when it serves nothing
    hours_overdue: float  # since its first missing partition was due (0 when fresh)


@dataclass(frozen=True)
class TableFreshness:
    table: str
    due_hours: float
    expected_partition: str
    production: Lateness
    online: Lateness | None  # None without an online store

    @property
    def late(self) -> bool:
        return self.production.late or bool(self.online and self.online.late)

    def describe(self) -> str:
        def one(name: str, copy: Lateness) -> str:
            if not copy.late:
                return f"{name} fresh ({copy.partition})"
            if copy.partition is None:
                return f"{name} LATE: serves nothing"
            return (
                f"{name} LATE by {copy.days_behind} day(s) ({copy.partition}; overdue "
                f"{copy.hours_overdue:.1f}h)"
            )

        parts = [one("production", self.production)]
        if self.online is not None:
            parts.append(one("online", self.online))
        return (
            f"{self.table} (expected {self.expected_partition}, due {self.due_hours:g}h after the day): "
            + ("; ".join(parts))
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "late": self.late}


def _lateness(newest: str | None, expected: date, due_hours: float, now: datetime) -> Lateness:
    if newest is None:
        return Lateness(None, True, None, 0.0)
    served = date.fromisoformat(newest)
    behind = max(0, (expected - served).days)
    overdue = (now - due_at(served + timedelta(days=1), due_hours)).total_seconds() / 3600 if behind else 0.0
    return Lateness(newest, behind > 0, behind, round(max(0.0, overdue), 2))


def table_freshness(
    catalog: ReleaseCatalog,
    spec: FeatureSpec,
    *,
    now: datetime,
    last_partition: date | None = None,
    online: OnlineStore | None = None,
) -> TableFreshness:
    due = spec.serving.due_hours
    expected = expected_partition(now, due, last_partition)
    release = catalog.current_release()
    served = catalog.served(release, spec.name) if release else {}
    production = _lateness(max(served) if served else None, expected, due, now)
    current = online.current(spec.name) if online is not None else None
    online_copy = None
    if online is not None:
        online_copy = _lateness(current.partition if current else None, expected, due, now)
    return TableFreshness(spec.name, due, expected.isoformat(), production, online_copy)


def freshness(
    catalog: ReleaseCatalog,
    *,
    now: datetime | None = None,
    last_partition: date | None = None,
    online: OnlineStore | None = None,
) -> list[TableFreshness]:
    """Every table of the registry, now (or at `now`)."""
    moment = now or datetime.now(UTC)
    return [
        table_freshness(catalog, spec, now=moment, last_partition=last_partition, online=online)
        for spec in FEATURES
    ]
