"""The online store on Redis (through redis-py): one hash per table version, entity key -> row JSON, so a read
of 100 keys is one HMGET.

Per table, under the key prefix: `<table>:rows:<version>` (the rows), `<table>:versions` (version -> record,
set only once every row is written), `<table>:synced` (version -> when it last became current) and
`<table>:current`, the pointer readers follow, and `<table>:canary`, the canary slice's route while a canary
is open. Lua scripts check and change these atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from itertools import chain

import redis

from backfills.errors import OnlineStoreError
from backfills.serving.online_store import (
    ONLINE_STORE_VARIABLE,
    OnlineStore,
    OnlineVersion,
    online_store_url_error,
    redact_url,
)

DEFAULT_KEY_PREFIX = "backfills:online"
_CONNECT_TIMEOUT_SECONDS = 5.0
_READ_CHUNK_KEYS = 5_000
# A read retries when its version was switched away and pruned between finding and reading it.
_READ_ATTEMPTS = 5

# KEYS: current, versions, synced, rows. Forget the version's record first, so it stays incomplete (no reader,
# no switch) until every row is written again; never the version readers are on.
_BEGIN_WRITE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('UNLINK', KEYS[4])
return 1
"""

# KEYS: current, versions, synced. ARGV: version, expected current ('' for none), time of the switch.
_SWITCH = """
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[2] then return {'changed', current, ''} end
local record = redis.call('HGET', KEYS[2], ARGV[1])
if not record then return {'unwritten', '', ''} end
if current ~= ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
end
return {'switched', record, redis.call('HGET', KEYS[3], ARGV[1])}
"""

# KEYS: current, versions, synced, then the rows of each version in ARGV. A version without a record is
# being rewritten: its writer, not the pruning, owns its rows.
_DELETE = """
local current = redis.call('GET', KEYS[1])
local deleted = {}
for i, version in ipairs(ARGV) do
  if version ~= current and redis.call('HDEL', KEYS[2], version) == 1 then
    redis.call('HDEL', KEYS[3], version)
    redis.call('UNLINK', KEYS[i + 3])
    deleted[#deleted + 1] = version
  end
end
return deleted
"""


class RedisOnlineStore(OnlineStore):
    """Online tables in one Redis database, under `key_prefix` (several deployments can share a database)."""

    def __init__(self, url: str, *, key_prefix: str = DEFAULT_KEY_PREFIX) -> None:
        self._url = url  # may hold a password: shown only through describe(), which removes it
        self.key_prefix = key_prefix
        try:
            self._redis = redis.Redis.from_url(
                url, decode_responses=True, socket_connect_timeout=_CONNECT_TIMEOUT_SECONDS
            )
        except ValueError as error:
            raise online_store_url_error(url, f"is not a Redis URL redis-py accepts ({error})") from None
        try:
            self._redis.ping()
        except redis.RedisError as error:
            self._redis.close()
            raise OnlineStoreError(
                f"cannot reach the online store at {self.describe()}: {error}; check {ONLINE_STORE_VARIABLE} "
                "and that Redis is running"
            ) from None
        self._begin_write_script = self._redis.register_script(_BEGIN_WRITE)
        self._switch_script = self._redis.register_script(_SWITCH)
        self._delete_script = self._redis.register_script(_DELETE)

    def _key(self, table: str, *parts: str) -> str:
        return ":".join((self.key_prefix, table, *parts))

    def _table_keys(self, table: str) -> list[str]:
        return [self._key(table, "current"), self._key(table, "versions"), self._key(table, "synced")]

    def _begin_write(self, table: str, version: str) -> None:
        keys = [*self._table_keys(table), self._key(table, "rows", version)]
        if not self._begin_write_script(keys=keys, args=[version]):
            raise self._rewrite_current_error(table, version)

    def _write_rows(self, table: str, version: str, chunk: list[tuple[str, str]]) -> int:
        # HSET answers how many fields are new: a key repeated (in this chunk or before) is not counted.
        return self._redis.hset(self._key(table, "rows", version), mapping=dict(chunk))

    def _complete(self, record: OnlineVersion) -> None:
        self._redis.hset(self._key(record.table, "versions"), record.version, record.to_json())

    def _switch(
        self, table: str, version: str, expected_current: str | None, synced_at: datetime
    ) -> OnlineVersion:
        status, record, synced = self._switch_script(
            keys=self._table_keys(table), args=[version, expected_current or "", synced_at.isoformat()]
        )
        if status == "changed":
            raise self._changed_error(table, record or None, expected_current)
        if status == "unwritten":
            raise self._unwritten_error(table, version)
        return OnlineVersion.from_json(record, synced)

    def _read(
        self, table: str, version: str | None, keys: Sequence[str]
    ) -> tuple[OnlineVersion | None, dict[str, str]]:
        current, versions, synced = self._table_keys(table)
        for _ in range(_READ_ATTEMPTS):
            name = version or self._redis.get(current)
            if name is None:
                return None, {}
            # One MULTI/EXEC: the record and the rows come from the same moment.
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.hget(versions, name)
                pipe.hget(synced, name)
                for start in range(0, len(keys), _READ_CHUNK_KEYS):
                    pipe.hmget(self._key(table, "rows", name), keys[start : start + _READ_CHUNK_KEYS])
                record, synced_at, *values = pipe.execute()
            if record is not None:
                pairs = zip(keys, chain.from_iterable(values), strict=True)
                found = {key: row for key, row in pairs if row is not None}
                return OnlineVersion.from_json(record, synced_at), found
            if version is not None:
                return None, {}
        raise OnlineStoreError(
            f"online table {table!r} in {self.describe()} switched to another version and pruned the one "
            f"being read {_READ_ATTEMPTS} times in a row; read again"
        )

    def _records(self, table: str) -> list[OnlineVersion]:
        _, versions, synced = self._table_keys(table)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(versions)
            pipe.hgetall(synced)
            records, synced_at = pipe.execute()
        return [OnlineVersion.from_json(record, synced_at.get(name)) for name, record in records.items()]

    def _delete(self, table: str, versions: list[str]) -> list[str]:
        keys = [*self._table_keys(table), *(self._key(table, "rows", name) for name in versions)]
        return list(self._delete_script(keys=keys, args=versions))

    def _route(self, table: str) -> str | None:
        return self._redis.get(self._key(table, "canary"))

    def _set_route(self, table: str, route: str | None) -> None:
        if route is None:
            self._redis.delete(self._key(table, "canary"))
        else:
            self._redis.set(self._key(table, "canary"), route)

    def close(self) -> None:
        self._redis.close()

    def describe(self) -> str:
        return redact_url(self._url)
