"""The release catalog's stories: staging batches, promoting, racing, crashing, rolling back, auditing.

Every test runs on a local folder and on the S3 API (moto), except those that need real threads.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from backfills.errors import (
    BatchNotFoundError,
    BatchSealedError,
    CurrentChangedError,
    InvalidRequestError,
    PreconditionFailedError,
    ReleaseNotFoundError,
)
from backfills.resources import cas
from backfills.resources.catalog import BATCHES_PREFIX, CURRENT_KEY, PRODUCTION, Pointer, ReleaseCatalog
from backfills.resources.catalog_models import (
    ApprovalFacts,
    BatchManifest,
    CheckRecord,
    ColumnSchema,
    PartitionRecord,
    Release,
    StaleDownstream,
    UpstreamSource,
)
from backfills.resources.lifecycle import BatchState
from backfills.resources.storage import LocalObjectStore, ObjectStore

DAILY = "customer_daily_txn"
WEEKLY = "customer_txn_7d"


def record(
    table: str, day: str, batch_id: str, *, attempt: str = "a1", run_id: str = "run-1"
) -> PartitionRecord:
    base = f"staging/{table}/{batch_id}/feature_date={day}/attempt={attempt}"
    return PartitionRecord(
        table=table,
        partition=day,
        batch_id=batch_id,
        run_id=run_id,
        attempt_id=attempt,
        base=base,
        files=[f"{base}/part-00000.parquet"],
        row_count=100,
        content_hash=hashlib.sha256(base.encode()).hexdigest(),
        columns=[
            ColumnSchema(name="customer_id", type="string"),
            ColumnSchema(name="txn_count", type="bigint"),
        ],
        code_version="v1",
        upstream=[
            UpstreamSource(table="raw_transactions", source="landing", source_id=None, partitions=[day])
        ],
        written_at=datetime.now(UTC),
    )


def stage(
    catalog: ReleaseCatalog, batch_id: str, tables: dict[str, list[str]], **kwargs: str
) -> BatchManifest:
    records = [record(table, day, batch_id, **kwargs) for table, days in tables.items() for day in days]
    manifest, _ = catalog.record_partitions(batch_id, records, run_id=kwargs.get("run_id", "run-1"))
    return manifest


def batches_of(catalog: ReleaseCatalog, release: Release, table: str) -> dict[str, str]:
    return {day: partition.batch_id for day, partition in catalog.served(release, table).items()}


class InterleavingStore:
    """A store that lets another writer act just before our next write of one key."""

    def __init__(
        self, inner: ObjectStore, key: str, other_writer: Callable[[], None], times: int = 1
    ) -> None:
        self.inner = inner
        self.key = key
        self.other_writer = other_writer
        self.remaining = times

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def _interleave(self, key: str) -> None:
        if key == self.key and self.remaining > 0:
            self.remaining -= 1
            self.other_writer()

    def put(self, key: str, body: bytes) -> None:
        self._interleave(key)
        self.inner.put(key, body)

    def put_if_absent(self, key: str, body: bytes) -> None:
        self._interleave(key)
        self.inner.put_if_absent(key, body)

    def put_if_match(self, key: str, body: bytes, version: str) -> None:
        self._interleave(key)
        self.inner.put_if_match(key, body, version)


@pytest.fixture
def catalog(store: ObjectStore) -> ReleaseCatalog:
    return ReleaseCatalog(store)


# Staging batches


def test_recording_partitions_creates_the_batch_manifest(catalog: ReleaseCatalog) -> None:
    records = [
        record(DAILY, "2025-01-02", "b1"),
        record(DAILY, "2025-01-01", "b1"),
        record(WEEKLY, "2025-01-01", "b1"),
    ]

    manifest, replaced = catalog.record_partitions("b1", records, run_id="run-1", requester="alice")

    assert replaced == []
    stored = catalog.get_batch("b1")
    assert stored == manifest
    assert stored.state == "staging"
    assert stored.requester == "alice"
    assert stored.runs == ["run-1"]
    assert stored.partitions_by_table() == {DAILY: ["2025-01-01", "2025-01-02"], WEEKLY: ["2025-01-01"]}
    assert stored.partition_count() == 3
    assert stored.partition(DAILY, "2025-01-02") == records[0]
    assert stored.partition(DAILY, "2025-01-03") is None
    assert stored.created_at.tzinfo == UTC


def test_rerunning_a_partition_replaces_its_record(catalog: ReleaseCatalog) -> None:
    first = record(DAILY, "2025-01-01", "b1", attempt="a1", run_id="run-1")
    catalog.record_partitions("b1", [first, record(DAILY, "2025-01-02", "b1")], run_id="run-1")
    rerun = record(DAILY, "2025-01-01", "b1", attempt="a2", run_id="run-2")

    manifest, replaced = catalog.record_partitions("b1", [rerun], run_id="run-2")

    assert replaced == [first]
    assert manifest.partition_count() == 2
    assert catalog.get_batch("b1").partition(DAILY, "2025-01-01") == rerun
    assert manifest.runs == ["run-1", "run-2"]


def test_every_run_that_writes_into_a_batch_is_a_contributor_and_older_manifests_still_load(
    catalog: ReleaseCatalog,
) -> None:
    catalog.record_partitions("b1", [record(DAILY, "2025-01-01", "b1")], run_id="run-1", requester="alice")
    rerun = record(DAILY, "2025-01-01", "b1", attempt="a2", run_id="run-2")
    catalog.record_partitions("b1", [rerun], run_id="run-2", requester="bob")  # into alice's batch
    catalog.record_partitions("b1", [record(DAILY, "2025-01-02", "b1", run_id="run-3")], run_id="run-3")
    catalog.record_partitions(
        "b1", [record(DAILY, "2025-01-03", "b1", run_id="run-4")], run_id="run-4", requester="alice"
    )

    manifest = catalog.get_batch("b1")
    assert (manifest.requester, manifest.contributors) == ("alice", ["alice", "bob", None])

    key = f"{BATCHES_PREFIX}/b1.json"
    older = json.loads(catalog.store.get(key))
    del older["contributors"]  # as manifests were written before contributors were recorded
    catalog.store.put(key, json.dumps(older).encode())
    assert catalog.get_batch("b1").contributors == ["alice"]


def test_recording_the_same_attempt_again_reports_no_files_to_delete(catalog: ReleaseCatalog) -> None:
    same = record(DAILY, "2025-01-01", "b1")
    catalog.record_partitions("b1", [same], run_id="run-1")

    manifest, replaced = catalog.record_partitions("b1", [same], run_id="run-1")

    assert replaced == []
    assert manifest.partition_count() == 1
    assert manifest.runs == ["run-1"]


def test_a_record_for_another_batch_or_a_duplicate_is_refused(catalog: ReleaseCatalog) -> None:
    with pytest.raises(ValueError, match="written for batch b2, not b1"):
        catalog.record_partitions("b1", [record(DAILY, "2025-01-01", "b2")], run_id="run-1")
    with pytest.raises(ValueError, match="appears twice"):
        catalog.record_partitions(
            "b1", [record(DAILY, "2025-01-01", "b1"), record(DAILY, "2025-01-01", "b1")], run_id="run-1"
        )
    with pytest.raises(BatchNotFoundError):
        catalog.get_batch("b1")


def test_an_update_that_returns_another_batchs_manifest_writes_nothing(catalog: ReleaseCatalog) -> None:
    catalog.record_partitions("b1", [record(DAILY, "2025-01-01", "b1")], run_id="run-1")
    catalog.record_partitions("b2", [record(DAILY, "2025-01-02", "b2")], run_id="run-2")
    before = catalog.get_batch("b1").model_dump()
    with pytest.raises(InvalidRequestError, match="an update of batch b1 returned the manifest of batch b2"):
        catalog.update_batch("b1", lambda _: catalog.get_batch("b2"))
    assert catalog.get_batch("b1").model_dump() == before
    assert set(catalog.get_batch("b2").tables[DAILY]) == {"2025-01-02"}


def test_concurrent_runs_recording_into_one_batch_all_land(tmp_path: Path) -> None:
    # Real threads on the local store (see test_storage for why not on moto); the S3 path of the same
    # retry loop is covered deterministically by the stale-read tests below.
    catalog = ReleaseCatalog(LocalObjectStore(tmp_path))
    runs = 8
    barrier = threading.Barrier(runs)
    failures: list[Exception] = []

    def run(index: int) -> None:
        barrier.wait()
        try:
            days = [f"2025-01-{index * 3 + offset + 1:02d}" for offset in range(3)]
            catalog.record_partitions(
                "b1", [record(DAILY, day, "b1", run_id=f"run-{index}") for day in days], run_id=f"run-{index}"
            )
        except Exception as error:
            failures.append(error)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    manifest = catalog.get_batch("b1")
    assert manifest.partition_count() == runs * 3
    assert sorted(manifest.runs) == sorted(f"run-{index}" for index in range(runs))
    assert len(catalog.events(batch_id="b1")) == runs


def test_a_writer_whose_read_went_stale_retries_and_keeps_the_other_writers_records(
    store: ObjectStore,
) -> None:
    ReleaseCatalog(store).record_partitions("b1", [record(DAILY, "2025-01-01", "b1")], run_id="run-1")

    def other_run() -> None:
        ReleaseCatalog(store).record_partitions(
            "b1", [record(DAILY, "2025-01-02", "b1", run_id="run-2")], run_id="run-2"
        )

    racing = ReleaseCatalog(InterleavingStore(store, "catalog/batches/b1.json", other_run))
    racing.record_partitions("b1", [record(DAILY, "2025-01-03", "b1", run_id="run-3")], run_id="run-3")

    manifest = ReleaseCatalog(store).get_batch("b1")
    assert manifest.partitions_by_table() == {DAILY: ["2025-01-01", "2025-01-02", "2025-01-03"]}
    assert manifest.runs == ["run-1", "run-2", "run-3"]


def test_a_rerun_that_retries_after_losing_a_race_names_each_replaced_partition_once(
    store: ObjectStore,
) -> None:
    first = record(DAILY, "2025-01-01", "b1")
    ReleaseCatalog(store).record_partitions("b1", [first], run_id="run-1")

    def other_run() -> None:
        ReleaseCatalog(store).record_partitions(
            "b1", [record(DAILY, "2025-01-02", "b1", run_id="run-2")], run_id="run-2"
        )

    racing = ReleaseCatalog(InterleavingStore(store, "catalog/batches/b1.json", other_run))
    rerun = record(DAILY, "2025-01-01", "b1", attempt="a3", run_id="run-3")
    _, replaced = racing.record_partitions("b1", [rerun], run_id="run-3")

    # Files to delete: the first attempt's, once, although the rerun read the manifest twice.
    assert [item.base for item in replaced] == [first.base]
    [staged] = [
        e for e in ReleaseCatalog(store).events() if e.kind == "staged" and e.details["run_id"] == "run-3"
    ]
    assert staged.details["replaced"] == {DAILY: ["2025-01-01"]}


def test_two_first_runs_of_a_batch_create_its_manifest_once(store: ObjectStore) -> None:
    def other_run() -> None:
        ReleaseCatalog(store).record_partitions(
            "b1", [record(DAILY, "2025-01-01", "b1", run_id="run-1")], run_id="run-1", requester="alice"
        )

    racing = ReleaseCatalog(InterleavingStore(store, "catalog/batches/b1.json", other_run))
    racing.record_partitions(
        "b1", [record(DAILY, "2025-01-02", "b1", run_id="run-2")], run_id="run-2", requester="alice"
    )

    manifest = ReleaseCatalog(store).get_batch("b1")
    assert manifest.partitions_by_table() == {DAILY: ["2025-01-01", "2025-01-02"]}
    assert manifest.runs == ["run-1", "run-2"]
    assert manifest.requester == "alice"


def test_a_manifest_that_never_stops_changing_gives_up_with_a_clear_error(store: ObjectStore) -> None:
    ReleaseCatalog(store).record_partitions("b1", [record(DAILY, "2025-01-01", "b1")], run_id="run-1")
    touched = 0

    def busy_writer() -> None:
        nonlocal touched
        touched += 1
        ReleaseCatalog(store).update_batch("b1", lambda manifest: manifest)

    racing = ReleaseCatalog(
        InterleavingStore(store, "catalog/batches/b1.json", busy_writer, times=99), max_attempts=3
    )

    with pytest.raises(PreconditionFailedError, match=r"batch b1: .* changed under each of 3 attempts"):
        racing.record_partitions("b1", [record(DAILY, "2025-01-02", "b1")], run_id="run-2")
    assert touched == 3
    assert ReleaseCatalog(store).get_batch("b1").partitions_by_table() == {DAILY: ["2025-01-01"]}


def test_a_writer_that_keeps_losing_waits_a_random_while_that_doubles_up_to_a_cap(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writers that collided spread out instead of colliding again in lockstep: before each retry a loser
    waits a random time between 0 and a bound that doubles from 5 ms, capped at 250 ms (full jitter)."""
    ReleaseCatalog(store).record_partitions("b1", [record(DAILY, "2025-01-01", "b1")], run_id="run-1")
    drawn: list[tuple[float, float]] = []
    waited: list[float] = []

    # `cas.random` and `cas.time` are the process's modules, which the S3 server's threads use too: record
    # only this thread's calls, and let the others' through.
    this_thread, uniform, sleep = threading.get_ident(), cas.random.uniform, cas.time.sleep

    def longest(low: float, high: float) -> float:
        if threading.get_ident() != this_thread:
            return uniform(low, high)
        drawn.append((low, high))
        return high

    def recorded(seconds: float) -> None:
        if threading.get_ident() != this_thread:
            sleep(seconds)
        else:
            waited.append(seconds)

    monkeypatch.setattr(cas.random, "uniform", longest)
    monkeypatch.setattr(cas.time, "sleep", recorded)

    def busy_writer() -> None:
        ReleaseCatalog(store).update_batch("b1", lambda manifest: manifest)

    racing = ReleaseCatalog(InterleavingStore(store, "catalog/batches/b1.json", busy_writer, times=7))
    racing.record_partitions("b1", [record(DAILY, "2025-01-02", "b1")], run_id="run-2")

    bounds = [0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.25]
    assert drawn == [(0, bound) for bound in bounds]
    assert waited == bounds
    manifest = ReleaseCatalog(store).get_batch("b1")
    assert manifest.partitions_by_table() == {DAILY: ["2025-01-01", "2025-01-02"]}


