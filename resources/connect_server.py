"""One local Spark Connect server shared by every run on this machine: start, stop and status, in Python
and as `python -m backfills.resources.connect_server start|stop|status|url`.

The server is the one pyspark ships (`sbin/start-connect-server.sh`), so runs need no Spark JVM of their own.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from backfills.errors import BackfillsError, SparkConnectServerError
from backfills.resources.settings import PROJECT_DIR, load_settings
from backfills.resources.spark import spark_conf

DEFAULT_PORT = 15002
# The gRPC endpoint has no authentication, so it never listens beyond this machine.
LOOPBACK = "127.0.0.1"
SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
# spark-daemon.sh names its pid and log files after SPARK_IDENT_STRING ($USER by default); fixing it
# makes the pid file's name known in advance.
IDENT = "backfills"
PID_FILE = f"spark-{IDENT}-{SERVER_CLASS}-1.pid"
STATE_FILE = "connect-server.json"
LOCK_FILE = "connect-server.lock"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
LOG_TAIL_LINES = 25
EXIT_ERROR = 2
EXIT_NOT_RUNNING = 3

# Run in a fresh interpreter: creating a Connect session switches the whole process to Connect mode
# (pyspark sets SPARK_CONNECT_MODE_ENABLED), which must not happen to a caller that uses a local session.
_PROBE = """
import sys
from pyspark.sql import SparkSession
spark = SparkSession.builder.remote(sys.argv[1]).create()
# One small query needs no reattachment, whose asynchronous release would race `stop` (an ERROR in the log).
spark.client.disable_reattachable_execute()
try:
    assert spark.range(1).count() == 1
finally:
    spark.stop()
"""


def default_state_dir() -> Path:
    """`.spark` beside the code in a source checkout (as `.data` is), else in the working directory."""
    base = PROJECT_DIR if (PROJECT_DIR / "pyproject.toml").is_file() else Path.cwd()
    return base / ".spark"


@dataclass(frozen=True)
class ConnectServer:
    """A running local server: its JVM's pid, its port, where it logs; `reused` if it was already running."""

    pid: int
    port: int
    state_dir: Path
    log_file: Path | None
    reused: bool = False

    @property
    def url(self) -> str:
        """The value for BACKFILLS_SPARK_REMOTE."""
        return f"sc://{LOOPBACK}:{self.port}"


def spark_home() -> Path:
    """SPARK_HOME of the installed pyspark, which ships the `sbin` scripts and the Connect server jar."""
    from pyspark.find_spark_home import _find_spark_home

    try:
        home = Path(_find_spark_home())
    except SystemExit:  # it prints where it looked, then exits
        raise SparkConnectServerError(
            "pyspark's Spark was not found: run `make install` (pyspark comes with the package)"
        ) from None
    if not (home / "sbin" / "start-connect-server.sh").is_file():
        raise SparkConnectServerError(
            f"{home} has no sbin/start-connect-server.sh: unset SPARK_HOME to use the Spark that pip "
            "installed with pyspark, or point SPARK_HOME at a Spark 4 distribution"
        )
    return home


def _process_args(pid: int) -> str | None:
    """The command line of a live process, or None if it is gone (a zombie counts as gone)."""
    # `ps` rather than /proc so this also works on macOS; the sbin scripts need `ps` anyway. `-ww`: the
    # server's class name ends a very long command line, which ps cuts to $COLUMNS (pytest sets it) otherwise.
    result = subprocess.run(
        ["ps", "-ww", "-p", str(pid), "-o", "stat=", "-o", "args="],
        capture_output=True,
        text=True,
        check=False,
    )
    line = result.stdout.strip()
    if result.returncode != 0 or not line or line.startswith("Z"):
        return None
    return line


def _is_server(pid: int) -> bool:
    args = _process_args(pid)
    return args is not None and SERVER_CLASS in args


