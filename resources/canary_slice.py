"""Which entities a canary exposes: a stable slice by a hash of the entity key, alike in Spark and Python.

An entity's bucket is the first 8 hex digits of the SHA-256 of its key (UTF-8) read as an integer, modulo
10,000; at `percent` the slice is every bucket below `percent * 100`. So an entity is in or out of the slice
at every step, in every reader and in every process, and the slice at p% lies inside the slice at q% > p%:
widening only adds entities.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Literal, get_args

from backfills.errors import InvalidRequestError

if TYPE_CHECKING:
    from pyspark.sql import Column

# Production: every entity reads CURRENT. Canary: the slice of an open canary reads its release.
Channel = Literal["production", "canary"]
CHANNELS: tuple[Channel, ...] = get_args(Channel)
BUCKETS = 10_000
SLICE_RULE = "sha256(key) first 8 hex digits as an integer, mod 10000, below percent x 100"


def check_channel(channel: str, release: str | None = None) -> Channel:
    """A reader's channel; a pinned release is read as it is, so it goes with the production channel."""
    if channel not in CHANNELS:
        raise InvalidRequestError(f"channel {channel!r} is not one of {', '.join(CHANNELS)}")
    if channel == "canary" and release is not None:
        raise InvalidRequestError(
            f"channel 'canary' follows the open canary, and release {release} pins one release: pass one of "
            "them"
        )
    return next(known for known in CHANNELS if known == channel)


def check_percent(percent: float) -> float:
    """A canary share: more than 0 and at most 100, in steps of 0.01 (one bucket)."""
    if not 0 < percent <= 100:
        raise InvalidRequestError(f"canary percent {percent} must be more than 0 and at most 100")
    if abs(percent * 100 - round(percent * 100)) > 1e-9:
        raise InvalidRequestError(f"canary percent {percent} has more than two decimals: use steps of 0.01")
    return float(percent)


def _threshold(percent: float) -> int:
    return round(check_percent(percent) * 100)


def bucket(key: str) -> int:
    """The entity's bucket, 0..9999."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % BUCKETS


def in_slice(key: str, percent: float) -> bool:
    """Whether the entity reads the canary at `percent`."""
    return bucket(key) < _threshold(percent)


def slice_column(key: Column, percent: float) -> Column:
    """The same test as `in_slice`, as a Spark column over the entity key column."""
    from pyspark.sql import functions as F

    hashed = F.conv(F.substring(F.sha2(key.cast("string"), 256), 1, 8), 16, 10).cast("long")
    return (hashed % F.lit(BUCKETS)) < F.lit(_threshold(percent))