def test_a_second_batch_for_the_same_days_never_changes_the_first_batch(catalog: ReleaseCatalog) -> None:
    stage(catalog, "b1", {DAILY: ["2025-01-01", "2025-01-02"]})
    before = catalog.get_batch("b1")

    stage(catalog, "b2", {DAILY: ["2025-01-01", "2025-01-02"]}, attempt="x9")

    assert catalog.get_batch("b1") == before
    assert catalog.get_batch("b2").partition(DAILY, "2025-01-01").base.startswith(f"staging/{DAILY}/b2/")
    assert [manifest.batch_id for manifest in catalog.list_batches()] == ["b1", "b2"]


def verdict(check: str, days: list[str], outcome: str = "passed") -> CheckRecord:
    return CheckRecord(
        table=DAILY,
        check=check,
        partitions=days,
        verdict=outcome,
        blocking=True,
        summary=f"{check} {outcome}",
        run_id="run-1",
        checked_at=datetime.now(UTC),
    )


def test_recorded_verdicts_set_the_state_and_enter_the_audit_trail(catalog: ReleaseCatalog) -> None:
    stage(catalog, "b1", {DAILY: ["2025-01-01", "2025-01-02"]})

    manifest = catalog.record_checks(
        "b1",
        [verdict("non_empty", ["2025-01-01", "2025-01-02"]), verdict("diff", ["2025-01-02"], "failed")],
        table=DAILY,
        partitions=["2025-01-01", "2025-01-02"],
        run_id="run-1",
        requester="U0ALICE",
    )

    assert manifest.state == "blocked" and manifest == catalog.get_batch("b1")
    [checked] = [event for event in catalog.events() if event.kind == "checked"]
    assert checked.batch_id == "b1" and checked.actor == "U0ALICE"
    assert checked.tables == {DAILY: ["2025-01-01", "2025-01-02"]}
    assert checked.details == {
        "run_id": "run-1",
        "state": "blocked",
        "verdicts": {"non_empty": "passed", "diff": "failed"},
    }


