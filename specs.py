"""The vocabulary of the package: what a feature table, its inputs, columns and rules are, the date range a
run computes, and the raw events' schema. Imports nothing of the package, so that assets (which compute) and
checks (which judge) both build on it without importing each other.
"""

from __future__ import annotations

import hashlib
import inspect
import types
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

RAW_TRANSACTIONS = "raw_transactions"
RAW_SCHEMA_DDL = (
    "txn_id string, customer_id string, event_ts timestamp, amount double, "
    "currency string, merchant_category string, status string"
)
# Raw events as a run reads them: the landing file's day, and (assets/deliveries.py) whether a row delivers a
# transaction again and the copy delivered before it.
LANDED_DATE = "landed_date"
EVENT_ID = "txn_id"
EVENT_FIELDS = ("event_ts", "customer_id", "amount", "currency", "merchant_category", "status")
REDELIVERED = "redelivered"
PREVIOUS_DELIVERY = "previous_delivery"

# Fixed reference rates keep recomputation deterministic; a rate feed would be a raw input of its own.
USD_RATES = {
    "USD": "1.0000",
    "EUR": "1.0800",
    "GBP": "1.2700",
    "JPY": "0.0067",
    "CAD": "0.7400",
    "AUD": "0.6600",
    "CHF": "1.1300",
}


@dataclass(frozen=True)
class DateRange:
    """Inclusive range of feature dates a run computes."""

    start: date
    end: date

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"date range ends ({self.end}) before it starts ({self.start})")

    def widened(self, *, before: int = 0, after: int = 0) -> DateRange:
        return DateRange(self.start - timedelta(days=before), self.end + timedelta(days=after))

    def days(self) -> list[date]:
        return [self.start + timedelta(days=n) for n in range((self.end - self.start).days + 1)]


def day_ranges(days: list[str]) -> str:
    """'2025-01-01..2025-01-03, 2025-01-07' for a sorted list of ISO days."""
    spans: list[list[date]] = []
    for text in days:
        day = date.fromisoformat(text)
        if spans and (day - spans[-1][1]).days == 1:
            spans[-1][1] = day
        else:
            spans.append([day, day])
    return ", ".join(f"{a}..{b}" if a != b else f"{a}" for a, b in spans)


Inputs = Mapping[str, "DataFrame"]


@dataclass(frozen=True)
class DiffPolicy:
    """Thresholds of a table's diff check; a figure strictly above a threshold triggers it."""

    changed_fraction_warn: float = 0.01
    changed_fraction_block: float | None = None  # None: never blocks on the amount of change alone
    psi_warn: float = 0.1
    psi_block: float = 0.25
    mean_shift_block: float | None = None  # on |mean_shift|; None: never blocks on the mean alone

    def __post_init__(self) -> None:
        thresholds = {name: value for name, value in asdict(self).items() if value is not None}
        negative = [f"{name}={value}" for name, value in thresholds.items() if value < 0]
        if negative:
            raise ValueError(f"diff policy thresholds must be >= 0, got {', '.join(negative)}")
        if self.psi_warn > self.psi_block:
            raise ValueError(f"diff policy psi_warn ({self.psi_warn}) is above psi_block ({self.psi_block})")
        if (
            self.changed_fraction_block is not None
            and self.changed_fraction_warn > self.changed_fraction_block
        ):
            raise ValueError(
                f"diff policy changed_fraction_warn ({self.changed_fraction_warn}) is above "
                f"changed_fraction_block ({self.changed_fraction_block})"
            )


@dataclass(frozen=True)
class FeatureInput:
    """An upstream table and how many earlier days (lookback) or later files (lateness) a partition needs.

    For raw events, `redelivery_days` is how many files before a day are read to recognise an event
    delivered again (see assets/deliveries.py): copies of a txn_id at most that many files apart are one
    transaction, and its earliest delivery counts.
    """

    table: str
    lookback_days: int = 0
    lateness_days: int = 0
    redelivery_days: int = 0


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # Spark SQL type, as in DDL
    description: str
    nullable: bool = False
    derived_from: tuple[tuple[str, str], ...] = ()  # (upstream table, column) pairs, for column lineage
    min_value: float | None = None  # inclusive bounds, enforced by the contract and the range check
    max_value: float | None = None
    max_null_rate: float | None = None  # default: 0 for a non-nullable column, 0.5 for a nullable one


