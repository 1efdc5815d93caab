"""One life cycle for every batch: each state change the table allows works, each other one is refused
naming the batch and both states with the manifest left as it was, derived and direct changes alike; and a
rollback that takes a batch out of production marks it rolled back (and back again when it returns)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_catalog import record

from backfills.errors import BatchSealedError, IllegalTransitionError, InvalidRequestError
from backfills.resources.catalog import BATCHES_PREFIX, ReleaseCatalog
from backfills.resources.catalog_models import BatchManifest, CheckRecord
from backfills.resources.lifecycle import BatchState
from backfills.resources.storage import LocalObjectStore

DAILY, WEEKLY = "customer_daily_txn", "customer_txn_7d"
# The README's "Batch states" table, written out by hand rather than read from TRANSITIONS: a change to the
# life cycle fails here until the README's table and this one say the same. Staying put is not a change.
README_TABLE: dict[str, set[str]] = {
    "staging": {"checked", "blocked"},
    "blocked": {"staging", "checked"},
    "checked": {"staging", "blocked", "approved", "rejected", "canary", "promoted"},
    "approved": {"canary", "promoted"},
    "canary": {"promoted", "rolled_back"},
    "promoted": {"rolled_back"},
    "rolled_back": {"promoted"},
    "rejected": set(),
}
PAIRS = [(BatchState(a), BatchState(b)) for a, b in itertools.product(README_TABLE, README_TABLE) if a != b]
LEGAL = [(before, after) for before, after in PAIRS if after in README_TABLE[before]]
ILLEGAL = [(before, after) for before, after in PAIRS if after not in README_TABLE[before]]


@pytest.fixture
def catalog(tmp_path: Path) -> ReleaseCatalog:
    return ReleaseCatalog(LocalObjectStore(tmp_path / "root"))


def _pass_checks(catalog: ReleaseCatalog, batch_id: str, table: str, days: list[str]) -> None:
    verdict = CheckRecord(
        table=table,
        check="non_empty",
        partitions=days,
        verdict="passed",
        blocking=True,
        summary="rows staged",
        run_id=f"run-{batch_id}",
        checked_at=datetime.now(UTC),
    )
    catalog.record_checks(batch_id, [verdict], table=table, partitions=days, run_id=f"run-{batch_id}")


def _checked(catalog: ReleaseCatalog, batch_id: str, tables: dict[str, list[str]]) -> None:
    """Stage the partitions and record a passing check on each table: the batch is `checked`."""
    records = [record(table, day, batch_id) for table, days in tables.items() for day in days]
    catalog.record_partitions(batch_id, records, run_id=f"run-{batch_id}")
    for table, days in tables.items():
        _pass_checks(catalog, batch_id, table, days)


def _in_state(catalog: ReleaseCatalog, batch_id: str, state: BatchState) -> bytes:
    """A manifest in `state` as a catalog on disk holds it; its stored bytes."""
    now = datetime.now(UTC)
    manifest = BatchManifest(batch_id=batch_id, created_at=now, updated_at=now, state=state)
    key = f"{BATCHES_PREFIX}/{batch_id}.json"
    catalog.store.put(key, manifest.model_dump_json(indent=2).encode())
    return catalog.store.get(key)


def test_the_states_keep_the_strings_catalogs_have_always_stored(catalog: ReleaseCatalog) -> None:
    assert [state.value for state in BatchState] == [
        "staging",
        "checked",
        "blocked",
        "approved",
        "rejected",
        "canary",
        "promoted",
        "rolled_back",
    ]
    _in_state(catalog, "old", BatchState.ROLLED_BACK)
    assert catalog.get_batch("old").state == "rolled_back"
    assert [state for state in BatchState if state.accepts_partitions] == ["staging", "checked", "blocked"]
    assert [state for state in BatchState if state.promotable] == ["checked", "approved"]
    assert [state for state in BatchState if state.settled] == [
        "rejected",
        "canary",
        "promoted",
        "rolled_back",
    ]


@pytest.mark.parametrize(("before", "after"), LEGAL, ids=[f"{a}->{b}" for a, b in LEGAL])
def test_every_transition_of_the_table_is_made(
    catalog: ReleaseCatalog, before: BatchState, after: BatchState
) -> None:
    _in_state(catalog, "b1", before)
    assert catalog.move_batch("b1", after).state == after
    assert catalog.get_batch("b1").state == after


@pytest.mark.parametrize(("before", "after"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_every_other_transition_is_refused_naming_both_states_and_changing_nothing(
    catalog: ReleaseCatalog, before: BatchState, after: BatchState
) -> None:
    stored = _in_state(catalog, "b1", before)
    with pytest.raises(IllegalTransitionError, match=f"batch b1 cannot go from {before} to {after}"):
        catalog.move_batch("b1", after)
    assert catalog.store.get(f"{BATCHES_PREFIX}/b1.json") == stored


def test_staying_in_a_state_is_no_change(catalog: ReleaseCatalog) -> None:
    for state in BatchState:
        _in_state(catalog, "b1", state)
        assert catalog.move_batch("b1", state).state == state


def test_the_state_of_a_batch_is_read_as_stored_whatever_the_layout(catalog: ReleaseCatalog) -> None:
    # A rollback reads the state of every batch it touches from the head of the manifest; a manifest laid out
    # otherwise (compact, keys reordered, a nested "state" before the top-level one) is read in full.
    assert catalog.batch_state("never-staged") is None
    _checked(catalog, "b1", {DAILY: ["2024-01-02"]})
    assert catalog.batch_state("b1") == BatchState.CHECKED == catalog.get_batch("b1").state
    for state in BatchState:
        _in_state(catalog, "b2", state)
        assert catalog.batch_state("b2") == state
    now = datetime.now(UTC).isoformat()
    reordered = (
        f'{{"plan": null, "checks": [], "tables": {{}}, "expected": {{"state": ["2024-01-02"]}}, '
        f'"batch_id": "b3", "created_at": "{now}", "updated_at": "{now}", "state": "rolled_back"}}'
    )
    catalog.store.put(f"{BATCHES_PREFIX}/b3.json", reordered.encode())
    assert catalog.batch_state("b3") == BatchState.ROLLED_BACK == catalog.get_batch("b3").state


def test_a_refused_transition_is_a_sealed_batch_error_for_existing_callers(catalog: ReleaseCatalog) -> None:
    _in_state(catalog, "b1", BatchState.REJECTED)
    with pytest.raises(BatchSealedError, match="rejected is final"):
        catalog.move_batch("b1", BatchState.APPROVED)


def test_any_update_of_a_manifest_goes_through_the_table(catalog: ReleaseCatalog) -> None:
    _checked(catalog, "b1", {DAILY: ["2025-01-01"]})
    stored = catalog.store.get(f"{BATCHES_PREFIX}/b1.json")
    with pytest.raises(IllegalTransitionError, match="from checked to rolled_back"):
        catalog.update_batch("b1", lambda manifest: manifest.model_copy(update={"state": "rolled_back"}))
    with pytest.raises(InvalidRequestError, match="cannot become 'sealed': not a batch state"):
        catalog.update_batch("b1", lambda manifest: manifest.model_copy(update={"state": "sealed"}))
    assert catalog.store.get(f"{BATCHES_PREFIX}/b1.json") == stored


def test_derived_states_follow_the_checks_and_a_decision_seals_the_batch(catalog: ReleaseCatalog) -> None:
    catalog.record_partitions("b1", [record(DAILY, "2025-01-01", "b1")], run_id="run-1")
    assert catalog.get_batch("b1").state == BatchState.STAGING
    _checked(catalog, "b1", {DAILY: ["2025-01-01"]})
    assert catalog.get_batch("b1").state == BatchState.CHECKED
    catalog.record_partitions("b1", [record(DAILY, "2025-01-02", "b1")], run_id="run-2")
    assert catalog.get_batch("b1").state == BatchState.STAGING  # a new partition without verdicts
    _checked(catalog, "b1", {DAILY: ["2025-01-02"]})
    catalog.move_batch("b1", BatchState.REJECTED)
    with pytest.raises(BatchSealedError, match="batch b1 is 'rejected': its check verdicts can no longer"):
        _pass_checks(catalog, "b1", DAILY, ["2025-01-02"])
    with pytest.raises(BatchSealedError, match="batch b1 is 'rejected', so it accepts no more partitions"):
        catalog.record_partitions("b1", [record(DAILY, "2025-01-03", "b1")], run_id="run-3")
    assert catalog.get_batch("b1").state == BatchState.REJECTED


def _promoted(catalog: ReleaseCatalog, batch_id: str, tables: dict[str, list[str]]) -> str:
    _checked(catalog, batch_id, tables)
    catalog.move_batch(batch_id, BatchState.APPROVED)
    release = catalog.promote(batch_id, actor="ops")
    catalog.move_batch(batch_id, BatchState.PROMOTED)
    return release.release_id


def test_a_rollback_that_takes_a_batch_out_of_production_marks_it_rolled_back(
    catalog: ReleaseCatalog,
) -> None:
    first = _promoted(catalog, "jan", {DAILY: ["2025-01-01", "2025-01-02"], WEEKLY: ["2025-01-02"]})
    fix = _promoted(catalog, "fix", {DAILY: ["2025-01-02", "2025-01-03"]})

    rollback = catalog.rollback(first, actor="ops", reason="fix broke declines")
    assert catalog.get_batch("fix").state == BatchState.ROLLED_BACK
    assert catalog.get_batch("jan").state == BatchState.PROMOTED  # still served, and again on Jan 2
    [event] = [e for e in catalog.events(batch_id=None) if e.release_id == rollback.release_id]
    assert event.details["batches_rolled_back"] == ["fix"]

    again = catalog.rollback(fix, actor="ops", reason="the fix was right after all")
    assert catalog.get_batch("fix").state == BatchState.PROMOTED
    [event] = [e for e in catalog.events(batch_id=None) if e.release_id == again.release_id]
    assert event.details["batches_promoted_again"] == ["fix"] and event.details["batches_rolled_back"] == []


def test_a_rollback_that_leaves_some_of_a_batch_in_production_keeps_it_promoted(
    catalog: ReleaseCatalog,
) -> None:
    first = _promoted(catalog, "jan", {DAILY: ["2025-01-01"], WEEKLY: ["2025-01-01"]})
    _promoted(catalog, "fix", {DAILY: ["2025-01-01"], WEEKLY: ["2025-01-01"]})
    catalog.rollback(first, actor="ops", reason="daily only", tables=[DAILY])
    assert catalog.get_batch("fix").state == BatchState.PROMOTED  # production still serves its 7d rows