def test_recording_no_partitions_is_refused_and_creates_no_batch(catalog: ReleaseCatalog) -> None:
    with pytest.raises(InvalidRequestError, match="no partitions given to record in batch b1"):
        catalog.record_partitions("b1", [], run_id="run-1")
    with pytest.raises(BatchNotFoundError):
        catalog.get_batch("b1")
    assert [event for event in catalog.events() if event.kind == "staged"] == []


def test_a_sealed_batch_refuses_new_partitions(catalog: ReleaseCatalog) -> None:
    stage(catalog, "b1", {DAILY: ["2025-01-01"]})
    catalog.record_checks(
        "b1", [verdict("non_empty", ["2025-01-01"])], table=DAILY, partitions=["2025-01-01"], run_id="run-1"
    )
    catalog.move_batch("b1", BatchState.APPROVED)

    with pytest.raises(BatchSealedError, match="batch b1 is 'approved', so it accepts no more partitions"):
        catalog.record_partitions("b1", [record(DAILY, "2025-01-02", "b1", run_id="run-2")], run_id="run-2")
    manifest = catalog.get_batch("b1")
    assert manifest.partitions_by_table() == {DAILY: ["2025-01-01"]}
    assert manifest.runs == ["run-1"]


def test_an_unknown_batch_is_named_with_the_storage_root(catalog: ReleaseCatalog, store: ObjectStore) -> None:
    with pytest.raises(BatchNotFoundError, match="batch nope has no manifest under") as error:
        catalog.get_batch("nope")
    assert store.root in str(error.value)
    with pytest.raises(BatchNotFoundError, match="batch nope"):
        catalog.update_batch("nope", lambda manifest: manifest)
    with pytest.raises(BatchNotFoundError, match="batch nope"):
        catalog.promote("nope", actor="ops")
    with pytest.raises(ValueError, match="cannot name a catalog object"):
        catalog.get_batch("../b1")


