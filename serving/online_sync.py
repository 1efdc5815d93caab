"""Keeping the online store in step with production: per table, the rows of the newest partition the
current release serves, keyed by entity; readers see one release at a time across tables.

A table's online version is named after that partition and its content hash, so a sync knows without
reading any row whether the table changed. A sync first stages every table that changed: a kept version is
used as it is (a rollback: nothing reloaded), a new one is written under its own name and read back against
the offline rows (parity). One writer at a time writes a version (the store's writer lease): a concurrent
sync waits and then finds it written; what a writer that died left is written again. Only then are all the
changed tables switched, in one atomic step of the store, with compare-and-swap from the versions the sync
started from, and only if the release is still the current one (a newer release wins: the sync starts again
on it); older versions are pruned to the last `keep`. A failure on any table, or a crash, before the switch
leaves readers wholly on the versions they had; the next sync completes.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from pyspark.sql import SparkSession

from backfills.assets.registry import FEATURES, feature_spec
from backfills.errors import (
    BackfillsError,
    ObjectNotFoundError,
    OnlineParityError,
    OnlineStoreError,
    OnlineVersionChangedError,
)
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import Release, ReleasedPartition
from backfills.resources.feature_store import PartitionFiles, read_partitions
from backfills.serving.online_store import DEFAULT_KEEP, OnlineStore, OnlineVersion, WriterLease
from backfills.serving.parity import DEFAULT_SAMPLE_SIZE, ParityResult, parity

# Under the storage root, for `backfills online status`: the parity figures of every version loaded (a
# rollback switches back to a version without reading it again). What each sync did is in its audit event.
PARITY_PREFIX = "online/parity"
Action = Literal["loaded", "switched", "unchanged", "not_served"]
# A sync starts again (on the newest release) when production or the online store moved under it; this many
# times in a row, and it gives up saying so.
SYNC_ATTEMPTS = 5


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
            return f"{where}: switched to kept version {self.version}, nothing reloaded"
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


@dataclass(frozen=True)
class StagedVersion:
    """A table's version ready to be switched to: completely written and read back equal to the offline
    rows, by this sync (`loaded`, with its figures) or before it (kept: nothing reloaded)."""

    version: str
    loaded: bool
    keys_written: int = 0
    parity: dict[str, Any] | None = None


def stage_version(
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
) -> StagedVersion:
    """The table's version of the partition, ready to switch to. Under the version's writer lease: one kept
    (written and read back before, by an earlier sync or one running at the same time) is used as it is;
    otherwise its rows are written and read back (`load_version`). Whatever fails on the way throws away
    what was written, so a version kept without a lease on it is always one that read back equal."""
    version = online_version(day, entry.content_hash)
    with online.writer_lease(table, version) as lease:
        if not lease.inherited and online.has_version(table, version):
            return StagedVersion(version, loaded=False)
        try:
            written, facts = load_version(
                session,
                catalog,
                online,
                release,
                table,
                day,
                entry,
                sample_size=sample_size,
                readers_on=readers_on,
                lease=lease,
            )
        except BaseException:
            online.abandon(lease)
            raise
    return StagedVersion(version, loaded=True, keys_written=written.rows, parity=facts)


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
    lease: WriterLease | None = None,
    into: str | None = None,
) -> tuple[OnlineVersion, dict[str, Any]]:
    """Write the partition's rows as the table's version of it (named by `online_version`; under `lease`,
    or one taken for the write) and read a sample back against the offline rows; OnlineParityError (the
    version stays unused) when they differ. `into` names another online table to write them to (a rollback
    drill's shadow), the table's by default."""
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
        lease=lease,
    )
    result = parity(online, into or table, version, rows.sample, sample_size, offline_rows=entry.row_count)
    if not result.passed:
        raise OnlineParityError(
            f"{result.summary()}; not switched: readers stay on version {readers_on or 'none (never synced)'}"
        )
    return written, _parity_facts(result)


def _staged(
    session: Callable[[], SparkSession],
    catalog: ReleaseCatalog,
    online: OnlineStore,
    release: Release,
    table: str,
    *,
    sample_size: int,
    loaded_before: dict[tuple[str, str], TableSync],
) -> TableSync:
    """What the sync will do to one table, its new version staged (not switched to yet). A version this
    sync loaded in an earlier attempt (`loaded_before`) keeps its figures."""
    started = time.monotonic()
    current = online.current(table)
    previous = current.version if current else None
    newest = newest_served(catalog, release, table)
    if newest is None:
        return TableSync(table, release.release_id, "not_served", previous_version=previous)
    day, entry = newest
    version = online_version(day, entry.content_hash)
    base = TableSync(table, release.release_id, "unchanged", day, version, previous)
    if previous == version:
        return base
    staged = stage_version(
        session, catalog, online, release, table, day, entry, sample_size=sample_size, readers_on=previous
    )
    if not staged.loaded:
        earlier = loaded_before.get((table, version))
        return replace(earlier, previous_version=previous) if earlier else _done(base, "switched", started)
    synced = _done(base, "loaded", started)
    loaded = replace(synced, keys_written=staged.keys_written, parity=staged.parity)
    record_parity(catalog, loaded)
    loaded_before[(table, version)] = loaded
    return loaded


def _done(base: TableSync, action: Action, started: float) -> TableSync:
    return TableSync(**{**asdict(base), "action": action, "seconds": time.monotonic() - started})


def record_parity(catalog: ReleaseCatalog, sync: TableSync) -> None:
    """Keep the parity figures of a version as soon as it is loaded (a rollback, or a concurrent sync,
    switches to it later without reading it again)."""
    body = json.dumps(asdict(sync), sort_keys=True).encode()
    catalog.store.put(f"{PARITY_PREFIX}/{sync.table}/{sync.version}.json", body)


def loaded(catalog: ReleaseCatalog, table: str, version: str) -> TableSync | None:
    """The sync that loaded `version` of `table` (with its parity figures), if it was recorded."""
    try:
        return TableSync(**json.loads(catalog.store.get(f"{PARITY_PREFIX}/{table}/{version}.json")))
    except ObjectNotFoundError:
        return None


def sync_release(
    session: Callable[[], SparkSession],
    catalog: ReleaseCatalog,
    online: OnlineStore,
    *,
    tables: Sequence[str] | None = None,
    keep: int = DEFAULT_KEEP,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    progress: Callable[[str], None] = lambda _: None,
) -> list[TableSync]:
    """Bring the online store in step with the current release: every table it serves, or `tables`, staged
    then switched in one step (see the module's docstring). The audit trail gets one `online_synced` event
    with what the sync did to each table. A failure while staging a table switches nothing: it is
    recorded as `online_sync_failed` naming the table, and raised naming it."""
    loaded_before: dict[tuple[str, str], TableSync] = {}
    for _ in range(SYNC_ATTEMPTS):
        synced_release = online.synced_release()  # before anything is read: the switch compares with it
        release = catalog.current_release()
        if release is None:
            return []
        results = []
        for table in tables or release.served_tables():
            try:
                staged = _staged(
                    session,
                    catalog,
                    online,
                    release,
                    table,
                    sample_size=sample_size,
                    loaded_before=loaded_before,
                )
            except Exception as error:
                raise _staging_failed(catalog, online, release, table, error) from error
            results.append(staged)
        if catalog.current_release_id() != release.release_id:
            continue  # a newer release was published meanwhile: it wins, sync it instead
        changing = [sync for sync in results if sync.action in ("loaded", "switched")]
        try:
            online.switch_tables(
                {sync.table: sync.version for sync in changing if sync.version},
                expected={sync.table: sync.previous_version for sync in changing},
                release=(synced_release, release.release_id),
            )
        except OnlineVersionChangedError:
            continue  # another sync switched first: start again from what it left
        return _finished(catalog, online, release, results, keep=keep, progress=progress)
    raise OnlineVersionChangedError(
        f"production or the online store at {online.describe()} moved {SYNC_ATTEMPTS} times while this sync "
        "ran (other promotions, rollbacks or syncs at the same time); nothing was switched by it; sync again"
    )


def _staging_failed(
    catalog: ReleaseCatalog, online: OnlineStore, release: Release, table: str, error: Exception
) -> BackfillsError:
    """The error of a sync that failed staging `table`, naming it, recorded as `online_sync_failed`."""
    stays = "readers stay on the versions they had: no table was switched"
    if isinstance(error, OnlineStoreError):  # OnlineParityError stays one
        failure: BackfillsError = type(error)(f"online table {table}: {error}; {stays}")
    else:  # Spark's errors carry the JVM's stack: its innermost cause says what went wrong
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        causes = [line.removeprefix("Caused by: ") for line in lines if line.startswith("Caused by: ")]
        cause = causes[-1] if causes else next(iter(lines), "")
        failure = OnlineStoreError(
            f"online table {table} could not be staged: {type(error).__name__}: {cause}; {stays}"
        )
    catalog.append_event(
        "online_sync_failed",
        release_id=release.release_id,
        details={"table": table, "store": online.describe(), "error": str(failure)},
    )
    return failure


def _finished(
    catalog: ReleaseCatalog,
    online: OnlineStore,
    release: Release,
    staged: list[TableSync],
    *,
    keep: int,
    progress: Callable[[str], None],
) -> list[TableSync]:
    """After the switch: prune what was loaded, tell what each table's sync did, record the audit event."""
    now = datetime.now(UTC).isoformat()
    results = [replace(sync, synced_at=now) for sync in staged]
    for sync in results:
        if sync.action == "loaded":
            online.prune(sync.table, keep)
        progress(sync.describe())
    catalog.append_event(
        "online_synced",
        release_id=release.release_id,
        tables={sync.table: [sync.partition] for sync in results if sync.partition},
        details={"store": online.describe(), "tables": {sync.table: sync.metadata() for sync in results}},
    )
    return results


OnlineState = Literal["in_step", "behind", "not_served", "not_in_production"]


def _state(current: OnlineVersion | None, wanted: str | None) -> OnlineState:
    """A table of the online store against production: in step, behind (production serves a partition the
    store does not), not served by either yet, or kept online while production serves none of it."""
    if wanted is None:
        return "not_served" if current is None else "not_in_production"
    return "in_step" if current is not None and current.version == wanted else "behind"


def online_status(
    catalog: ReleaseCatalog, online: OnlineStore, *, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Per table of the registry: the version readers are on (release, partition, rows, when it was synced
    and how long before `now`), the newest partition production serves, where the two stand (`state`;
    `in_step`: the store serves what production serves, nothing when it serves nothing), and the parity of
    the sync that loaded the current version."""
    release = catalog.current_release()
    now = now or datetime.now(UTC)
    found = []
    for spec in FEATURES:
        current = online.current(spec.name)
        newest = newest_served(catalog, release, spec.name) if release else None
        wanted = online_version(newest[0], newest[1].content_hash) if newest else None
        load = loaded(catalog, spec.name, current.version) if current else None
        synced_at = current.synced_at if current else None
        state = _state(current, wanted)
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
                "state": state,
                "in_step": state in ("in_step", "not_served"),
                "parity": load.parity if load else None,
            }
        )
    return found
