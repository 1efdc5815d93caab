"""The online store's interface: per table, versions of rows keyed by entity and a pointer readers follow.

A sync writes a release's rows under a new version (a completion record last, so a crash never exposes part
of one), then switches the pointers of every table it changes in one compare-and-swap; a rollback switches
back to kept versions without reloading. One writer at a time writes a version: it holds the version's
writer lease, which it renews with every chunk, so a second writer waits for it, and a writer that died
holding it is found out (its lease expired, or its process on this host is gone) and its version written
again. Backends keep the rows: `online_sqlite` (embedded, no server) and `online_redis`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime
from types import TracebackType
from typing import Literal, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from backfills.errors import (
    ConfigurationError,
    InvalidRequestError,
    OnlineStoreError,
    OnlineVersionChangedError,
)
from backfills.resources.canary_slice import Channel, check_channel, check_percent, in_slice
from backfills.serving.online_rows import RowEncoder

ONLINE_STORE_VARIABLE = "BACKFILLS_ONLINE_STORE"
ACCEPTED_URLS = "sqlite:///absolute/path.db, redis://[user:password@]host:port/db or rediss://… (TLS)"
DEFAULT_KEEP = 3
# Rows per transaction (SQLite) or per HSET (Redis): memory stays bounded and a million rows is 200 commits.
WRITE_CHUNK_ROWS = 5_000

# A writer's lease on a version lasts this long after its last renewal (every chunk renews it): a writer
# that stops renewing, on any host, loses it after this long.
LEASE_SECONDS = 120.0
_LEASE_POLL_SECONDS = 0.05

# Names become parts of Redis keys (':'-separated), so they never hold a ':'.
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class OnlineVersion:
    """One completely written version of an online table: the release and partition its rows come from, and
    when it was written and last made current."""

    table: str
    version: str
    release_id: str
    partition: str  # ISO day
    content_hash: str
    rows: int
    columns: tuple[str, ...]  # of every row, in the first row's order
    written_at: datetime  # UTC
    synced_at: datetime | None = None  # when it last became current; None if it never did

    def to_json(self) -> str:
        """The record a backend keeps once all rows are written (`synced_at` is kept beside it)."""
        return json.dumps(
            {
                "table": self.table,
                "version": self.version,
                "release_id": self.release_id,
                "partition": self.partition,
                "content_hash": self.content_hash,
                "rows": self.rows,
                "columns": list(self.columns),
                "written_at": self.written_at.isoformat(),
            }
        )

    @classmethod
    def from_json(cls, text: str, synced_at: str | None) -> OnlineVersion:
        record = json.loads(text)
        return cls(
            table=record["table"],
            version=record["version"],
            release_id=record["release_id"],
            partition=record["partition"],
            content_hash=record["content_hash"],
            rows=record["rows"],
            columns=tuple(record["columns"]),
            written_at=datetime.fromisoformat(record["written_at"]),
            synced_at=datetime.fromisoformat(synced_at) if synced_at else None,
        )


@dataclass(frozen=True)
class CanaryRoute:
    """Where the canary slice of an online table reads: a kept version (of the canary release), and the
    share of entities the slice holds (resources/canary_slice.py decides which)."""

    version: str
    percent: float
    release_id: str

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "percent": self.percent, "release_id": self.release_id})

    @classmethod
    def from_json(cls, text: str) -> CanaryRoute:
        record = json.loads(text)
        return cls(version=record["version"], percent=record["percent"], release_id=record["release_id"])


# What claiming a writer lease found: nobody held it, a dead writer did (taken over), or a live one does.
ClaimState = Literal["free", "inherited", "held"]


@dataclass(frozen=True)
class WriterLease:
    """The right to write one version of an online table, held by one writer at a time. `inherited`: the
    previous holder died holding it, so whatever it left of the version (even a complete one, possibly
    never read back) must be written again."""

    table: str
    version: str
    owner: str  # host:pid:token of the writer
    inherited: bool


def _new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _holder_died(holder: str) -> bool:
    """Whether the writer `holder` names is a process of this host that no longer runs (a writer on another
    host is only found out when its lease expires)."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _check_name(what: str, value: str) -> None:
    if not isinstance(value, str) or not _NAME_PATTERN.fullmatch(value):
        raise InvalidRequestError(
            f"{what} {value!r} cannot name an online table or version: use letters, digits, '.', '_' and '-'"
        )