# Promotion and time travel


def test_promotion_overlays_the_batch_onto_the_current_release(catalog: ReleaseCatalog) -> None:
    stage(catalog, "b1", {DAILY: ["2025-01-01", "2025-01-02", "2025-01-03"], WEEKLY: ["2025-01-03"]})
    first = catalog.promote("b1", actor="ops", reason="initial load")
    stage(catalog, "b2", {DAILY: ["2025-01-02", "2025-01-04"]}, attempt="a7")

    second = catalog.promote("b2", actor="ops", reason="fix declines")

    assert first.parent_id is None
    assert second.parent_id == first.release_id
    assert second.kind == "promotion"
    assert second.batch_id == "b2"
    assert catalog.current_release_id() == second.release_id
    assert catalog.current_release() == second
    assert batches_of(catalog, second, DAILY) == {
        "2025-01-01": "b1",
        "2025-01-02": "b2",
        "2025-01-03": "b1",
        "2025-01-04": "b2",
    }
    assert batches_of(catalog, second, WEEKLY) == {"2025-01-03": "b1"}
    promoted = catalog.get_batch("b2").partition(DAILY, "2025-01-02")
    served = catalog.served(second, DAILY, days=["2025-01-02"])["2025-01-02"]
    assert served.files == promoted.files and served.content_hash == promoted.content_hash
    assert [release.release_id for release in catalog.release_history()] == [
        second.release_id,
        first.release_id,
    ]
    assert second.release_id.startswith("r-")


def test_promoting_some_tables_leaves_the_others_as_they_were(catalog: ReleaseCatalog) -> None:
    stage(catalog, "b1", {DAILY: ["2025-01-01"], WEEKLY: ["2025-01-01"]})
    catalog.promote("b1", actor="ops")
    stage(catalog, "b2", {DAILY: ["2025-01-01"], WEEKLY: ["2025-01-01"]}, attempt="a2")

    release = catalog.promote("b2", actor="ops", tables=[WEEKLY])

    assert batches_of(catalog, release, DAILY) == {"2025-01-01": "b1"}
    assert batches_of(catalog, release, WEEKLY) == {"2025-01-01": "b2"}


def test_promoting_an_empty_batch_or_unknown_tables_is_refused(catalog: ReleaseCatalog) -> None:
    stage(catalog, "b1", {DAILY: ["2025-01-01"]})

    with pytest.raises(
        ValueError, match=f"customer_risk_profile: not among the tables batch b1 staged \\({DAILY}\\)"
    ):
        catalog.promote("b1", actor="ops", tables=["customer_risk_profile"])
    # One table name where a list belongs is named as such (not as a list of unknown one-letter tables).
    with pytest.raises(
        InvalidRequestError, match=f"tables='{DAILY}' is one string: pass a list of table names"
    ):
        catalog.promote("b1", actor="ops", tables=DAILY)
    with pytest.raises(InvalidRequestError, match=f"no tables given: .* or None for all \\({DAILY}\\)"):
        catalog.promote("b1", actor="ops", tables=[])
    catalog.update_batch("b1", lambda manifest: manifest.model_copy(update={"tables": {}}))
    with pytest.raises(ValueError, match="batch b1 has no staged partitions, so there is nothing to promote"):
        catalog.promote("b1", actor="ops")
    assert catalog.current_release_id() is None
    assert catalog.list_releases() == []


