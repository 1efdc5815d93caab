"""The online store on Redis (through redis-py): one hash per table version, entity key -> row JSON, so a read
of 100 keys is one HMGET.

Per table, under the key prefix: `<table>:rows:<version>` (the rows), `<table>:versions` (version -> record,
set only once every row is written), `<table>:synced` (version -> when it last became current),
`<table>:current`, the pointer readers follow, `<table>:canary`, the canary slice's route while a canary
is open, and `<table>:lease:<version>`, the writer of a version being written ("owner|expiry", in the
server's clock); `release`, the release the last sync switched to. Lua scripts check and change these
atomically; one script switches every table of a sync, so the store needs one Redis server (the keys of
several tables meet in one script, which a cluster refuses).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from itertools import chain

import redis

from backfills.errors import OnlineStoreError
from backfills.serving.online_store import (
    ONLINE_STORE_VARIABLE,
    ClaimState,
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

# The server's clock, in seconds: lease expiries compare with it whichever host wrote them.
_NOW = """
local function now()
  local time = redis.call('TIME')
  return tonumber(time[1]) + tonumber(time[2]) / 1000000
end
"""

# KEYS: lease. ARGV: owner, seconds, a holder known dead ('' for none). Take the lease unless a live writer
# holds it; answer the state and the holder found.
_CLAIM = (
    _NOW
    + """
local held = redis.call('GET', KEYS[1])
local holder, expires = '', 0
if held then holder, expires = string.match(held, '^(.*)|([^|]*)$') end
if held and holder ~= ARGV[3] and tonumber(expires) > now() then return {'held', holder} end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. string.format('%.6f', now() + tonumber(ARGV[2])))
if held then return {'inherited', holder} end
return {'free', ''}
"""
)

# KEYS: lease, then what the fenced command needs. ARGV: owner, seconds, then the command's arguments. The
# owner must hold the lease: it is renewed and the command runs, or nothing happens (-1).
_FENCE = (
    _NOW
    + """
local held = redis.call('GET', KEYS[1])
if not held or string.match(held, '^(.*)|') ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. string.format('%.6f', now() + tonumber(ARGV[2])))
"""
)

# KEYS: lease, current, versions, synced, rows. ARGV: owner, seconds, version. Forget the version's record
# first, so it stays incomplete (no reader, no switch) until every row is written again; never the version
# readers are on (0).
_BEGIN_WRITE = (
    _FENCE
    + """
if redis.call('GET', KEYS[2]) == ARGV[3] then return 0 end
redis.call('HDEL', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[3])
redis.call('UNLINK', KEYS[5])
return 1
"""
)

# KEYS: lease, rows. ARGV: owner, seconds, then key and row JSON pairs. Answers how many keys were new: a key
# repeated (in this chunk or before) is not counted.
_WRITE_ROWS = (
    _FENCE
    + """
local new = 0
for i = 3, #ARGV, 2 do new = new + redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return new
"""
)

# KEYS: lease, versions. ARGV: owner, seconds, version, record.
_COMPLETE = (
    _FENCE
    + """
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return 1
"""
)

# KEYS: lease, current, versions, synced, rows. ARGV: owner, discard ('1' or ''), version. Ends the owner's
# lease; with discard, the version too (never the one readers are on).
_RELEASE = """
local held = redis.call('GET', KEYS[1])
if not held or string.match(held, '^(.*)|') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[2] == '1' and redis.call('GET', KEYS[2]) ~= ARGV[3] then
  redis.call('HDEL', KEYS[3], ARGV[3])
  redis.call('HDEL', KEYS[4], ARGV[3])
  redis.call('UNLINK', KEYS[5])
