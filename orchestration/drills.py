"""Rollback drills: prove, without touching what readers read, that a rollback to a release would restore it.

A drill points a shadow pointer (`catalog/DRILL`, which no reader follows) at the target release, checks
that every partition the release serves is restorable (each file present with the size and checksum the
batch recorded when it was staged, and the partition's content hash the same in the release and in its
batch's manifest; with `deep`, the rows are hashed again with Spark), notes for each table whether the
online store still keeps the version a rollback would switch back to (else a rollback reloads it), and
measures how long all that took: the time to restore, since a rollback is that verification plus one swap
of CURRENT. Then the shadow pointer is cleared and the drill is recorded in the audit trail
(`rollback_drill`), passed or failed with every problem named.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from pyspark.sql import SparkSession

from backfills.errors import BackfillsError, ReleaseNotFoundError
from backfills.orchestration.promotion import file_problems
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import BatchManifest, PartitionRecord, Release
from backfills.serving.online_store import OnlineStore
from backfills.serving.online_sync import online_version

DRILL_POINTER_KEY = "catalog/DRILL"
DRILL_EVENT = "rollback_drill"
MAX_PROBLEMS = 50  # named in the record; the count is always complete


@dataclass(frozen=True)
class DrillResult:
    drill_id: str
    target_release_id: str
    current_release_id: str
    started_at: str
    seconds_to_restore: float
    partitions_checked: int
    files_checked: int
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    online: dict[str, str] = field(default_factory=dict)  # table -> "kept" | "reload" | "not synced"
    actor: str | None = None

    @property
    def passed(self) -> bool:
        return self.problem_count == 0

    def describe(self) -> str:
        verdict = "passed" if self.passed else f"FAILED ({self.problem_count} problems)"
        text = (
            f"rollback drill {self.drill_id} to release {self.target_release_id} (current "
            f"{self.current_release_id}): {verdict}; {self.partitions_checked} partitions and "
            f"{self.files_checked} files checked, time to restore {self.seconds_to_restore:.1f}s"
        )
        if self.problems:
            text += ": " + "; ".join(self.problems[:5]) + (" …" if self.problem_count > 5 else "")
        return text

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "passed": self.passed}


def _target(catalog: ReleaseCatalog, current: Release, to: str) -> Release:
    if to != "previous":
        return catalog.get_release(to)
    if current.parent_id is None:
        raise ReleaseNotFoundError(
            f"the current release {current.release_id} is the first one: there is no previous release to "
            "drill a rollback to; name a release with --to"
        )
    return catalog.get_release(current.parent_id)


def _content_problems(table: str, day: str, released_hash: str, record: PartitionRecord | None) -> list[str]:
    if record is None:
        return [f"{table} {day} (its batch's manifest no longer lists the partition)"]
    if record.content_hash != released_hash:
        return [f"{table} {day} (the release records another content hash than its batch's manifest)"]
    return []


def run_drill(
    catalog: ReleaseCatalog,
    *,
    to: str = "previous",
    online: OnlineStore | None = None,
    actor: str | None = None,
    deep_check: Callable[[str, dict[str, PartitionRecord]], list[str]] | None = None,
) -> DrillResult:
    """Drill a rollback of production to `to` (a release ID or "previous") and record it. `deep_check`
    (see `deep_rows`) also hashes every partition's rows again."""
    current = catalog.current_release()
    if current is None:
        raise ReleaseNotFoundError(f"nothing has been promoted under {catalog.store.root}: nothing to drill")
    target = _target(catalog, current, to)
    drill_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    started_at = datetime.now(UTC).isoformat()
    started = time.monotonic()
    pointer = {"drill_id": drill_id, "release_id": target.release_id, "at": started_at}
    catalog.store.put(DRILL_POINTER_KEY, json.dumps(pointer).encode())
    try:
        problems: list[str] = []
        partitions = files = 0
        manifests: dict[str, BatchManifest | None] = {}
        online_state: dict[str, str] = {}
        for table in target.served_tables():
            served = catalog.served(target, table)
            records: dict[str, PartitionRecord] = {}
            for day, entry in sorted(served.items()):
                if entry.batch_id not in manifests:
                    try:
                        manifests[entry.batch_id] = catalog.get_batch(entry.batch_id)
                    except BackfillsError:
                        manifests[entry.batch_id] = None
                manifest = manifests[entry.batch_id]
                record = manifest.tables.get(table, {}).get(day) if manifest else None
                partitions += 1
                problems.extend(_content_problems(table, day, entry.content_hash, record))
                if record is None:
                    continue
                records[day] = record
                files += len(record.files)
                if record.file_checks:
                    problems.extend(file_problems(catalog.store, table, day, record))
                else:  # staged before checksums were kept: presence only (deep_check hashes the rows)
                    missing = [key for key in record.files if not catalog.store.exists(key)]
                    problems.extend(f"{table} {day} ({key} is missing)" for key in missing)
            if deep_check is not None and records:
                problems.extend(deep_check(table, records))
            if online is not None and served:
                newest = max(served)
                current_online = online.current(table)
                wanted = online_version(newest, served[newest].content_hash)
                online_state[table] = (
                    "not synced"
                    if current_online is None
                    else "kept"
                    if online.has_version(table, wanted)
                    else "reload"
                )
        seconds = time.monotonic() - started
    finally:
        catalog.store.delete(DRILL_POINTER_KEY)  # the shadow pointer back: no drill in progress
    unique = list(dict.fromkeys(problems))
    result = DrillResult(
        drill_id=drill_id,
        target_release_id=target.release_id,
        current_release_id=current.release_id,
        started_at=started_at,
        seconds_to_restore=round(seconds, 3),
        partitions_checked=partitions,
        files_checked=files,
        problems=unique[:MAX_PROBLEMS],
        problem_count=len(unique),
        online=online_state,
        actor=actor,
    )
    catalog.append_event(DRILL_EVENT, release_id=target.release_id, actor=actor, details=result.as_dict())
    return result


def deep_rows(
    spark: SparkSession, catalog: ReleaseCatalog
) -> Callable[[str, dict[str, PartitionRecord]], list[str]]:
    """A `deep_check` that hashes each partition's rows again with Spark (as `promote --deep-verify`)."""
    from backfills.orchestration.promotion import row_problems

    return lambda table, records: row_problems(spark, catalog.store, table, records)


def past_drills(catalog: ReleaseCatalog) -> list[dict[str, object]]:
    """Every recorded drill, oldest first."""
    return [event.details for event in catalog.events() if event.kind == DRILL_EVENT]