def test_time_travel_reads_a_past_release_as_it_was(catalog: ReleaseCatalog) -> None:
    stage(catalog, "b1", {DAILY: ["2025-01-01", "2025-01-02", "2025-01-03"]})
    first = catalog.promote("b1", actor="ops")
    stage(catalog, "b2", {DAILY: ["2025-01-02"]}, attempt="a2")
    catalog.promote("b2", actor="ops")

    past = catalog.release_partitions(DAILY, "2025-01-02", "2025-01-03", release_id=first.release_id)
    now = catalog.release_partitions(DAILY, "2025-01-02", "2025-01-03")

    assert {day: partition.batch_id for day, partition in past.items()} == {
        "2025-01-02": "b1",
        "2025-01-03": "b1",
    }
    assert {day: partition.batch_id for day, partition in now.items()} == {
        "2025-01-02": "b2",
        "2025-01-03": "b1",
    }
    assert past["2025-01-02"].base == f"staging/{DAILY}/b1/feature_date=2025-01-02/attempt=a1"
    assert catalog.release_partitions(DAILY, "2024-12-01", "2024-12-31") == {}
    assert catalog.release_partitions(WEEKLY, "2025-01-01", "2025-01-31") == {}
    with pytest.raises(ValueError, match="start 2025-01-03 is after end 2025-01-02"):
        catalog.release_partitions(DAILY, "2025-01-03", "2025-01-02")


def test_reading_production_before_any_promotion_says_so(catalog: ReleaseCatalog) -> None:
    assert catalog.current_release_id() is None
    assert catalog.current_release() is None
    assert catalog.release_history() == []
    with pytest.raises(ReleaseNotFoundError, match="nothing has been promoted under .* yet"):
        catalog.release_partitions(DAILY, "2025-01-01", "2025-01-31")
    with pytest.raises(ReleaseNotFoundError, match="release r-missing does not exist"):
        catalog.get_release("r-missing")


def test_two_promotions_staged_from_the_same_release_only_one_commits(catalog: ReleaseCatalog) -> None:
    stage(catalog, "b0", {DAILY: ["2025-01-01"]})
    base = catalog.promote("b0", actor="ops")
    stage(catalog, "b1", {DAILY: ["2025-01-02"]})
    stage(catalog, "b2", {DAILY: ["2025-01-03"]})
    winner = catalog.stage_promotion("b1", actor="alice")
    loser = catalog.stage_promotion("b2", actor="bob")

    catalog.commit(winner)
    with pytest.raises(CurrentChangedError) as error:
        catalog.commit(loser)

    assert str(error.value) == (
        f"CURRENT moved from {base.release_id} to {winner.release_id} while publishing release "
        f"{loser.release_id} for batch b2; nothing was changed; run the promotion again to publish on top of "
        f"{winner.release_id}"
    )
    assert catalog.current_release_id() == winner.release_id
    assert [release.release_id for release in catalog.release_history()] == [
        winner.release_id,
        base.release_id,
    ]
    assert loser.release_id in {release.release_id for release in catalog.list_releases()}
    assert [event.kind for event in catalog.events() if event.kind != "staged"] == ["promoted", "promoted"]

    retried = catalog.promote("b2", actor="bob")
    assert retried.parent_id == winner.release_id
    assert batches_of(catalog, catalog.current_release(), DAILY) == {
        "2025-01-01": "b0",
        "2025-01-02": "b1",
        "2025-01-03": "b2",
    }


def test_the_first_two_promotions_race_for_an_empty_production(catalog: ReleaseCatalog) -> None:
    stage(catalog, "b1", {DAILY: ["2025-01-01"]})
    stage(catalog, "b2", {DAILY: ["2025-01-01"]}, attempt="a2")
    winner = catalog.stage_promotion("b1", actor="alice")
    loser = catalog.stage_promotion("b2", actor="bob")

    catalog.commit(winner)
    with pytest.raises(
        CurrentChangedError, match=f"CURRENT moved from \\(no release\\) to {winner.release_id}"
    ):
        catalog.commit(loser)
    with pytest.raises(CurrentChangedError, match=f"release {winner.release_id} is already current"):
        catalog.commit(winner)

    assert catalog.current_release_id() == winner.release_id


def test_a_promotion_published_between_our_read_and_our_swap_wins(store: ObjectStore) -> None:
    catalog = ReleaseCatalog(store)
    stage(catalog, "b0", {DAILY: ["2025-01-01"]})
    base = catalog.promote("b0", actor="ops")
    stage(catalog, "b1", {DAILY: ["2025-01-02"]})
    stage(catalog, "b2", {DAILY: ["2025-01-03"]})
    winner = catalog.stage_promotion("b1", actor="alice")
    loser = catalog.stage_promotion("b2", actor="bob")
    racing = ReleaseCatalog(InterleavingStore(store, CURRENT_KEY, lambda: catalog.commit(winner)))

    with pytest.raises(
        CurrentChangedError, match=f"CURRENT moved from {base.release_id} to {winner.release_id}"
    ):
        racing.commit(loser)

    assert catalog.current_release_id() == winner.release_id
    assert [release.release_id for release in catalog.release_history()] == [
        winner.release_id,
        base.release_id,
    ]


def test_racing_promotions_on_threads_have_exactly_one_winner(tmp_path: Path) -> None:
    catalog = ReleaseCatalog(LocalObjectStore(tmp_path))
    stage(catalog, "b0", {DAILY: ["2025-01-01"]})
    base = catalog.promote("b0", actor="ops")
    racers = 6
    staged = []
    for index in range(racers):
        stage(catalog, f"b{index + 1}", {DAILY: ["2025-01-01"]})
        staged.append(catalog.stage_promotion(f"b{index + 1}", actor="ops"))
    barrier = threading.Barrier(racers)
    committed: list[str] = []
    refused: list[str] = []

    def commit(release: Release) -> None:
        barrier.wait()
        try:
            committed.append(catalog.commit(release).release_id)
        except CurrentChangedError:
            refused.append(release.release_id)

    threads = [threading.Thread(target=commit, args=(release,)) for release in staged]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(committed) == 1
    assert len(refused) == racers - 1
    assert catalog.current_release_id() == committed[0]
    assert [release.release_id for release in catalog.release_history()] == [committed[0], base.release_id]
    assert len([event for event in catalog.events() if event.kind == "promoted"]) == 2


