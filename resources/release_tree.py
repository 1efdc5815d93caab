"""Releases as trees of immutable objects, so that publishing and reading cost what changed, not all history.

A release names one index per table; an index names one segment per month of partitions; a segment holds
those partitions' entries (batch, files, rows, content hash). Objects are content-addressed (their key is
the hash of their JSON), written once and shared by every release that has them: a promotion of 30 days of
4 tables writes at most 4 indexes and 8 segments whether production holds one month or ten years, a
rollback writes none, and reading some days of a table reads its index and the segments of those months.
Time travel stays exact: a release's objects are never changed or removed.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import TypeVar

from pydantic import BaseModel

from backfills.errors import ObjectExistsError
from backfills.resources.catalog_models import ReleasedPartition, Segment, TableIndex
from backfills.resources.storage import ObjectStore

OBJECTS_PREFIX = "catalog/objects"
_CACHED_OBJECTS = 4096

Node = TypeVar("Node", Segment, TableIndex)
Changes = Mapping[str, ReleasedPartition]  # day -> its entry, added or replacing the one before


def month_of(day: str) -> str:
    return day[:7]


class ReleaseTree:
    """The immutable objects of the releases of one storage root, with a small cache (they never change):
    the `cached_objects` used last, whether read or written."""

    def __init__(self, store: ObjectStore, *, cached_objects: int = _CACHED_OBJECTS) -> None:
        self.store = store
        self._cached_objects = cached_objects
        self._cache: OrderedDict[str, BaseModel] = OrderedDict()

    # Objects

    def _put(self, node: BaseModel) -> str:
        body = node.model_dump_json().encode("utf-8")
        key = f"{OBJECTS_PREFIX}/{hashlib.sha256(body).hexdigest()}.json"
        try:
            self.store.put_if_absent(key, body)
        except ObjectExistsError:
            pass  # the same content is already there, written by an earlier release
        self._remember(key, node)
        return key

    def _get(self, key: str, kind: type[Node]) -> Node:
        cached = self._cache.get(key)
        if cached is None:
            cached = kind.model_validate_json(self.store.get(key))
        self._remember(key, cached)
        assert isinstance(cached, kind)
        return cached

    def _remember(self, key: str, node: BaseModel) -> None:
        """Keep the object as the one used last; past the bound (one more at most), drop the one used least
        recently."""
        self._cache[key] = node
        self._cache.move_to_end(key)
        if len(self._cache) > self._cached_objects:
            self._cache.popitem(last=False)

    # Tables

    def index(self, key: str | None) -> TableIndex:
        return TableIndex() if key is None else self._get(key, TableIndex)

    def write_table(self, base: str | None, changes: Changes) -> str | None:
        """The index of the table `base` (None: empty) with `changes` applied; None when the table has no
        day at all (an empty table of a first-format snapshot). Days are added or replaced, never taken out:
        a rollback points a table at an earlier index instead.

        Writes only the segments of the months that changed, and the new index.
        """
        index = self.index(base)
        segments = dict(index.segments)
        counts = dict(index.partition_counts)
        by_month: dict[str, dict[str, ReleasedPartition]] = {}
        for day, entry in changes.items():
            by_month.setdefault(month_of(day), {})[day] = entry
        for month, month_changes in sorted(by_month.items()):
            partitions = dict(self._segment(segments.get(month)).partitions) | month_changes
            segments[month] = self._put(Segment(partitions=dict(sorted(partitions.items()))))
            counts[month] = len(partitions)
        if not segments:
            return None
        if segments == index.segments:
            return base
        return self._put(
            TableIndex(segments=dict(sorted(segments.items())), partition_counts=dict(sorted(counts.items())))
        )

    def write_snapshot(self, partitions: Mapping[str, ReleasedPartition]) -> str | None:
        """The index of a table holding exactly `partitions` (a release of the first catalog format)."""
        return self.write_table(None, partitions)

    def _segment(self, key: str | None) -> Segment:
        return Segment() if key is None else self._get(key, Segment)

    def read_table(
        self, key: str | None, *, start: str | None = None, end: str | None = None
    ) -> dict[str, ReleasedPartition]:
        """The partitions with start <= day <= end (each bound optional), reading only those months."""
        found: dict[str, ReleasedPartition] = {}
        for month, segment in self.index(key).segments.items():
            if (start is not None and month < month_of(start)) or (end is not None and month > month_of(end)):
                continue
            for day, entry in self._segment(segment).partitions.items():
                if (start is None or day >= start) and (end is None or day <= end):
                    found[day] = entry
        return found

    def read_days(self, key: str | None, days: Iterable[str]) -> dict[str, ReleasedPartition]:
        """The entries of the given days that the table has, reading only their months."""
        segments = self.index(key).segments
        found: dict[str, ReleasedPartition] = {}
        wanted: dict[str, list[str]] = {}
        for day in days:
            wanted.setdefault(month_of(day), []).append(day)
        for month, month_days in wanted.items():
            if month in segments:
                partitions = self._segment(segments[month]).partitions
                found.update({day: partitions[day] for day in month_days if day in partitions})
        return found

    def entries(self, index_keys: Iterable[str]) -> Iterator[ReleasedPartition]:
        """Every entry of the given indexes, each shared segment read once."""
        segments = {key for index in set(index_keys) for key in self.index(index).segments.values()}
        for key in sorted(segments):
            yield from self._segment(key).partitions.values()

    def last_day(self, key: str | None) -> str | None:
        """The newest partition of the table, or None when it has none."""
        segments = self.index(key).segments
        if not segments:
            return None
        return max(self._segment(segments[max(segments)]).partitions)

    def changed_days(self, before: str | None, after: str | None) -> list[str]:
        """Days whose entry differs between two indexes of a table, reading only the months that differ."""
        if before == after:
            return []
        old, new = self.index(before).segments, self.index(after).segments
        changed: list[str] = []
        for month in sorted(old.keys() | new.keys()):
            if old.get(month) == new.get(month):
                continue
            old_days = self._segment(old.get(month)).partitions
            new_days = self._segment(new.get(month)).partitions
            changed.extend(
                day for day in old_days.keys() | new_days.keys() if old_days.get(day) != new_days.get(day)
            )
        return sorted(changed)
