"""The release catalog: batch manifests, immutable releases, the CURRENT pointer and the audit trail.

Everything lives as JSON in an ObjectStore; every change that can race is a conditional write, so promotion
and rollback switch production atomically (one compare-and-swap of CURRENT) and no manifest update is lost.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from backfills.errors import (
    BatchNotFoundError,
    BatchSealedError,
    CurrentChangedError,
    InvalidRequestError,
    ObjectExistsError,
    ObjectNotFoundError,
    PreconditionFailedError,
    ReleaseNotFoundError,
)
from backfills.resources.cas import CAS_MAX_ATTEMPTS, dump, update_object
from backfills.resources.catalog_models import (
    ApprovalFacts,
    AuditEvent,
    BatchManifest,
    CheckRecord,
    CurrentPointer,
    LaunchPlan,
    PartitionRecord,
    Release,
    ReleasedPartition,
)
from backfills.resources.lifecycle import BatchState, check_transition
from backfills.resources.release_tree import ReleaseTree
from backfills.resources.served_facts import (
    CodeCounts,
    StagedCode,
    counts_after,
    stale_cleared,
    still_stale,
    with_left_stale,
)
from backfills.resources.storage import ObjectStore

# The first fields of a manifest as `dump` writes them (BatchManifest's field order); `batch_state` reads the
# state from there.
_MANIFEST_HEAD = re.compile(
    rb'\A\{\s*"batch_id": "[^"]*",\s*"created_at": "[^"]*",\s*"updated_at": "[^"]*",\s*"state": "([a-z_]+)"'
)

BATCHES_PREFIX = "catalog/batches"
RELEASES_PREFIX = "catalog/releases"
AUDIT_PREFIX = "catalog/audit"
CURRENT_KEY = "catalog/CURRENT"

# IDs become object keys: no '/', no leading dot, nothing a shell or S3 console would mangle.
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_EVENT_KIND_PATTERN = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class Pointer:
    """A pointer to a release, moved only by compare-and-swap, and where the releases staged for it are kept.

    Production's is CURRENT (`PRODUCTION`): readers follow it, its moves are audited and batch states follow
    them. A shadow pointer (a rollback drill's) is moved by the same code, but no reader follows it and its
    releases are kept under its own prefix, so no release listing, "previous" or production lookup meets one.
    """

    key: str
    releases_prefix: str

    @property
    def is_production(self) -> bool:
        return self.key == CURRENT_KEY

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


PRODUCTION = Pointer(CURRENT_KEY, RELEASES_PREFIX)


def _now() -> datetime:
    return datetime.now(UTC)


def _check_id(what: str, value: str) -> str:
    if not _ID_PATTERN.fullmatch(value):
        raise InvalidRequestError(
            f"{what} {value!r} cannot name a catalog object: use letters, digits, '.', '_' and '-' only"
        )
    return value


def _check_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequestError(f"{value!r} is not a partition date: use YYYY-MM-DD") from None


def _with_run(manifest: BatchManifest, run_id: str, requester: str | None) -> BatchManifest:
    """Note the run that changed the batch (the first requester named sticks) and rederive the state."""
    if run_id not in manifest.runs:
        manifest.runs.append(run_id)
    if manifest.requester is None:
        manifest.requester = requester
    manifest.state = _check_state(manifest)
    return manifest


def _check_state(manifest: BatchManifest) -> BatchState:
    if manifest.blocking_failures():
        return BatchState.BLOCKED
    checked: dict[str, set[str]] = {}
    for record in manifest.checks:
        checked.setdefault(record.table, set()).update(record.partitions)
    complete = all(set(days) <= checked.get(table, set()) for table, days in manifest.tables.items())
    return BatchState.CHECKED if manifest.tables and complete else BatchState.STAGING


def _released(record: PartitionRecord) -> ReleasedPartition:
    return ReleasedPartition(
        batch_id=record.batch_id,
        base=record.base,
        files=list(record.files),
        row_count=record.row_count,
        content_hash=record.content_hash,
    )


class ReleaseCatalog:
    """Batches, releases and the production pointer of one storage root."""

    def __init__(self, store: ObjectStore, *, max_attempts: int = CAS_MAX_ATTEMPTS) -> None:
        self.store = store
        self.max_attempts = max_attempts
        self.tree = ReleaseTree(store)
        self._releases: dict[str, Release] = {}  # releases never change once written

    # Batches

    def _batch_key(self, batch_id: str) -> str:
        return f"{BATCHES_PREFIX}/{_check_id('batch ID', batch_id)}.json"

    def get_batch(self, batch_id: str) -> BatchManifest:
        """The manifest of a batch; BatchNotFoundError if nothing was ever staged under that ID."""
        try:
            body = self.store.get(self._batch_key(batch_id))
        except ObjectNotFoundError:
            raise BatchNotFoundError(self._missing_batch_message(batch_id)) from None
        return BatchManifest.model_validate_json(body)

    def batch_state(self, batch_id: str) -> BatchState | None:
        """The batch's state, or None when it has no manifest. Reads the state from the head of the manifest
        as the catalog writes it (the first fields, before the partition records), so that a rollback can
        follow a ten-year batch without parsing its records; any other layout is parsed in full."""
        try:
            body = self.store.get(self._batch_key(batch_id))
        except ObjectNotFoundError:
            return None
        head = _MANIFEST_HEAD.match(body)
        if head is not None:
            return BatchState(head.group(1).decode())
        return BatchManifest.model_validate_json(body).state

    def _missing_batch_message(self, batch_id: str) -> str:
        return (
            f"batch {batch_id} has no manifest under {self.store.root}/{BATCHES_PREFIX}: nothing was staged "
            "under that ID in this storage root; check the batch ID (the Dagster backfill ID) against "
            "`backfills batches` and that BACKFILLS_STORAGE_ROOT points at the right root"
        )

    def list_batches(self) -> list[BatchManifest]:
        """Every batch manifest in the root, oldest first."""
        manifests = [
            BatchManifest.model_validate_json(self.store.get(key))
            for key in self.store.list(BATCHES_PREFIX)
            if key.endswith(".json")
        ]
        return sorted(manifests, key=lambda manifest: (manifest.created_at, manifest.batch_id))

    def update_batch(self, batch_id: str, change: Callable[[BatchManifest], BatchManifest]) -> BatchManifest:
        """Apply `change` to the batch's manifest with compare-and-swap, retrying when another writer won.

        `change` may run several times (once per attempt, each time on a fresh read), so it must not have
        side effects beyond the manifest it returns. Exceptions it raises abort the update unchanged, and
        so does a state change the batch's life cycle does not allow (IllegalTransitionError).
        """
        return self._update_batch(batch_id, change, create=None)

    def _update_batch(
        self,
        batch_id: str,
        change: Callable[[BatchManifest], BatchManifest],
        *,
        create: Callable[[], BatchManifest] | None,
    ) -> BatchManifest:
        return update_object(
            self.store,
            self._batch_key(batch_id),
            BatchManifest,
            lambda manifest: self._changed(batch_id, change, manifest),
            create=create,
            missing=lambda: BatchNotFoundError(self._missing_batch_message(batch_id)),
            what=f"batch {batch_id}",
            max_attempts=self.max_attempts,
        )

    @staticmethod
    def _changed(
        batch_id: str, change: Callable[[BatchManifest], BatchManifest], manifest: BatchManifest
    ) -> BatchManifest:
        before = manifest.state  # `change` may edit the manifest in place
        updated = change(manifest)
        if updated.batch_id != batch_id:
            raise InvalidRequestError(
                f"an update of batch {batch_id} returned the manifest of batch {updated.batch_id}"
            )
        updated.state = check_transition(batch_id, before, updated.state)
        updated.updated_at = _now()
        return updated

    def record_partitions(
        self,
        batch_id: str,
        records: Sequence[PartitionRecord],
        *,
        run_id: str,
        requester: str | None = None,
    ) -> tuple[BatchManifest, list[PartitionRecord]]:
        """Make completely written partitions visible in the batch (creating its manifest if needed).

        One record per table and partition: a rerun replaces the earlier record. The first run that names a
        requester sets it; every run's requester (None: the run named none) becomes a contributor, who may
        not approve the batch. Returns the new manifest and the records replaced by a different attempt, whose
        files the batch no longer references (the caller may delete them).
        """
        self._check_records(batch_id, records)
        replaced: list[PartitionRecord] = []

        def add(manifest: BatchManifest) -> BatchManifest:
            if not manifest.state.accepts_partitions:
                raise BatchSealedError(
                    f"batch {batch_id} is '{manifest.state}', so it accepts no more partitions (run {run_id} "
                    f"tried to stage {len(records)}); nothing was changed; launch a new backfill to stage "
                    "these partitions again"
                )
            replaced.clear()
            for record in records:
                previous = manifest.tables.setdefault(record.table, {}).get(record.partition)
                if previous is not None and previous.base != record.base:
                    replaced.append(previous)
                manifest.tables[record.table][record.partition] = record
            manifest.tables = {
                table: dict(sorted(dates.items())) for table, dates in sorted(manifest.tables.items())
            }
            if requester not in manifest.contributors:
                manifest.contributors.append(requester)
            return _with_run(manifest, run_id, requester)

        manifest = self._update_batch(batch_id, add, create=lambda: self._new_batch(batch_id, requester))
        staged: dict[str, list[str]] = {}
        for record in records:
            staged.setdefault(record.table, []).append(record.partition)
        superseded: dict[str, list[str]] = {}
        for record in replaced:
            superseded.setdefault(record.table, []).append(record.partition)
        self.append_event(
            "staged",
            batch_id=batch_id,
            actor=requester,
            tables=staged,
            details={
                "run_id": run_id,
                "row_count": sum(record.row_count for record in records),
                "replaced": {table: sorted(dates) for table, dates in superseded.items()},
            },
        )
        return manifest, replaced

    @staticmethod
    def _new_batch(batch_id: str, requester: str | None) -> BatchManifest:
        now = _now()
        return BatchManifest(batch_id=batch_id, created_at=now, updated_at=now, requester=requester)

    def record_checks(
        self,
        batch_id: str,
        checks: Sequence[CheckRecord],
        *,
        table: str,
        partitions: Sequence[str],
        run_id: str,
        requester: str | None = None,
    ) -> BatchManifest:
        """Record the verdicts of one run's checks of `table` over `partitions`, and the batch's new state.

        Earlier verdicts on these partitions of the table are replaced (a rerun is checked afresh). The
        manifest is created when a run fails its checks before staging anything, so the batch shows as
        blocked with its reasons. State: `blocked` if any blocking check failed, `checked` when every
        staged partition has verdicts and none blocks, else `staging`.
        """
        rerun = set(partitions)

        def add(manifest: BatchManifest) -> BatchManifest:
            if not manifest.state.accepts_partitions:
                raise BatchSealedError(
                    f"batch {batch_id} is '{manifest.state}': its check verdicts can no longer change"
                )
            kept = []
            for record in manifest.checks:
                if record.table == table and rerun.intersection(record.partitions):
                    remaining = [day for day in record.partitions if day not in rerun]
                    if not remaining:
                        continue
                    record = record.model_copy(update={"partitions": remaining})
                kept.append(record)
            manifest.checks = [*kept, *checks]
            return _with_run(manifest, run_id, requester)

        manifest = self._update_batch(batch_id, add, create=lambda: self._new_batch(batch_id, requester))
        self.append_event(
            "checked",
            batch_id=batch_id,
            actor=requester,
            tables={table: sorted(rerun)},
            details={
                "run_id": run_id,
                "state": manifest.state,
                "verdicts": {record.check: record.verdict for record in checks},
            },
        )
        return manifest

    @staticmethod
    def _check_records(batch_id: str, records: Sequence[PartitionRecord]) -> None:
        if not records:
            raise InvalidRequestError(
                f"no partitions given to record in batch {batch_id}: pass at least one record"
            )
        seen: set[tuple[str, str]] = set()
        for record in records:
            if record.batch_id != batch_id:
                raise InvalidRequestError(
                    f"{record.table} {record.partition} was written for batch {record.batch_id}, "
                    f"not {batch_id}: record it in its own batch"
                )
            if (record.table, record.partition) in seen:
                raise InvalidRequestError(
                    f"{record.table} {record.partition} appears twice in one call for batch {batch_id}: "
                    "pass one record per table and partition"
                )
            seen.add((record.table, record.partition))

    def record_plan(self, batch_id: str, plan: LaunchPlan, *, requester: str | None = None) -> LaunchPlan:
        """Keep the first plan made for the batch and return the one kept: every run of a backfill plans
        the same launch, and the first one decides (production may move while the backfill runs)."""
        kept: list[bool] = []

        def keep_first(manifest: BatchManifest) -> BatchManifest:
            kept[:] = [manifest.plan is None]
            if manifest.plan is None:
                manifest.plan = plan
                manifest.requester = manifest.requester or requester
            return manifest

        manifest = self._update_batch(
            batch_id, keep_first, create=lambda: self._new_batch(batch_id, requester)
        )
        if kept == [True]:
            self.append_event(
                "planned",
                batch_id=batch_id,
                actor=requester,
                tables={table: sorted(days) for table, days in plan.planned_out.items()},
                details={"planned_out": plan.planned_out_count(), "refusal": plan.refusal},
            )
        return manifest.plan or plan

    def mark_complete(
        self, batch_id: str, expected: dict[str, list[str]], *, note: str | None = None
    ) -> BatchManifest:
        """Record that the backfill writing the batch has finished, with the partitions it targeted (and,
        when some of its runs failed, a note saying why the batch is incomplete). Idempotent."""

        def complete(manifest: BatchManifest) -> BatchManifest:
            if manifest.completed_at is None:
                manifest.completed_at = _now()
            manifest.expected = {table: sorted(days) for table, days in sorted(expected.items())}
            manifest.completion_note = note
            return manifest

        return self._update_batch(batch_id, complete, create=lambda: self._new_batch(batch_id, None))

    def move_batch(self, batch_id: str, to: BatchState) -> BatchManifest:
        """Move a batch to `to` along its life cycle (resources/lifecycle.py); moving it where it already is
        changes nothing. IllegalTransitionError (a BatchSealedError) names both states when the life cycle
        does not lead there, and nothing is written."""

        def move(manifest: BatchManifest) -> BatchManifest:
            manifest.state = to
            return manifest

        return self._update_batch(batch_id, move, create=None)

    # Releases

    @staticmethod
    def _release_key(release_id: str, prefix: str = RELEASES_PREFIX) -> str:
        return f"{prefix}/{_check_id('release ID', release_id)}.json"

    def get_release(self, release_id: str, pointer: Pointer = PRODUCTION) -> Release:
        """A stored release (of production, or staged for a shadow `pointer`, which may also point at a
        production release); ReleaseNotFoundError if there is none with that ID."""
        if release_id in self._releases:
            return self._releases[release_id]
        body = None
        for prefix in dict.fromkeys((pointer.releases_prefix, RELEASES_PREFIX)):
            try:
                body = self.store.get(self._release_key(release_id, prefix))
                break
            except ObjectNotFoundError:
                continue
        if body is None:
            raise ReleaseNotFoundError(
                f"release {release_id} does not exist under {self.store.root}/{RELEASES_PREFIX}; "
                "list them with `backfills releases` and use one of their IDs"
            )
        release = Release.model_validate_json(body)
        self._releases[release_id] = release
        return release

    def list_releases(self) -> list[Release]:
        """Every stored release, oldest first, including staged ones that never became current."""
        releases = [
            Release.model_validate_json(self.store.get(key))
            for key in self.store.list(RELEASES_PREFIX)
            if key.endswith(".json")
        ]
        return sorted(releases, key=lambda release: (release.created_at, release.release_id))

    def _read_current(self, pointer: Pointer = PRODUCTION) -> tuple[str | None, str | None]:
        """The release ID the pointer names and its version token (both None before the first promotion)."""
        try:
            body, version = self.store.get_versioned(pointer.key)
        except ObjectNotFoundError:
            return None, None
        return CurrentPointer.model_validate_json(body).release_id, version

    def current_release_id(self, pointer: Pointer = PRODUCTION) -> str | None:
        """The ID of the release production readers (or those of a shadow `pointer`) see, or None before
        the first promotion."""
        return self._read_current(pointer)[0]

    def current_release(self, pointer: Pointer = PRODUCTION) -> Release | None:
        """The release production readers (or those of a shadow `pointer`) see, or None before the first
        promotion."""
        release_id = self.current_release_id(pointer)
        return None if release_id is None else self.get_release(release_id, pointer)

    def shadow(self, pointer: Pointer) -> Release:
        """Point a shadow pointer where CURRENT points now, and return that release: a rollback on the
        shadow then swaps it from there as a rollback swaps CURRENT. CURRENT itself never moves this way."""
        if pointer.is_production:
            raise InvalidRequestError(
                "CURRENT moves only by compare-and-swap (commit); shadow a pointer other than CURRENT"
            )
        current = self.current_release()
        if current is None:
            raise ReleaseNotFoundError(
                f"nothing has been promoted under {self.store.root}: nothing to shadow"
            )
        self.store.put(pointer.key, dump(CurrentPointer(release_id=current.release_id, updated_at=_now())))
        return current

    def release_history(self) -> list[Release]:
        """The chain of releases from CURRENT back through parent links, newest first."""
        history: list[Release] = []
        release_id = self.current_release_id()
        while release_id is not None:
            release = self.get_release(release_id)
            history.append(release)
            release_id = release.parent_id
        return history

    @staticmethod
    def _new_release_id() -> str:
        return f"r-{_now().strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"

    def _store_release(self, release: Release, pointer: Pointer = PRODUCTION) -> Release:
        self.store.put_if_absent(
            self._release_key(release.release_id, pointer.releases_prefix), dump(release)
        )
        return release

    # What a release serves

    def served(
        self,
        release: Release,
        table: str,
        *,
        start: str | None = None,
        end: str | None = None,
        days: Iterable[str] | None = None,
    ) -> dict[str, ReleasedPartition]:
        """The table's partitions in the release: all, those of `days`, or start <= day <= end (each bound
        optional). Reads only the months asked for."""
        if release.is_snapshot:
            entries = release.snapshot_tables.get(table, {})
            if days is not None:
                return {day: entries[day] for day in days if day in entries}
            return {
                day: entry
                for day, entry in entries.items()
                if (start is None or day >= start) and (end is None or day <= end)
            }
        key = release.table_indexes.get(table)
        if days is not None:
            return self.tree.read_days(key, days)
        return self.tree.read_table(key, start=start, end=end)

    def snapshot(self, release: Release) -> dict[str, dict[str, ReleasedPartition]]:
        """Everything the release serves, table -> day -> entry. Reads all its segments: for exports, tests
        and small catalogs; readers ask `served` for the days they need."""
        return {table: self.served(release, table) for table in release.served_tables()}

    def last_served_day(self, release: Release, table: str) -> str | None:
        """The newest partition of the table the release serves, or None."""
        if release.is_snapshot:
            return max(release.snapshot_tables.get(table, {}), default=None)
        return self.tree.last_day(release.table_indexes.get(table))

    def _indexes(self, release: Release | None) -> dict[str, str]:
        """Table -> index of every table the release serves; a first-format release is converted (its
        objects are written once, then shared)."""
        if release is None:
            return {}
        if not release.is_snapshot:
            return dict(release.table_indexes)
        converted = {
            table: self.tree.write_snapshot(parts) for table, parts in release.snapshot_tables.items()
        }
        return {table: key for table, key in converted.items() if key is not None}

    def served_code_versions(self, release: Release | None) -> CodeCounts:
        """Table -> code version -> how many of the release's partitions that code staged. Releases record
        it; for one written before they did, it is counted from every partition it serves and their batch
        manifests (all its history, once: the next release records it)."""
        if release is None:
            return {}
        if release.served_code_versions is not None:
            return release.served_code_versions
        code = self._staged_code()
        return {table: code.counts(table, self.served(release, table)) for table in release.served_tables()}

    def _staged_code(self) -> StagedCode:
        def manifest_of(batch_id: str) -> BatchManifest | None:
            try:
                return self.get_batch(batch_id)
            except BatchNotFoundError:
                return None

        return StagedCode(manifest_of)

    def _release(
        self,
        indexes: dict[str, str],
        changed: dict[str, list[str]],
        *,
        pointer: Pointer = PRODUCTION,
        verify: Callable[[Release], Release] | None = None,
        release_id: str | None = None,
        **fields: Any,
    ) -> Release:
        """A new release serving `indexes`, `verify`d, then stored for `pointer` (not yet current)."""
        release = Release(
            release_id=release_id or self._new_release_id(),
            created_at=_now(),
            table_indexes=dict(sorted(indexes.items())),
            partition_counts={
                table: sum(self.tree.index(key).partition_counts.values())
                for table, key in sorted(indexes.items())
            },
            changed={table: days for table, days in sorted(changed.items()) if days},
            **fields,
        )
        return self._store_release(release if verify is None else verify(release), pointer)

    def stage_promotion(
        self,
        batch_id: str,
        *,
        actor: str | None,
        reason: str | None = None,
        tables: Sequence[str] | None = None,
        approval: ApprovalFacts | None = None,
    ) -> Release:
        """Write (but do not publish) a release: the current one with the batch's partitions overlaid.

        With `tables`, only those tables of the batch are overlaid. CURRENT is untouched until `commit`.
        `approval` (who requested and approved the batch) is recorded on the release. Writes only the months
        of the tables the batch changes, however long production's history is.
        """
        manifest = self.get_batch(batch_id)
        if manifest.partition_count() == 0:
            raise InvalidRequestError(
                f"batch {batch_id} has no staged partitions, so there is nothing to promote; "
                "run its backfill first"
            )
        selected = self._select_tables(
            tables, available=manifest.tables.keys(), what=f"batch {batch_id} staged"
        )
        current = self.current_release()
        indexes = self._indexes(current)
        changed: dict[str, list[str]] = {}
        code = self._staged_code()
        served_code = dict(self.served_code_versions(current))
        for table in selected:
            entries = {day: _released(record) for day, record in manifest.tables[table].items()}
            before = self.tree.read_days(indexes.get(table), entries)
            changed[table] = sorted(day for day, entry in entries.items() if before.get(day) != entry)
            served_code[table] = counts_after(
                served_code.get(table, {}),
                (
                    (
                        code.version(table, day, before[day]) if day in before else None,
                        manifest.tables[table][day].code_version,
                    )
                    for day in changed[table]
                ),
            )
            written = self.tree.write_table(indexes.get(table), entries)
            if written is not None:
                indexes[table] = written
        facts = approval or ApprovalFacts()
        release_id = self._new_release_id()
        stale = still_stale(current.stale if current else {}, changed)
        return self._release(
            indexes,
            changed,
            release_id=release_id,
            parent_id=None if current is None else current.release_id,
            kind="promotion",
            batch_id=batch_id,
            actor=actor,
            reason=reason,
            served_code_versions=served_code,
            stale=with_left_stale(stale, facts.left_stale, release_id),
            **facts.model_dump(),
        )

    @staticmethod
    def _select_tables(tables: Sequence[str] | None, *, available: Iterable[str], what: str) -> list[str]:
        known = sorted(available)
        if tables is None:
            return known
        if isinstance(tables, str):
            raise InvalidRequestError(f"tables={tables!r} is one string: pass a list of table names")
        if not tables:
            raise InvalidRequestError(
                f"no tables given: pass table names that {what}, or None for all ({', '.join(known)})"
            )
        unknown = sorted(set(tables) - set(known))
        if unknown:
            raise InvalidRequestError(
                f"{', '.join(unknown)}: not among the tables {what} ({', '.join(known) or 'none'}); "
                "nothing was changed; check the table names"
            )
        return sorted(set(tables))

    def stage_rollback(
        self,
        to: str,
        *,
        actor: str | None,
        reason: str,
        tables: Sequence[str] | None = None,
        pointer: Pointer = PRODUCTION,
        verify: Callable[[Release], Release] | None = None,
    ) -> Release:
        """Write (but do not publish) a release that republishes an earlier release, whole or some tables.

        `to` is a release ID or "previous" (the current release's parent). With `tables`, the other tables
        stay as they are now; a listed table the target lacks is removed from production. `verify` sees the
        release before it is written: it raises to refuse it (nothing is written) or returns it with the
        facts it records (`forced`). The release is kept where `pointer` keeps its releases.
        """
        if not reason or not reason.strip():
            raise InvalidRequestError("a rollback needs a reason (who asked and why); nothing was changed")
        current = self.current_release()
        if current is None:
            raise ReleaseNotFoundError(
                f"nothing has been promoted under {self.store.root} yet, so there is no release to roll "
                "back; promote a batch first"
            )
        if to == "previous":
            if current.parent_id is None:
                raise ReleaseNotFoundError(
                    f"the current release {current.release_id} is the first release under {self.store.root}, "
                    "so it has no previous release to roll back to; nothing was changed"
                )
            target = self.get_release(current.parent_id)
        else:
            target = self.get_release(to)
        if target.release_id == current.release_id:
            raise InvalidRequestError(
                f"release {target.release_id} is already current; nothing to roll back; name an earlier "
                "release from release_history()"
            )
        now, then = self._indexes(current), self._indexes(target)
        if tables is None:
            indexes = then
            restored = set(then)
        else:
            selected = self._select_tables(
                tables,
                available=now.keys() | then.keys(),
                what=f"releases {current.release_id} or {target.release_id} contain",
            )
            indexes = dict(now)
            for table in selected:
                if table in then:
                    indexes[table] = then[table]
                else:
                    indexes.pop(table, None)
            restored = set(selected) & set(then)
        changed = {
            table: self.tree.changed_days(now.get(table), indexes.get(table))
            for table in now.keys() | indexes.keys()
        }
        # A table serves its partitions as the release it was taken from served them: their code and stale
        # marks come from there too.
        kept = set(indexes) - restored
        then_code = self.served_code_versions(target)
        now_code = self.served_code_versions(current) if kept else {}
        return self._release(
            indexes,
            changed,
            pointer=pointer,
            verify=verify,
            parent_id=current.release_id,
            kind="rollback",
            rolled_back_to=target.release_id,
            actor=actor,
            reason=reason,
            served_code_versions={
                table: (then_code if table in restored else now_code).get(table, {})
                for table in sorted(indexes)
            },
            stale={
                table: marks
                for table in sorted(indexes)
                if (marks := (target.stale if table in restored else current.stale).get(table))
            },
        )

    def commit(self, release: Release, pointer: Pointer = PRODUCTION) -> Release:
        """Publish a staged release: compare-and-swap CURRENT from its parent to it, then audit the change.

        CurrentChangedError if CURRENT is no longer the release's parent (another promotion or rollback
        was published since it was staged): nothing changes, and staging again builds on the new current.
        A shadow `pointer` is swapped the same way, and nothing else happens: no reader follows it.
        """
        release = self.get_release(release.release_id, pointer)
        current_id, version = self._read_current(pointer)
        if current_id != release.parent_id:
            raise CurrentChangedError(self._current_moved_message(release, current_id, pointer))
        body = dump(CurrentPointer(release_id=release.release_id, updated_at=_now()))
        try:
            if version is None:
                self.store.put_if_absent(pointer.key, body)
            else:
                self.store.put_if_match(pointer.key, body, version)
        except (ObjectExistsError, PreconditionFailedError):
            # Another commit swapped CURRENT between our read and our swap; a release ID is never current
            # twice, so CURRENT cannot have come back to the parent: name the winner.
            raise CurrentChangedError(
                self._current_moved_message(release, self.current_release_id(pointer), pointer)
            ) from None
        if not pointer.is_production:
            return release
        followed = self._follow_rollback(release) if release.kind == "rollback" else {}
        parent = self.get_release(release.parent_id) if release.parent_id else None
        served_code = release.served_code_versions or {}
        self.append_event(
            "promoted" if release.kind == "promotion" else "rolled_back",
            batch_id=release.batch_id,
            release_id=release.release_id,
            actor=release.actor,
            tables=release.changed,
            details={
                "previous_release_id": release.parent_id,
                "rolled_back_to": release.rolled_back_to,
                "reason": release.reason,
                "requester": release.requester,
                "approvers": [approver.user_id for approver in release.approvers],
                "approved_at": release.approved_at.isoformat() if release.approved_at else None,
                "forced": release.forced,
                "overrides": list(release.overrides),
                "code_versions": {
                    table: code.model_dump() for table, code in sorted(release.code_versions.items())
                },
                "served_code_versions": {
                    table: served_code.get(table, {}) for table in sorted(release.changed)
                },
                "left_stale": {table: stale.model_dump() for table, stale in release.left_stale.items()},
                "stale_replaced": stale_cleared(parent.stale if parent else {}, release.stale),
                **followed,
            },
        )
        if release.left_stale:
            # An event on the stale partitions themselves, so that their own audit trail shows it.
            self.append_event(
                "downstream_stale",
                batch_id=release.batch_id,
                release_id=release.release_id,
                actor=release.actor,
                tables={table: stale.days for table, stale in release.left_stale.items()},
                details={
                    "upstream": {table: stale.upstream for table, stale in release.left_stale.items()},
                    "reason": release.reason,
                },
            )
        return release

    def _follow_rollback(self, release: Release) -> dict[str, list[str]]:
        """Batch states after a rollback release became current: a promoted batch production now serves no
        partition of is `rolled_back`, a rolled-back batch it serves again is `promoted`. Reads only the
        days the rollback changed (in it and its parent) and the manifests of the batches found there."""
        parent = self.get_release(release.parent_id) if release.parent_id else None
        before: set[str] = set()
        after: set[str] = set()
        for table, days in release.changed.items():
            if parent is not None:
                before.update(entry.batch_id for entry in self.served(parent, table, days=days).values())
            after.update(entry.batch_id for entry in self.served(release, table, days=days).values())
        taken_away, restored = [], []
        for batch_id in sorted(before - after):
            if self.batch_state(batch_id) == BatchState.PROMOTED and not self._serves(
                release, self.get_batch(batch_id)
            ):
                self.move_batch(batch_id, BatchState.ROLLED_BACK)
                taken_away.append(batch_id)
        for batch_id in sorted(after - before):
            if self.batch_state(batch_id) == BatchState.ROLLED_BACK:
                self.move_batch(batch_id, BatchState.PROMOTED)
                restored.append(batch_id)
        return {"batches_rolled_back": taken_away, "batches_promoted_again": restored}

    def _serves(self, release: Release, manifest: BatchManifest) -> bool:
        """Whether the release serves any partition of the batch."""
        return any(
            entry.batch_id == manifest.batch_id
            for table, days in manifest.tables.items()
            for entry in self.served(release, table, days=days).values()
        )

    @staticmethod
    def _current_moved_message(
        release: Release, current_id: str | None, pointer: Pointer = PRODUCTION
    ) -> str:
        if current_id == release.release_id:
            return f"release {release.release_id} is already current; nothing was changed"
        what = (
            f"release {release.release_id} for batch {release.batch_id}"
            if release.kind == "promotion"
            else f"rollback release {release.release_id} (to {release.rolled_back_to})"
        )
        action = "promotion" if release.kind == "promotion" else "rollback"
        return (
            f"{pointer.name} moved from {release.parent_id or '(no release)'} to "
            f"{current_id or '(no release)'} while publishing {what}; nothing was changed; run the {action} "
            f"again to publish on top of {current_id or 'an empty production'}"
        )

    def promote(
        self,
        batch_id: str,
        *,
        actor: str | None,
        reason: str | None = None,
        tables: Sequence[str] | None = None,
        approval: ApprovalFacts | None = None,
    ) -> Release:
        """Publish the batch (or some of its tables) to production atomically: stage_promotion + commit."""
        return self.commit(
            self.stage_promotion(batch_id, actor=actor, reason=reason, tables=tables, approval=approval)
        )

    def rollback(
        self,
        to: str,
        *,
        actor: str | None,
        reason: str,
        tables: Sequence[str] | None = None,
        pointer: Pointer = PRODUCTION,
        verify: Callable[[Release], Release] | None = None,
    ) -> Release:
        """Republish an earlier release (whole, or some tables) atomically: stage_rollback (`verify` may
        refuse the release first) + commit. A rollback drill runs the same on a shadow `pointer`."""
        staged = self.stage_rollback(
            to, actor=actor, reason=reason, tables=tables, pointer=pointer, verify=verify
        )
        return self.commit(staged, pointer)

    def release_partitions(
        self, table: str, start: str, end: str, release_id: str | None = None
    ) -> dict[str, ReleasedPartition]:
        """The table's partitions with start <= date <= end in a release (default: the current one).

        Empty when the release does not contain the table or no date in the range.
        """
        first, last = _check_date(start), _check_date(end)
        if first > last:
            raise InvalidRequestError(f"start {start} is after end {end}: pass start <= end")
        if release_id is None:
            release = self.current_release()
            if release is None:
                raise ReleaseNotFoundError(
                    f"nothing has been promoted under {self.store.root} yet, so production has no {table}; "
                    "promote a batch first, or read the batch's staged partitions"
                )
        else:
            release = self.get_release(release_id)
        return self.served(release, table, start=first.isoformat(), end=last.isoformat())

    # Audit trail

    def append_event(
        self,
        kind: str,
        *,
        batch_id: str | None = None,
        release_id: str | None = None,
        actor: str | None = None,
        tables: dict[str, list[str]] | None = None,
        details: dict[str, Any] | None = None,
    ) -> AuditEvent:
        """Append one event to the audit trail; keys sort in time order."""
        if not _EVENT_KIND_PATTERN.fullmatch(kind):
            raise InvalidRequestError(f"audit event kind {kind!r} must be lowercase letters, digits and '_'")
        at = _now()
        event = AuditEvent(
            event_id=f"{at.strftime('%Y%m%dT%H%M%S.%fZ')}-{uuid.uuid4().hex[:8]}",
            at=at,
            kind=kind,
            batch_id=batch_id,
            release_id=release_id,
            actor=actor,
            tables={table: sorted(dates) for table, dates in sorted((tables or {}).items())},
            details=details or {},
        )
        self.store.put_if_absent(f"{AUDIT_PREFIX}/{event.event_id}-{kind}.json", dump(event))
        return event

    def events(
        self,
        *,
        table: str | None = None,
        partition: str | None = None,
        batch_id: str | None = None,
    ) -> list[AuditEvent]:
        """Audit events in time order, optionally only those touching a table, a partition or a batch."""
        selected: list[AuditEvent] = []
        for key in self.store.list(AUDIT_PREFIX):
            if not key.endswith(".json"):
                continue
            event = AuditEvent.model_validate_json(self.store.get(key))
            if batch_id is not None and event.batch_id != batch_id:
                continue
            if table is not None and table not in event.tables:
                continue
            if partition is not None:
                scope = [table] if table is not None else list(event.tables)
                if not any(partition in event.tables.get(name, []) for name in scope):
                    continue
            selected.append(event)
        return selected