def test_crash_between_release_write_and_swap_leaves_readers_on_the_old_release(
    catalog: ReleaseCatalog,
) -> None:
    stage(catalog, "b1", {DAILY: ["2025-01-01"]})
    old = catalog.promote("b1", actor="ops")
    stage(catalog, "b2", {DAILY: ["2025-01-01"]}, attempt="a2")

    orphan = catalog.stage_promotion("b2", actor="ops")  # the process dies before commit

    assert catalog.current_release_id() == old.release_id
    assert catalog.release_partitions(DAILY, "2025-01-01", "2025-01-01")["2025-01-01"].batch_id == "b1"

    retried = catalog.promote("b2", actor="ops")

    assert retried.release_id != orphan.release_id
    assert retried.parent_id == old.release_id
    assert catalog.current_release_id() == retried.release_id
    assert catalog.release_partitions(DAILY, "2025-01-01", "2025-01-01")["2025-01-01"].batch_id == "b2"
    assert [release.release_id for release in catalog.release_history()] == [
        retried.release_id,
        old.release_id,
    ]
    assert [release.release_id for release in catalog.list_releases()] == [
        old.release_id,
        orphan.release_id,
        retried.release_id,
    ]


def test_a_release_can_only_be_committed_after_it_was_staged(catalog: ReleaseCatalog) -> None:
    never_staged = Release(
        release_id="r-20250101T000000Z-abcdef", parent_id=None, created_at=datetime.now(UTC), kind="promotion"
    )

    with pytest.raises(ReleaseNotFoundError, match="release r-20250101T000000Z-abcdef does not exist"):
        catalog.commit(never_staged)
    assert not catalog.store.exists(CURRENT_KEY)


# Rollback


def test_rollback_to_previous_republishes_the_parent_snapshot(catalog: ReleaseCatalog) -> None:
    stage(catalog, "b1", {DAILY: ["2025-01-01", "2025-01-02"]})
    first = catalog.promote("b1", actor="ops")
    stage(catalog, "b2", {DAILY: ["2025-01-02"], WEEKLY: ["2025-01-02"]}, attempt="a2")
    second = catalog.promote("b2", actor="ops")

    rollback = catalog.rollback("previous", actor="carol", reason="b2 doubled the decline counts")

    assert rollback.kind == "rollback"
    assert rollback.rolled_back_to == first.release_id
    assert rollback.parent_id == second.release_id
    assert rollback.batch_id is None
    assert rollback.reason == "b2 doubled the decline counts"
    assert catalog.snapshot(rollback) == catalog.snapshot(first)
    assert rollback.table_indexes == first.table_indexes  # shared, not copied
    assert catalog.current_release_id() == rollback.release_id
    assert catalog.release_partitions(WEEKLY, "2025-01-01", "2025-01-31") == {}
    assert [release.release_id for release in catalog.release_history()] == [
        rollback.release_id,
        second.release_id,
        first.release_id,
    ]


def test_rollback_to_an_explicit_release(catalog: ReleaseCatalog) -> None:
    for index in range(1, 4):
        stage(catalog, f"b{index}", {DAILY: ["2025-01-01"]}, attempt=f"a{index}")
        catalog.promote(f"b{index}", actor="ops")
    first, _, third = catalog.list_releases()

    rollback = catalog.rollback(first.release_id, actor="carol", reason="back to the initial load")

    assert rollback.rolled_back_to == first.release_id
    assert rollback.parent_id == third.release_id
    assert batches_of(catalog, catalog.current_release(), DAILY) == {"2025-01-01": "b1"}
    with pytest.raises(ValueError, match=f"release {rollback.release_id} is already current"):
        catalog.rollback(rollback.release_id, actor="carol", reason="again")


def test_rollback_of_one_table_keeps_the_other_tables(catalog: ReleaseCatalog) -> None:
    stage(catalog, "b1", {DAILY: ["2025-01-01"], WEEKLY: ["2025-01-01"]})
    first = catalog.promote("b1", actor="ops")
    stage(
        catalog,
        "b2",
        {DAILY: ["2025-01-01"], WEEKLY: ["2025-01-01"], "customer_txn_30d": ["2025-01-01"]},
        attempt="a2",
    )
    catalog.promote("b2", actor="ops")

    rollback = catalog.rollback(
        first.release_id,
        actor="carol",
        reason="7d window was off by one",
        tables=[WEEKLY, "customer_txn_30d"],
    )

    assert batches_of(catalog, rollback, DAILY) == {"2025-01-01": "b2"}
    assert batches_of(catalog, rollback, WEEKLY) == {"2025-01-01": "b1"}
    assert "customer_txn_30d" not in rollback.served_tables()
    with pytest.raises(ValueError, match="nope: not among the tables releases"):
        catalog.rollback("previous", actor="carol", reason="typo", tables=["nope"])


def test_rollback_refusals_say_why_and_change_nothing(catalog: ReleaseCatalog) -> None:
    with pytest.raises(ReleaseNotFoundError, match="nothing has been promoted under .* yet"):
        catalog.rollback("previous", actor="carol", reason="bad data")
    stage(catalog, "b1", {DAILY: ["2025-01-01"]})
    only = catalog.promote("b1", actor="ops")

    with pytest.raises(
        ReleaseNotFoundError, match=f"the current release {only.release_id} is the first release"
    ):
        catalog.rollback("previous", actor="carol", reason="bad data")
    with pytest.raises(ValueError, match="a rollback needs a reason"):
        catalog.rollback("previous", actor="carol", reason="  ")
    with pytest.raises(ReleaseNotFoundError, match="release r-unknown does not exist"):
        catalog.rollback("r-unknown", actor="carol", reason="bad data")

    assert catalog.current_release_id() == only.release_id
    assert len(catalog.list_releases()) == 1


