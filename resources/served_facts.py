"""What a release records about what production serves, besides where the files are: the code versions that
staged each table's served partitions, and the stale partitions (downstream partitions computed from
upstream rows production no longer serves). Both are carried from release to release and changed only where
a release changes partitions, so recording them costs what changed, not all history.

Pure functions over catalog records; the catalog (resources/catalog.py) reads and writes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from backfills.resources.catalog_models import BatchManifest, ReleasedPartition, StaleDownstream, StaleSince

# The code version of a served partition whose batch manifest is gone (never the case in a healthy root).
UNKNOWN_CODE = "unknown"

CodeCounts = dict[str, dict[str, int]]  # table -> code version -> partitions served
StaleMarks = dict[str, list[StaleSince]]  # table -> stale partitions, by the release that left them


class StagedCode:
    """The code version that staged a served partition, read from its batch's manifest (each read once)."""

    def __init__(self, manifest_of: Callable[[str], BatchManifest | None]) -> None:
        self._manifest_of = manifest_of
        self._manifests: dict[str, BatchManifest | None] = {}

    def version(self, table: str, day: str, entry: ReleasedPartition) -> str:
        if entry.batch_id not in self._manifests:
            self._manifests[entry.batch_id] = self._manifest_of(entry.batch_id)
        manifest = self._manifests[entry.batch_id]
        record = manifest.partition(table, day) if manifest is not None else None
        return record.code_version if record is not None else UNKNOWN_CODE

    def counts(self, table: str, entries: Mapping[str, ReleasedPartition]) -> dict[str, int]:
        """Code version -> how many of the entries it staged."""
        counted: dict[str, int] = {}
        for day, entry in entries.items():
            _add(counted, self.version(table, day, entry), 1)
        return dict(sorted(counted.items()))


def _add(counts: dict[str, int], version: str, n: int) -> None:
    counts[version] = counts.get(version, 0) + n
    if counts[version] == 0:
        del counts[version]


def counts_after(
    before: dict[str, int],
    replaced: Iterable[tuple[str, str | None]],
) -> dict[str, int]:
    """A table's code counts after some of its partitions changed: `replaced` holds, per changed partition,
    the code version that staged what was served (None: nothing was) and the one that staged what is."""
    counts = dict(before)
    for old, new in replaced:
        if old is not None:
            _add(counts, old, -1)
        _add(counts, new, 1)
    return dict(sorted(counts.items()))


def still_stale(marks: StaleMarks, replaced: Mapping[str, Iterable[str]]) -> StaleMarks:
    """The stale marks left once the `replaced` days (table -> days whose served partition changed) are no
    longer the partitions that were stale."""
    kept: StaleMarks = {}
    for table, table_marks in sorted(marks.items()):
        gone = set(replaced.get(table, ()))
        for mark in table_marks:
            days = [day for day in mark.days if day not in gone]
            if days:
                kept.setdefault(table, []).append(mark.model_copy(update={"days": days}))
    return kept


def with_left_stale(marks: StaleMarks, left: Mapping[str, StaleDownstream], release_id: str) -> StaleMarks:
    """The marks with the partitions a release leaves stale added, stale since that release."""
    merged = {table: list(table_marks) for table, table_marks in marks.items()}
    for table, stale in sorted(left.items()):
        merged.setdefault(table, []).append(StaleSince(**stale.model_dump(), since=release_id))
    return dict(sorted(merged.items()))


def stale_cleared(before: StaleMarks, after: StaleMarks) -> dict[str, list[str]]:
    """Table -> days stale before a release and not after it (a batch replaced them, or a rollback)."""
    cleared: dict[str, list[str]] = {}
    for table, table_marks in sorted(before.items()):
        still = {day for mark in after.get(table, []) for day in mark.days}
        days = sorted({day for mark in table_marks for day in mark.days} - still)
        if days:
            cleared[table] = days
    return cleared
