"""The online store on both backends (an SQLite file, and a real redis-server): what readers see through
writes, switches, crashes, rollbacks and pruning, values read back exactly, and parity with offline rows."""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path

import pytest
from dagster_services import free_port
from redis_server import RedisServer, RedisUnavailable, find_redis_server
from skipped_suites import skip_suite

from backfills.errors import (
    ConfigurationError,
    InvalidRequestError,
    OnlineStoreError,
    OnlineVersionChangedError,
)
from backfills.resources.canary_slice import in_slice
from backfills.serving import online_store
from backfills.serving.online_redis import RedisOnlineStore
from backfills.serving.online_sqlite import SqliteOnlineStore
from backfills.serving.online_store import OnlineStore, OnlineVersion, WriterLease, open_online_store
from backfills.serving.parity import ValueMismatch, parity

TABLE = "customer_txn_7d"
KEY = "customer_id"
CRASH_CHILD = Path(__file__).with_name("crash_child.py")


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], OnlineStore]:
    """Opens a handle on one online store, as each process of a deployment does: an SQLite file, or a key
    prefix of the test's own on the Redis server. The caller closes what it opens."""
    if request.param == "sqlite":
        return partial(SqliteOnlineStore, tmp_path / "online.db")
    server = request.getfixturevalue("redis_server")
    return partial(RedisOnlineStore, server.url, key_prefix=f"test:{uuid.uuid4().hex}")


@pytest.fixture
def store(open_store: Callable[[], OnlineStore]) -> Iterator[OnlineStore]:
    with open_store() as opened:
        yield opened


def customer(index: int, release: int = 1) -> dict[str, object]:
    """One row of the 7-day table; each release has other values."""
    return {
        KEY: f"C{index:06d}",
        "txn_count_7d": index % 50 + release,
        "amount_sum_7d": index * 0.1 * release,
        "last_txn_day": date(2025, 3, release),
    }


def customers(count: int, release: int = 1) -> Iterator[dict[str, object]]:
    return (customer(index, release) for index in range(count))


def read_back(row: Mapping[str, object]) -> dict[str, object]:
    """A row as readers get it: dates as ISO strings."""
    return {column: value.isoformat() if isinstance(value, date) else value for column, value in row.items()}


def write(
    store: OnlineStore,
    version: str,
    rows: Iterable[Mapping[str, object]],
    partition: str = "2025-03-01",
    *,
    table: str = TABLE,
    lease: WriterLease | None = None,
) -> OnlineVersion:
    return store.write_version(
        table,
        version,
        rows,
        key_column=KEY,
        release_id=f"rel-{version}",
        partition=partition,
        content_hash=f"sha256:{version}",
        lease=lease,
    )


# What readers see


def test_readers_get_exactly_the_values_written(store: OnlineStore) -> None:
    rows = [
        {
            KEY: "C1",
            "amount": 0.1 + 0.2,
            "count": 7,
            "big": 2**62 + 1,
            "flag": True,
            "note": None,
            "day": date(2025, 3, 1),
            "at": datetime(2025, 3, 1, 12, 30, tzinfo=UTC),
            "ratio": Decimal("0.125"),
            "tags": ["card", "online"],
            "name": "Zoë",
        },
        {
            KEY: "C2",
            "amount": -0.0,
            "count": 0,
            "big": -1,
            "flag": False,
            "note": "reissued",
            "day": date(2025, 3, 2),
            "at": datetime(2025, 3, 2, 0, 0, tzinfo=UTC),
            "ratio": Decimal("1E-7"),
            "tags": [],
            "name": "",
        },
    ]
    written = write(store, "v1", rows)
    assert (written.rows, written.columns, written.synced_at) == (2, tuple(rows[0]), None)
    store.switch(TABLE, "v1", expected_current=None)

    found = store.get(TABLE, ["C1", "C2", "C404"])

    assert found["C1"] == {
        KEY: "C1",
        "amount": 0.30000000000000004,
        "count": 7,
        "big": 4611686018427387905,
        "flag": True,
        "note": None,
        "day": "2025-03-01",
        "at": "2025-03-01T12:30:00+00:00",
        "ratio": "0.125",
        "tags": ["card", "online"],
        "name": "Zoë",
    }
    assert type(found["C1"]["count"]) is int and type(found["C1"]["amount"]) is float
    assert math.copysign(1.0, found["C2"]["amount"]) == -1.0
    assert found["C2"]["ratio"] == "1E-7"
    assert found["C404"] is None
    assert store.get(TABLE, ["C2", "C1"], columns=["count", "amount"]) == {
        "C2": {"count": 0, "amount": -0.0},
        "C1": {"count": 7, "amount": 0.30000000000000004},
    }


