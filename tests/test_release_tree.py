"""Releases whose cost grows with what changed, not with history (I10), and time travel that stays exact.

A release is a tree of shared, immutable objects (resources/release_tree.py). These stories check it against
a plain model of production kept by the test: every release of a long history of promotions and rollbacks
(whole and per table) serves exactly what the model says; a promotion writes the same objects whatever the
size of the history; and catalogs written in the first format (full snapshots) keep working.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

from test_catalog import record, stage

from backfills.resources.catalog import CURRENT_KEY, RELEASES_PREFIX, ReleaseCatalog
from backfills.resources.catalog_models import CurrentPointer, Release, ReleasedPartition
from backfills.resources.release_tree import OBJECTS_PREFIX, ReleaseTree
from backfills.resources.storage import LocalObjectStore, ObjectStore

TABLES = ("customer_daily_txn", "customer_txn_7d", "customer_txn_30d")
Model = dict[str, dict[str, str]]  # table -> day -> batch serving it


def _days(first: date, count: int) -> list[str]:
    return [(first + timedelta(days=n)).isoformat() for n in range(count)]


def _served_batches(catalog: ReleaseCatalog, release: Release) -> Model:
    return {
        table: {day: entry.batch_id for day, entry in parts.items()}
        for table, parts in catalog.snapshot(release).items()
        if parts
    }


def test_every_release_of_a_long_history_serves_exactly_what_it_served_when_published(
    store: ObjectStore,
) -> None:
    catalog = ReleaseCatalog(store)
    rng = random.Random(20)
    history: list[tuple[str, Model]] = []  # (release ID, what production served right after it)
    model: Model = {}
    days = _days(date(2025, 1, 15), 75)  # three months: changes cross month boundaries
    for step in range(30):
        if len(history) > 1 and step % 5 == 4:
            # Roll back: whole, or some tables, to a random earlier release.
            target_id, target = rng.choice(history[:-1])  # not the current one
            tables = None if step % 10 == 4 else sorted(rng.sample(TABLES, 2))
            release = catalog.rollback(target_id, actor="ops", reason=f"step {step}", tables=tables)
            if tables is None:
                model = {table: dict(parts) for table, parts in target.items()}
            else:
                for table in tables:
                    model[table] = dict(target.get(table, {}))
        else:
            batch = f"b{step:02d}"
            start = rng.randrange(len(days) - 10)
            chosen = {
                table: days[start : start + rng.randrange(1, 10)]
                for table in rng.sample(TABLES, rng.randrange(1, 4))
            }
            stage(catalog, batch, chosen)
            release = catalog.promote(batch, actor="ops")
            for table, batch_days in chosen.items():
                model.setdefault(table, {}).update(dict.fromkeys(batch_days, batch))
        model = {table: parts for table, parts in model.items() if parts}
        history.append((release.release_id, {table: dict(parts) for table, parts in model.items()}))

    fresh = ReleaseCatalog(store)  # nothing cached: everything read back from the store
    for release_id, served in history:
        assert _served_batches(fresh, fresh.get_release(release_id)) == served, release_id
    # A range read touches only what it asks for and agrees with the whole.
    last_id, last = history[-1]
    table = sorted(last)[0]
    ranged = fresh.release_partitions(table, "2025-02-01", "2025-02-28", release_id=last_id)
    assert {day: entry.batch_id for day, entry in ranged.items()} == {
        day: batch for day, batch in last[table].items() if "2025-02-01" <= day <= "2025-02-28"
    }


class CountingStore(LocalObjectStore):
    """A local store that counts the objects and bytes written."""

    def __init__(self, root: object) -> None:
        super().__init__(root)
        self.objects = 0
        self.bytes = 0

    def put_if_absent(self, key: str, body: bytes) -> None:
        super().put_if_absent(key, body)
        self.objects += 1
        self.bytes += len(body)

    def put_if_match(self, key: str, body: bytes, version: str) -> None:
        super().put_if_match(key, body, version)
        self.objects += 1
        self.bytes += len(body)


def _publish_cost(tmp_path, history_months: int) -> tuple[int, int, int]:
    """Objects and bytes a promotion of 3 days of 2 tables writes over `history_months` of production."""
    store = CountingStore(tmp_path / f"history-{history_months}")
    catalog = ReleaseCatalog(store)
    history = _days(date(2023, 1, 1), history_months * 30)
    stage(catalog, "history", {table: history for table in TABLES})
    catalog.promote("history", actor="ops")
    stage(catalog, "fix", {TABLES[0]: history[-3:], TABLES[1]: history[-3:]})
    objects, written = store.objects, store.bytes
    release = catalog.promote("fix", actor="ops")
    assert release.changed == {TABLES[0]: history[-3:], TABLES[1]: history[-3:]}
    # The audit event is one of the writes; its size depends on the change only.
    return store.objects - objects, store.bytes - written, release.partition_count()


def test_a_promotion_writes_the_same_few_objects_whatever_the_length_of_history(tmp_path) -> None:
    small = _publish_cost(tmp_path, history_months=1)
    large = _publish_cost(tmp_path, history_months=36)
    assert large[2] == 36 * 30 * len(TABLES) and small[2] == 30 * len(TABLES)
    assert large[0] == small[0] <= 8  # 2 segments, 2 indexes, the release, CURRENT, the audit event
    assert large[1] <= small[1] * 1.2, (small, large)


def _legacy_catalog(store: ObjectStore) -> tuple[ReleaseCatalog, Release]:
    """A catalog as the first format wrote it: a batch promoted as a full snapshot release, CURRENT on it."""
    catalog = ReleaseCatalog(store)
    days = _days(date(2025, 1, 1), 40)
    stage(catalog, "old", {TABLES[0]: days, TABLES[1]: days[:10]})
    manifest = catalog.get_batch("old")
    snapshot = {
        table: {
            day: ReleasedPartition(
                batch_id="old", base=r.base, files=r.files, row_count=r.row_count, content_hash=r.content_hash
            )
            for day, r in parts.items()
        }
        for table, parts in manifest.tables.items()
    }
    legacy = Release(
        release_id="r-legacy",
        parent_id=None,
        created_at=datetime.now(UTC) - timedelta(days=30),
        kind="promotion",
        batch_id="old",
        actor="ops",
        tables=snapshot,
    )
    store.put_if_absent(f"{RELEASES_PREFIX}/r-legacy.json", legacy.model_dump_json().encode())
    pointer = CurrentPointer(release_id="r-legacy", updated_at=datetime.now(UTC))
    store.put_if_absent(CURRENT_KEY, pointer.model_dump_json().encode())
    return catalog, legacy


def test_a_catalog_of_full_snapshot_releases_is_read_published_over_and_rolled_back_to(
    store: ObjectStore,
) -> None:
    catalog, legacy = _legacy_catalog(store)
    assert catalog.current_release().is_snapshot
    assert catalog.release_partitions(TABLES[1], "2025-01-01", "2025-01-31").keys() == set(
        _days(date(2025, 1, 1), 10)
    )
    assert catalog.last_served_day(legacy, TABLES[0]) == "2025-02-09"
    # Some days of a snapshot release, by range and by name (a day it does not serve is left out).
    assert list(catalog.served(legacy, TABLES[0], start="2025-01-05", end="2025-01-07")) == [
        "2025-01-05",
        "2025-01-06",
        "2025-01-07",
    ]
    picked = catalog.served(legacy, TABLES[0], days=["2025-01-03", "2025-03-01"])
    assert picked == {"2025-01-03": legacy.snapshot_tables[TABLES[0]]["2025-01-03"]}
    assert store.list(OBJECTS_PREFIX) == []  # reading writes nothing

    stage(catalog, "new", {TABLES[0]: ["2025-02-01"]})
    promoted = catalog.promote("new", actor="ops")
    assert not promoted.is_snapshot and promoted.changed == {TABLES[0]: ["2025-02-01"]}
    served = _served_batches(catalog, promoted)
    assert served[TABLES[0]]["2025-02-01"] == "new" and served[TABLES[0]]["2025-01-31"] == "old"
    assert served[TABLES[1]] == dict.fromkeys(_days(date(2025, 1, 1), 10), "old")

    back = catalog.rollback("r-legacy", actor="ops", reason="back to the snapshot")
    assert catalog.snapshot(back) == catalog.snapshot(legacy)
    assert back.changed == {TABLES[0]: ["2025-02-01"]}
    assert [event.tables for event in catalog.events() if event.kind == "rolled_back"] == [back.changed]


def test_reading_a_release_reads_only_the_months_asked_for(tmp_path) -> None:
    store = CountingReads(tmp_path / "reads")
    catalog = ReleaseCatalog(store)
    stage(catalog, "history", {TABLES[0]: _days(date(2023, 1, 1), 720)})
    release = catalog.promote("history", actor="ops")
    reader = ReleaseCatalog(store)
    store.read_keys.clear()
    parts = reader.release_partitions(TABLES[0], "2024-03-10", "2024-03-12", release_id=release.release_id)
    assert sorted(parts) == ["2024-03-10", "2024-03-11", "2024-03-12"]
    assert len(store.read_keys) == 3  # the release, the table's index, one month's segment
    assert record(TABLES[0], "2024-03-11", "history").content_hash == parts["2024-03-11"].content_hash


def test_a_table_is_stored_as_one_segment_per_month_named_by_the_month(tmp_path) -> None:
    """Catalogs already on disk name a table's segments by month (YYYY-MM): a reader that named them
    otherwise would find nothing in them."""
    catalog = ReleaseCatalog(LocalObjectStore(tmp_path / "months"))
    stage(catalog, "turn-of-month", {TABLES[0]: _days(date(2025, 1, 30), 4)})
    release = catalog.promote("turn-of-month", actor="ops")

    index = catalog.tree.index(release.table_indexes[TABLES[0]])
    assert index.partition_counts == {"2025-01": 2, "2025-02": 2}
    assert index.segments.keys() == index.partition_counts.keys()
    # The newest day is read from the newest month (what the online store and freshness follow).
    assert catalog.last_served_day(release, TABLES[0]) == "2025-02-02"
    assert catalog.last_served_day(release, TABLES[1]) is None


def test_a_catalog_reads_no_object_twice_and_none_it_has_just_written(tmp_path) -> None:
    """Objects never change, so a catalog keeps those it used last: reading what it has just published,
    or what it has read before, reads no object again."""
    store = CountingReads(tmp_path / "once")
    publisher = ReleaseCatalog(store)
    stage(publisher, "history", {TABLES[0]: _days(date(2025, 1, 1), 90)})
    release = publisher.promote("history", actor="ops")
    quarter = dict(start="2025-01-01", end="2025-03-31", release_id=release.release_id)
    store.read_keys.clear()

    assert len(publisher.release_partitions(TABLES[0], **quarter)) == 90
    assert _object_reads(store) == []

    reader = ReleaseCatalog(store)
    reader.release_partitions(TABLES[0], **quarter)
    first = _object_reads(store)
    assert len(first) == 4  # the table's index and the segments of its three months
    reader.release_partitions(TABLES[0], **quarter)
    assert _object_reads(store) == first


def test_a_reader_keeps_the_objects_it_used_last_within_its_bound(tmp_path) -> None:
    """A long-running reader's memory stays bounded: past the bound it drops the object it used least
    recently, never one it has just used."""
    store = CountingReads(tmp_path / "bound")
    writer = ReleaseTree(store)
    a, b, c = (
        writer.write_snapshot({day: _entry(day)}) for day in ("2025-01-01", "2025-02-01", "2025-03-01")
    )
    reader = ReleaseTree(store, cached_objects=2)
    for key in (a, b, a, c):  # `a` is used again before `c` comes: `b` is the one used least recently
        reader.index(key)
    store.read_keys.clear()

    reader.index(a)
    reader.index(c)
    assert store.read_keys == []
    reader.index(b)
    assert store.read_keys == [b]


def test_promoting_what_a_table_already_serves_keeps_its_index_writes_nothing_and_changes_no_day(
    tmp_path,
) -> None:
    store = CountingStore(tmp_path / "same")
    tree = ReleaseTree(store)
    served = {day: _entry(day) for day in _days(date(2025, 1, 30), 4)}
    index = tree.write_snapshot(served)
    written = store.objects

    same = tree.write_table(index, dict(list(served.items())[1:3]))
    assert same == index and store.objects == written
    assert tree.changed_days(index, same) == []


def _entry(day: str) -> ReleasedPartition:
    return ReleasedPartition(batch_id=f"b-{day}", base=day, files=[], row_count=1, content_hash=day)


def _object_reads(store: CountingReads) -> list[str]:
    return [key for key in store.read_keys if key.startswith(OBJECTS_PREFIX)]


class CountingReads(LocalObjectStore):
    """A local store that records the keys it reads."""

    def __init__(self, root: object) -> None:
        super().__init__(root)
        self.read_keys: list[str] = []

    def get(self, key: str) -> bytes:
        self.read_keys.append(key)
        return super().get(key)
