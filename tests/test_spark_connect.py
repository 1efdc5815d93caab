"""The shared local Spark Connect server: runs connect to it instead of starting a JVM each and stage
partitions with the same content hashes as a local session; `start` reuses it and `stop` ends its JVM."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import pytest
from conftest import TEST_PARTITIONS_START, Lake, make_lake

from backfills.assets.registry import FEATURES
from backfills.errors import SparkConnectServerError
from backfills.orchestration.definitions import build_definitions
from backfills.orchestration.local_backfill import run_local_backfill
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.connect_server import server_status, start_server, stop_server

pytestmark = pytest.mark.spark_connect

JAN_1 = date(2025, 1, 1)
JAN_8 = date(2025, 1, 8)
# Plenty for 8 days of 60 customers, and the 2-core machine is shared with other test runs.
SERVER_MEMORY = "1g"
# A server JVM can take a minute to come up on a busy machine.
START_TIMEOUT_S = 240.0


def _cli_env(**overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("BACKFILLS_", "SPARK_"))}
    return env | overrides


def _jvm_is_running(pid: int) -> bool:
    state = subprocess.run(["ps", "-p", str(pid), "-o", "stat="], capture_output=True, text=True).stdout
    # A zombie (Z) has exited; it only waits for its parent to reap it.
    return state.strip() != "" and not state.strip().startswith("Z")


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _staged(catalog: ReleaseCatalog) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], str]]:
    """The content hash of every staged partition, and the verdict of every check, of the only batch."""
    [batch] = catalog.list_batches()
    assert batch.state == "checked", batch.blocking_failures()
    hashes = {
        (table, day): record.content_hash
        for table, partitions in batch.tables.items()
        for day, record in partitions.items()
    }
    return hashes, {(record.table, record.check): record.verdict for record in batch.checks}


@pytest.fixture
def connect_cli(tmp_path: Path) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """`python -m backfills.resources.connect_server ARGS --state-dir DIR`, and a stop at the end whatever
    happened (one server JVM per test run is all the 2-core machine should pay for)."""
    state_dir = tmp_path / "spark"
    command = [sys.executable, "-m", "backfills.resources.connect_server"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args, "--state-dir", str(state_dir)],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S + 60,
            env=_cli_env(BACKFILLS_SPARK_DRIVER_MEMORY=SERVER_MEMORY),
        )

    try:
        yield cli
    finally:
        stop_server(state_dir)


def _serve_a_backfill(
    connect_cli: Callable[..., subprocess.CompletedProcess[str]], remote: Lake, dagster_home: Path
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Start the server (`start` twice: the second reuses it; then `url`) and backfill JAN_1..JAN_8 through
    it, in a process of its own: a Connect session switches the whole process to Connect mode, and the test
    process keeps its local session for the comparison run. Stops at the first command that fails."""
    done: dict[str, subprocess.CompletedProcess[str]] = {}
    began = time.monotonic()
    done["start"] = connect_cli("start", "--port", "0", "--timeout", str(START_TIMEOUT_S))
    print(f"\n`start` (a new server): {time.monotonic() - began:.1f} s")
    if done["start"].returncode != 0:
        return done
    done["again"] = connect_cli("start", "--port", "0")
    done["url"] = connect_cli("url")
    began = time.monotonic()
    done["backfill"] = subprocess.run(
        [sys.executable, "-m", "backfills.orchestration.cli", "--debug", "backfill"]
        + ["--start", JAN_1.isoformat(), "--end", JAN_8.isoformat(), "--requester", "alice"],
        capture_output=True,
        text=True,
        timeout=900,
        env=_cli_env(
            BACKFILLS_SPARK_REMOTE=done["start"].stdout.strip(),
            BACKFILLS_STORAGE_ROOT=str(remote.root),
            BACKFILLS_PARTITIONS_START=TEST_PARTITIONS_START,
            BACKFILLS_SPARK_SHUFFLE_PARTITIONS="2",
            DAGSTER_HOME=str(dagster_home),
        ),
    )
    print(f"backfill through Spark Connect: {time.monotonic() - began:.1f} s")
    return done


def test_one_shared_server_serves_a_backfill_like_a_local_session_and_stops_cleanly(
    connect_cli, lake: Lake, spark, dagster_instance, tmp_path: Path
) -> None:
    remote = make_lake(tmp_path / "remote-lake")
    shutil.copytree(lake.root / "raw", remote.root / "raw")
    # The server's path (its JVM's start, then the backfill through it, all in other processes) runs in a
    # thread beside the comparison backfill in this process's local session: they share nothing, and
    # each spends much of its time waiting on a JVM.
    with ThreadPoolExecutor(max_workers=1) as pool:
        serving = pool.submit(_serve_a_backfill, connect_cli, remote, tmp_path / "remote-dagster")
        began = time.monotonic()
        run_local_backfill(
            build_definitions(lake.settings()),
            dagster_instance,
            start=JAN_1,
            end=JAN_8,
            max_partitions_per_run=31,
            requester="alice",
        )
        print(f"backfill in the local session (at the same time): {time.monotonic() - began:.1f} s")
        done = serving.result()

    first = done["start"]
    assert first.returncode == 0, first.stderr
    url = first.stdout.strip()
    server = server_status(tmp_path / "spark")
    assert server is not None and server.url == url and _jvm_is_running(server.pid)
    again = done["again"]
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == url and "already running, reused" in again.stderr
    assert server_status(tmp_path / "spark") == server and done["url"].stdout.strip() == url
    through_connect = done["backfill"]
    assert through_connect.returncode == 0, through_connect.stdout + through_connect.stderr

    local_hashes, local_verdicts = _staged(lake.catalog)
    assert {table for table, _ in local_hashes} == {spec.name for spec in FEATURES}
    assert len(local_hashes) == len(FEATURES) * 8
    remote_hashes, remote_verdicts = _staged(remote.catalog)
    assert remote_hashes == local_hashes
    # The checks (pandera, Great Expectations, plain Spark) reach the same verdicts through Connect.
    assert remote_verdicts == local_verdicts

    stopped = connect_cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not _jvm_is_running(server.pid) and not _accepts_connections(server.port)
    assert server_status(tmp_path / "spark") is None
    status = connect_cli("status")
    assert status.returncode == 3 and "no Spark Connect server runs" in status.stderr


def test_a_taken_port_is_a_clear_error_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(SparkConnectServerError, match=f"port {port} on 127.0.0.1 is already in use"):
            start_server(port=port, state_dir=tmp_path / "spark")
    assert server_status(tmp_path / "spark") is None


def test_a_server_that_cannot_start_says_why_and_leaves_nothing_running(tmp_path: Path) -> None:
    state_dir = tmp_path / "spark"
    with pytest.raises(SparkConnectServerError, match="Invalid maximum heap size") as failure:
        start_server(port=0, driver_memory="lots", state_dir=state_dir)
    assert "check --master and --driver-memory" in str(failure.value)
    assert server_status(state_dir) is None and not list(state_dir.glob("*.pid"))
