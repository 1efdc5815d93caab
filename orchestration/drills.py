"""Rollback drills: prove, without touching what readers read, that a rollback to a release would restore it.

A drill runs a rollback, through the code a real rollback runs, on a shadow pointer: `catalog/DRILL` is set
where CURRENT is, and the catalog's rollback (stage the rollback release, compare-and-swap the pointer) swaps
it to a release that republishes the target. No reader follows that pointer. Its releases are kept under
the drill's own prefix (`catalog/drills/releases`), rather than among production's with a mark: every reader
of production's releases (the listing and its JSON, "previous", batch states, the audit) then stays as it
is without having to know the mark; they are kept after the drill as its evidence (the record names it).

Then the drill reads through the shadow pointer what readers would read after a rollback: every partition
the shadow release serves, against the target release's entry and its batch manifest's record (files and
content hash), each file's size and checksum against those recorded at staging (with `deep`, the rows
hashed again with Spark). Where an online store is configured, each table's newest partition is loaded into
a shadow online table (`drill--<table>`), read back against the offline rows, and removed: the rows a
rollback would switch the online store back to can be served (the live tables are only looked at, to note
whether a rollback would find the version kept or reload it). The time all that took is the time to
restore (the online reload included: the worst case, a rollback whose online versions were pruned). The
shadow pointer is then cleared and the drill recorded in the audit trail (`rollback_drill`), passed or
failed with every problem named.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import SparkSession

from backfills.errors import CurrentChangedError, InvalidRequestError, OnlineStoreError, ReleaseNotFoundError
from backfills.orchestration.promotion import restore_check, row_problems
from backfills.resources.catalog import Pointer, ReleaseCatalog
from backfills.resources.catalog_models import PartitionRecord, Release
from backfills.resources.spark import failure_summary
from backfills.serving.online_store import OnlineStore
from backfills.serving.online_sync import load_version, newest_served, online_version
from backfills.serving.parity import DEFAULT_SAMPLE_SIZE

DRILL_POINTER_KEY = "catalog/DRILL"
DRILL_POINTER = Pointer(DRILL_POINTER_KEY, "catalog/drills/releases")
SHADOW_TABLE_PREFIX = "drill--"  # the online table a drill restores `<table>` into
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
    shadow_release_id: str | None = None  # the rollback release the shadow pointer was swapped to
    online_restored: dict[str, int] = field(default_factory=dict)  # table -> keys read back equal

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


def _differences(catalog: ReleaseCatalog, restored: Release, target: Release) -> list[str]:
    """Partitions the shadow release serves otherwise than the target release records them."""
    problems = []
    for table in sorted(set(restored.served_tables()) | set(target.served_tables())):
        now, then = catalog.served(restored, table), catalog.served(target, table)
        problems.extend(
            f"{table} {day} (the rollback would serve other content than release {target.release_id} records)"
            for day in sorted(now.keys() | then.keys())
            if now.get(day) != then.get(day)
        )
    return problems


def _restore_online(
    session: Callable[[], SparkSession],
    catalog: ReleaseCatalog,
    online: OnlineStore,
    release: Release,
    failed: frozenset[tuple[str, str]],
) -> tuple[dict[str, str], dict[str, int], list[str]]:
    """Per table: whether the live online table keeps the version a rollback switches back to, the keys
    read back equal after loading that version into the table's shadow (removed again), and the problems."""
    states: dict[str, str] = {}
    restored: dict[str, int] = {}
    problems: list[str] = []
    for table in release.served_tables():
        newest = newest_served(catalog, release, table)
        if newest is None:
            continue
        day, entry = newest
        version = online_version(day, entry.content_hash)
        live = online.current(table)
        states[table] = (
            "not synced" if live is None else "kept" if online.has_version(table, version) else "reload"
        )
        if (table, day) in failed:
            continue  # its files are named already: nothing to load
        shadow = f"{SHADOW_TABLE_PREFIX}{table}"
        try:
            _, facts = load_version(
                session,
                catalog,
                online,
                release,
                table,
                day,
                entry,
                sample_size=DEFAULT_SAMPLE_SIZE,
                readers_on=None,
                into=shadow,
            )
            restored[table] = facts["keys_checked"]
        except (OnlineStoreError, PySparkException, Py4JJavaError) as error:
            problems.append(f"online {table} {day} (cannot be restored: {failure_summary(error)})")
        finally:
            online.discard(shadow, [version])
    return states, restored, problems


def run_drill(
    catalog: ReleaseCatalog,
    *,
    to: str = "previous",
    online: OnlineStore | None = None,
    session: Callable[[], SparkSession] | None = None,
    actor: str | None = None,
    deep_check: Callable[[str, dict[str, PartitionRecord]], list[str]] | None = None,
) -> DrillResult:
    """Drill a rollback of production to `to` (a release ID or "previous") and record it. With an `online`
    store, `session` (Spark) loads each table's rows into its shadow. `deep_check` (see `deep_rows`) also
    hashes every partition's rows again."""
    current = catalog.current_release()
    if current is None:
        raise ReleaseNotFoundError(f"nothing has been promoted under {catalog.store.root}: nothing to drill")
    if online is not None and session is None:
        raise InvalidRequestError("a drill restores the online store's rows with Spark: pass a session")
    target = _target(catalog, current, to)
    drill_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    started_at = datetime.now(UTC).isoformat()
    started = time.monotonic()
    catalog.shadow(DRILL_POINTER)
    try:
        shadow = catalog.rollback(
            target.release_id, actor=actor, reason=f"rollback drill {drill_id}", pointer=DRILL_POINTER
        )
        restored = catalog.current_release(DRILL_POINTER)  # what readers of the shadow read
        if restored != shadow:
            raise CurrentChangedError(
                f"another drill moved {DRILL_POINTER_KEY} during drill {drill_id}: run one drill at a time"
            )
        check = restore_check(catalog, restored)
        problems = [*_differences(catalog, restored, target), *check.problems]
        if deep_check is not None:
            for table, records in sorted(check.records.items()):
                problems.extend(deep_check(table, records))
        online_state: dict[str, str] = {}
        online_restored: dict[str, int] = {}
        if online is not None and session is not None:
            online_state, online_restored, online_problems = _restore_online(
                session, catalog, online, restored, check.failed
            )
            problems.extend(online_problems)
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
        partitions_checked=check.partitions,
        files_checked=check.files,
        problems=unique[:MAX_PROBLEMS],
        problem_count=len(unique),
        online=online_state,
        actor=actor,
        shadow_release_id=restored.release_id,
        online_restored=online_restored,
    )
    catalog.append_event(DRILL_EVENT, release_id=target.release_id, actor=actor, details=result.as_dict())
    return result


def deep_rows(
    spark: SparkSession, catalog: ReleaseCatalog
) -> Callable[[str, dict[str, PartitionRecord]], list[str]]:
    """A `deep_check` that hashes each partition's rows again with Spark (as `promote --deep-verify`)."""
    return lambda table, records: row_problems(spark, catalog.store, table, records)


def past_drills(catalog: ReleaseCatalog) -> list[dict[str, object]]:
    """Every recorded drill, oldest first."""
    return [event.details for event in catalog.events() if event.kind == DRILL_EVENT]
