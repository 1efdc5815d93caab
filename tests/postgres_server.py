"""A throwaway PostgreSQL server for tests, from Debian's `postgresql` package, on 127.0.0.1.

`PostgresServer` runs `initdb` into a fresh data directory, starts `postgres` on a free port with a
generated password, creates databases on request, and on exit stops the server and removes the data
directory. Its log stays in the folder it is given (the pytest temp dir). PostgreSQL refuses to run as
root: as root (CI) the server runs as the `postgres` system user the Debian package creates, which owns
the data directory. `find_postgres()` raises `PostgresUnavailable`, saying what is missing and how to get
it, so tests can skip.

    with PostgresServer(tmp_path / "postgres") as server:
        server.create_database("dagster")
        instance_config = {"storage": server.dagster_storage("dagster")}
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg2
from dagster_services import free_port
from psycopg2 import sql

# Debian installs each major version's server programs here (not on PATH); /usr/local/bin links to them
# are a local convenience that a fresh machine does not have.
DEBIAN_POSTGRES_ROOT = Path("/usr/lib/postgresql")
SERVER_PROGRAMS = ("initdb", "postgres")
SYSTEM_USER = "postgres"  # created by Debian's postgresql-common
SUPERUSER = "backfills"
INSTALL_HINT = "install Debian's package (as root): apt-get install postgresql; .ci/run does this"

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
_LOG_TAIL_LINES = 30
_BIND_RETRIES = 3


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot run here; the message says what is missing and how to get it."""


class PostgresError(RuntimeError):
    """initdb or the server failed, or the server did not answer in time; the message holds its log's end."""


@dataclass(frozen=True)
class PostgresInstallation:
    """Where the server programs are, and which system user runs them (None: the current user)."""

    bin_dir: Path
    run_as: pwd.struct_passwd | None


def _major_version(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.name)) or (0,)


def find_postgres(root: Path = DEBIAN_POSTGRES_ROOT) -> PostgresInstallation:
    """The newest installed server under /usr/lib/postgresql/<version>/bin, and the user to run it as."""
    candidates = sorted(
        (path for path in root.glob("*/bin") if path.is_dir()), key=lambda p: _major_version(p.parent)
    )
    complete = [
        path for path in candidates if all(os.access(path / name, os.X_OK) for name in SERVER_PROGRAMS)
    ]
    if not complete:
        found = f" (only {', '.join(str(path) for path in candidates)})" if candidates else ""
        raise PostgresUnavailable(
            f"PostgreSQL is not installed: no {' and '.join(SERVER_PROGRAMS)} in "
            f"{root}/<version>/bin{found}; {INSTALL_HINT}"
        )
    run_as = None
    if os.geteuid() == 0:
        try:
            run_as = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise PostgresUnavailable(
                f"running as root, which PostgreSQL refuses, and there is no {SYSTEM_USER!r} system user "
                f"to run it as (Debian's postgresql-common creates it); {INSTALL_HINT}"
            ) from None
    return PostgresInstallation(complete[-1], run_as)