def test_readers_stay_on_the_old_version_while_a_new_one_is_written(
    open_store: Callable[[], OnlineStore],
) -> None:
    with open_store() as writer, open_store() as reader:
        write(writer, "v1", customers(10))
        writer.switch(TABLE, "v1", expected_current=None)
        seen_mid_write = []

        def release_2_rows() -> Iterator[dict[str, object]]:
            for index in range(12_000):  # more than two chunks: some are committed when the reader looks
                if index == 11_000:
                    seen_mid_write.append(
                        (
                            reader.get(TABLE, ["C000001"]),
                            reader.has_version(TABLE, "v2"),
                            reader.current(TABLE),
                        )
                    )
                yield customer(index, release=2)

        write(writer, "v2", release_2_rows())

        ((row_seen, v2_visible, current_seen),) = seen_mid_write
        assert row_seen == {"C000001": read_back(customer(1))}
        assert not v2_visible
        assert current_seen is not None and current_seen.version == "v1"
        assert reader.get(TABLE, ["C011999"]) == {"C011999": None}  # written, not switched to
        writer.switch(TABLE, "v2", expected_current="v1")
        assert reader.get(TABLE, ["C000001", "C011999"]) == {
            "C000001": read_back(customer(1, release=2)),
            "C011999": read_back(customer(11_999, release=2)),
        }


def test_crash_mid_write_never_exposes_the_version_and_a_retry_completes_it(store: OnlineStore) -> None:
    write(store, "v1", customers(100))
    store.switch(TABLE, "v1", expected_current=None)

    def rows_until_the_executor_dies() -> Iterator[dict[str, object]]:
        for row in customers(20_000, release=2):
            if row[KEY] == "C012345":
                raise RuntimeError("executor lost")
            yield row

    with pytest.raises(RuntimeError, match="executor lost"):
        write(store, "v2", rows_until_the_executor_dies())

    assert not store.has_version(TABLE, "v2")
    assert [kept.version for kept in store.versions(TABLE)] == ["v1"]
    with pytest.raises(OnlineStoreError, match="version v2: it is not completely written"):
        store.switch(TABLE, "v2", expected_current="v1")
    assert store.current(TABLE).version == "v1"
    assert store.get(TABLE, ["C000005", "C000150"]) == {"C000005": read_back(customer(5)), "C000150": None}

    retried = write(store, "v2", customers(20_000, release=2))
    store.switch(TABLE, "v2", expected_current="v1")

    assert retried.rows == 20_000
    assert store.get(TABLE, ["C000005", "C019999"]) == {
        "C000005": read_back(customer(5, release=2)),
        "C019999": read_back(customer(19_999, release=2)),
    }


# Switching: compare-and-swap, rollback, pruning


def test_switch_refuses_a_stale_expected_current(open_store: Callable[[], OnlineStore]) -> None:
    with open_store() as first, open_store() as second:
        for release in (1, 2, 3):
            write(first, f"v{release}", customers(5, release))
        first.switch(TABLE, "v1", expected_current=None)
        first.switch(TABLE, "v2", expected_current="v1")

        with pytest.raises(OnlineVersionChangedError, match="is on version v2, not v1 as expected"):
            second.switch(TABLE, "v3", expected_current="v1")
        with pytest.raises(OnlineVersionChangedError, match=r"not none \(never synced\) as expected"):
            second.switch(TABLE, "v3", expected_current=None)

        assert second.current(TABLE).version == "v2"
        assert second.get(TABLE, ["C000004"]) == {"C000004": read_back(customer(4, 2))}


