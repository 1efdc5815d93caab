"""The online store kept in step with production (serving/online_sync.py), on an SQLite file and a real
redis-server: each table serves its newest production partition, exactly as offline; an unchanged table is
not reloaded; a rollback switches back without reloading; a failure on one table (a staged file that lost
a row) or a sync killed mid-write (SIGKILL) leaves every table on the release it had, and a rerun
completes; the command reads and reports it."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import Lake, make_lake
from tampering import rewrite_rows
from test_approvals import TABLES

from backfills.assets.reader import FeatureReader
from backfills.errors import OnlineParityError, OnlineStoreError
from backfills.orchestration.cli import main
from backfills.serving.online_redis import RedisOnlineStore
from backfills.serving.online_rows import stored_form
from backfills.serving.online_sqlite import SqliteOnlineStore
from backfills.serving.online_store import OnlineStore
from backfills.serving.online_sync import TableSync, _Sampled, online_status, sync_release

DAILY, PROFILE = "customer_daily_txn", "customer_risk_profile"
SEVEN_DAY, THIRTY_DAY = "customer_txn_7d", "customer_txn_30d"
EARLIER = "earlier"
CRASH_CHILD = Path(__file__).with_name("crash_child.py")


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
    told: list[str] = []
    synced = {sync.table: sync for sync in sync_release(session, lake.catalog, online, progress=told.append)}
    assert sorted(synced) == sorted(TABLES)
    versions = {table: online.current(table).version for table in TABLES}
    assert told == [
        f"{sync.table}: 2025-01-04 of release {first} loaded as version {versions[sync.table]} "
        f"({sync.keys_written} keys in {sync.seconds:.1f}s, {sync.keys_written} read back equal)"
        for sync in synced.values()
    ]
    [event] = [event for event in lake.catalog.events() if event.kind == "online_synced"]
    daily = synced[DAILY]
    assert event.details["tables"][DAILY] == {  # what the observation of online/<table> shows in Dagster
        "action": "loaded",
        "release_id": first,
        "partition": "2025-01-04",
        "version": versions[DAILY],
        "keys_written": daily.keys_written,
        "duration_seconds": round(daily.seconds, 3),
        **{f"parity/{name}": value for name, value in daily.parity.items()},
    }
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
    told.clear()
    assert {sync.action for sync in sync_release(session, lake.catalog, online, progress=told.append)} == {
        "unchanged"
    }
    assert told == [
        f"{table}: 2025-01-04 of release {first}: version {versions[table]} already current, nothing to do"
        for table in synced
    ]

    _promote(lake, "fix")  # customer_daily_txn through Jan 6
    synced = {sync.table: sync for sync in sync_release(session, lake.catalog, online)}
    assert synced[DAILY].action == "loaded" and _served(online, spark, lake, DAILY) == ("2025-01-06", True)
    assert {synced[table].action for table in TABLES if table != DAILY} == {"unchanged"}

    undone = lake.catalog.rollback(first, actor="operator", reason="undo fix").release_id
    told.clear()
    [back] = sync_release(session, lake.catalog, online, tables=[DAILY], progress=told.append)
    assert (back.action, back.keys_written) == ("switched", 0)  # the kept version: nothing reloaded
    switched = f"switched to kept version {versions[DAILY]}, nothing reloaded"
    assert told == [f"{DAILY}: 2025-01-04 of release {undone}: {switched}"]
    assert _served(online, spark, lake, DAILY) == ("2025-01-04", True)

    status = {item["table"]: item for item in online_status(lake.catalog, online)}
    assert all(item["in_step"] and item["parity"]["passed"] for item in status.values())
    assert status[DAILY]["release_id"] == first and status[DAILY]["partition"] == "2025-01-04"
    synced_events = [event for event in lake.catalog.events() if event.kind == "online_synced"]
    assert len(synced_events) == 4


def test_each_table_is_reported_as_it_stands_and_only_the_newest_versions_are_kept(
    lake: Lake, online: OnlineStore, spark
):
    session = lambda: spark  # noqa: E731
    assert sync_release(session, lake.catalog, online) == []  # nothing in production: nothing to do
    _on_earlier_versions(online, [DAILY, PROFILE])  # an earlier release left these two online
    fix = _promote(lake, "fix")  # the daily table only
    told: list[str] = []
    synced = sync_release(session, lake.catalog, online, tables=TABLES, keep=1, progress=told.append)
    actions = {sync.table: sync.action for sync in synced}
    assert actions == {
        DAILY: "loaded",
        PROFILE: "not_served",
        SEVEN_DAY: "not_served",
        THIRTY_DAY: "not_served",
    }
    left = f"of release {fix}: production serves no partition of it; online left as it was"
    assert [line for line in told if "online left" in line] == [
        f"{t}: - {left}" for t in TABLES if t != DAILY
    ]
    assert [kept.version for kept in online.versions(DAILY)] == [online.current(DAILY).version]  # keep=1
    assert [kept.version for kept in online.versions(PROFILE)] == [EARLIER]

    synced_at = online.current(DAILY).synced_at
    later = synced_at + timedelta(hours=1000, seconds=45)
    status = {item["table"]: item for item in online_status(lake.catalog, online, now=later)}
    assert status[DAILY]["state"] == "in_step" and status[DAILY]["production_partition"] == "2025-01-06"
    assert (status[DAILY]["synced_at"], status[DAILY]["hours_since_sync"]) == (synced_at.isoformat(), 1000.01)
    assert (status[PROFILE]["state"], status[PROFILE]["rows"], status[PROFILE]["in_step"]) == (
        "not_in_production",
        1,
        False,
    )
    assert (status[SEVEN_DAY]["state"], status[SEVEN_DAY]["rows"], status[SEVEN_DAY]["in_step"]) == (
        "not_served",
        0,
        True,
    )

    _promote(lake, "jan")  # now production serves every table; the sync is of the daily table only
    [daily] = sync_release(session, lake.catalog, online, tables=[DAILY])
    assert daily.action == "unchanged"  # its newest partition is still the fix's Jan 6
    status = {item["table"]: item for item in online_status(lake.catalog, online)}
    assert {status[table]["state"] for table in TABLES if table != DAILY} == {"behind"}
    assert not any(status[table]["in_step"] for table in TABLES if table != DAILY)


def test_a_failure_outside_the_store_names_its_innermost_cause(lake: Lake, online: OnlineStore):
    _promote(lake, "jan")
    spark_error = (
        "An error occurred while calling o93.collectToPython.\n"
        ": org.apache.spark.SparkException: Job aborted\n"
        "\tat org.apache.spark.Something.run(Something.scala:1)\n"
        "Caused by: org.apache.spark.SparkException: Task failed\n"
        "\tat org.apache.spark.Task.run(Task.scala:2)\n"
        "Caused by: java.io.FileNotFoundException: part-0.parquet (No such file or directory)\n\tat java.io.x"
    )
    for message, cause in (
        (spark_error, "java.io.FileNotFoundException: part-0.parquet"),
        ("\n  lost\n", "lost"),
    ):

        def session(message: str = message):
            raise RuntimeError(message)

        with pytest.raises(OnlineStoreError) as error:
            sync_release(session, lake.catalog, online, tables=[DAILY])
        assert str(error.value).startswith(f"online table {DAILY} could not be staged: RuntimeError: {cause}")
        assert str(error.value).endswith("readers stay on the versions they had: no table was switched")
        assert (
            online.current(DAILY) is None and online.versions(DAILY) == []
        )  # what was written is thrown away


def test_a_table_production_does_not_serve_is_reported_as_left_alone() -> None:
    untouched = TableSync(DAILY, "r-1", "not_served", previous_version="v-old")
    assert untouched.describe() == (
        f"{DAILY}: - of release r-1: production serves no partition of it; online left as it was"
    )
    assert untouched.metadata() == {
        "action": "not_served",
        "release_id": "r-1",
        "partition": "",
        "version": "",
        "keys_written": 0,
        "duration_seconds": 0.0,
    }


def test_a_sync_keeps_only_a_sample_of_the_rows_it_streams_to_read_back() -> None:
    rows = ({"customer_id": f"C{n:06d}", "n": n} for n in range(100_000))
    sampled = _Sampled(rows, "customer_id", total=100_000, size=1_000)
    assert sum(1 for _ in sampled) == 100_000  # every row goes to the store
    assert 500 < len(sampled.sample) < 2_000  # about the sample size in memory, not the partition
    assert all(sampled.sample[key]["customer_id"] == key for key in sampled.sample)


def _on_earlier_versions(store: OnlineStore, tables: Sequence[str] = TABLES) -> None:
    """Each of `tables` on a version an earlier release left (one customer each), switched together."""
    for table in tables:
        store.write_version(
            table,
            EARLIER,
            [{"customer_id": "C-earlier", "release": "earlier"}],
            key_column="customer_id",
            release_id="r-earlier",
            partition="2024-12-31",
            content_hash="sha256:earlier",
        )
    store.switch_tables(
        dict.fromkeys(tables, EARLIER), expected=dict.fromkeys(tables), release=(None, "r-earlier")
    )


def _on_earlier(store: OnlineStore) -> bool:
    """Whether every table still serves the earlier release, wholly."""
    return all(
        store.current(table).version == EARLIER
        and store.get(table, ["C-earlier"])
        == {"C-earlier": {"customer_id": "C-earlier", "release": "earlier"}}
        for table in TABLES
    )


def _in_step(store: OnlineStore, spark, lake: Lake) -> bool:
    """Whether every table serves its newest production partition, every key read back as offline."""
    release = lake.catalog.current_release().release_id
    return all(
        _served(store, spark, lake, table)[1] and store.current(table).release_id == release
        for table in TABLES
    ) and all(item["in_step"] for item in online_status(lake.catalog, store))


def _drop_last_row(lake: Lake, table: str, day: str) -> tuple[bytes, int]:
    """Someone rewrote the table's staged file of `day` without its last row; returns the original file
    and its row count."""
    [key] = lake.catalog.get_batch("jan").tables[table][day].files
    path = lake.root / key
    original = path.read_bytes()
    rows = rewrite_rows(path, lambda rows: rows.slice(0, rows.num_rows - 1))
    return original, rows.num_rows


def test_a_failure_on_the_second_table_switches_none_and_names_it(lake: Lake, online: OnlineStore, spark):
    session = lambda: spark  # noqa: E731
    _on_earlier_versions(online)
    release = _promote(lake, "jan")
    original, rows = _drop_last_row(lake, PROFILE, "2025-01-04")  # the second table, after the daily one
    with pytest.raises(OnlineParityError) as error:
        sync_release(session, lake.catalog, online)
    assert _on_earlier(online)  # the daily table, staged before it, was not switched either
    assert re.match(f"online table {PROFILE}: .*rows: {rows - 1} online, {rows} offline", str(error.value))
    assert str(error.value).endswith("readers stay on the versions they had: no table was switched")
    assert f"not switched: readers stay on version {EARLIER};" in str(error.value)
    [failed] = [event for event in lake.catalog.events() if event.kind == "online_sync_failed"]
    assert failed.release_id == release and failed.details["table"] == PROFILE
    assert not any(event.kind == "online_synced" for event in lake.catalog.events())

    [key] = lake.catalog.get_batch("jan").tables[PROFILE]["2025-01-04"].files
    (lake.root / key).write_bytes(original)
    synced = {sync.table: sync.action for sync in sync_release(session, lake.catalog, online)}
    # The daily table's version was written and read back before: switched to, not loaded again.
    assert synced == {DAILY: "switched", PROFILE: "loaded", THIRTY_DAY: "loaded", SEVEN_DAY: "loaded"}
    assert _in_step(online, spark, lake)
    assert online.synced_release() == release


@pytest.mark.crash
def test_a_sync_killed_mid_write_leaves_every_table_on_the_old_release_and_a_rerun_completes(
    lake: Lake, spark, tmp_path: Path
):
    """On the embedded store (the child starts a Spark JVM of its own); tests/test_online_store.py kills
    a writer on both backends."""
    path = tmp_path / "online.db"
    with SqliteOnlineStore(path) as online:
        _on_earlier_versions(online)
    _promote(lake, "jan")
    child = subprocess.run(
        [sys.executable, str(CRASH_CHILD), "mid_online_sync", str(lake.root), f"sqlite:///{path}", "-"],
        start_new_session=True,
        capture_output=True,
        timeout=600,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-3000:]
    with SqliteOnlineStore(path) as online:
        assert _on_earlier(online)  # the daily table was staged, the profile half written: nothing switched
        # The killed sync's lease on the half-written version is taken over at once (its process is gone).
        synced = {sync.table: sync.action for sync in sync_release(lambda: spark, lake.catalog, online)}
        assert synced == {DAILY: "switched", PROFILE: "loaded", THIRTY_DAY: "loaded", SEVEN_DAY: "loaded"}
        assert _in_step(online, spark, lake)


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