def test_a_rollback_on_a_shadow_pointer_moves_that_pointer_and_nothing_of_production(
    catalog: ReleaseCatalog,
) -> None:
    """What a rollback drill runs: the catalog's rollback, swapping a pointer no reader follows."""
    shadow = Pointer("catalog/SHADOW", "catalog/shadows")
    stage(catalog, "b1", {DAILY: ["2025-01-01", "2025-01-02"]})
    first = catalog.promote("b1", actor="ops")
    stage(catalog, "b2", {DAILY: ["2025-01-02"], WEEKLY: ["2025-01-02"]}, attempt="a2")
    second = catalog.promote("b2", actor="ops")
    production = {key: catalog.store.get(key) for key in catalog.store.list("catalog")}

    with pytest.raises(CurrentChangedError, match=f"SHADOW moved from {second.release_id} to .no release."):
        catalog.rollback("previous", actor="drill", reason="a drill", pointer=shadow)  # it starts at CURRENT
    assert catalog.shadow(shadow) == second
    rollback = catalog.rollback("previous", actor="drill", reason="a drill", pointer=shadow)

    assert catalog.current_release(shadow) == rollback and catalog.current_release() == second
    assert (rollback.kind, rollback.parent_id, rollback.rolled_back_to) == (
        "rollback",
        second.release_id,
        first.release_id,
    )
    assert catalog.snapshot(rollback) == catalog.snapshot(first)
    assert catalog.store.exists(f"catalog/shadows/{rollback.release_id}.json")
    after = {
        key: catalog.store.get(key)
        for key in catalog.store.list("catalog")
        if not key.startswith("catalog/shadows/") and key != shadow.key
    }
    assert after == production  # CURRENT, releases, batch states and the audit trail, byte for byte
    with pytest.raises(ValueError, match="CURRENT moves only by compare-and-swap"):
        catalog.shadow(PRODUCTION)


def test_a_code_version_that_serves_no_partition_any_more_leaves_the_release_s_counts(
    catalog: ReleaseCatalog,
) -> None:
    stage(catalog, "b1", {DAILY: ["2025-01-01", "2025-01-02"]})
    catalog.promote("b1", actor="ops")
    rerun = [
        record(DAILY, day, "b2", attempt="a2").model_copy(update={"code_version": "v2"})
        for day in ("2025-01-01", "2025-01-02")
    ]
    catalog.record_partitions("b2", rerun, run_id="run-2")

    assert catalog.promote("b2", actor="ops").served_code_versions == {DAILY: {"v2": 2}}


def test_stale_partitions_stay_marked_until_a_release_replaces_each_of_them(catalog: ReleaseCatalog) -> None:
    stage(catalog, "load", {DAILY: ["2025-01-01", "2025-01-02"], WEEKLY: ["2025-01-02", "2025-01-03"]})
    catalog.promote("load", actor="ops")
    stage(catalog, "fix", {DAILY: ["2025-01-02"]}, attempt="a2")
    left = {WEEKLY: StaleDownstream(upstream=[DAILY], days=["2025-01-02", "2025-01-03"])}
    forced = ApprovalFacts(forced=True, overrides=["stale_downstream"], left_stale=left)
    fix = catalog.promote("fix", actor="ops", reason="urgent", approval=forced)
    stage(catalog, "weekly", {WEEKLY: ["2025-01-02"]}, attempt="a3")
    weekly = catalog.promote("weekly", actor="ops")
    stage(catalog, "daily", {DAILY: ["2025-01-01"]}, attempt="a4")
    daily = catalog.promote("daily", actor="ops")

    def marked(release: Release) -> dict[str, list[tuple[str, list[str]]]]:
        return {table: [(m.since, m.days) for m in marks] for table, marks in release.stale.items()}

    assert marked(fix) == {WEEKLY: [(fix.release_id, ["2025-01-02", "2025-01-03"])]}
    assert marked(weekly) == {WEEKLY: [(fix.release_id, ["2025-01-03"])]}  # 2025-01-02 recomputed
    assert marked(daily) == marked(weekly)  # a release that touches no stale partition keeps the marks
    # The stale partitions have an audit event of their own, from the release that left them stale.
    [event] = [e for e in catalog.events() if e.kind == "downstream_stale"]
    assert (event.release_id, event.batch_id) == (fix.release_id, "fix")
    assert event.tables == {WEEKLY: ["2025-01-02", "2025-01-03"]}
    assert event.details == {"upstream": {WEEKLY: [DAILY]}, "reason": "urgent"}
    # A rollback serves the partitions of the release it returns to, stale marks included.
    back = catalog.rollback(fix.release_id, actor="ops", reason="back to the forced fix")
    assert marked(back) == marked(fix)


