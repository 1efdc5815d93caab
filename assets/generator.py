"""Deterministic synthetic landing zone of card transactions: one Parquet file per day under
`raw/transactions/`, with realistic skew, late arrivals and named faults injected into chosen days."""

from __future__ import annotations

import io
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from backfills.errors import ConfigurationError
from backfills.resources.storage import ObjectStore

RAW_SCHEMA = pa.schema(
    [
        pa.field("txn_id", pa.string()),
        pa.field("customer_id", pa.string()),
        pa.field("event_ts", pa.timestamp("us", tz="UTC")),
        pa.field("amount", pa.float64()),
        pa.field("currency", pa.string()),
        pa.field("merchant_category", pa.string()),
        pa.field("status", pa.string()),
    ]
)

LANDING_PREFIX = "raw/transactions"

FAULTS: dict[str, str] = {
    "duplicate_txn_ids": "about 1% of the file's rows (at least one) appear twice: same txn_id, same content",
    "negative_amounts": "36 rows (a tenth of a smaller file) get a negative amount: the sign flipped",
    "absurd_amounts": "5 rows (a tenth of a smaller file) get an amount of 1e9",
    "null_customer_ids": "24 rows (a tenth of a smaller file) get a null customer_id",
    "missing_column": "the currency column is dropped from the file",
    "wrong_column_type": "amount is written as a string column instead of float64",
    "empty_day": "the file has the raw schema and zero rows",
    "out_of_day_timestamps": "24 rows (a tenth of a smaller file) move 3 to 6 days before or after the day",
    "partial_delivery": (
        "a fifth of the file's rows are missing, as after an upstream outage; the day generated again "
        "without the fault is the complete, corrected delivery"
    ),
    "redelivered_events": (
        "about 1% of the previous file's on-time events (at least one) are delivered again: same txn_id, "
        "same content"
    ),
    "cross_midnight_copies": (
        "the previous day's last 3 on-time events are delivered again with event_ts moved across midnight "
        "(23:50 becomes 00:10 of this day)"
    ),
    "conflicting_copies": (
        "3 of the previous file's on-time events are delivered again with another amount (x1.5) and the "
        "other status"
    ),
    "oversized_tickets": (
        "3 rows (a tenth of a smaller file) become tickets of 250,000 USD in their currency: valid raw "
        "amounts, above the largest ticket the features allow (100,000 USD)"
    ),
}

# Each row fault owns a fixed slice of one per-file permutation of row positions, so its rows are the same
# whichever other faults hit that file, and two faults never touch the same row. A fault touches at most a
# tenth of the file, so in a small file every chosen fault still shows up.
_FAULT_ROWS = {
    "negative_amounts": 36,
    "absurd_amounts": 5,
    "null_customer_ids": 24,
    "out_of_day_timestamps": 24,
}
_ROW_FAULTS = {"duplicate_txn_ids", "partial_delivery", "oversized_tickets", *_FAULT_ROWS}
# Faults that deliver some of the previous day's events again in this day's file.
_COPY_FAULTS = {"redelivered_events", "cross_midnight_copies", "conflicting_copies"}
_REDELIVERED_SHARE = 0.01
_CROSS_MIDNIGHT_COPIES = 3
_CONFLICTING_COPIES = 3
_DUPLICATE_SHARE = 0.01
_MISSING_SHARE = 0.2
_ABSURD_AMOUNT = 1e9
_OVERSIZED_TICKET_USD, _OVERSIZED_ROWS = 250_000.0, 3

_ROWS_JITTER = 0.10
_LATE_SHARE = 0.02
_ACTIVITY_EXPONENT = 0.8
_BASE_DECLINE_RATE = 0.035
_RISKY_CUSTOMER_SHARE = 0.08
_RISKY_DECLINE_RATE = 0.25

CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CAD", "AUD", "CHF"]
_CURRENCY_SHARES = [0.45, 0.25, 0.12, 0.06, 0.05, 0.04, 0.03]
# Units of the currency per USD, so a ticket has the same real size in every currency (JPY ~150x USD).
_UNITS_PER_USD = np.array([1.0, 0.92, 0.79, 150.0, 1.36, 1.5, 0.88])
_MINOR_UNIT_DECIMALS = np.array([2, 2, 2, 0, 2, 2, 2])
# A customer pays in their home currency, except abroad: travel is often foreign, the rest rarely.
_FOREIGN_SHARE = 0.08
_FOREIGN_SHARE_TRAVEL = 0.5

_CATEGORIES = [
    "grocery",
    "restaurants",
    "online_retail",
    "fuel",
    "apparel",
    "entertainment",
    "health",
    "utilities",
    "electronics",
    "travel",
]
_CATEGORY_SHARES = [0.22, 0.16, 0.15, 0.10, 0.08, 0.07, 0.06, 0.06, 0.05, 0.05]
_TRAVEL = _CATEGORIES.index("travel")
# Median ticket in USD and log-spread per category: groceries are small and steady, travel large and wide.
_MEDIAN_TICKET_USD = np.array([45.0, 35.0, 60.0, 50.0, 80.0, 30.0, 70.0, 110.0, 250.0, 400.0])
_TICKET_SPREAD = np.array([0.7, 0.6, 0.9, 0.4, 0.7, 0.6, 0.8, 0.5, 0.9, 1.0])

# Relative activity per UTC hour: quiet nights, a lunch peak and an evening peak.
# fmt: off
_HOURLY_ACTIVITY = np.array([
    0.5, 0.3, 0.2, 0.2, 0.2, 0.3, 0.8, 1.5, 2.5, 3.0, 3.2, 3.6,
    4.2, 3.8, 3.2, 3.0, 3.2, 3.8, 4.4, 4.6, 4.0, 3.0, 2.0, 1.0,
])
# fmt: on
_HOUR_CDF = np.cumsum(_HOURLY_ACTIVITY) / _HOURLY_ACTIVITY.sum()

_US_PER_HOUR = 3_600_000_000
_US_PER_DAY = 24 * _US_PER_HOUR
_EPOCH = date(1970, 1, 1)
# Seed-stream tags: day streams are [seed, ordinal] with ordinal >= 1, so these keys never collide with them.
_CUSTOMER_STREAM = 0
_FAULT_STREAM = 1
_COPY_STREAM = 2


@dataclass(frozen=True)
class Fault:
    """A named fault injected into the file of one day."""

    name: str
    day: date


@dataclass(frozen=True)
class GenerationSummary:
    """What `write_landing_zone` wrote: storage keys in day order, rows in each day's file, faults applied."""

    root: str
    start: date
    end: date
    files: tuple[str, ...]
    rows_per_day: dict[date, int]
    faults: tuple[Fault, ...]


def landing_key(day: date) -> str:
    """The storage key of the landing file for `day`."""
    return f"{LANDING_PREFIX}/date={day.isoformat()}/part-00000.parquet"


def parse_fault(text: str) -> Fault:
    """Parse a CLI value `NAME:YYYY-MM-DD`, e.g. `duplicate_txn_ids:2024-01-05`."""
    name, separator, day_text = text.strip().partition(":")
    if not separator:
        raise ConfigurationError(
            f"fault {text!r} is not NAME:YYYY-MM-DD (e.g. duplicate_txn_ids:2024-01-05); "
            f"valid names: {', '.join(FAULTS)}"
        )
    if name not in FAULTS:
        raise ConfigurationError(f"unknown fault name {name!r} in {text!r}; valid names: {', '.join(FAULTS)}")
    try:
        day = date.fromisoformat(day_text)
    except ValueError:
        raise ConfigurationError(f"fault day {day_text!r} in {text!r} is not a YYYY-MM-DD date") from None
    return Fault(name, day)


