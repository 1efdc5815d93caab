"""Parity of an online version with the offline rows it was loaded from.

A deterministic sample of keys is read back through the reader and every value compared exactly: an
offline value and the value read back must have the same stored form (so 0.30000000000000004 is not 0.3,
1 is not 1.0, and a date equals its ISO string, which is how the store keeps dates).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from backfills.errors import InvalidRequestError
from backfills.serving.online_rows import stored_form
from backfills.serving.online_store import OnlineStore

DEFAULT_SAMPLE_SIZE = 1_000
KEPT_EXAMPLES = 10
NO_SUCH_COLUMN = "<no such column>"  # what a mismatch shows for a column one side lacks


class ValueMismatch(NamedTuple):
    """One value the reader returned that differs from the offline row."""

    key: str
    column: str
    expected: object
    found: object


@dataclass(frozen=True)
class ParityResult:
    """What reading a sample of keys back found; `mismatches` and `missing_keys` keep the first few examples,
    the counts are complete."""

    table: str
    version: str
    offline_rows: int
    online_rows: int
    keys_checked: int
    mismatches: tuple[ValueMismatch, ...]
    mismatch_count: int
    missing_keys: tuple[str, ...]
    missing_count: int

    @property
    def passed(self) -> bool:
        return self.offline_rows == self.online_rows and self.mismatch_count == 0 and self.missing_count == 0

    def summary(self) -> str:
        """One line for logs and errors: the counts and the first examples."""
        where = f"online table {self.table} version {self.version}"
        if self.passed:
            return (
                f"{where}: {self.keys_checked} of {self.offline_rows} keys read back equal the offline rows"
            )
        problems = []
        if self.offline_rows != self.online_rows:
            problems.append(f"rows: {self.online_rows} online, {self.offline_rows} offline")
        if self.missing_count:
            more = ", …" if self.missing_count > len(self.missing_keys) else ""
            problems.append(f"missing keys: {self.missing_count} ({', '.join(self.missing_keys)}{more})")
        if self.mismatch_count:
            first = self.mismatches[0]
            problems.append(
                f"differing values: {self.mismatch_count} (first: key {first.key} column {first.column}: "
                f"offline {first.expected!r}, online {first.found!r})"
            )
        checked = f"{self.keys_checked} keys read back"
        return f"{where} differs from the offline rows ({checked}): {'; '.join(problems)}"


def _sample(keys: Iterable[str], size: int, seed: int) -> list[str]:
    # Sorted first, so the sample depends on the keys and the seed only, not on the mapping's order.
    ordered = sorted(keys)
    if len(ordered) <= size:
        return ordered
    return sorted(random.Random(seed).sample(ordered, size))


def _differences(
    key: str, expected: Mapping[str, object], found: Mapping[str, object]
) -> list[ValueMismatch]:
    differences = []
    for column in dict.fromkeys([*expected, *found]):
        want = expected.get(column, NO_SUCH_COLUMN)
        got = found.get(column, NO_SUCH_COLUMN)
        if (column in expected) != (column in found) or stored_form(want) != stored_form(got):
            differences.append(ValueMismatch(key, column, want, got))
    return differences


def parity(
    store: OnlineStore,
    table: str,
    version: str,
    expected: Mapping[str, Mapping[str, object]],
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    offline_rows: int | None = None,
) -> ParityResult:
    """Read a deterministic sample of `expected`'s keys (all of them below `sample_size`) from `version` of
    `table` through the reader, and compare each value exactly with the offline rows (entity key -> row).
    The version's row count is compared with the offline one too (`offline_rows`, when `expected` holds
    only a sample of them), which catches rows online only."""
    if sample_size < 1:
        raise InvalidRequestError(f"sample_size={sample_size}: a parity check reads at least one key")
    keys = _sample(expected, sample_size, seed)
    found = store.get_version(table, version, keys)  # a clear error if the version is not kept
    # 0 if it was pruned since: parity fails rather than vouch for a version no longer there.
    online_rows = next((kept.rows for kept in store.versions(table) if kept.version == version), 0)
    mismatches: list[ValueMismatch] = []
    missing: list[str] = []
    mismatch_count = 0
    for key in keys:
        row = found[key]
        if row is None:
            missing.append(key)
            continue
        differences = _differences(key, expected[key], row)
        mismatch_count += len(differences)
        mismatches.extend(differences[: KEPT_EXAMPLES - len(mismatches)])
    return ParityResult(
        table=table,
        version=version,
        offline_rows=len(expected) if offline_rows is None else offline_rows,
        online_rows=online_rows,
        keys_checked=len(keys),
        mismatches=tuple(mismatches),
        mismatch_count=mismatch_count,
        missing_keys=tuple(missing[:KEPT_EXAMPLES]),
        missing_count=len(missing),
    )