class PostgresServer:
    """One PostgreSQL server on 127.0.0.1, its log (and, unless run as root, its data) in `base_dir`.

    Settings are for tests, not durability: fsync and synchronous commit are off. Only TCP on 127.0.0.1
    is served (no Unix socket), and every connection needs the superuser's generated password.
    """

    def __init__(self, base_dir: Path, installation: PostgresInstallation | None = None) -> None:
        self.installation = installation or find_postgres()
        self.base_dir = Path(base_dir)
        self.log_file = self.base_dir / "postgres.log"
        self.data_dir: Path | None = None  # made at start
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.username = SUPERUSER
        self.password = secrets.token_urlsafe(24)
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # As which user

    def _as_server_user(self) -> dict[str, Any]:
        """Popen arguments that run a program as the server's user (as root: the `postgres` user)."""
        user = self.installation.run_as
        if user is None:
            return {}
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "umask": 0o077}

    def _server_folder(self) -> Path:
        """The data directory's parent: `base_dir` when the server runs as the current user. As root, a
        private folder of the `postgres` user in the system temp dir: pytest keeps its temp dirs 0700 and
        resets /tmp/pytest-of-root to 0700 whenever a session starts, and a server that can no longer
        reach its data directory by its absolute path dies at its next checkpoint (PANIC on pg_control)."""
        user = self.installation.run_as
        if user is None:
            return self.base_dir
        folder = Path(tempfile.mkdtemp(prefix="backfills-postgres-"))
        os.chown(folder, user.pw_uid, user.pw_gid)
        return folder

    # Lifecycle

    def start(self) -> None:
        """initdb, then start the server on a free port and wait until it accepts connections."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.data_dir = self._server_folder() / "data"
            self._initdb(self.data_dir)
            for attempt in range(_BIND_RETRIES):
                self.port = free_port()
                try:
                    self._start_server()
                    return
                except PostgresError as error:
                    # The port was free when picked but taken before the server bound it: pick another.
                    if "could not bind" not in str(error) or attempt == _BIND_RETRIES - 1:
                        raise
        except BaseException:
            self.stop()
            raise

    def _initdb(self, data_dir: Path) -> None:
        password_file = data_dir.parent / "superuser-password"
        password_file.write_text(self.password)
        password_file.chmod(0o600)
        if self.installation.run_as is not None:
            os.chown(password_file, self.installation.run_as.pw_uid, self.installation.run_as.pw_gid)
        command = [
            str(self.installation.bin_dir / "initdb"),
            f"--pgdata={data_dir}",
            f"--username={self.username}",
            f"--pwfile={password_file}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, stdin=subprocess.DEVNULL, **self._as_server_user()
            )
        finally:
            password_file.unlink(missing_ok=True)
        if result.returncode != 0:
            raise PostgresError(
                f"initdb failed with code {result.returncode}: {' '.join(command)}\n"
                f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )

    def _start_server(self) -> None:
        command = [
            str(self.installation.bin_dir / "postgres"),
            "-D", str(self.data_dir),
            "-c", f"listen_addresses={self.host}",
            "-c", f"port={self.port}",
            "-c", "unix_socket_directories=",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
        ]  # fmt: skip
        # The log is opened here (by root, when root) and handed over as stderr.
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Its own session: a Ctrl-C in the test run does not reach it, stop() does.
                start_new_session=True,
                **self._as_server_user(),
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            code = self._process.poll()
            if code is not None:
                self._process = None
                raise PostgresError(f"postgres exited with code {code} at start\n{self.log_tail()}")
            try:
                self.connect("postgres").close()
                return
            except psycopg2.OperationalError as error:
                if time.monotonic() > deadline:
                    raise PostgresError(
                        f"postgres did not accept connections on {self.host}:{self.port} within "
                        f"{START_TIMEOUT_SECONDS:.0f}s: {error}\n{self.log_tail()}"
                    ) from None
            time.sleep(0.2)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: sessions are ended, nothing is kept), then remove the data. Idempotent."""
        process, self._process = self._process, None
        data_dir, self.data_dir = self.data_dir, None
        if process is not None and process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if data_dir is not None:
            # As root the whole private folder goes; in `base_dir` the log stays.
            private = data_dir.parent != self.base_dir
            shutil.rmtree(data_dir.parent if private else data_dir, ignore_errors=True)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return f"--- {self.log_file}, last {lines} lines ---\n" + "\n".join(text.splitlines()[-lines:])

    # Databases

    def connect(self, db_name: str) -> psycopg2.extensions.connection:
        return psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.username,
            password=self.password,
            dbname=db_name,
            connect_timeout=5,
        )

    def create_database(self, db_name: str) -> None:
        connection = self.connect("postgres")
        try:
            connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with connection.cursor() as cursor:
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db_name)))
        finally:
            connection.close()

    def dagster_storage(self, db_name: str) -> Mapping[str, Any]:
        """The `storage:` section of a dagster.yaml that keeps runs, events and schedules in `db_name`."""
        return {
            "postgres": {
                "postgres_db": {
                    "hostname": self.host,
                    "port": self.port,
                    "username": self.username,
                    "password": self.password,
                    "db_name": db_name,
                    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; dagster-postgres brings psycopg2.
                    "scheme": "postgresql+psycopg2",
                }
            }
        }
