"""Rows as the online store keeps them: one JSON object per entity, whose values read back exactly.

Floats are written as repr(), which reads back as the same float; dates and times become ISO strings and
decimals their exact text; NaN and infinity are refused, since JSON has neither.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import date
from decimal import Decimal

from backfills.errors import OnlineStoreError


def _json_value(value: object) -> object:
    """JSON has no dates or decimals: dates and times as ISO strings, decimals as their exact text."""
    if isinstance(value, date):  # datetimes too
        return value.isoformat()
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a finite number")
        return str(value)
    raise TypeError(f"{type(value).__name__} values cannot be stored as JSON")


_ENCODER = json.JSONEncoder(allow_nan=False, default=_json_value, separators=(",", ":"), ensure_ascii=False)


def stored_form(value: object) -> str:
    """The JSON text a value is kept as online: an offline value and what a reader returns for it are equal
    exactly when their stored forms are (so 1 and 1.0, or 0.0 and -0.0, differ)."""
    return _ENCODER.encode(value)


class RowEncoder:
    """Rows to (key, JSON) pairs in chunks, checking that each row has the first row's columns and a string
    key, and saying which row and column cannot be stored."""

    def __init__(self, table: str, version: str, key_column: str) -> None:
        self.where = f"version {version} of {table}"
        self.key_column = key_column
        self.columns: tuple[str, ...] = ()
        self._column_set: frozenset[str] = frozenset()
        self.count = 0

    def chunks(self, rows: Iterable[Mapping[str, object]], size: int) -> Iterator[list[tuple[str, str]]]:
        chunk: list[tuple[str, str]] = []
        for row in rows:
            chunk.append(self._encode(row))
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def _encode(self, row: Mapping[str, object]) -> tuple[str, str]:
        self.count += 1
        if self.count == 1:
            self.columns = tuple(row)
            self._column_set = frozenset(self.columns)
            if self.key_column not in row:
                raise OnlineStoreError(
                    f"rows of {self.where} have no key column {self.key_column!r} "
                    f"(their columns: {', '.join(self.columns)})"
                )
        elif row.keys() != self._column_set:
            raise OnlineStoreError(
                f"row {self.count} of {self.where} has the columns {', '.join(row)}, but the first row had "
                f"{', '.join(self.columns)}: every row of a version has the same columns"
            )
        key = row[self.key_column]
        if not isinstance(key, str):
            raise OnlineStoreError(
                f"row {self.count} of {self.where} has the key {key!r} ({type(key).__name__}) in key column "
                f"{self.key_column!r}: entity keys are strings"
            )
        try:
            return key, _ENCODER.encode(row if isinstance(row, dict) else dict(row))
        except (TypeError, ValueError):
            raise self._unstorable(row, key) from None

    def _unstorable(self, row: Mapping[str, object], key: str) -> OnlineStoreError:
        bad = next((item for item in row.items() if not _storable(item[1])), None)
        problem = (
            f"column {bad[0]!r} holds {bad[1]!r} ({type(bad[1]).__name__})"
            if bad
            else f"not all its column names {list(row)} are strings"
        )
        return OnlineStoreError(
            f"row {self.count} (key {key!r}) of {self.where} cannot be stored online: {problem}; the store "
            "keeps JSON: strings, finite numbers, booleans, None, dates, decimals, lists and maps (no NaN or "
            "infinity)"
        )


def _storable(value: object) -> bool:
    try:
        stored_form(value)
    except (TypeError, ValueError):
        return False
    return True