@dataclass(frozen=True)
class RowRule:
    """A condition (Spark SQL over one row) every row of the table must meet."""

    name: str
    condition: str


@dataclass(frozen=True)
class KeyCoverage:
    """How the table's keys on a day relate to an upstream table's keys on the same day.

    `subset`: every row here has its key upstream; `covers`: every upstream key has a row here; `equal`: both.
    `upstream_date` is the SQL expression giving the upstream row's day (its date column by default).
    """

    upstream: str
    relation: Literal["subset", "covers", "equal"]
    upstream_date: str = "feature_date"


@dataclass(frozen=True)
class ModelImpactPolicy:
    """When a batch's effect on the reference models' decisions warns or blocks: the share of scored
    entity-days whose decision flips (staged rows against production's rows of the same days and keys)."""

    warn_flip_rate: float = 0.01
    block_flip_rate: float = 0.05

    def __post_init__(self) -> None:
        if not 0 <= self.warn_flip_rate <= self.block_flip_rate <= 1:
            raise ValueError(
                f"warn_flip_rate ({self.warn_flip_rate}) must be at most block_flip_rate "
                f"({self.block_flip_rate}), both between 0 and 1"
            )


@dataclass(frozen=True)
class ColumnHealth:
    """A table's own canary health check on one numeric feature column: its mean in the canary slice may
    move by at most `max_mean_shift` (relative to the slice's production mean) and its null rate by at most
    `max_null_rate_gap` (absolute), net of the difference the slices had in production."""

    column: str
    max_mean_shift: float = 0.25
    max_null_rate_gap: float = 0.01

    def __post_init__(self) -> None:
        if self.max_mean_shift < 0 or not 0 <= self.max_null_rate_gap <= 1:
            raise ValueError(
                f"canary health of column {self.column}: max_mean_shift must be 0 or more and "
                f"max_null_rate_gap between 0 and 1, got {self.max_mean_shift} and {self.max_null_rate_gap}"
            )


