"""Offending rows as evidence: Spark rows as small JSON-friendly samples, the same way for every check."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

SAMPLE_SIZE = 5

SampleRow = dict[str, object]  # an offending row: key columns and the offending values, JSON-friendly


def plain(value: object) -> object:
    """A Spark value as JSON shows it to a person: decimals as exact text, dates and times in ISO form."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")  # JSON has no such numbers
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, date | datetime):
        return value.isoformat()
    if hasattr(value, "asDict"):  # a nested struct
        return {str(key): plain(item) for key, item in value.asDict().items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return str(value)


def plain_rows(rows: Iterable[Any], size: int = SAMPLE_SIZE) -> list[SampleRow]:
    """At most `size` rows (Spark Rows or mappings) as dicts of plain values."""
    sample = []
    for row in rows:
        if len(sample) == size:
            break
        items = row.asDict() if hasattr(row, "asDict") else dict(row)
        sample.append({str(key): plain(value) for key, value in items.items()})
    return sample
