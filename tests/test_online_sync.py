"""The online store kept in step with production (serving/online_sync.py), on an SQLite file and a real
redis-server: each table serves its newest production partition, exactly as offline; an unchanged table is
not reloaded; a rollback switches back without reloading; a parity failure or a crash mid-sync leaves
readers on the version they had, and a retry completes; the command reads and reports it."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Lake, make_lake
from test_approvals import TABLES

from backfills.assets.reader import FeatureReader
from backfills.errors import OnlineParityError
from backfills.orchestration.cli import main
from backfills.serving import online_store
from backfills.serving.online_redis import RedisOnlineStore
from backfills.serving.online_rows import stored_form
from backfills.serving.online_sqlite import SqliteOnlineStore
from backfills.serving.online_store import OnlineStore
from backfills.serving.online_sync import online_status, sync_release

DAILY = "customer_daily_txn"


@pytest.fixture
def lake(staged_template: Path, tmp_path: Path) -> Lake:
    root = tmp_path / "lake"
    shutil.copytree(staged_template, root)
    return make_lake(root)


@pytest.fixture(params=["sqlite", "redis"])
def online(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    if request.param == "sqlite":
        store: OnlineStore = SqliteOnlineStore(tmp_path / "online.db")
    else:
        server = request.getfixturevalue("redis_server")
        store = RedisOnlineStore(server.url, key_prefix=f"test:{uuid.uuid4().hex}")
    with store:
        yield store


def _promote(lake: Lake, batch: str) -> str:
    return lake.catalog.promote(batch, actor="operator", reason="online sync tests").release_id


def _offline(spark, lake: Lake, table: str, day: str) -> dict[str, dict]:
    """The production rows of `table` on `day`, as the online store keeps them (its JSON forms)."""
    rows = FeatureReader(spark, lake.store).read(table, day, day).collect()
    return {row["customer_id"]: json.loads(stored_form(row.asDict())) for row in rows}


def _served(store: OnlineStore, spark, lake: Lake, table: str) -> tuple[str, bool]:
    """The partition readers are on, and whether every key reads back as offline."""
    current = store.current(table)
    offline = _offline(spark, lake, table, current.partition)
    return current.partition, store.get(table, sorted(offline)) == offline


def test_each_table_serves_its_newest_partition_reloading_only_what_changed(
    lake: Lake, online: OnlineStore, spark
):
    session = lambda: spark  # noqa: E731
    first = _promote(lake, "jan")
    synced = {sync.table: sync for sync in sync_release(session, lake.catalog, online)}
    assert sorted(synced) == sorted(TABLES)
    for table in TABLES:
        assert synced[table].action == "loaded" and _served(online, spark, lake, table) == (
            "2025-01-04",
            True,
        )
        parity = synced[table].parity
        # Below the sample size every key is read back.
        assert (
            parity["passed"]
            and parity["keys_checked"] == parity["offline_rows"] == synced[table].keys_written
        )
    assert {sync.action for sync in sync_release(session, lake.catalog, online)} == {"unchanged"}

    _promote(lake, "fix")  # customer_daily_txn through Jan 6
    synced = {sync.table: sync for sync in sync_release(session, lake.catalog, online)}
    assert synced[DAILY].action == "loaded" and _served(online, spark, lake, DAILY) == ("2025-01-06", True)
    assert {synced[table].action for table in TABLES if table != DAILY} == {"unchanged"}

    lake.catalog.rollback(first, actor="operator", reason="undo fix")
    [back] = sync_release(session, lake.catalog, online, tables=[DAILY])
    assert (back.action, back.keys_written) == ("switched", 0)  # the kept version: nothing reloaded
    assert _served(online, spark, lake, DAILY) == ("2025-01-04", True)

    status = {item["table"]: item for item in online_status(lake.catalog, online)}
    assert all(item["in_step"] and item["parity"]["passed"] for item in status.values())
    assert status[DAILY]["release_id"] == first and status[DAILY]["partition"] == "2025-01-04"
    synced_events = [event for event in lake.catalog.events() if event.kind == "online_synced"]
    assert len(synced_events) == 4


class _CorruptingStore(SqliteOnlineStore):
    """A backend that garbles one value of every row it writes, as a broken serializer would."""

    def _write_rows(self, table: str, version: str, chunk: list[tuple[str, str]]) -> int:
        garbled = [(key, json.dumps({**json.loads(row), "txn_count": -1})) for key, row in chunk]
        return super()._write_rows(table, version, garbled)


class _CrashingStore(SqliteOnlineStore):
    """A backend whose process dies (here: raises) after its first chunk of rows."""

    chunks = 0

    def _write_rows(self, table: str, version: str, chunk: list[tuple[str, str]]) -> int:
        self.chunks += 1
        if self.chunks > 1:
            raise RuntimeError("killed mid-sync")
        return super()._write_rows(table, version, chunk)


def test_a_parity_failure_leaves_readers_on_the_version_they_had(lake: Lake, spark, tmp_path: Path):
    session = lambda: spark  # noqa: E731
    path = tmp_path / "online.db"
    _promote(lake, "jan")
    with SqliteOnlineStore(path) as store:
        sync_release(session, lake.catalog, store)
        before = store.current(DAILY)
    release = _promote(lake, "fix")
    with _CorruptingStore(path) as broken, pytest.raises(OnlineParityError, match="differing values"):
        sync_release(session, lake.catalog, broken, tables=[DAILY])
    with SqliteOnlineStore(path) as store:
        assert store.current(DAILY) == before  # readers never saw the garbled version
        assert _served(store, spark, lake, DAILY) == ("2025-01-04", True)
    [failed] = [event for event in lake.catalog.events() if event.kind == "online_sync_failed"]
    assert failed.release_id == release and failed.details["table"] == DAILY
    assert "txn_count" in failed.details["error"]


def test_a_crash_mid_sync_leaves_the_old_version_and_a_retry_completes(
    lake: Lake, spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    session = lambda: spark  # noqa: E731
    path = tmp_path / "online.db"
    _promote(lake, "jan")
    with SqliteOnlineStore(path) as store:
        sync_release(session, lake.catalog, store)
        before = store.current(DAILY)
    _promote(lake, "fix")
    monkeypatch.setattr(online_store, "WRITE_CHUNK_ROWS", 10)  # several chunks for a few dozen customers
    with _CrashingStore(path) as crashing, pytest.raises(RuntimeError, match="killed mid-sync"):
        sync_release(session, lake.catalog, crashing, tables=[DAILY])
    with SqliteOnlineStore(path) as store:
        assert store.current(DAILY) == before
        [retry] = sync_release(session, lake.catalog, store, tables=[DAILY])
        assert retry.action == "loaded" and _served(store, spark, lake, DAILY) == ("2025-01-06", True)


def test_the_command_syncs_reads_and_reports_the_online_store(
    lake: Lake, spark, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("BACKFILLS_STORAGE_ROOT", str(lake.root))
    monkeypatch.delenv("BACKFILLS_ONLINE_STORE", raising=False)  # the embedded default under the root
    release = _promote(lake, "jan")
    assert main(["online", "sync"]) == 0
    assert "customer_daily_txn: 2025-01-04 of release" in capsys.readouterr().out
    assert (lake.root / "online" / "online.db").is_file()

    offline = _offline(spark, lake, DAILY, "2025-01-04")
    keys = sorted(offline)[:3]
    assert main(["online", "get", DAILY, *keys, "--format", "json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["rows"] == {key: offline[key] for key in keys}

    assert main(["online", "status", "--format", "json"]) == 0
    status = {item["table"]: item for item in json.loads(capsys.readouterr().out)}
    assert status[DAILY]["release_id"] == release and status[DAILY]["in_step"]
    assert main(["online", "get", DAILY, "no-such-customer"]) == 0
    assert "no-such-customer: no row" in capsys.readouterr().out