def test_every_release_records_the_code_versions_of_what_it_serves_per_table(catalog: ReleaseCatalog) -> None:
    stage(catalog, "b1", {DAILY: ["2025-01-01", "2025-01-02", "2025-01-03"], WEEKLY: ["2025-01-03"]})
    first = catalog.promote("b1", actor="ops")
    fixed = [
        record(DAILY, day, "b2", attempt="a2").model_copy(update={"code_version": "v2"})
        for day in ("2025-01-02", "2025-01-03", "2025-01-04")
    ]
    catalog.record_partitions("b2", fixed, run_id="run-2")
    second = catalog.promote("b2", actor="ops")
    whole = catalog.rollback(first.release_id, actor="carol", reason="v2 is wrong")
    catalog.promote("b2", actor="ops")
    daily_only = catalog.rollback(first.release_id, actor="carol", reason="v2 daily is wrong", tables=[DAILY])

    assert first.served_code_versions == {DAILY: {"v1": 3}, WEEKLY: {"v1": 1}}
    assert second.served_code_versions == {DAILY: {"v1": 1, "v2": 3}, WEEKLY: {"v1": 1}}
    assert whole.served_code_versions == first.served_code_versions
    assert daily_only.served_code_versions == first.served_code_versions
    promoted, rolled_back = (
        [event for event in catalog.events() if event.kind == kind][0] for kind in ("promoted", "rolled_back")
    )
    assert promoted.details["served_code_versions"] == {DAILY: {"v1": 3}, WEEKLY: {"v1": 1}}
    assert rolled_back.details["served_code_versions"] == {DAILY: {"v1": 3}}

    # A release written before releases kept them still loads; its code versions are counted from its
    # batches' manifests, and the next release records them.
    stored = json.loads(catalog.store.get(f"catalog/releases/{second.release_id}.json"))
    for field in ("served_code_versions", "stale", "left_stale", "overrides"):
        del stored[field]
    older = Release.model_validate_json(json.dumps(stored))
    assert older.served_code_versions is None and older.stale == {} and older.overrides == []
    assert catalog.served_code_versions(older) == second.served_code_versions


# Audit trail


def test_audit_trail_comes_back_in_time_order_with_the_right_kinds(catalog: ReleaseCatalog) -> None:
    catalog.record_partitions(
        "b1",
        [record(DAILY, "2025-01-01", "b1"), record(DAILY, "2025-01-02", "b1")],
        run_id="run-1",
        requester="dan",
    )
    first = catalog.promote("b1", actor="ops", reason="initial load")
    stage(catalog, "b2", {WEEKLY: ["2025-01-02"]}, run_id="run-9")
    second = catalog.promote("b2", actor="ops")
    rollback = catalog.rollback("previous", actor="carol", reason="7d looked wrong")

    events = catalog.events()

    assert [(event.kind, event.batch_id, event.release_id) for event in events] == [
        ("staged", "b1", None),
        ("promoted", "b1", first.release_id),
        ("staged", "b2", None),
        ("promoted", "b2", second.release_id),
        ("rolled_back", None, rollback.release_id),
    ]
    assert [event.at for event in events] == sorted(event.at for event in events)
    staged, promoted = events[0], events[1]
    assert staged.actor == "dan"
    assert staged.tables == {DAILY: ["2025-01-01", "2025-01-02"]}
    assert staged.details == {"run_id": "run-1", "row_count": 200, "replaced": {}}
    assert promoted.tables == {DAILY: ["2025-01-01", "2025-01-02"]}
    no_approval = {
        "requester": None,
        "approvers": [],
        "approved_at": None,
        "forced": False,
        "overrides": [],
        "code_versions": {},
        "left_stale": {},
        "stale_replaced": {},
    }
    assert promoted.details == {
        "previous_release_id": None,
        "rolled_back_to": None,
        "reason": "initial load",
        **no_approval,
        "served_code_versions": {DAILY: {"v1": 2}},
    }
    assert events[4].actor == "carol"
    assert events[4].tables == {WEEKLY: ["2025-01-02"]}
    assert events[4].details == {
        "previous_release_id": second.release_id,
        "rolled_back_to": first.release_id,
        "reason": "7d looked wrong",
        **no_approval,
        "served_code_versions": {WEEKLY: {}},  # production serves no 7d table any more
        "batches_rolled_back": [],  # b2 was published by the catalog alone, never moved to promoted
        "batches_promoted_again": [],
    }

    assert [event.kind for event in catalog.events(table=WEEKLY)] == ["staged", "promoted", "rolled_back"]
    assert [event.kind for event in catalog.events(table=DAILY, partition="2025-01-02")] == [
        "staged",
        "promoted",
    ]
    assert [event.kind for event in catalog.events(partition="2025-01-03")] == []
    assert [event.kind for event in catalog.events(batch_id="b2")] == ["staged", "promoted"]


def test_custom_audit_events_are_appended_with_their_details(catalog: ReleaseCatalog) -> None:
    event = catalog.append_event(
        "approved",
        batch_id="b1",
        actor="erin",
        tables={DAILY: ["2025-01-02", "2025-01-01"]},
        details={"quorum": 2},
    )

    assert catalog.events() == [event]
    assert event.tables == {DAILY: ["2025-01-01", "2025-01-02"]}
    with pytest.raises(ValueError, match="audit event kind 'Approved!'"):
        catalog.append_event("Approved!")


# Catalog objects


def test_catalog_times_are_stored_in_utc_and_naive_times_are_refused() -> None:
    paris = timezone(timedelta(hours=1))
    stored = record(DAILY, "2025-01-01", "b1").model_copy(
        update={"written_at": datetime(2025, 1, 1, 13, tzinfo=paris)}
    )
    reread = PartitionRecord.model_validate_json(
        PartitionRecord.model_validate(stored.model_dump()).model_dump_json()
    )

    assert reread.written_at == datetime(2025, 1, 1, 12, tzinfo=UTC)
    assert reread.written_at.tzinfo == UTC
    assert '"written_at":"2025-01-01T12:00:00Z"' in reread.model_dump_json()
    with pytest.raises(ValidationError, match="no time zone"):
        PartitionRecord.model_validate({**stored.model_dump(), "written_at": datetime(2025, 1, 1, 12)})
    with pytest.raises(ValidationError, match="not a date in YYYY-MM-DD form"):
        PartitionRecord.model_validate({**stored.model_dump(), "partition": "2025-1-1"})