@dataclass(frozen=True)
class CanaryHealthPolicy:
    """When an open canary is unhealthy (orchestration/canary_health.py): on the newest `days` partitions
    the canary changed, a reference model's decline rate or mean score in the canary slice moved against
    the control slice, net of the difference the two slices had in production, by more than these; or one
    of the table's own `columns` checks breached."""

    max_decline_rate_gap: float = 0.05
    max_score_mean_gap: float = 0.05
    days: int = 3
    columns: tuple[ColumnHealth, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.max_decline_rate_gap <= 1 or not 0 <= self.max_score_mean_gap <= 1:
            raise ValueError(
                f"canary health gaps must be between 0 and 1, got {self.max_decline_rate_gap} and "
                f"{self.max_score_mean_gap}"
            )
        if self.days < 1:
            raise ValueError(f"canary health days={self.days}: compare at least one partition")


@dataclass(frozen=True)
class ReferenceModel:
    """A model that reads a table's features, declared so that a batch is judged by what it does to the
    model's scores and decisions. `score` is deterministic (no training, no download): given rows with the
    `features` columns it returns them with a `score` (double) and a `decision` column."""

    name: str
    features: tuple[str, ...]
    score: Callable[[DataFrame], DataFrame]
    description: str = ""


@dataclass(frozen=True)
class Serving:
    """How readers of production use a table at a point in time (training sets; serving/training.py).

    The partition of day D holds what was known when D ended: it is usable from D+1 00:00 UTC, for
    `ttl_days` days (D + 1 <= event day <= D + ttl_days). `missing_row` says what an entity without a row in
    the newest usable partition gets: "null" (window aggregates: no row means nothing happened in the
    window, so an older row would be wrong) or "carry_forward" (slowly changing attributes: its newest row
    among the usable partitions). `due_hours` is the freshness SLA (serving/freshness.py).
    """

    ttl_days: int = 1
    missing_row: Literal["null", "carry_forward"] = "null"
    # Freshness: the partition of day D is due in production (and online) by D+1 00:00 UTC + due_hours.
    due_hours: float = 6.0

    def __post_init__(self) -> None:
        if self.ttl_days < 1:
            raise ValueError(f"ttl_days={self.ttl_days}: a partition is usable for at least one day")
        if not 0 <= self.due_hours < 24 * 30:
            raise ValueError(f"due_hours={self.due_hours}: give the hours after a day ends, 0 or more")
        if self.missing_row not in ("null", "carry_forward"):
            raise ValueError(f"missing_row={self.missing_row!r}: use 'null' or 'carry_forward'")


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    description: str
    owner: str
    inputs: tuple[FeatureInput, ...]
    transform: Callable[[Inputs, DateRange], DataFrame]
    columns: tuple[Column, ...]
    entity_keys: tuple[str, ...] = ("customer_id",)
    date_column: str = "feature_date"
    group: str = "features"
    tags: dict[str, str] = field(default_factory=dict)
    row_rules: tuple[RowRule, ...] = ()
    range_mostly: float = 1.0  # share of rows that must be within bounds (1.0: all of them)
    empty_partition_blocks: bool = True  # a staged day with no rows blocks the batch (else it warns)
    key_coverage: tuple[KeyCoverage, ...] = ()
    # Conditions over the same-day rows of the feature inputs joined on the keys (e.g. 7d within 30d).
    input_rules: tuple[RowRule, ...] = ()
    diff_policy: DiffPolicy = DiffPolicy()
    # Share of a run's raw events that may be exact re-deliveries of a txn_id before the check warns.
    duplicate_events_warn_rate: float = 0.001
    serving: Serving = Serving()
    # Models that read this table's features; a batch is judged by what it does to their decisions.
    reference_models: tuple[ReferenceModel, ...] = ()
    model_impact: ModelImpactPolicy = ModelImpactPolicy()
    # When a canary release of this table is unhealthy and rolled back by itself.
    canary_health: CanaryHealthPolicy = CanaryHealthPolicy()

    def __post_init__(self) -> None:
        unknown = [
            check.column for check in self.canary_health.columns if check.column not in self.column_names
        ]
        if unknown:
            raise ValueError(
                f"{self.name}: canary health checks name {', '.join(unknown)}, which are not columns of the "
                f"table ({', '.join(self.column_names)})"
            )

    @property
    def column_names(self) -> list[str]:
        return [column.name for column in self.columns]

    @property
    def schema_ddl(self) -> str:
        return ", ".join(f"`{column.name}` {column.type}" for column in self.columns)

    @property
    def feature_inputs(self) -> tuple[FeatureInput, ...]:
        return tuple(item for item in self.inputs if item.table != RAW_TRANSACTIONS)

    @cached_property
    def code_version(self) -> str:
        """Hash of the spec and the source of its transformation (and the module functions it calls).
        Computed once per spec (reading sources is slow, and every partition record carries it)."""
        described = repr(
            (
                self.name,
                self.inputs,
                self.columns,
                self.entity_keys,
                self.date_column,
                sorted(self.tags.items()),
            )
        )
        digest = hashlib.sha256(described.encode())
        for source in _transformation_sources(self.transform):
            digest.update(source.encode())
        return digest.hexdigest()[:16]


def _transformation_sources(function: Callable[..., object]) -> list[str]:
    """Sources of a function and of the same-module functions it references, so a helper change counts."""
    module = inspect.getmodule(function)
    seen: dict[str, str] = {}
    pending = [function]
    while pending:
        current = pending.pop()
        name = getattr(current, "__qualname__", repr(current))
        if name in seen:
            continue
        seen[name] = inspect.getsource(current)
        code = getattr(current, "__code__", None)
        for referenced in code.co_names if code else ():
            candidate = getattr(module, referenced, None)
            if isinstance(candidate, types.FunctionType) and inspect.getmodule(candidate) is module:
                pending.append(candidate)
            elif isinstance(candidate, int | float | str | dict):
                seen[f"{name}:{referenced}"] = repr(candidate)
    return [seen[key] for key in sorted(seen)]
