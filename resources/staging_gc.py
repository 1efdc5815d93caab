"""Attempt folders that nothing references: a crashed run's partial write, or files a rerun superseded.

Readers only follow manifests and releases, so such folders are invisible; this finds them, says what they
hold, and removes them only when no run can still be writing there: the batch is sealed (approved, rejected
or promoted: staging refuses new partitions), or nothing was written in the folder for the grace period. A
live run writes its attempt folder continuously and records it in the batch manifest seconds after its last
file, so a folder that stayed silent for hours belongs to a run that is gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.storage import StoredObject

STAGING_PREFIX = "staging"
DEFAULT_GRACE = timedelta(hours=24)


@dataclass(frozen=True)
class OrphanAttempt:
    """One attempt folder no manifest or release references, and whether it may be removed now."""

    prefix: str  # staging/<table>/<batch_id>/<attempt_id>
    table: str
    batch_id: str
    files: int
    bytes: int
    last_written: datetime
    removable: bool
    why: str


def referenced_attempts(catalog: ReleaseCatalog) -> set[str]:
    """Every attempt folder a batch manifest or a release points at (each shared release object read once)."""
    bases = {
        record.base
        for batch in catalog.list_batches()
        for parts in batch.tables.values()
        for record in parts.values()
    }
    releases = catalog.list_releases()
    bases |= {
        part.base
        for release in releases
        for parts in release.snapshot_tables.values()
        for part in parts.values()
    }
    indexes = {key for release in releases for key in release.table_indexes.values()}
    bases |= {part.base for part in catalog.tree.entries(indexes)}
    return bases


def find_orphans(
    catalog: ReleaseCatalog, *, now: datetime, grace: timedelta = DEFAULT_GRACE
) -> list[OrphanAttempt]:
    """Unreferenced attempt folders, oldest write first, each with whether it may go and why (not)."""
    folders: dict[str, list[StoredObject]] = {}
    for item in catalog.store.describe(STAGING_PREFIX):
        parts = item.key.split("/")
        if len(parts) > 4:  # staging/<table>/<batch>/<attempt>/...
            folders.setdefault("/".join(parts[:4]), []).append(item)
    referenced = referenced_attempts(catalog)
    states = {batch.batch_id: batch.state for batch in catalog.list_batches()}
    orphans = []
    for prefix, items in sorted(folders.items()):
        if prefix in referenced:
            continue
        _, table, batch_id, _ = prefix.split("/")
        last = max(item.modified for item in items)
        state = states.get(batch_id)
        if state is not None and not state.accepts_partitions:
            removable, why = True, f"batch {batch_id} is {state}: no run writes into it any more"
        elif now - last >= grace:
            removable, why = (
                True,
                f"nothing written for {_duration(now - last)} (grace period {_duration(grace)})",
            )
        else:
            removable, why = (
                False,
                (
                    f"written {_duration(now - last)} ago: a run of batch {batch_id} may still be writing it "
                    f"(kept until nothing was written for {_duration(grace)})"
                ),
            )
        orphans.append(
            OrphanAttempt(
                prefix, table, batch_id, len(items), sum(item.size for item in items), last, removable, why
            )
        )
    return sorted(orphans, key=lambda orphan: (orphan.last_written, orphan.prefix))


def remove_orphans(catalog: ReleaseCatalog, orphans: list[OrphanAttempt]) -> int:
    """Delete the removable orphans (re-checked against the catalog first); returns the bytes freed."""
    referenced = referenced_attempts(catalog)
    freed = 0
    for orphan in orphans:
        if orphan.removable and orphan.prefix not in referenced:
            catalog.store.delete_prefix(orphan.prefix)
            freed += orphan.bytes
    return freed


def _duration(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} days"
