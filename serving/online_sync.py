"""Keeping the online store in step with production: per table, the rows of the newest partition the
current release serves, keyed by entity.

A table's online version is named after that partition and its content hash, so a sync knows without
reading any row whether the table changed: the same version is left alone, a kept one is switched back to
without reloading (a rollback), and a new one is written under its own name, read back against the offline
rows (parity), and only then switched to, with compare-and-swap, and older versions pruned to the last
`keep`. A crash or a parity failure before the switch leaves readers on the version they had; the next
sync writes the new one again and completes.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pyspark.sql import SparkSession

from backfills.assets.registry import FEATURES, feature_spec
from backfills.errors import ObjectNotFoundError, OnlineParityError
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import Release, ReleasedPartition
from backfills.resources.feature_store import PartitionFiles, read_partitions
from backfills.serving.online_store import DEFAULT_KEEP, OnlineStore, OnlineVersion
from backfills.serving.parity import DEFAULT_SAMPLE_SIZE, ParityResult, parity

# Under the storage root, for `backfills online status`: each table's last sync, and the parity figures of
# every version loaded (a rollback switches back to a version without reading it again).
STATUS_PREFIX = "online/status"
PARITY_PREFIX = "online/parity"
Action = Literal["loaded", "switched", "unchanged", "not_served"]


def online_version(partition: str, content_hash: str) -> str:
    """The name of a table's online version: its partition and the partition's content hash."""
    return f"{partition}-{content_hash[:16]}"


@dataclass(frozen=True)
class TableSync:
    """What one sync did to one table."""

    table: str
    release_id: str
    action: Action
    partition: str | None = None
    version: str | None = None
    previous_version: str | None = None
    keys_written: int = 0
    seconds: float = 0.0
    parity: dict[str, Any] | None = None  # counts of the read-back, when rows were written
    synced_at: str = ""

    def describe(self) -> str:
        where = f"{self.table}: {self.partition or '-'} of release {self.release_id}"
        if self.action == "loaded":
            checked = self.parity["keys_checked"] if self.parity else 0
            return (
                f"{where} loaded as version {self.version} ({self.keys_written} keys in {self.seconds:.1f}s, "
                f"{checked} read back equal)"
            )
        if self.action == "switched":
            return f"{where}: switched back to kept version {self.version}, nothing reloaded"
        if self.action == "unchanged":
            return f"{where}: version {self.version} already current, nothing to do"
        return f"{where}: production serves no partition of it; online left as it was"

    def metadata(self) -> dict[str, Any]:
        """The facts an observation of `online/<table>` carries (numbers plot in the UI)."""
        facts: dict[str, Any] = {
            "action": self.action,
            "release_id": self.release_id,
            "partition": self.partition or "",
            "version": self.version or "",
            "keys_written": self.keys_written,
            "duration_seconds": round(self.seconds, 3),
        }
        if self.parity:
            facts.update({f"parity/{name}": value for name, value in self.parity.items()})
        return facts


def _parity_facts(result: ParityResult) -> dict[str, Any]:
    return {
        "passed": result.passed,
        "keys_checked": result.keys_checked,
        "offline_rows": result.offline_rows,
        "online_rows": result.online_rows,
        "mismatches": result.mismatch_count,
        "missing_keys": result.missing_count,
    }


class _Sampled:
    """The rows of a partition as they stream to the store, keeping a deterministic sample of them (by a
    hash of the key) to read back."""

    def __init__(self, rows: Iterator[dict[str, object]], key: str, total: int, size: int) -> None:
        self.rows, self.key = rows, key
        self.step = max(1, total // size)
        self.sample: dict[str, dict[str, object]] = {}

    def __iter__(self) -> Iterator[dict[str, object]]:
        for row in self.rows:
            key = row[self.key]
            if isinstance(key, str) and zlib.crc32(key.encode()) % self.step == 0:
                self.sample[key] = row
            yield row


def newest_served(
    catalog: ReleaseCatalog, release: Release, table: str
) -> tuple[str, ReleasedPartition] | None:
    """The newest partition of the table the release serves, with its entry; None if it serves none."""
    served = catalog.served(release, table)
    if not served:
        return None
    day = max(served)
    return day, served[day]


def sync_table(
    session: Callable[[], SparkSession],
    catalog: ReleaseCatalog,
    online: OnlineStore,
    release: Release,
    table: str,
    *,
    keep: int = DEFAULT_KEEP,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
) -> TableSync:
    """Bring one online table to the newest partition `release` serves (see the module's docstring); Spark
    (`session()`) is started only when rows must be loaded. Raises OnlineParityError, before switching,
    when the rows read back differ from the offline rows."""
    started = time.monotonic()
    now = datetime.now(UTC).isoformat()
    current = online.current(table)
    previous = current.version if current else None
    newest = newest_served(catalog, release, table)
    if newest is None:
        return TableSync(table, release.release_id, "not_served", previous_version=previous, synced_at=now)
    day, entry = newest
    version = online_version(day, entry.content_hash)
    base = TableSync(table, release.release_id, "unchanged", day, version, previous, synced_at=now)
    if previous == version:
        return base
    if online.has_version(table, version):
        online.switch(table, version, expected_current=previous)
        return _done(base, "switched", started)
    written, facts = load_version(
        session, catalog, online, release, table, day, entry, sample_size=sample_size, readers_on=previous
    )
    online.switch(table, version, expected_current=previous)
    online.prune(table, keep)
    synced = _done(base, "loaded", started)
    return TableSync(**{**asdict(synced), "keys_written": written.rows, "parity": facts})


def load_version(
    session: Callable[[], SparkSession],
    catalog: ReleaseCatalog,
    online: OnlineStore,
    release: Release,
    table: str,
    day: str,
    entry: ReleasedPartition,
    *,
    sample_size: int,
    readers_on: str | None,
    into: str | None = None,
) -> tuple[OnlineVersion, dict[str, Any]]:
    """Write the partition's rows as the table's version of it (named by `online_version`) and read a sample
    back against the offline rows; OnlineParityError (the version stays unused) when they differ. `into`
    names another online table to write them to (a rollback drill's shadow), the table's by default."""
    spec = feature_spec(table)
    [key] = spec.entity_keys
    frame = read_partitions(
        session(),
        catalog.store,
        [PartitionFiles(entry.base, tuple(entry.files))],
        schema_ddl=spec.schema_ddl,
        columns=spec.column_names,
    )
    rows = _Sampled((row.asDict() for row in frame.toLocalIterator()), key, entry.row_count, sample_size)
    version = online_version(day, entry.content_hash)
    written = online.write_version(
        into or table,
        version,
        rows,
        key_column=key,
        release_id=release.release_id,
        partition=day,
        content_hash=entry.content_hash,
    )
    result = parity(online, into or table, version, rows.sample, sample_size, offline_rows=entry.row_count)
    if not result.passed:
        raise OnlineParityError(
            f"{result.summary()}; not switched: readers stay on version {readers_on or 'none (never synced)'}"
        )
    return written, _parity_facts(result)


def _done(base: TableSync, action: Action, started: float) -> TableSync:
    return TableSync(**{**asdict(base), "action": action, "seconds": time.monotonic() - started})


def record_status(catalog: ReleaseCatalog, sync: TableSync) -> None:
    """Keep the table's last sync, and the parity of a version it loaded, under the storage root."""
    body = json.dumps(asdict(sync), sort_keys=True).encode()
    catalog.store.put(f"{STATUS_PREFIX}/{sync.table}.json", body)
    if sync.parity is not None:
        catalog.store.put(f"{PARITY_PREFIX}/{sync.table}/{sync.version}.json", body)


def _recorded(catalog: ReleaseCatalog, key: str) -> TableSync | None:
    try:
        return TableSync(**json.loads(catalog.store.get(key)))
    except ObjectNotFoundError:
        return None


def last_sync(catalog: ReleaseCatalog, table: str) -> TableSync | None:
    """The table's last sync, whatever it did."""
    return _recorded(catalog, f"{STATUS_PREFIX}/{table}.json")


def loaded(catalog: ReleaseCatalog, table: str, version: str) -> TableSync | None:
    """The sync that loaded `version` of `table` (with its parity figures), if it was recorded."""
    return _recorded(catalog, f"{PARITY_PREFIX}/{table}/{version}.json")


def sync_release(
    session: Callable[[], SparkSession],
    catalog: ReleaseCatalog,
    online: OnlineStore,
    *,
    release: Release | None = None,
    tables: Sequence[str] | None = None,
    keep: int = DEFAULT_KEEP,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    progress: Callable[[str], None] = lambda _: None,
) -> list[TableSync]:
    """Sync every table `release` (default: the current one) serves, or `tables`; each table's last sync is
    recorded, and the audit trail gets one `online_synced` event. A parity failure stops the sync (the
    tables synced before it stay synced) and is recorded as `online_sync_failed` before it is raised."""
    pinned = release or catalog.current_release()
    if pinned is None:
        return []
    results = []
    for table in tables or pinned.served_tables():
        try:
            sync = sync_table(session, catalog, online, pinned, table, keep=keep, sample_size=sample_size)
        except OnlineParityError as error:
            catalog.append_event(
                "online_sync_failed",
                release_id=pinned.release_id,
                details={"table": table, "store": online.describe(), "error": str(error)},
            )
            raise
        record_status(catalog, sync)
        progress(sync.describe())
        results.append(sync)
    catalog.append_event(
        "online_synced",
        release_id=pinned.release_id,
        tables={sync.table: [sync.partition] for sync in results if sync.partition},
        details={"store": online.describe(), "tables": {sync.table: sync.metadata() for sync in results}},
    )
    return results


def online_status(catalog: ReleaseCatalog, online: OnlineStore) -> list[dict[str, Any]]:
    """Per table of the registry: the version readers are on (release, partition, rows, when it was synced
    and how long ago), the newest partition production serves, whether the two are in step, and the parity
    of the sync that loaded the current version."""
    release = catalog.current_release()
    now = datetime.now(UTC)
    found = []
    for spec in FEATURES:
        current = online.current(spec.name)
        newest = newest_served(catalog, release, spec.name) if release else None
        wanted = online_version(newest[0], newest[1].content_hash) if newest else None
        load = loaded(catalog, spec.name, current.version) if current else None
        synced_at = current.synced_at if current else None
        found.append(
            {
                "table": spec.name,
                "release_id": current.release_id if current else None,
                "partition": current.partition if current else None,
                "version": current.version if current else None,
                "rows": current.rows if current else 0,
                "synced_at": synced_at.isoformat() if synced_at else None,
                "hours_since_sync": round((now - synced_at).total_seconds() / 3600, 2) if synced_at else None,
                "production_partition": newest[0] if newest else None,
                "in_step": current is not None and current.version == wanted,
                "parity": load.parity if load else None,
            }
        )
    return found