end
return 1
"""

# KEYS: the synced release, then current, versions, synced of each table. ARGV: time of the switch, the
# expected and the new synced release ('' and '': leave it), then version and expected current ('' for none)
# of each table. Checks everything, then switches every table: all or none.
_SWITCH = """
local tables = (#ARGV - 3) / 2
if ARGV[3] ~= '' then
  local release = redis.call('GET', KEYS[1]) or ''
  if release ~= ARGV[2] then return {'moved', release} end
end
for i = 0, tables - 1 do
  local current = redis.call('GET', KEYS[3 * i + 2]) or ''
  if current ~= ARGV[2 * i + 5] then return {'changed', tostring(i), current} end
  if not redis.call('HGET', KEYS[3 * i + 3], ARGV[2 * i + 4]) then return {'unwritten', tostring(i), ''} end
end
if ARGV[3] ~= '' then redis.call('SET', KEYS[1], ARGV[3]) end
local switched = {'switched'}
for i = 0, tables - 1 do
  local version = ARGV[2 * i + 4]
  if (redis.call('GET', KEYS[3 * i + 2]) or '') ~= version then
    redis.call('SET', KEYS[3 * i + 2], version)
    redis.call('HSET', KEYS[3 * i + 4], version, ARGV[1])
  end
  switched[#switched + 1] = redis.call('HGET', KEYS[3 * i + 3], version)
  switched[#switched + 1] = redis.call('HGET', KEYS[3 * i + 4], version) or ''
end
return switched
"""

# KEYS: current, versions, synced, then the rows of each version in ARGV, then the lease of each. A version
# without a record is being rewritten, and one with a lease being written or read back: its writer, not the
# pruning, owns it.
_DELETE = """
local current = redis.call('GET', KEYS[1])
local deleted = {}
for i, version in ipairs(ARGV) do
  if version ~= current and redis.call('EXISTS', KEYS[#ARGV + i + 3]) == 0
      and redis.call('HDEL', KEYS[2], version) == 1 then
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
        self._release_key = ":".join((key_prefix, "release"))
        self._claim_script = self._redis.register_script(_CLAIM)
        self._release_script = self._redis.register_script(_RELEASE)
        self._begin_write_script = self._redis.register_script(_BEGIN_WRITE)
        self._write_rows_script = self._redis.register_script(_WRITE_ROWS)
        self._complete_script = self._redis.register_script(_COMPLETE)
        self._switch_script = self._redis.register_script(_SWITCH)
        self._delete_script = self._redis.register_script(_DELETE)

    def _key(self, table: str, *parts: str) -> str:
        return ":".join((self.key_prefix, table, *parts))

    def _table_keys(self, table: str) -> list[str]:
        return [self._key(table, "current"), self._key(table, "versions"), self._key(table, "synced")]

    def _lease_key(self, table: str, version: str) -> str:
        return self._key(table, "lease", version)

    def _version_keys(self, table: str, version: str) -> list[str]:
        """The lease, the table's keys and the version's rows: what writing or discarding it touches."""
        rows = self._key(table, "rows", version)
        return [self._lease_key(table, version), *self._table_keys(table), rows]

    def _claim(
        self, table: str, version: str, owner: str, replacing: str | None
    ) -> tuple[ClaimState, str | None]:
        state, holder = self._claim_script(
            keys=[self._lease_key(table, version)], args=[owner, self.lease_seconds, replacing or ""]
        )
        return state, holder or None

    def _release(self, table: str, version: str, owner: str, *, discard: bool) -> None:
        self._release_script(
            keys=self._version_keys(table, version), args=[owner, "1" if discard else "", version]
        )

    def _begin_write(self, table: str, version: str, owner: str) -> None:
        begun = self._begin_write_script(
            keys=self._version_keys(table, version), args=[owner, self.lease_seconds, version]
        )
        if begun == -1:
            raise self._lost_lease_error(table, version)
        if not begun:
            raise self._rewrite_current_error(table, version)

    def _write_rows(self, table: str, version: str, chunk: list[tuple[str, str]], owner: str) -> int:
        keys = [self._lease_key(table, version), self._key(table, "rows", version)]
        new = self._write_rows_script(
            keys=keys, args=[owner, self.lease_seconds, *(text for pair in chunk for text in pair)]
        )
        if new == -1:
            raise self._lost_lease_error(table, version)
        return new

    def _complete(self, record: OnlineVersion, owner: str) -> None:
        keys = [self._lease_key(record.table, record.version), self._key(record.table, "versions")]
        args = [owner, self.lease_seconds, record.version, record.to_json()]
        if self._complete_script(keys=keys, args=args) == -1:
            raise self._lost_lease_error(record.table, record.version)

    def _synced_release(self) -> str | None:
        return self._redis.get(self._release_key)

    def _switch(
        self,
        targets: Sequence[tuple[str, str, str | None]],
        synced_at: datetime,
        release: tuple[str | None, str] | None,
    ) -> list[OnlineVersion]:
        keys = [self._release_key, *(key for table, _, _ in targets for key in self._table_keys(table))]
        expected_release, new_release = release or (None, "")
        args = [synced_at.isoformat(), expected_release or "", new_release]
        for _, version, expected_current in targets:
            args += [version, expected_current or ""]
        status, *answer = self._switch_script(keys=keys, args=args)
        if status == "moved":
            raise self._release_moved_error(answer[0] or None, expected_release)
        if status == "changed":
            table, _, expected_current = targets[int(answer[0])]
            raise self._changed_error(table, answer[1] or None, expected_current)
        if status == "unwritten":
            table, version, _ = targets[int(answer[0])]
            raise self._unwritten_error(table, version)
        pairs = zip(answer[::2], answer[1::2], strict=True)
        return [OnlineVersion.from_json(record, synced or None) for record, synced in pairs]

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
        keys = [
            *self._table_keys(table),
            *(self._key(table, "rows", name) for name in versions),
            *(self._lease_key(table, name) for name in versions),
        ]
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
