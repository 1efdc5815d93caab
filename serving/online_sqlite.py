"""The embedded online store: one SQLite file in WAL mode, shared by every process, with no server to run.

Rows of every version sit in one table keyed by (table, version, entity key); a version's record is written
after its rows; `online_current` holds the version readers are on, `online_canary` the version the canary
slice reads while a canary is open, `online_release` the release the last sync switched to, and
`online_leases` the writer of a version being written. A switch of any
number of tables is one BEGIN IMMEDIATE transaction and a read one snapshot, so a reader sees whole versions
whatever a sync does meanwhile. Every write checks and renews its writer's lease in its own transaction.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from backfills.errors import OnlineStoreError
from backfills.serving.online_store import ClaimState, OnlineStore, OnlineVersion

_SCHEMA = """
CREATE TABLE IF NOT EXISTS online_rows (
    table_name TEXT NOT NULL,
    version TEXT NOT NULL,
    entity_key TEXT NOT NULL,
    row_json TEXT NOT NULL,
    PRIMARY KEY (table_name, version, entity_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS online_versions (
    table_name TEXT NOT NULL,
    version TEXT NOT NULL,
    record_json TEXT NOT NULL,
    synced_at TEXT,
    PRIMARY KEY (table_name, version)
);
CREATE TABLE IF NOT EXISTS online_current (
    table_name TEXT PRIMARY KEY,
    version TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS online_canary (
    table_name TEXT PRIMARY KEY,
    route_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS online_release (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    release_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS online_leases (
    table_name TEXT NOT NULL,
    version TEXT NOT NULL,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (table_name, version)
);
"""
# A writer waits this long for another process's transaction before giving up.
_BUSY_TIMEOUT_SECONDS = 30.0
# Bound parameters per query stay under the smallest limit SQLite builds have (999).
_READ_CHUNK_KEYS = 500


class SqliteOnlineStore(OnlineStore):
    """Online tables in one SQLite file; each process (or thread) opens its own store on the same path."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().absolute()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: every transaction below is opened and closed explicitly.
            self._db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_SECONDS, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # In WAL mode a commit survives a crash of the process; only a power loss may undo the last ones.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as error:
            raise OnlineStoreError(f"cannot open the online store at {self.describe()}: {error}") from None

    @contextmanager
    def _transaction(self, mode: str = "DEFERRED") -> Iterator[sqlite3.Connection]:
        self._db.execute(f"BEGIN {mode}")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @staticmethod
    def _pointer(db: sqlite3.Connection, table: str) -> str | None:
        row = db.execute("SELECT version FROM online_current WHERE table_name = ?", (table,)).fetchone()
        return row[0] if row else None

    @staticmethod
    def _record(db: sqlite3.Connection, table: str, version: str) -> tuple[str, str | None] | None:
        return db.execute(
            "SELECT record_json, synced_at FROM online_versions WHERE table_name = ? AND version = ?",
            (table, version),
        ).fetchone()

    @staticmethod
    def _forget(db: sqlite3.Connection, table: str, version: str) -> None:
        db.execute("DELETE FROM online_versions WHERE table_name = ? AND version = ?", (table, version))
        db.execute("DELETE FROM online_rows WHERE table_name = ? AND version = ?", (table, version))

    def _claim(
        self, table: str, version: str, owner: str, replacing: str | None
    ) -> tuple[ClaimState, str | None]:
        now = time.time()
        with self._transaction("IMMEDIATE") as db:
            held = db.execute(
                "SELECT owner, expires_at FROM online_leases WHERE table_name = ? AND version = ?",
                (table, version),
            ).fetchone()
            if held is not None and held[0] != replacing and held[1] > now:
                return "held", held[0]
            db.execute(
                "INSERT OR REPLACE INTO online_leases VALUES (?, ?, ?, ?)",
                (table, version, owner, now + self.lease_seconds),
            )
        return ("free", None) if held is None else ("inherited", held[0])

    def _release(self, table: str, version: str, owner: str, *, discard: bool) -> None:
        with self._transaction("IMMEDIATE") as db:
            released = db.execute(
                "DELETE FROM online_leases WHERE table_name = ? AND version = ? AND owner = ?",
                (table, version, owner),
            ).rowcount
            if released and discard and self._pointer(db, table) != version:
                self._forget(db, table, version)

    def _renew(self, db: sqlite3.Connection, table: str, version: str, owner: str) -> None:
        """Within a write's transaction: `owner` must still hold the lease, which lasts from now on."""
        renewed = db.execute(
            "UPDATE online_leases SET expires_at = ? WHERE table_name = ? AND version = ? AND owner = ?",
            (time.time() + self.lease_seconds, table, version, owner),
        ).rowcount
        if not renewed:
            raise self._lost_lease_error(table, version)

    def _begin_write(self, table: str, version: str, owner: str) -> None:
        with self._transaction("IMMEDIATE") as db:
            self._renew(db, table, version, owner)
            if self._pointer(db, table) == version:
                raise self._rewrite_current_error(table, version)
            self._forget(db, table, version)

    def _write_rows(self, table: str, version: str, chunk: list[tuple[str, str]], owner: str) -> int:
        with self._transaction("IMMEDIATE") as db:
            self._renew(db, table, version, owner)
            # A repeated key is skipped, not counted: write_version compares the count with the rows given.
            cursor = db.executemany(
                "INSERT OR IGNORE INTO online_rows VALUES (?, ?, ?, ?)",
                ((table, version, key, row_json) for key, row_json in chunk),
            )
            return cursor.rowcount

    def _complete(self, record: OnlineVersion, owner: str) -> None:
        with self._transaction("IMMEDIATE") as db:
            self._renew(db, record.table, record.version, owner)
            db.execute(
                "INSERT OR REPLACE INTO online_versions VALUES (?, ?, ?, NULL)",
                (record.table, record.version, record.to_json()),
            )

    @staticmethod
    def _release_in(db: sqlite3.Connection) -> str | None:
        row = db.execute("SELECT release_id FROM online_release").fetchone()
        return row[0] if row else None

    def _synced_release(self) -> str | None:
        return self._release_in(self._db)

    def _switch(
        self,
        targets: Sequence[tuple[str, str, str | None]],
        synced_at: datetime,
        release: tuple[str | None, str] | None,
    ) -> list[OnlineVersion]:
        switched = []
        with self._transaction("IMMEDIATE") as db:  # every table or none: an error rolls it all back
            if release is not None:
                found = self._release_in(db)
                if found != release[0]:
                    raise self._release_moved_error(found, release[0])
                db.execute("INSERT OR REPLACE INTO online_release VALUES (1, ?)", (release[1],))
            for table, version, expected_current in targets:
                current = self._pointer(db, table)
                if current != expected_current:
                    raise self._changed_error(table, current, expected_current)
                record = self._record(db, table, version)
                if record is None:
                    raise self._unwritten_error(table, version)
                if current != version:
                    db.execute("INSERT OR REPLACE INTO online_current VALUES (?, ?)", (table, version))
                    db.execute(
                        "UPDATE online_versions SET synced_at = ? WHERE table_name = ? AND version = ?",
                        (synced_at.isoformat(), table, version),
                    )
                    record = (record[0], synced_at.isoformat())
                switched.append(OnlineVersion.from_json(*record))
        return switched

    def _read(
        self, table: str, version: str | None, keys: Sequence[str]
    ) -> tuple[OnlineVersion | None, dict[str, str]]:
        with self._transaction() as db:
            name = version or self._pointer(db, table)
            record = self._record(db, table, name) if name else None
            if record is None:
                return None, {}
            found: dict[str, str] = {}
            for start in range(0, len(keys), _READ_CHUNK_KEYS):
                chunk = keys[start : start + _READ_CHUNK_KEYS]
                found.update(
                    db.execute(
                        "SELECT entity_key, row_json FROM online_rows WHERE table_name = ? AND version = ? "
                        f"AND entity_key IN ({', '.join('?' * len(chunk))})",
                        (table, name, *chunk),
                    )
                )
        return OnlineVersion.from_json(*record), found

    def _records(self, table: str) -> list[OnlineVersion]:
        rows = self._db.execute(
            "SELECT record_json, synced_at FROM online_versions WHERE table_name = ?", (table,)
        ).fetchall()
        return [OnlineVersion.from_json(*row) for row in rows]

    def _delete(self, table: str, versions: list[str]) -> list[str]:
        with self._transaction("IMMEDIATE") as db:
            current = self._pointer(db, table)
            leased = {
                row[0]
                for row in db.execute("SELECT version FROM online_leases WHERE table_name = ?", (table,))
            }
            # A version being written or read back is its writer's (its lease says so), not the pruning's.
            deleted = [
                name
                for name in versions
                if name != current and name not in leased and self._record(db, table, name)
            ]
            for name in deleted:
                self._forget(db, table, name)
        return deleted

    def _route(self, table: str) -> str | None:
        row = self._db.execute(
            "SELECT route_json FROM online_canary WHERE table_name = ?", (table,)
        ).fetchone()
        return row[0] if row else None

    def _set_route(self, table: str, route: str | None) -> None:
        with self._transaction("IMMEDIATE") as db:
            if route is None:
                db.execute("DELETE FROM online_canary WHERE table_name = ?", (table,))
            else:
                db.execute("INSERT OR REPLACE INTO online_canary VALUES (?, ?)", (table, route))

    def close(self) -> None:
        self._db.close()

    def describe(self) -> str:
        return f"sqlite://{self.path}"