def test_of_racing_switches_from_the_same_version_exactly_one_wins(
    open_store: Callable[[], OnlineStore],
) -> None:
    with open_store() as setup:
        for release in range(5):
            write(setup, f"v{release}", customers(3, release + 1))
        setup.switch(TABLE, "v0", expected_current=None)
        barrier = threading.Barrier(4)
        outcomes: list[str] = []

        def switch_to(version: str) -> None:
            with open_store() as handle:  # SQLite connections stay in the thread that opened them
                barrier.wait()
                try:
                    handle.switch(TABLE, version, expected_current="v0")
                    outcomes.append(version)
                except OnlineVersionChangedError:
                    outcomes.append("refused")

        racers = [threading.Thread(target=switch_to, args=(f"v{release}",)) for release in range(1, 5)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join()

        winners = [outcome for outcome in outcomes if outcome != "refused"]
        assert len(outcomes) == 4 and len(winners) == 1
        assert setup.current(TABLE).version == winners[0]


def test_several_tables_switch_in_one_step_or_none_of_them(open_store: Callable[[], OnlineStore]) -> None:
    tables = ["customer_daily_txn", "customer_risk_profile", "customer_txn_30d"]
    with open_store() as store, open_store() as reader:
        for table in tables:
            for release in (1, 2):
                write(store, f"v{release}", customers(3, release), table=table)
        store.switch_tables(dict.fromkeys(tables, "v1"), expected=dict.fromkeys(tables), release=(None, "r1"))

        def on(release: int) -> bool:
            row = {"C000002": read_back(customer(2, release))}
            return all(reader.get(table, ["C000002"]) == row for table in tables)

        def switch_to_2(versions: dict[str, str], expected: dict[str, str], release: str | None) -> None:
            store.switch_tables(versions, expected=expected, release=(release, "r2"))

        v1, v2 = dict.fromkeys(tables, "v1"), dict.fromkeys(tables, "v2")
        # Another sync moved the second table first: none of the three switches.
        with pytest.raises(
            OnlineVersionChangedError, match="'customer_risk_profile' is on version v1, not v2"
        ):
            switch_to_2(v2, {**v1, "customer_risk_profile": "v2"}, "r1")
        assert on(1) and store.synced_release() == "r1"
        with pytest.raises(OnlineStoreError, match="'customer_txn_30d' to version v3: it is not completely"):
            switch_to_2({**v2, "customer_txn_30d": "v3"}, v1, "r1")
        assert on(1)
        # A sync that started before another one switched the store (to r1) never switches after it.
        with pytest.raises(OnlineVersionChangedError, match="synced to release r1, not r0 as expected"):
            switch_to_2(v2, v1, "r0")
        assert on(1)

        switched = store.switch_tables(v2, expected=v1, release=("r1", "r2"))
        assert sorted(switched) == tables and {record.release_id for record in switched.values()} == {
            "rel-v2"
        }
        assert on(2) and reader.synced_release() == "r2"


def test_a_second_writer_of_a_version_waits_for_the_first_then_finds_it_written(
    open_store: Callable[[], OnlineStore],
) -> None:
    found: list[tuple[bool, bool]] = []

    def second_writer() -> None:
        with open_store() as handle, handle.writer_lease(TABLE, "v1") as lease:
            found.append((lease.inherited, handle.has_version(TABLE, "v1")))

    with open_store() as store, store.writer_lease(TABLE, "v1") as lease:
        waiting = threading.Thread(target=second_writer)
        waiting.start()
        waiting.join(timeout=0.5)
        assert waiting.is_alive() and found == []  # it waits while the first one holds the lease
        write(store, "v1", customers(10), lease=lease)
    waiting.join(timeout=10)
    assert found == [(False, True)]  # then finds the version written: nothing to write again


def _child_store_arguments(open_store: Callable[[], OnlineStore]) -> list[str]:
    """The store `open_store` opens, as the crash child takes it: URL and key prefix."""
    if open_store.func is SqliteOnlineStore:  # type: ignore[attr-defined]
        [path] = open_store.args  # type: ignore[attr-defined]
        return [f"sqlite:///{path}", "-"]
    [url] = open_store.args  # type: ignore[attr-defined]
    return [url, open_store.keywords["key_prefix"]]  # type: ignore[attr-defined]


def test_a_version_whose_writer_was_killed_mid_write_is_taken_over_at_once_and_written_again(
    open_store: Callable[[], OnlineStore],
) -> None:
    with open_store() as store:
        write(store, "v1", customers(5))
        store.switch(TABLE, "v1", expected_current=None)
    child = subprocess.run(
        [sys.executable, str(CRASH_CHILD), "mid_online_write", "-", *_child_store_arguments(open_store)],
        start_new_session=True,
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-3000:]
    with open_store() as store:
        assert not store.has_version(TABLE, "v2") and store.current(TABLE).version == "v1"
        started = time.monotonic()
        with store.writer_lease(TABLE, "v2") as lease:
            # Its holder's process is gone: no waiting for its lease to expire.
            assert lease.inherited and time.monotonic() - started < 5
            write(store, "v2", customers(100, 2), lease=lease)
        store.switch(TABLE, "v2", expected_current="v1")
        assert store.current(TABLE).rows == 100
        assert store.get(TABLE, ["C000099"]) == {"C000099": read_back(customer(99, 2))}


def test_a_writer_on_another_host_keeps_its_lease_until_it_expires(
    open_store: Callable[[], OnlineStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its process number means nothing here, even if no process of this host has it: only the lease's
    expiry tells that it died."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    elsewhere = f"another-host:{int(gone.stdout)}:0123456789ab"
    monkeypatch.setattr(online_store, "_new_owner", lambda: elsewhere)
    with open_store() as remote:
        remote.lease_seconds = 1.0
        with remote.writer_lease(TABLE, "v1"):
            monkeypatch.undo()
            with open_store() as local:
                started = time.monotonic()
                with local.writer_lease(TABLE, "v1") as lease:
                    waited = time.monotonic() - started
    assert lease.inherited and waited >= 0.9  # taken over when the lease expired, not at once


def test_a_live_writer_on_this_host_keeps_its_lease_until_it_expires_and_is_left_alone(
    open_store: Callable[[], OnlineStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asking whether a writer of this host still runs must neither take its lease at once nor signal it."""
    # Default signal handling, whatever this process ignores (under nohup, SIGHUP): a signal stops it.
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_DFL); time.sleep(60)",
        ]
    )
    try:
        monkeypatch.setattr(online_store, "_new_owner", lambda: f"{socket.gethostname()}:{writer.pid}:0123")
        with open_store() as holder:
            holder.lease_seconds = 1.0
            with holder.writer_lease(TABLE, "v1"):
                monkeypatch.undo()
                with open_store() as local:
                    started, cpu = time.monotonic(), time.thread_time()
                    with local.writer_lease(TABLE, "v1") as lease:
                        waited, busy = time.monotonic() - started, time.thread_time() - cpu
        assert lease.inherited and waited >= 0.9  # its process runs: taken over only when the lease expired
        assert busy < waited / 3  # it waited between claims, it did not spin on the store
        assert writer.poll() is None, f"the lease holder's process was stopped (exit {writer.returncode})"
    finally:
        writer.kill()
        writer.wait()


def test_a_writer_of_another_user_on_this_host_counts_as_running() -> None:
    """Signalling another user's process is not allowed: that says it runs, not that it died. Checked from a
    forked child that is another user (nobody) when the tests run as root, of process 1 (root's init)."""
    if os.getuid() != 0 and os.stat("/proc/1").st_uid == os.getuid():
        pytest.skip("process 1 is this user's own here, and only root can become another user")
    holder = f"{socket.gethostname()}:1:0123"
    child = os.fork()
    if child == 0:  # pragma: no cover (the child's exit code is the result)
        code = 3
        try:
            if os.getuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            code = 1 if online_store._holder_died(holder) else 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "a running process of another user was taken for dead"


def test_a_writer_whose_lease_expired_and_was_taken_over_stops_writing(
    open_store: Callable[[], OnlineStore],
) -> None:
    with open_store() as slow, open_store() as other:
        slow.lease_seconds = 0.2
        with slow.writer_lease(TABLE, "v1") as stale:
            time.sleep(0.5)  # the slow writer stalls past its lease
            with other.writer_lease(TABLE, "v1") as taken_over:
                assert taken_over.inherited
                write(other, "v1", customers(4, 2), lease=taken_over)
            with pytest.raises(OnlineStoreError, match="no longer holds the lease on version v1"):
                write(slow, "v1", customers(9, 3), lease=stale)
        assert other.get_version(TABLE, "v1", ["C000003", "C000005"]) == {
            "C000003": read_back(customer(3, 2)),
            "C000005": None,
        }


def test_rollback_switches_back_to_a_kept_version_without_rewriting_it(store: OnlineStore) -> None:
    write(store, "v1", customers(5, 1))
    write(store, "v2", customers(5, 2))
    first_sync = store.switch(TABLE, "v1", expected_current=None)
    store.switch(TABLE, "v2", expected_current="v1")
    kept_before = [(kept.version, kept.written_at) for kept in store.versions(TABLE)]

    rolled_back = store.switch(TABLE, "v1", expected_current="v2")

    assert rolled_back.release_id == "rel-v1"
    assert rolled_back.synced_at > first_sync.synced_at
    assert store.get(TABLE, ["C000003"]) == {"C000003": read_back(customer(3, 1))}
    assert [(kept.version, kept.written_at) for kept in store.versions(TABLE)] == kept_before


def test_prune_keeps_the_newest_versions_and_never_the_current_one(store: OnlineStore) -> None:
    for release in range(1, 6):
        write(store, f"v{release}", customers(3, release))
    store.switch(TABLE, "v1", expected_current=None)  # readers on the oldest, as after a rollback

    assert store.prune(TABLE, keep=2) == ["v3", "v2"]

    assert [kept.version for kept in store.versions(TABLE)] == ["v5", "v4", "v1"]
    assert not store.has_version(TABLE, "v2")
    with pytest.raises(
        OnlineStoreError, match=r"version v2 of table 'customer_txn_7d' is not kept.*v5, v4, v1"
    ):
        store.get_version(TABLE, "v2", ["C000001"])
    assert store.get(TABLE, ["C000001"]) == {"C000001": read_back(customer(1, 1))}
    assert store.prune(TABLE) == []  # three kept: the default
    with pytest.raises(InvalidRequestError, match="keep=0"):
        store.prune(TABLE, keep=0)


def test_a_discarded_version_is_gone_but_the_one_readers_are_on_stays(store: OnlineStore) -> None:
    """What a rollback drill does with its shadow table once it has read it back."""
    write(store, "v1", customers(3, 1))
    store.switch(TABLE, "v1", expected_current=None)
    write(store, "v2", customers(3, 2))

    assert store.discard(TABLE, ["v1", "v2"]) == ["v2"]

    assert [kept.version for kept in store.versions(TABLE)] == ["v1"] and not store.has_version(TABLE, "v2")
    assert store.get(TABLE, ["C000001"]) == {"C000001": read_back(customer(1, 1))}


def test_the_canary_slice_reads_its_routed_version_and_the_rest_the_current_one(store: OnlineStore) -> None:
    for release in range(1, 5):
        write(store, f"v{release}", customers(200, release))
    store.switch(TABLE, "v1", expected_current=None)
    keys = [f"C{index:06d}" for index in range(200)]
    assert store.canary_route(TABLE) is None
    assert store.get(TABLE, keys, channel="canary") == store.get(TABLE, keys)  # no canary: production

    route = store.route_canary(TABLE, "v2", percent=20, release_id="rel-canary")
    assert (route.version, route.percent) == ("v2", 20)
    rows = store.get(TABLE, keys, ["txn_count_7d"], channel="canary")
    exposed = [key for key in keys if in_slice(key, 20)]
    assert 20 < len(exposed) < 60 and list(rows) == keys  # input order
    for index, key in enumerate(keys):
        expected = customer(index, 2 if key in exposed else 1)["txn_count_7d"]
        assert rows[key] == {"txn_count_7d": expected}
    assert store.get(TABLE, keys) == {key: read_back(customer(i, 1)) for i, key in enumerate(keys)}

    assert store.prune(TABLE, keep=1) == ["v3"]  # never the current (v1) nor the canary's (v2)
    with pytest.raises(OnlineStoreError, match="cannot switch online table .* to version v9"):
        store.route_canary(TABLE, "v9", percent=20, release_id="rel-canary")
    store.clear_canary(TABLE)
    assert store.canary_route(TABLE) is None
    assert store.get(TABLE, keys, channel="canary") == store.get(TABLE, keys)


def test_keys_outside_the_canary_slice_are_read_from_the_current_version_alone(store: OnlineStore) -> None:
    """The canary's version may have other columns (a changed table): a read of keys none of which is in
    the slice never touches it."""
    write(store, "v1", customers(200))
    write(store, "v2", ({KEY: row[KEY], "txn_count_7d": 0} for row in customers(200, 2)))
    store.switch(TABLE, "v1", expected_current=None)
    store.route_canary(TABLE, "v2", percent=20, release_id="rel-canary")
    outside = [key for key in (f"C{index:06d}" for index in range(200)) if not in_slice(key, 20)][:5]
    rows = store.get(TABLE, outside, ["amount_sum_7d"], channel="canary")
    assert rows == {key: {"amount_sum_7d": customer(int(key[1:]))["amount_sum_7d"]} for key in outside}


def test_rewriting_a_version_replaces_it_whole_but_never_the_one_readers_are_on(store: OnlineStore) -> None:
    write(store, "v1", customers(3, 1))

    rewritten = write(store, "v1", customers(2, 2))

    assert rewritten.rows == 2
    assert store.get_version(TABLE, "v1", ["C000000", "C000002"]) == {
        "C000000": read_back(customer(0, 2)),
        "C000002": None,
    }
    store.switch(TABLE, "v1", expected_current=None)
    with pytest.raises(OnlineStoreError, match="is the one readers are on"):
        write(store, "v1", customers(1, 3))
    assert store.get(TABLE, ["C000001"]) == {"C000001": read_back(customer(1, 2))}


def test_versions_are_listed_newest_first_with_their_metadata(store: OnlineStore) -> None:
    write(store, "v1", customers(4, 1), partition="2025-03-01")
    write(store, "v2", customers(6, 2), partition="2025-03-02")
    store.switch(TABLE, "v2", expected_current=None)

    newest, oldest = store.versions(TABLE)

    assert (newest.version, newest.release_id, newest.partition, newest.content_hash, newest.rows) == (
        "v2",
        "rel-v2",
        "2025-03-02",
        "sha256:v2",
        6,
    )
    assert newest.columns == (KEY, "txn_count_7d", "amount_sum_7d", "last_txn_day")
    assert newest.written_at.utcoffset().total_seconds() == 0 and newest.synced_at >= newest.written_at
    assert (oldest.version, oldest.rows, oldest.synced_at) == ("v1", 4, None)
    assert store.current(TABLE) == newest


# Errors that say what to do


def test_an_unknown_column_is_named_with_the_known_ones(store: OnlineStore) -> None:
    write(store, "v1", customers(2))
    store.switch(TABLE, "v1", expected_current=None)

    with pytest.raises(OnlineStoreError) as refused:
        store.get(TABLE, ["C000001"], columns=["amount_sum_7d", "amount_sum_90d"])

    assert "unknown column(s) 'amount_sum_90d' in table 'customer_txn_7d'" in str(refused.value)
    assert "known columns: customer_id, txn_count_7d, amount_sum_7d, last_txn_day" in str(refused.value)


def test_a_table_never_synced_cannot_be_read(store: OnlineStore) -> None:
    assert store.current(TABLE) is None
    write(store, "v1", customers(2))

    with pytest.raises(OnlineStoreError, match="'customer_txn_7d' was never synced to the online store at"):
        store.get(TABLE, ["C000001"])
    assert store.get_version(TABLE, "v1", ["C000001"]) == {"C000001": read_back(customer(1))}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        pytest.param(
            [customer(0), {**customer(1), "amount_sum_7d": float("nan")}],
            r"row 2 \(key 'C000001'\) of version v1 of customer_txn_7d cannot be stored online: column "
            r"'amount_sum_7d' holds nan \(float\)",
            id="nan",
        ),
        pytest.param(
            [{**customer(0), "amount_sum_7d": -math.inf}], "column 'amount_sum_7d' holds -inf", id="infinity"
        ),
        pytest.param(
            [{**customer(0), "amount_sum_7d": Decimal("NaN")}], r"holds Decimal\('NaN'\)", id="decimal-nan"
        ),
        pytest.param([{**customer(0), "raw": b"\x00"}], r"column 'raw' holds b'\\x00' \(bytes\)", id="bytes"),
        pytest.param(
            [customer(0), {**customer(1), KEY: 7}],
            "row 2 of version v1 of customer_txn_7d has the key 7 \\(int\\).*entity keys are strings",
            id="int-key",
        ),
        pytest.param(
            [*customers(6_000), customer(10)],
            "1 of 6001 rows of version v1 of customer_txn_7d repeat an entity key "
            "of key column 'customer_id'",
            id="repeated-key",
        ),
        pytest.param([{"txn_count_7d": 1}], "have no key column 'customer_id'", id="no-key-column"),
        pytest.param(
            [customer(0), {KEY: "C000001", "txn_count_7d": 3}],
            "every row of a version has the same columns",
            id="other-columns",
        ),
    ],
)
def test_rows_the_store_cannot_keep_are_refused_and_never_visible(
    store: OnlineStore, rows: list[dict[str, object]], message: str
) -> None:
    with pytest.raises(OnlineStoreError, match=message):
        write(store, "v1", rows)

    assert not store.has_version(TABLE, "v1")
    with pytest.raises(OnlineStoreError, match="not completely written"):
        store.switch(TABLE, "v1", expected_current=None)


def test_requests_that_cannot_be_read_are_refused(store: OnlineStore) -> None:
    write(store, "v1", customers(2))
    store.switch(TABLE, "v1", expected_current=None)

    with pytest.raises(
        InvalidRequestError, match="keys must be a sequence of entity IDs, not the one string"
    ):
        store.get(TABLE, "C000001")
    with pytest.raises(InvalidRequestError, match="entity key 1 is of type int: keys are strings"):
        store.get(TABLE, ["C000001", 1])
    with pytest.raises(InvalidRequestError, match="'customer:txn' cannot name an online table"):
        store.get("customer:txn", ["C000001"])
    with pytest.raises(InvalidRequestError, match="partition '03/01/2025' is not a day"):
        write(store, "v2", customers(2), partition="03/01/2025")


def test_names_that_cannot_name_an_online_table_or_version_are_refused_before_anything_is_written(
    store: OnlineStore,
) -> None:
    write(store, "v1", customers(2))
    store.switch(TABLE, "v1", expected_current=None)
    before = (store.versions(TABLE), store.get(TABLE, ["C000001"]))
    with store.writer_lease(TABLE, "v2") as lease:
        for table, version in (("customer:txn", "v2"), (TABLE, "v2/../v1")):
            bad = "'customer:txn'" if table != TABLE else "'v2/../v1'"
            refused = f"{re.escape(bad)} cannot name an online table"
            with pytest.raises(InvalidRequestError, match=refused):
                write(store, version, customers(2), table=table, lease=lease)
            with pytest.raises(InvalidRequestError, match=refused):
                with store.writer_lease(table, version):
                    pass
            with pytest.raises(InvalidRequestError, match=refused):
                store.switch_tables({table: version}, expected={table: None})
            with pytest.raises(InvalidRequestError, match=refused):
                store.route_canary(table, version, percent=10, release_id="rel-v2")
            with pytest.raises(InvalidRequestError, match=refused):
                store.get_version(table, version, ["C000001"])
        for refuse_a_bad_table in (
            lambda: store.discard("customer:txn", ["v1"]),
            lambda: store.clear_canary("customer:txn"),
            lambda: store.canary_route("customer:txn"),
            lambda: store.current("customer:txn"),
            lambda: store.versions("customer:txn"),
            lambda: store.has_version("customer:txn", "v1"),
        ):
            with pytest.raises(InvalidRequestError, match="'customer:txn' cannot name an online table"):
                refuse_a_bad_table()
        with pytest.raises(InvalidRequestError, match="keys must be a sequence of entity IDs"):
            store.get_version(TABLE, "v1", "C000001")
        with pytest.raises(InvalidRequestError, match="'v2/../v1' cannot name an online table"):
            store.has_version(TABLE, "v2/../v1")
        with pytest.raises(InvalidRequestError, match="the lease on version v2 .* cannot write version v3"):
            write(store, "v3", customers(2), lease=lease)
    assert (store.versions(TABLE), store.get(TABLE, ["C000001"])) == before
    assert not store.has_version(TABLE, "v3")


def test_switching_needs_the_expected_version_of_every_table(store: OnlineStore) -> None:
    write(store, "v1", customers(2))
    with pytest.raises(InvalidRequestError, match=f"no expected current version given for {TABLE}"):
        store.switch_tables({TABLE: "v1"}, expected={})
    assert store.current(TABLE) is None
    assert store.switch_tables({}, expected={}) == {}  # nothing asked, nothing switched
    assert store.synced_release() is None
    # A release synced without any table to switch is still the store's release from then on.
    assert store.switch_tables({}, expected={}, release=(None, "rel-1")) == {}
    assert store.synced_release() == "rel-1"


def test_an_abandoned_version_is_thrown_away_and_its_lease_freed(store: OnlineStore) -> None:
    with store.writer_lease(TABLE, "v1") as lease:
        write(store, "v1", customers(3), lease=lease)
        store.abandon(lease)  # say its rows did not read back equal
        assert not store.has_version(TABLE, "v1")
    with store.writer_lease(TABLE, "v1") as again:
        assert not again.inherited  # released, not left to expire
    with pytest.raises(OnlineStoreError, match="not completely written"):
        store.switch(TABLE, "v1", expected_current=None)


# Parity with the offline rows


def test_parity_passes_when_the_online_rows_equal_the_offline_ones(store: OnlineStore) -> None:
    offline = {row[KEY]: row for row in customers(2_500)}
    write(store, "v1", offline.values())

    sampled = parity(store, TABLE, "v1", offline, sample_size=1_000)
    every_key = parity(store, TABLE, "v1", offline, sample_size=5_000)

    assert sampled.passed, sampled.summary()
    assert (sampled.keys_checked, sampled.offline_rows, sampled.online_rows) == (1_000, 2_500, 2_500)
    assert every_key.passed and every_key.keys_checked == 2_500
    assert sampled.summary() == (
        "online table customer_txn_7d version v1: 1000 of 2500 keys read back equal the offline rows"
    )


def test_parity_reports_a_changed_float_an_int_turned_float_and_a_missing_key(store: OnlineStore) -> None:
    offline = {row[KEY]: row for row in customers(50)}
    online = {key: dict(row) for key, row in offline.items() if key != "C000011"}
    online["C000007"]["amount_sum_7d"] = math.nextafter(offline["C000007"]["amount_sum_7d"], math.inf)
    online["C000020"]["txn_count_7d"] = float(offline["C000020"]["txn_count_7d"])
    write(store, "v1", online.values())

    result = parity(store, TABLE, "v1", offline)

    assert not result.passed
    assert result.mismatches == (
        ValueMismatch(
            "C000007",
            "amount_sum_7d",
            offline["C000007"]["amount_sum_7d"],
            online["C000007"]["amount_sum_7d"],
        ),
        ValueMismatch("C000020", "txn_count_7d", 21, 21.0),
    )
    assert (result.missing_keys, result.missing_count, result.mismatch_count) == (("C000011",), 1, 2)
    assert (result.online_rows, result.offline_rows, result.keys_checked) == (49, 50, 50)
    assert result.summary() == (
        "online table customer_txn_7d version v1 differs from the offline rows (50 keys read back): "
        "rows: 49 online, 50 offline; missing keys: 1 (C000011); differing values: 2 (first: key C000007 "
        "column amount_sum_7d: offline 0.7000000000000001, online 0.7000000000000002)"
    )


def test_a_hundred_thousand_rows_are_written_and_read_back(store: OnlineStore) -> None:
    written = write(store, "v1", customers(100_000))
    store.switch(TABLE, "v1", expected_current=None)

    sample = [f"C{index:06d}" for index in range(0, 100_000, 997)]
    assert written.rows == 100_000
    assert store.get(TABLE, sample) == {key: read_back(customer(int(key[1:]))) for key in sample}
    assert parity(store, TABLE, "v1", {row[KEY]: row for row in customers(100_000)}).passed


# Choosing the store from BACKFILLS_ONLINE_STORE


def test_an_absolute_sqlite_url_opens_that_file(tmp_path: Path) -> None:
    path = tmp_path / "serving" / "online.db"
    with open_online_store(f"sqlite://{path}") as store:
        write(store, "v1", customers(1))
        assert isinstance(store, SqliteOnlineStore)
        assert store.describe() == f"sqlite://{path}"
    # SQLAlchemy's spelling of an absolute path (four slashes) names the same file.
    with open_online_store(f"sqlite:///{path}") as store:
        assert store.has_version(TABLE, "v1")
    with pytest.raises(sqlite3.ProgrammingError, match="closed database"):  # the block released it
        store.has_version(TABLE, "v1")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://admin:hunter2@db:5432/features",
        "sqlite:online.db",
        "sqlite://db-host/online.db",
        "redis-cache:6379",
        "redis://reader:hunter2@[::1:6379/0",
        "",
    ],
)
def test_a_bad_url_names_the_variable_and_the_accepted_forms_but_no_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        open_online_store(url)

    message = str(refused.value)
    assert message.startswith("BACKFILLS_ONLINE_STORE=")
    if "[" in url:  # not even a URL: all of it but its scheme is hidden
        assert message.startswith("BACKFILLS_ONLINE_STORE='redis:… (not a valid URL; hidden in case")
    assert "sqlite:///absolute/path.db" in message and "redis://[user:password@]host:port/db" in message
    assert "hunter2" not in message


@pytest.mark.parametrize("scheme", ["redis", "rediss"])  # rediss: over TLS
def test_an_unreachable_redis_is_named_without_its_password(scheme: str) -> None:
    port = free_port()

    with pytest.raises(OnlineStoreError) as refused:
        open_online_store(f"{scheme}://reader:hunter2@127.0.0.1:{port}/0?password=hunter2")

    assert f"cannot reach the online store at {scheme}://reader@127.0.0.1:{port}/0:" in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_a_redis_with_a_password_serves_reads_and_never_shows_it(tmp_path: Path) -> None:
    try:
        binary = find_redis_server()
    except RedisUnavailable as missing:
        skip_suite(str(missing))
    with RedisServer(tmp_path / "redis", password="hunter2", binary=binary) as server:
        with open_online_store(server.url) as store:
            write(store, "v1", customers(3))
            store.switch(TABLE, "v1", expected_current=None)
            assert store.get(TABLE, ["C000002"]) == {"C000002": read_back(customer(2))}
            assert store.describe() == f"redis://127.0.0.1:{server.port}/0"
        with pytest.raises(OnlineStoreError) as refused:
            open_online_store(server.url.replace("hunter2", "wrong-guess"))
        assert "wrong-guess" not in str(refused.value)