def generate_file(
    day: date, *, seed: int, customers: int, rows_per_day: int, faults: Collection[str] = ()
) -> pa.Table:
    """The landing file of `day`: the day's on-time events plus the previous day's late ones, with `faults`.

    The result depends only on the arguments, never on which other days are generated.
    """
    _check_settings(seed=seed, customers=customers, rows_per_day=rows_per_day)
    chosen = set(faults)
    unknown = sorted(chosen - FAULTS.keys())
    if unknown:
        raise ConfigurationError(f"unknown fault names {unknown}; valid names: {', '.join(FAULTS)}")
    today = _events_of_day(day, seed, customers, rows_per_day)
    yesterday = _events_of_day(day - timedelta(days=1), seed, customers, rows_per_day)
    # The previous day's late events all precede today's, and each day's events are already in
    # (event_ts, txn_id) order, so concatenating keeps the file sorted without a sort.
    events = {
        column: np.concatenate([yesterday[column][yesterday["late"]], today[column][~today["late"]]])
        for column in today
    }
    if chosen & _ROW_FAULTS:
        _inject_row_faults(events, day, seed, chosen)
    if chosen & _COPY_FAULTS:
        _add_copies(events, yesterday, day, seed, chosen)
    table = _to_table(events, _customers(seed, customers).ids)
    if "empty_day" in chosen:
        table = table.slice(0, 0)
    if "wrong_column_type" in chosen:
        index = table.schema.get_field_index("amount")
        table = table.set_column(index, "amount", pc.cast(table["amount"], pa.string()))
    if "missing_column" in chosen:
        table = table.drop_columns(["currency"])
    return table


def write_landing_zone(
    store: ObjectStore,
    *,
    start: date,
    days: int,
    customers: int = 2000,
    rows_per_day: int = 10_000,
    seed: int = 7,
    faults: Sequence[Fault] = (),
) -> GenerationSummary:
    """Write one Parquet file per day from `start` for `days` days, with `faults` on their days."""
    if days < 1:
        raise ConfigurationError(f"days must be at least 1, got {days}")
    _check_settings(seed=seed, customers=customers, rows_per_day=rows_per_day)
    end = start + timedelta(days=days - 1)
    # Checked before the first write, so a bad fault never leaves a half-written landing zone.
    for fault in faults:
        if fault.name not in FAULTS:
            raise ConfigurationError(f"unknown fault name {fault.name!r}; valid names: {', '.join(FAULTS)}")
        if not start <= fault.day <= end:
            raise ConfigurationError(
                f"fault {fault.name}:{fault.day.isoformat()} is outside the generated days "
                f"{start.isoformat()}..{end.isoformat()}"
            )
    files: list[str] = []
    rows: dict[date, int] = {}
    for offset in range(days):
        day = start + timedelta(days=offset)
        table = generate_file(
            day,
            seed=seed,
            customers=customers,
            rows_per_day=rows_per_day,
            faults={fault.name for fault in faults if fault.day == day},
        )
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="snappy")
        key = landing_key(day)
        store.put(key, buffer.getvalue())
        files.append(key)
        rows[day] = table.num_rows
    return GenerationSummary(
        root=store.root, start=start, end=end, files=tuple(files), rows_per_day=rows, faults=tuple(faults)
    )


def _check_settings(*, seed: int, customers: int, rows_per_day: int) -> None:
    if seed < 0:
        raise ConfigurationError(f"seed must be a non-negative integer, got {seed}")
    if customers < 1:
        raise ConfigurationError(f"customers must be at least 1, got {customers}")
    if rows_per_day < 0:
        raise ConfigurationError(f"rows_per_day must be 0 or more, got {rows_per_day}")


@dataclass(frozen=True)
class _Customers:
    ids: pa.Array
    activity_cdf: np.ndarray
    home_currency: np.ndarray
    decline_rate: np.ndarray


@lru_cache(maxsize=8)
def _customers(seed: int, count: int) -> _Customers:
    """Who the customers are; drawn once per (seed, count) so every day sees the same people."""
    rng = np.random.default_rng([seed, _CUSTOMER_STREAM])
    # Zipf-like activity by rank, with ranks shuffled so the heavy customers are not simply the first IDs.
    activity = rng.permutation(np.arange(1, count + 1, dtype=np.float64) ** -_ACTIVITY_EXPONENT)
    home_currency = rng.choice(len(CURRENCIES), size=count, p=_CURRENCY_SHARES)
    risky = rng.random(count) < _RISKY_CUSTOMER_SHARE
    width = max(6, len(str(count)))
    numbers = pc.cast(pa.array(np.arange(1, count + 1)), pa.string())
    ids = pc.binary_join_element_wise("C", pc.utf8_lpad(numbers, width=width, padding="0"), "")
    return _Customers(
        ids=ids,
        activity_cdf=np.cumsum(activity) / activity.sum(),
        home_currency=home_currency,
        decline_rate=np.where(risky, _RISKY_DECLINE_RATE, _BASE_DECLINE_RATE),
    )