def _read_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / PID_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _read_state(state_dir: Path) -> dict[str, object]:
    try:
        return json.loads((state_dir / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _log_file(state_dir: Path) -> Path | None:
    logs = sorted((state_dir / "logs").glob(f"spark-{IDENT}-{SERVER_CLASS}-1-*.out"), key=os.path.getmtime)
    return logs[-1] if logs else None


def _log_tail(log_file: Path | None) -> str:
    if log_file is None or not log_file.is_file():
        return "(no server log was written)"
    # spark-daemon.sh starts the log with the whole java command line, which says nothing about the failure.
    lines = [
        line
        for line in log_file.read_text(errors="replace").splitlines()
        if not line.startswith(("Spark Command: ", "========"))
    ]
    return "\n".join(f"  {line}" for line in lines[-LOG_TAIL_LINES:]) or "  (the log is empty)"


def server_status(state_dir: Path | None = None) -> ConnectServer | None:
    """The server started from `state_dir`, if its JVM is alive; None otherwise."""
    state_dir = Path(state_dir or default_state_dir()).resolve()
    pid = _read_pid(state_dir)
    if pid is None or not _is_server(pid):
        return None
    port = _read_state(state_dir).get("port")
    if not isinstance(port, int):
        raise SparkConnectServerError(
            f"a Spark Connect server (pid {pid}) runs from {state_dir} but {state_dir / STATE_FILE} does not "
            f"say its port: stop it with `python -m backfills.resources.connect_server stop --state-dir "
            f"{state_dir}` and start it again"
        )
    return ConnectServer(pid=pid, port=port, state_dir=state_dir, log_file=_log_file(state_dir), reused=True)


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialise start and stop for one state dir, so two `make` targets never start two servers."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Same option as the server's own listener, so a port in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0):
            return True
    except OSError:
        return False


def _script_env(home: Path, state_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    # A caller in Connect mode must not pass that mode on to the server's own spark-submit.
    for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_NO_DAEMONIZE"):
        env.pop(name, None)
    env.update(
        SPARK_HOME=str(home),
        SPARK_LOG_DIR=str(state_dir / "logs"),
        SPARK_PID_DIR=str(state_dir),
        SPARK_IDENT_STRING=IDENT,
        # pandera sets SPARK_LOCAL_IP on import, and a caller that imported it would pass it on.
        SPARK_LOCAL_IP=LOOPBACK,
        # Python UDF workers of the server need this environment's pandas and pyarrow, not the system's.
        PYSPARK_PYTHON=sys.executable,
    )
    return env


def _server_args(*, port: int, master: str, driver_memory: str, shuffle_partitions: int) -> list[str]:
    conf = spark_conf(
        driver_memory=driver_memory, shuffle_partitions=shuffle_partitions, bind_address=LOOPBACK
    )
    conf |= {
        "spark.connect.grpc.binding.address": LOOPBACK,
        "spark.connect.grpc.binding.port": str(port),
        # Fail on a taken port instead of quietly listening on the next one, which no client would find.
        "spark.connect.grpc.port.maxRetries": "0",
    }
    args = ["--master", master]
    for key, value in conf.items():
        args += ["--conf", f"{key}={value}"]
    return args


def _wait_until_ready(server: ConnectServer, deadline: float) -> None:
    """Return once a Connect session on the server runs a query; raise if the JVM dies or time runs out."""
    problem = "the gRPC port never accepted a connection"
    while time.monotonic() < deadline:
        if not _is_server(server.pid):
            raise SparkConnectServerError(
                f"the Spark Connect server (pid {server.pid}) exited while starting; its log "
                f"({_log_file(server.state_dir)}) ends with:\n{_log_tail(_log_file(server.state_dir))}"
            )
        if _accepts_connections(server.port):
            remaining = max(deadline - time.monotonic(), 5.0)
            try:
                probe = subprocess.run(
                    [sys.executable, "-c", _PROBE, server.url],
                    capture_output=True,
                    text=True,
                    timeout=remaining,
                    env=_client_env(),
                    check=False,
                )
            except subprocess.TimeoutExpired:
                problem = "a Spark Connect session on it did not answer"
                break
            if probe.returncode == 0:
                return
            problem = (
                "a Spark Connect session on it failed: " + (probe.stderr.strip().splitlines() or [""])[-1]
            )
        time.sleep(0.5)
    raise SparkConnectServerError(
        f"the Spark Connect server (pid {server.pid}) on {server.url} was not ready in time ({problem}): "
        f"look at its log ({_log_file(server.state_dir)}), or allow longer with --timeout on a busy "
        f"machine. The log ends with:\n{_log_tail(_log_file(server.state_dir))}"
    )


def _client_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED"):
        env.pop(name, None)
    return env


def start_server(
    *,
    port: int = DEFAULT_PORT,
    master: str = "local[2]",
    driver_memory: str = "3g",
    shuffle_partitions: int = 4,
    state_dir: Path | None = None,
    timeout: float = START_TIMEOUT_S,
) -> ConnectServer:
    """Start a local server (port 0: any free port) and wait until it runs a query; reuse one already running.

    A server already running from `state_dir` is returned as it is (`reused=True`), whatever `port` says.
    """
    state_dir = Path(state_dir or default_state_dir()).resolve()
    deadline = time.monotonic() + timeout
    with _locked(state_dir):
        running = server_status(state_dir)
        if running is not None:
            # A JVM can be alive yet wedged: hand the server out only once it answers a query.
            _wait_until_ready(running, deadline)
            return running
        if port == 0:
            port = _free_port()
        elif not _port_is_free(port):
            raise SparkConnectServerError(
                f"port {port} on {LOOPBACK} is already in use (another Spark Connect server, or another "
                f"program): stop it, use it directly with BACKFILLS_SPARK_REMOTE=sc://{LOOPBACK}:{port}, "
                "or start on another port (--port N, or --port 0 for any free one; "
                "`make SPARK_CONNECT_PORT=N ...`)"
            )
        home = spark_home()
        (state_dir / PID_FILE).unlink(missing_ok=True)  # stale: its JVM is gone (checked above)
        command = [
            str(home / "sbin" / "start-connect-server.sh"),
            *_server_args(
                port=port, master=master, driver_memory=driver_memory, shuffle_partitions=shuffle_partitions
            ),
        ]
        try:
            server = _launch(command, home, state_dir, port=port, master=master, driver_memory=driver_memory)
            _wait_until_ready(server, deadline)
        except BaseException:
            # Never leave a half-started JVM behind, Ctrl-C included.
            pid = _read_pid(state_dir)
            if pid is not None and _is_server(pid):
                _stop(state_dir, ConnectServer(pid, port, state_dir, _log_file(state_dir)), STOP_TIMEOUT_S)
            raise
        return server


def _launch(
    command: list[str], home: Path, state_dir: Path, *, port: int, master: str, driver_memory: str
) -> ConnectServer:
    """Run start-connect-server.sh, which returns once the JVM runs (not once it serves)."""
    launched = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=_script_env(home, state_dir),
        timeout=120,
        check=False,
        # Its own session: the server lives until `stop`, not until a Ctrl-C meant for its caller.
        start_new_session=True,
    )
    pid = _read_pid(state_dir)
    if launched.returncode != 0 or pid is None:
        raise SparkConnectServerError(
            f"{command[0]} failed (exit {launched.returncode}): check that Java 17 is on PATH or in "
            f"JAVA_HOME and that bash is installed. It said:\n{launched.stdout}{launched.stderr}"
        )
    if "failed to launch" in launched.stdout:
        (state_dir / PID_FILE).unlink(missing_ok=True)
        raise SparkConnectServerError(
            f"the Spark Connect server's JVM exited at once: check --master and --driver-memory, and "
            f"that Java 17 is on PATH or in JAVA_HOME. Its log ({_log_file(state_dir)}) ends with:\n"
            f"{_log_tail(_log_file(state_dir))}"
        )
    (state_dir / STATE_FILE).write_text(
        json.dumps({"port": port, "pid": pid, "master": master, "driver_memory": driver_memory}) + "\n"
    )
    return ConnectServer(pid=pid, port=port, state_dir=state_dir, log_file=_log_file(state_dir))


def _stop(state_dir: Path, server: ConnectServer, timeout: float) -> None:
    home = spark_home()
    subprocess.run(
        [str(home / "sbin" / "stop-connect-server.sh")],
        capture_output=True,
        env=_script_env(home, state_dir),
        timeout=60,
        check=False,
    )
    # The script only sends SIGTERM; wait for the JVM's shutdown hooks, then insist.
    deadline = time.monotonic() + timeout
    while _is_server(server.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _is_server(server.pid):
        with suppress(ProcessLookupError):  # it may exit between the check and the kill
            os.kill(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while _is_server(server.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    if _is_server(server.pid):
        raise SparkConnectServerError(
            f"the Spark Connect server (pid {server.pid}) did not exit after SIGTERM and SIGKILL: "
            f"stop it by hand (kill -9 {server.pid})"
        )
    (state_dir / PID_FILE).unlink(missing_ok=True)
    (state_dir / STATE_FILE).unlink(missing_ok=True)


def stop_server(state_dir: Path | None = None, *, timeout: float = STOP_TIMEOUT_S) -> ConnectServer | None:
    """Stop the server started from `state_dir` and wait for its JVM to exit; None if none was running."""
    state_dir = Path(state_dir or default_state_dir()).resolve()
    with _locked(state_dir):
        pid = _read_pid(state_dir)
        if pid is None or not _is_server(pid):
            (state_dir / PID_FILE).unlink(missing_ok=True)
            (state_dir / STATE_FILE).unlink(missing_ok=True)
            return None
        port = _read_state(state_dir).get("port")
        server = ConnectServer(
            pid=pid,
            port=port if isinstance(port, int) else 0,
            state_dir=state_dir,
            log_file=_log_file(state_dir),
        )
        _stop(state_dir, server, timeout)
        return server


@contextmanager
def running_server(
    *,
    port: int = 0,
    master: str = "local[2]",
    driver_memory: str = "3g",
    shuffle_partitions: int = 4,
    state_dir: Path | None = None,
    timeout: float = START_TIMEOUT_S,
) -> Iterator[ConnectServer]:
    """A server for the duration of a block (tests, benchmarks); stopped at the end unless it was reused."""
    server = start_server(
        port=port,
        master=master,
        driver_memory=driver_memory,
        shuffle_partitions=shuffle_partitions,
        state_dir=state_dir,
        timeout=timeout,
    )
    try:
        yield server
    finally:
        if not server.reused:
            stop_server(server.state_dir)


def _build_parser() -> argparse.ArgumentParser:
    settings = load_settings()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="where the pid file, port and logs are kept (default: %(default)s)",
    )
    parser = argparse.ArgumentParser(
        prog="python -m backfills.resources.connect_server",
        description="A local Spark Connect server shared by all runs (listens on 127.0.0.1 only).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser(
        "start", parents=[common], help="start the server (or reuse the running one) and print its URL"
    )
    start.add_argument("--port", type=int, default=DEFAULT_PORT, help="gRPC port; 0 picks a free one")
    start.add_argument(
        "--master", default=settings.spark_master, help="Spark master (BACKFILLS_SPARK_MASTER)"
    )
    start.add_argument(
        "--driver-memory",
        default=settings.spark_driver_memory,
        help="driver memory (BACKFILLS_SPARK_DRIVER_MEMORY)",
    )
    start.add_argument(
        "--timeout", type=float, default=START_TIMEOUT_S, help="seconds to wait for it to work"
    )
    commands.add_parser("stop", parents=[common], help="stop the server and wait for its JVM to exit")
    commands.add_parser("status", parents=[common], help="say whether the server runs, with its URL and log")
    commands.add_parser("url", parents=[common], help="print the running server's URL (exit 3 if none)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line. The URL alone goes to stdout (`BACKFILLS_SPARK_REMOTE=$(... start)`)."""
    try:
        # Parsing reads the settings for the defaults, and a malformed one is a one-line error too.
        args = _build_parser().parse_args(argv)
        if args.command == "start":
            began = time.monotonic()
            server = start_server(
                port=args.port,
                master=args.master,
                driver_memory=args.driver_memory,
                shuffle_partitions=load_settings().spark_shuffle_partitions,
                state_dir=args.state_dir,
                timeout=args.timeout,
            )
            how = (
                "already running, reused" if server.reused else f"started in {time.monotonic() - began:.1f} s"
            )
            print(f"Spark Connect server {how} (pid {server.pid}), log: {server.log_file}", file=sys.stderr)
            print(server.url)
        elif args.command == "stop":
            stopped = stop_server(args.state_dir)
            print(
                f"stopped the Spark Connect server (pid {stopped.pid})"
                if stopped
                else "no server was running",
                file=sys.stderr,
            )
        else:
            server = server_status(args.state_dir)
            if server is None:
                print(f"no Spark Connect server runs from {args.state_dir}", file=sys.stderr)
                return EXIT_NOT_RUNNING
            if args.command == "url":
                print(server.url)
            else:
                print(f"running: {server.url}  pid {server.pid}  log {server.log_file}")
    except BackfillsError as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