def _check_keys(keys: Sequence[str]) -> None:
    if isinstance(keys, str):
        raise InvalidRequestError(f"keys must be a sequence of entity IDs, not the one string {keys!r}")
    wrong = next((key for key in keys if not isinstance(key, str)), None)
    if wrong is not None:
        raise InvalidRequestError(f"entity key {wrong!r} is of type {type(wrong).__name__}: keys are strings")


def _selected(
    record: OnlineVersion, keys: Sequence[str], found: Mapping[str, str], columns: Sequence[str] | None
) -> dict[str, dict[str, object] | None]:
    if columns is not None:
        unknown = [column for column in columns if column not in record.columns]
        if unknown:
            known = ", ".join(record.columns) or "none (the version has no rows)"
            raise OnlineStoreError(
                f"unknown column(s) {', '.join(map(repr, unknown))} in table {record.table!r} "
                f"(version {record.version}); known columns: {known}"
            )
    result: dict[str, dict[str, object] | None] = {}
    for key in keys:
        text = found.get(key)
        row = None if text is None else json.loads(text)
        result[key] = row if row is None or columns is None else {column: row[column] for column in columns}
    return result


class OnlineStore(ABC):
    """Versions of online tables and the pointer readers follow. The public methods hold the rules shared by
    every backend; a backend implements the underscored primitives, each one atomic in its store."""

    # How long a writer lease taken through this handle lasts after its last renewal.
    lease_seconds: float = LEASE_SECONDS

    # Writing

    def write_version(
        self,
        table: str,
        version: str,
        rows: Iterable[Mapping[str, object]],
        *,
        key_column: str,
        release_id: str,
        partition: str,
        content_hash: str,
        lease: WriterLease | None = None,
    ) -> OnlineVersion:
        """Write `rows` (one per entity, keyed by `key_column`) as `version` of `table`, in chunks, and return
        its record. The version becomes visible to `has_version` and `switch` only once every row is written;
        writing it again replaces it whole, so a retry after a crash simply completes it. The version readers
        are on cannot be rewritten: write a new one and switch. The writer holds the version's `lease` (see
        `writer_lease`; without one, it takes one for the write): every write checks that it still holds it,
        so two writers never mix their rows."""
        _check_name("table", table)
        _check_name("version", version)
        try:
            date.fromisoformat(partition)
        except (TypeError, ValueError):
            raise InvalidRequestError(f"partition {partition!r} is not a day: use YYYY-MM-DD") from None
        if lease is None:
            with self.writer_lease(table, version) as taken:
                return self.write_version(
                    table,
                    version,
                    rows,
                    key_column=key_column,
                    release_id=release_id,
                    partition=partition,
                    content_hash=content_hash,
                    lease=taken,
                )
        if (lease.table, lease.version) != (table, version):
            raise InvalidRequestError(
                f"the lease on version {lease.version} of {lease.table!r} cannot write version {version} of "
                f"{table!r}: take the lease of the version written"
            )
        owner = lease.owner
        self._begin_write(table, version, owner)
        encoder = RowEncoder(table, version, key_column)
        chunks = encoder.chunks(rows, WRITE_CHUNK_ROWS)
        written = sum(self._write_rows(table, version, chunk, owner) for chunk in chunks)
        if written != encoder.count:
            raise OnlineStoreError(
                f"{encoder.count - written} of {encoder.count} rows of {encoder.where} repeat an entity key "
                f"of key column {key_column!r}: the online store keeps one row per entity; deduplicate the "
                "rows (the version stays incomplete, so no reader sees it)"
            )
        record = OnlineVersion(
            table=table,
            version=version,
            release_id=release_id,
            partition=partition,
            content_hash=content_hash,
            rows=written,
            columns=encoder.columns,
            written_at=datetime.now(UTC),
        )
        self._complete(record, owner)
        return record

    @contextmanager
    def writer_lease(self, table: str, version: str) -> Iterator[WriterLease]:
        """Hold the writer lease on `version` of `table` for a block: one writer at a time, so a second one
        waits here while the holder lives (and renews it), then finds the version written or writes it
        itself. A lease whose holder died (expired, or its process on this host is gone) is taken over:
        `inherited`. Released when the block ends; `abandon` it instead to throw away what was written."""
        _check_name("table", table)
        _check_name("version", version)
        owner = _new_owner()
        dead: str | None = None
        while True:
            state, holder = self._claim(table, version, owner, dead)
            if state != "held":
                break
            dead = holder if holder is not None and _holder_died(holder) else None
            if dead is None:
                time.sleep(_LEASE_POLL_SECONDS)
        lease = WriterLease(table, version, owner, inherited=state == "inherited")
        try:
            yield lease
        finally:
            self._release(table, version, owner, discard=False)

    def abandon(self, lease: WriterLease) -> None:
        """Throw away what the lease's holder wrote of its version (rows and record; never the version readers
        are on) before its lease ends, e.g. when its rows failed to read back equal. If the store cannot be
        reached, nothing is lost: the lease then expires and the next writer takes it over and writes the
        version again."""
        with suppress(Exception):  # the next writer inherits the lease and writes the version again
            self._release(lease.table, lease.version, lease.owner, discard=True)

    def switch(self, table: str, version: str, *, expected_current: str | None) -> OnlineVersion:
        """Make `version` the one readers see, atomically, if `table` is still on `expected_current` (None:
        never synced). Switching back to a kept version is a rollback: nothing is reloaded. Raises
        OnlineVersionChangedError if another sync or rollback moved the table first, and OnlineStoreError if
        `version` is not completely written."""
        return self.switch_tables({table: version}, expected={table: expected_current})[table]

    def switch_tables(
        self,
        versions: Mapping[str, str],
        *,
        expected: Mapping[str, str | None],
        release: tuple[str | None, str] | None = None,
    ) -> dict[str, OnlineVersion]:
        """Make each table's version (`versions`: table -> version) the one readers see, all in one atomic
        step, if every table is still on its `expected` version (None: never synced): readers see all the
        tables switched or none. Nothing switches if one table was moved by another sync or rollback first
        (OnlineVersionChangedError) or one version is not completely written (OnlineStoreError), and the
        error names that table. `release` (expected, new): the release the store was last synced to must
        still be the expected one (see `synced_release`), and becomes the new one in the same step, even
        when no table changes; so a sync that staged an older release never switches after a newer one."""
        missing = sorted(set(versions) - set(expected))
        if missing:
            raise InvalidRequestError(
                f"no expected current version given for {', '.join(missing)}: say which version each table "
                "must still be on (None: never synced)"
            )
        for table, version in versions.items():
            _check_name("table", table)
            _check_name("version", version)
        targets = [(table, versions[table], expected[table]) for table in sorted(versions)]
        if not targets and release is None:
            return {}
        switched = self._switch(targets, datetime.now(UTC), release)
        return {record.table: record for record in switched}

    def synced_release(self) -> str | None:
        """The release the last sync switched the store to (None: never synced through `switch_tables` with
        a release)."""
        return self._synced_release()

    def prune(self, table: str, keep: int = DEFAULT_KEEP) -> list[str]:
        """Delete the versions older than the newest `keep`, never the current one, the one the canary slice
        reads, nor one a writer holds the lease of; return those deleted."""
        if keep < 1:
            raise InvalidRequestError(f"keep={keep}: an online table keeps at least its newest version")
        route = self.canary_route(table)
        routed = route.version if route else None
        older = [record.version for record in self.versions(table)[keep:] if record.version != routed]
        return self._delete(table, older) if older else []

    def discard(self, table: str, versions: Sequence[str]) -> list[str]:
        """Delete those completely written versions of `table` readers are not on (a drill's shadow table,
        once checked); return those deleted."""
        _check_name("table", table)
        return self._delete(table, list(versions))

    # The canary channel

    def route_canary(self, table: str, version: str, *, percent: float, release_id: str) -> CanaryRoute:
        """Have the canary slice of `table` (at `percent`) read `version`, a completely written version of the
        canary release; the rest of the entities keep reading the current version."""
        _check_name("table", table)
        _check_name("version", version)
        if not self.has_version(table, version):
            raise self._unwritten_error(table, version)
        route = CanaryRoute(version=version, percent=check_percent(percent), release_id=release_id)
        self._set_route(table, route.to_json())
        return route

    def clear_canary(self, table: str) -> None:
        """Every entity of `table` reads the current version again."""
        _check_name("table", table)
        self._set_route(table, None)

    def canary_route(self, table: str) -> CanaryRoute | None:
        """Where the canary slice of `table` reads now; None when there is no canary."""
        _check_name("table", table)
        text = self._route(table)
        return CanaryRoute.from_json(text) if text else None

    # Reading

    def get(
        self,
        table: str,
        keys: Sequence[str],
        columns: Sequence[str] | None = None,
        channel: Channel = "production",
    ) -> dict[str, dict[str, object] | None]:
        """The rows of `keys` (entity IDs) in the version readers are on, with all columns or `columns`;
        None for a key it does not hold. One version answers the whole call, even while a sync switches.
        `channel="canary"`: while the table has a canary route, the keys of the canary slice are read from
        the canary's version (one version answers all of them) and the others from the current one."""
        _check_name("table", table)
        _check_keys(keys)
        route = self.canary_route(table) if check_channel(channel) == "canary" else None
        exposed = {key for key in keys if route is not None and in_slice(key, route.percent)}
        control = [key for key in keys if key not in exposed]
        record, found = self._read(table, None, control)
        if record is None:
            raise OnlineStoreError(
                f"table {table!r} was never synced to the online store at {self.describe()}, so it has no "
                "current version to read: sync a release to it first"
            )
        rows = _selected(record, control, found, columns)
        if exposed and route is not None:
            rows |= self.get_version(table, route.version, sorted(exposed), columns)
        return {key: rows[key] for key in keys}

    def get_version(
        self, table: str, version: str, keys: Sequence[str], columns: Sequence[str] | None = None
    ) -> dict[str, dict[str, object] | None]:
        """As `get`, from a given kept version (current or not), e.g. to check parity before switching."""
        _check_name("table", table)
        _check_name("version", version)
        _check_keys(keys)
        record, found = self._read(table, version, keys)
        if record is None:
            kept = ", ".join(kept.version for kept in self.versions(table)) or "none"
            raise OnlineStoreError(
                f"version {version} of table {table!r} is not kept (or not completely written) in the online "
                f"store at {self.describe()}; kept versions: {kept}"
            )
        return _selected(record, keys, found, columns)

    def current(self, table: str) -> OnlineVersion | None:
        """The version readers are on; None if the table was never synced."""
        _check_name("table", table)
        return self._read(table, None, [])[0]

    def versions(self, table: str) -> list[OnlineVersion]:
        """The completely written versions kept for `table`, newest first."""
        _check_name("table", table)
        records = self._records(table)
        return sorted(records, key=lambda record: (record.written_at, record.version), reverse=True)

    def has_version(self, table: str, version: str) -> bool:
        """Whether `version` of `table` is kept and completely written (so `switch` can move to it)."""
        _check_name("table", table)
        _check_name("version", version)
        return self._read(table, version, [])[0] is not None

    # Errors the backends raise

    def _changed_error(
        self, table: str, found: str | None, expected: str | None
    ) -> OnlineVersionChangedError:
        never = "none (never synced)"
        return OnlineVersionChangedError(
            f"online table {table!r} is on version {found or never}, not {expected or never} as expected: "
            f"another sync or rollback moved it first; nothing was switched in {self.describe()}; read its "
            "current version and decide again"
        )

    def _unwritten_error(self, table: str, version: str) -> OnlineStoreError:
        return OnlineStoreError(
            f"cannot switch online table {table!r} to version {version}: it is not completely written in "
            f"{self.describe()} (never written, interrupted, or pruned); write it again, then switch"
        )

    def _rewrite_current_error(self, table: str, version: str) -> OnlineStoreError:
        return OnlineStoreError(
            f"version {version} of online table {table!r} is the one readers are on in {self.describe()}, so "
            "it cannot be rewritten: write the rows under a new version and switch to it"
        )

    def _release_moved_error(self, found: str | None, expected: str | None) -> OnlineVersionChangedError:
        return OnlineVersionChangedError(
            f"the online store at {self.describe()} was synced to release {found or 'none'}, not "
            f"{expected or 'none'} as expected: another sync switched it first; nothing was switched; sync "
            "again (it starts from what the other sync left)"
        )

    def _lost_lease_error(self, table: str, version: str) -> OnlineStoreError:
        return OnlineStoreError(
            f"this writer no longer holds the lease on version {version} of online table {table!r} in "
            f"{self.describe()}: it renewed it too late (a lease lasts {self.lease_seconds:g}s) and another "
            "writer took the version over, so it stopped writing; nothing it wrote is visible; sync again"
        )

    # Primitives of a backend

    @abstractmethod
    def _claim(
        self, table: str, version: str, owner: str, replacing: str | None
    ) -> tuple[ClaimState, str | None]:
        """Take the version's writer lease for `owner` (for `lease_seconds`) unless a live writer holds it:
        "free" (nobody held it), "inherited" (its holder's lease had expired, or the holder is `replacing`,
        known dead) or "held" (not taken); with the holder found, if any."""

    @abstractmethod
    def _release(self, table: str, version: str, owner: str, *, discard: bool) -> None:
        """End `owner`'s lease on the version (if it still holds it); with `discard`, delete the version
        (record and rows, unless readers are on it) in the same step."""

    @abstractmethod
    def _begin_write(self, table: str, version: str, owner: str) -> None:
        """Forget `version` (its record, then its rows), unless readers are on it; `owner` must hold its lease
        (renewed)."""

    @abstractmethod
    def _write_rows(self, table: str, version: str, chunk: list[tuple[str, str]], owner: str) -> int:
        """Add (key, row JSON) pairs to `version` and renew `owner`'s lease, in one step, if `owner` still
        holds it; return how many keys were new."""

    @abstractmethod
    def _complete(self, record: OnlineVersion, owner: str) -> None:
        """Record a completely written version, if `owner` still holds its lease (renewed)."""

    @abstractmethod
    def _switch(
        self,
        targets: Sequence[tuple[str, str, str | None]],
        synced_at: datetime,
        release: tuple[str | None, str] | None,
    ) -> list[OnlineVersion]:
        """Compare-and-swap the pointers of several tables at once: (table, complete version, expected
        current version) each, and the synced release (expected, new) if given; all of them or none."""

    @abstractmethod
    def _synced_release(self) -> str | None:
        """The release the store was last synced to, or None."""

    @abstractmethod
    def _read(
        self, table: str, version: str | None, keys: Sequence[str]
    ) -> tuple[OnlineVersion | None, dict[str, str]]:
        """A complete version's record (None: `version`, or the current one, is not there) and the row JSON
        of those `keys` it holds, from one consistent state of the store."""

    @abstractmethod
    def _records(self, table: str) -> list[OnlineVersion]:
        """Every completely written version of `table`, in any order."""

    @abstractmethod
    def _delete(self, table: str, versions: list[str]) -> list[str]:
        """Delete those complete versions readers are not on; return the deleted ones."""

    @abstractmethod
    def _route(self, table: str) -> str | None:
        """The table's canary route (JSON), or None."""

    @abstractmethod
    def _set_route(self, table: str, route: str | None) -> None:
        """Set (or, with None, remove) the table's canary route, atomically."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""

    @abstractmethod
    def describe(self) -> str:
        """Where the store is, as a URL without any password (fit for logs and messages)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def redact_url(url: str) -> str:
    """`url` without its password (in the user part or a `password=` query argument)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"{url.partition(':')[0]}:… (not a valid URL; hidden in case it holds a password)"
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    query = [(name, value) for name, value in parse_qsl(parts.query) if name.lower() != "password"]
    return urlunsplit(
        (parts.scheme, f"{user}@{host}" if user else host, parts.path, urlencode(query), parts.fragment)
    )


def online_store_url_error(url: str, problem: str) -> ConfigurationError:
    """The error for a bad BACKFILLS_ONLINE_STORE value, with any password removed."""
    return ConfigurationError(f"{ONLINE_STORE_VARIABLE}={redact_url(url)!r} {problem}: use {ACCEPTED_URLS}")


def _sqlite_path(url: str) -> str:
    rest = url[len("sqlite:") :]
    if not rest.startswith("///"):
        raise online_store_url_error(
            url,
            "does not name an absolute path (the daemon, the webserver and the CLI run in different working "
            "directories and must share one file)",
        )
    # sqlite:////abs.db (SQLAlchemy's absolute form) names the same file as sqlite:///abs.db.
    return "/" + rest.lstrip("/")


def open_online_store(url: str) -> OnlineStore:
    """The online store at `url` (BACKFILLS_ONLINE_STORE): `sqlite:///absolute/path.db`, an embedded file
    that needs no server, or `redis://[user:password@]host:port/db` (`rediss://` over TLS).

    Relative SQLite paths are refused: every process of a deployment must open the same file, whatever its
    working directory.
    """
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        from backfills.serving.online_sqlite import SqliteOnlineStore

        return SqliteOnlineStore(_sqlite_path(url))
    if scheme in ("redis", "rediss"):
        from backfills.serving.online_redis import RedisOnlineStore

        return RedisOnlineStore(url)
    raise online_store_url_error(url, "is not an online store URL")