def _events_of_day(day: date, seed: int, customers: int, rows_per_day: int) -> dict[str, np.ndarray]:
    """All events with event_ts on `day`, sorted by time, each flagged late (delivered the next day) or not.

    Seeded by the day alone, so a day's events never depend on the range being generated.
    """
    rng = np.random.default_rng([seed, day.toordinal()])
    people = _customers(seed, customers)
    low = round(rows_per_day * (1 - _ROWS_JITTER))
    high = round(rows_per_day * (1 + _ROWS_JITTER))
    count = int(rng.integers(low, high + 1))

    hour = np.searchsorted(_HOUR_CDF, rng.random(count), side="right")
    offset_us = hour * _US_PER_HOUR + rng.integers(0, _US_PER_HOUR, size=count)
    event_ts = (day - _EPOCH).days * _US_PER_DAY + np.sort(offset_us)

    customer = np.searchsorted(people.activity_cdf, rng.random(count), side="right")
    category = rng.choice(len(_CATEGORIES), size=count, p=_CATEGORY_SHARES)
    foreign = rng.random(count) < np.where(category == _TRAVEL, _FOREIGN_SHARE_TRAVEL, _FOREIGN_SHARE)
    currency = np.where(
        foreign, rng.choice(len(CURRENCIES), size=count, p=_CURRENCY_SHARES), people.home_currency[customer]
    )
    amount_usd = rng.lognormal(np.log(_MEDIAN_TICKET_USD[category]), _TICKET_SPREAD[category])
    scale = 10.0 ** _MINOR_UNIT_DECIMALS[currency]
    amount = np.round(amount_usd * _UNITS_PER_USD[currency] * scale) / scale
    declined = rng.random(count) < people.decline_rate[customer]
    late = rng.random(count) < _LATE_SHARE
    return {
        "day": np.full(count, day.toordinal()),
        "sequence": np.arange(count),
        "customer": customer,
        "customer_missing": np.zeros(count, dtype=bool),
        "event_ts": event_ts,
        "amount": amount,
        "currency": currency,
        "category": category,
        "declined": declined,
        "late": late,
    }


