"""A throwaway Redis server for tests, from Debian's `redis-server` package, on 127.0.0.1.

`RedisServer` starts `redis-server` on a free port with its data directory in the folder it is given,
nothing persisted (no RDB snapshots, no append-only file), waits until it answers PING, and on exit stops
it. `find_redis_server()` raises `RedisUnavailable`, saying what is missing and how to get it, so tests
can skip.

    with RedisServer(tmp_path / "redis") as server:
        store = RedisOnlineStore(server.url)
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis
from dagster_services import free_port

DEBIAN_REDIS_SERVER = Path("/usr/bin/redis-server")
INSTALL_HINT = "apt-get install redis-server (.ci/run installs it as root)"

START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
_LOG_TAIL_LINES = 30
_BIND_RETRIES = 3


class RedisUnavailable(RuntimeError):
    """redis-server cannot run here; the message says what is missing and how to get it."""


class RedisServerError(RuntimeError):
    """redis-server exited or did not answer in time; the message holds its log's end."""


def find_redis_server() -> Path:
    """The `redis-server` program: on PATH, or where Debian's package puts it."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    if DEBIAN_REDIS_SERVER.is_file():
        return DEBIAN_REDIS_SERVER
    raise RedisUnavailable(f"redis-server is not installed: {INSTALL_HINT}")


class RedisServer:
    """One Redis server on 127.0.0.1, its data directory and log in `base_dir`; `password` (optional) makes
    every client authenticate, as production Redis does."""

    def __init__(self, base_dir: Path, *, password: str | None = None, binary: Path | None = None) -> None:
        self.binary = binary or find_redis_server()
        self.base_dir = Path(base_dir)
        self.log_file = self.base_dir / "redis.log"
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.password = password
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL of database 0 (with the password, when there is one)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server on a free port and wait until it answers PING."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        try:
            for attempt in range(_BIND_RETRIES):
                self.port = free_port()
                try:
                    self._start_server()
                    return
                except RedisServerError as error:
                    # The port was free when picked but taken before the server bound it: pick another.
                    if "Address already in use" not in str(error) or attempt == _BIND_RETRIES - 1:
                        raise
        except BaseException:
            self.stop()
            raise

    def _start_server(self) -> None:
        command = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.base_dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.log_file),
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a Ctrl-C in the test run does not reach it, stop() does.
            start_new_session=True,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        try:
            while True:
                code = self._process.poll()
                if code is not None:
                    self._process = None
                    raise RedisServerError(
                        f"redis-server exited with code {code} at start\n{self.log_tail()}"
                    )
                try:
                    client.ping()
                    return
                except redis.ConnectionError as error:
                    if time.monotonic() > deadline:
                        raise RedisServerError(
                            f"redis-server did not answer PING on {self.host}:{self.port} within "
                            f"{START_TIMEOUT_SECONDS:.0f}s: {error}\n{self.log_tail()}"
                        ) from None
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """Terminate the server (it saves nothing), killing it if it does not exit in time. Idempotent."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_SECONDS)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return f"--- {self.log_file}, last {lines} lines ---\n" + "\n".join(text.splitlines()[-lines:])