def _inject_row_faults(events: dict[str, np.ndarray], day: date, seed: int, faults: set[str]) -> None:
    """Change `events` in place: the chosen faults' rows, then re-sort."""
    rng = np.random.default_rng([seed, day.toordinal(), _FAULT_STREAM])
    count = len(events["event_ts"])
    positions = rng.permutation(count)
    slices: dict[str, np.ndarray] = {}
    taken = 0
    for name, nominal in _FAULT_ROWS.items():
        rows = min(nominal, max(1, count // 10))
        slices[name] = positions[taken : taken + rows]
        taken += rows
    duplicated = positions[taken : taken + max(1, round(count * _DUPLICATE_SHARE))]
    taken += len(duplicated)
    oversized = positions[taken : taken + min(_OVERSIZED_ROWS, max(1, count // 10))]
    # Drawn even when out_of_day_timestamps is not chosen, so the stream never depends on the chosen faults.
    shift_days = rng.integers(3, 7, size=len(slices["out_of_day_timestamps"]))
    shift_days[: len(shift_days) // 2] *= -1

    if "negative_amounts" in faults:
        events["amount"][slices["negative_amounts"]] *= -1
    if "absurd_amounts" in faults:
        events["amount"][slices["absurd_amounts"]] = _ABSURD_AMOUNT
    if "oversized_tickets" in faults:
        units = _OVERSIZED_TICKET_USD * _UNITS_PER_USD[events["currency"][oversized]]
        events["amount"][oversized] = np.round(units, 2)
    if "null_customer_ids" in faults:
        events["customer_missing"][slices["null_customer_ids"]] = True
    if "out_of_day_timestamps" in faults:
        rows = slices["out_of_day_timestamps"]
        time_of_day = events["event_ts"][rows] % _US_PER_DAY
        events["event_ts"][rows] = ((day - _EPOCH).days + shift_days) * _US_PER_DAY + time_of_day
    if "duplicate_txn_ids" in faults:
        events.update({column: np.append(values, values[duplicated]) for column, values in events.items()})
    if "partial_delivery" in faults:
        # The last slice of the permutation: never a row another fault chose.
        keep = np.ones(len(events["event_ts"]), dtype=bool)
        keep[positions[count - int(count * _MISSING_SHARE) :]] = False
        events.update({column: values[keep] for column, values in events.items()})
    # Moved timestamps and appended copies must land where a sorted file would have them.
    order = np.lexsort((events["sequence"], events["day"], events["event_ts"]))
    events.update({column: values[order] for column, values in events.items()})


def _add_copies(
    events: dict[str, np.ndarray], yesterday: dict[str, np.ndarray], day: date, seed: int, faults: set[str]
) -> None:
    """Append copies of events the previous day's file delivered (its on-time events), then re-sort."""
    rng = np.random.default_rng([seed, day.toordinal(), _COPY_STREAM])
    delivered = np.flatnonzero(~yesterday["late"])
    if len(delivered) == 0:
        return
    picked = rng.permutation(delivered)
    again = picked[: max(1, round(len(delivered) * _REDELIVERED_SHARE))]
    changed = picked[len(again) : len(again) + _CONFLICTING_COPIES]
    copies = []
    if "redelivered_events" in faults:
        copies.append({column: values[again] for column, values in yesterday.items()})
    if "conflicting_copies" in faults:
        copy = {column: values[changed] for column, values in yesterday.items()}
        copy["amount"] = np.round(copy["amount"] * 1.5, 2)
        copy["declined"] = ~copy["declined"]
        copies.append(copy)
    if "cross_midnight_copies" in faults:
        copy = {column: values[delivered[-_CROSS_MIDNIGHT_COPIES:]] for column, values in yesterday.items()}
        midnight = (day - _EPOCH).days * _US_PER_DAY
        copy["event_ts"] = 2 * midnight - copy["event_ts"]  # as far after midnight as it was before
        copies.append(copy)
    events.update(
        {column: np.concatenate([values, *[c[column] for c in copies]]) for column, values in events.items()}
    )
    order = np.lexsort((events["sequence"], events["day"], events["event_ts"]))
    events.update({column: values[order] for column, values in events.items()})


def _to_table(events: dict[str, np.ndarray], customer_ids: pa.Array) -> pa.Table:
    # A file holds events of two or three days only: format each day once, not once per row.
    event_days, day_index = np.unique(events["day"], return_inverse=True)
    prefixes = pa.array([f"T{date.fromordinal(int(ordinal)):%Y%m%d}-" for ordinal in event_days], pa.string())
    # Zero-padded sequence numbers make txn_id order match event order within a day.
    sequence = pc.utf8_lpad(pc.cast(pa.array(events["sequence"]), pa.string()), width=8, padding="0")
    txn_id = pc.binary_join_element_wise(pc.take(prefixes, pa.array(day_index)), sequence, "")
    customer_index = pa.array(events["customer"], mask=events["customer_missing"])
    return pa.Table.from_arrays(
        [
            txn_id,
            pc.take(customer_ids, customer_index),
            pa.array(events["event_ts"], type=RAW_SCHEMA.field("event_ts").type),
            pa.array(events["amount"], type=pa.float64()),
            pc.take(pa.array(CURRENCIES), pa.array(events["currency"])),
            pc.take(pa.array(_CATEGORIES), pa.array(events["category"])),
            pc.take(pa.array(["approved", "declined"]), pa.array(events["declined"].astype(np.int8))),
        ],
        schema=RAW_SCHEMA,
    )
