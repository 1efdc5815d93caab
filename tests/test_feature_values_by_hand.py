"""Every column of every feature table on a small landing zone whose answers were worked out by hand.

The expected values below are written out, with the arithmetic in the comments; none is computed by the code
under test. Customers, each telling one story (days are in January 2025, all staged Jan 1..31):

- ann, Jan 1: four transactions in four currencies and categories, one declined (the largest: not spend),
  one delivered a day late (in Jan 2's file) and one re-delivered. Her day sits on both window edges: in
  the 7-day table up to Jan 7 (6 days back), gone on Jan 8; in the 30-day table up to Jan 30 (29 days
  back), gone on Jan 31.
- dan: four purchases on Jan 2, one on Jan 20 without a merchant category: a quiet week against a busy
  month, so his risk tier is `normal` on Jan 20..26. Jan 2 is 29 days before Jan 31: still in its window.
- eve: four purchases on Jan 3; on Jan 20 two approved (15.00 AUD and 0.23 AUD: 10.05 USD, an average of
  5.025 rounded half up to 5.03) and one declined: one decline in three transactions flags her
  (`elevated`) though her pace is under twice her 30-day pace.
- fay: eight purchases on Jan 5, seven on Jan 20: on Jan 20 her 7-day pace is exactly twice her 30-day
  pace, the threshold of the velocity flag.
- bob, Jan 10: three transactions (one CAD), one declined: both flags, risk tier `high`.
- cat, Jan 10: two declined transactions: no spend at all (spend ratio null, no largest ticket, no
  average), and too few transactions (2 < 3) for the decline flag despite a decline rate of 1.
- gus: one purchase late on Jan 31 that arrives in Feb 1's file (counted on Jan 31), one on Feb 1.

Fixed rates (assets/transformations.py): EUR 1.08, GBP 1.27, JPY 0.0067, CAD 0.74, AUD 0.66; each amount is
converted and rounded to the cent, then summed.
"""

from __future__ import annotations

import dataclasses
import shutil
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Lake, make_lake

from backfills.assets.generator import RAW_SCHEMA, landing_key
from backfills.assets.reader import FeatureReader
from backfills.assets.registry import dependency_order, feature_spec

FIRST, LAST = date(2025, 1, 1), date(2025, 1, 31)
DAILY, WEEKLY, MONTHLY, PROFILE = (
    "customer_daily_txn",
    "customer_txn_7d",
    "customer_txn_30d",
    "customer_risk_profile",
)


def jan(day: int) -> date:
    return date(2025, 1, day)


def _txn(
    txn_id: str, customer: str, at: str, amount: float, currency: str, category: str | None, status: str
) -> dict:
    return {
        "txn_id": txn_id,
        "customer_id": customer,
        "event_ts": datetime.fromisoformat(at).replace(tzinfo=UTC),
        "amount": amount,
        "currency": currency,
        "merchant_category": category,
        "status": status,
    }


A1 = _txn("a1", "ann", "2025-01-01T08:00:00", 12.34, "USD", "grocery", "approved")

# Landing files by file day; a day not listed has a file with no rows.
FILES = {
    "2025-01-01": [
        A1,
        _txn("a2", "ann", "2025-01-01T09:00:00", 10.00, "EUR", "travel", "approved"),  # 10.80 USD
        # 63.50 USD, declined: no spend
        _txn("a3", "ann", "2025-01-01T10:00:00", 50.00, "GBP", "online_retail", "declined"),
    ],
    "2025-01-02": [
        A1,  # re-delivered: counts once
        _txn("a4", "ann", "2025-01-01T23:59:59", 1000.0, "JPY", "fuel", "approved"),  # late; 6.70 USD
        *[
            _txn(f"d{n}", "dan", f"2025-01-02T10:0{n}:00", 25.00, "USD", "grocery", "approved")
            for n in range(1, 5)
        ],
    ],
    "2025-01-03": [
        _txn(f"e{n}", "eve", f"2025-01-03T12:0{n}:00", 10.00, "USD", "travel", "approved")
        for n in range(1, 5)
    ],
    "2025-01-05": [
        _txn(f"f{n}", "fay", f"2025-01-05T15:0{n}:00", 1.00, "USD", "grocery", "approved")
        for n in range(1, 9)
    ],
    "2025-01-10": [
        _txn("b1", "bob", "2025-01-10T10:00:00", 54.05, "CAD", "grocery", "approved"),  # 39.997 -> 40.00
        _txn("b2", "bob", "2025-01-10T11:00:00", 60.00, "USD", "grocery", "approved"),
        _txn("b3", "bob", "2025-01-10T12:00:00", 5.00, "USD", "travel", "declined"),
        _txn("c1", "cat", "2025-01-10T13:00:00", 15.00, "USD", "fuel", "declined"),
        _txn("c2", "cat", "2025-01-10T14:00:00", 25.00, "EUR", "fuel", "declined"),
    ],
    "2025-01-20": [
        _txn("d5", "dan", "2025-01-20T09:00:00", 20.00, "USD", None, "approved"),  # no merchant category
        _txn("e5", "eve", "2025-01-20T10:00:00", 15.00, "AUD", "online_retail", "approved"),  # 9.90 USD
        _txn("e6", "eve", "2025-01-20T10:30:00", 0.23, "AUD", "online_retail", "approved"),  # 0.1518 -> 0.15
        _txn("e7", "eve", "2025-01-20T11:00:00", 9.99, "CHF", "travel", "declined"),
        *[
            _txn(f"f{n}", "fay", f"2025-01-20T16:{n:02d}:00", 1.00, "USD", "grocery", "approved")
            for n in range(9, 16)
        ],
    ],
    "2025-02-01": [
        _txn("g1", "gus", "2025-01-31T22:00:00", 5.00, "USD", "fuel", "approved"),  # late: counts on Jan 31
        _txn("g2", "gus", "2025-02-01T01:00:00", 7.00, "USD", "fuel", "approved"),  # Feb 1: not staged
    ],
}


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def _expand(episodes: dict[tuple[str, date, date], tuple], columns: tuple[str, ...]) -> dict:
    """(customer, first day, last day) -> one row of values, as {(customer, day): {column: value}}."""
    rows = {}
    for (customer, first, last), values in episodes.items():
        for day in _days(first, last):
            assert (customer, day) not in rows, f"episodes overlap at {customer} {day}"
            rows[(customer, day)] = dict(zip(columns, values, strict=True))
    return rows


D = Decimal
THIRD = 1 / 3

DAILY_COLUMNS = (
    "txn_count",
    "approved_count",
    "declined_count",
    "amount_sum_usd",
    "amount_max_usd",
    "merchant_category_count",
)
# txn, approved, declined, approved spend, largest approved ticket, distinct categories (declined ones too)
DAILY_ROWS = _expand(
    {
        # 12.34 + 10.80 + 6.70 = 29.84; the declined 63.50 is neither spend nor the largest ticket;
        # grocery, travel, online_retail, fuel
        ("ann", jan(1), jan(1)): (4, 3, 1, D("29.84"), D("12.34"), 4),
        ("dan", jan(2), jan(2)): (4, 4, 0, D("100.00"), D("25.00"), 1),
        ("eve", jan(3), jan(3)): (4, 4, 0, D("40.00"), D("10.00"), 1),
        ("fay", jan(5), jan(5)): (8, 8, 0, D("8.00"), D("1.00"), 1),
        ("bob", jan(10), jan(10)): (3, 2, 1, D("100.00"), D("60.00"), 2),  # 40.00 + 60.00; grocery, travel
        ("cat", jan(10), jan(10)): (2, 0, 2, D("0.00"), None, 1),  # nothing approved: no largest ticket
        ("dan", jan(20), jan(20)): (1, 1, 0, D("20.00"), D("20.00"), 0),  # a missing category is no category
        ("eve", jan(20), jan(20)): (3, 2, 1, D("10.05"), D("9.90"), 2),  # 9.90 + 0.15
        ("fay", jan(20), jan(20)): (7, 7, 0, D("7.00"), D("1.00"), 1),
        ("gus", jan(31), jan(31)): (1, 1, 0, D("5.00"), D("5.00"), 1),  # g1 from Feb 1's file; g2 is Feb 1's
    },
    DAILY_COLUMNS,
)


def _window_columns(days: int) -> tuple[str, ...]:
    names = ("txn_count", "approved_count", "declined_count", "amount_sum_usd", "amount_max_usd")
    return tuple(f"{name}_{days}d" for name in (*names, "avg_ticket_usd", "decline_rate", "active_days"))


# txn, approved, declined, spend, largest ticket, average ticket (spend / approved, half up), declines / txn,
# active days. A row on every day whose window [D-6, D] holds one of the customer's days.
WEEKLY_ROWS = _expand(
    {
        ("ann", jan(1), jan(7)): (4, 3, 1, D("29.84"), D("12.34"), D("9.95"), 0.25, 1),  # 29.84 / 3 = 9.9466
        ("dan", jan(2), jan(8)): (4, 4, 0, D("100.00"), D("25.00"), D("25.00"), 0.0, 1),
        ("eve", jan(3), jan(9)): (4, 4, 0, D("40.00"), D("10.00"), D("10.00"), 0.0, 1),
        ("fay", jan(5), jan(11)): (8, 8, 0, D("8.00"), D("1.00"), D("1.00"), 0.0, 1),
        ("bob", jan(10), jan(16)): (3, 2, 1, D("100.00"), D("60.00"), D("50.00"), THIRD, 1),
        ("cat", jan(10), jan(16)): (2, 0, 2, D("0.00"), None, None, 1.0, 1),  # no approved ticket: no average
        # Jan 20's window starts Jan 14: the early January days have left it.
        ("dan", jan(20), jan(26)): (1, 1, 0, D("20.00"), D("20.00"), D("20.00"), 0.0, 1),
        ("eve", jan(20), jan(26)): (3, 2, 1, D("10.05"), D("9.90"), D("5.03"), THIRD, 1),  # 10.05 / 2 = 5.025
        ("fay", jan(20), jan(26)): (7, 7, 0, D("7.00"), D("1.00"), D("1.00"), 0.0, 1),
        ("gus", jan(31), jan(31)): (1, 1, 0, D("5.00"), D("5.00"), D("5.00"), 0.0, 1),
    },
    _window_columns(7),
)

# The same over [D-29, D]: ann's Jan 1 is in up to Jan 30; dan's Jan 2 is still in on Jan 31.
MONTHLY_ROWS = _expand(
    {
        ("ann", jan(1), jan(30)): (4, 3, 1, D("29.84"), D("12.34"), D("9.95"), 0.25, 1),
        ("dan", jan(2), jan(19)): (4, 4, 0, D("100.00"), D("25.00"), D("25.00"), 0.0, 1),
        ("dan", jan(20), jan(31)): (5, 5, 0, D("120.00"), D("25.00"), D("24.00"), 0.0, 2),  # 120.00 / 5
        ("eve", jan(3), jan(19)): (4, 4, 0, D("40.00"), D("10.00"), D("10.00"), 0.0, 1),
        # 40.00 + 10.05 = 50.05 over 6 approved = 8.3416 -> 8.34; 1 decline in 7
        ("eve", jan(20), jan(31)): (7, 6, 1, D("50.05"), D("10.00"), D("8.34"), 1 / 7, 2),
        ("fay", jan(5), jan(19)): (8, 8, 0, D("8.00"), D("1.00"), D("1.00"), 0.0, 1),
        ("fay", jan(20), jan(31)): (15, 15, 0, D("15.00"), D("1.00"), D("1.00"), 0.0, 2),
        ("bob", jan(10), jan(31)): (3, 2, 1, D("100.00"), D("60.00"), D("50.00"), THIRD, 1),
        ("cat", jan(10), jan(31)): (2, 0, 2, D("0.00"), None, None, 1.0, 1),
        ("gus", jan(31), jan(31)): (1, 1, 0, D("5.00"), D("5.00"), D("5.00"), 0.0, 1),
    },
    _window_columns(30),
)

PROFILE_COLUMNS = (
    "txn_velocity_ratio",
    "spend_velocity_ratio",
    "decline_rate_7d",
    "decline_rate_30d",
    "high_velocity_flag",
    "high_decline_flag",
    "risk_tier",
)
# Velocity = (7-day figure / 7) / (30-day figure / 30), rounded to 6 places. Flags: velocity >= 2.0; 7-day
# decline rate >= 0.3 with at least 3 transactions. Tier: high with both, elevated with one, else normal.
# When every transaction of the 30 days is also in the last 7, the ratio is 30 / 7 = 4.285714.
FRESH = 4.285714
PROFILE_ROWS = _expand(
    {
        ("ann", jan(1), jan(7)): (FRESH, FRESH, 0.25, 0.25, True, False, "elevated"),  # 0.25 < 0.3
        ("dan", jan(2), jan(8)): (FRESH, FRESH, 0.0, 0.0, True, False, "elevated"),
        # txn (1/7)/(5/30) = 6/7 = 0.857143; spend (20/7)/(120/30) = 5/7 = 0.714286: no flag
        ("dan", jan(20), jan(26)): (0.857143, 0.714286, 0.0, 0.0, False, False, "normal"),
        ("eve", jan(3), jan(9)): (FRESH, FRESH, 0.0, 0.0, True, False, "elevated"),
        # txn (3/7)/(7/30) = 90/49 = 1.836735 < 2; spend (10.05/7)/(50.05/30) = 6030/7007 = 0.860568;
        # 1 decline in 3 transactions = 0.333 >= 0.3 with 3 >= 3 transactions: the decline flag alone
        ("eve", jan(20), jan(26)): (1.836735, 0.860568, THIRD, 1 / 7, False, True, "elevated"),
        ("fay", jan(5), jan(11)): (FRESH, FRESH, 0.0, 0.0, True, False, "elevated"),
        # (7/7)/(15/30) = 2.0 exactly: at the threshold, flagged
        ("fay", jan(20), jan(26)): (2.0, 2.0, 0.0, 0.0, True, False, "elevated"),
        ("bob", jan(10), jan(16)): (FRESH, FRESH, THIRD, THIRD, True, True, "high"),  # both flags
        # no spend in 30 days: no spend ratio; decline rate 1.0 but only 2 transactions: no decline flag
        ("cat", jan(10), jan(16)): (FRESH, None, 1.0, 1.0, True, False, "elevated"),
        ("gus", jan(31), jan(31)): (FRESH, FRESH, 0.0, 0.0, True, False, "elevated"),
    },
    PROFILE_COLUMNS,
)


def _write_landing_zone(lake: Lake) -> None:
    for day in _days(FIRST, LAST + timedelta(days=1)):
        path = lake.root / landing_key(day)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(FILES.get(day.isoformat(), []), schema=RAW_SCHEMA), path)


def _lenient(table: str):
    # Most days of this landing zone are empty on purpose: allow them (they would block by default).
    return dataclasses.replace(feature_spec(table), empty_partition_blocks=False)


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory, spark) -> Lake:
    lake = make_lake(Path(tmp_path_factory.mktemp("by_hand")))
    _write_landing_zone(lake)
    for spec in dependency_order():
        lake.stage(spark, _lenient(spec.name), FIRST, LAST, "hand")
    return lake


def _table(spark, lake: Lake, table: str, batch: str = "hand") -> dict[tuple[str, date], dict]:
    rows = FeatureReader(spark, lake.store).read_batch(table, batch).collect()
    found = {}
    for row in rows:
        values = row.asDict()
        found[(values.pop("customer_id"), values.pop("feature_date"))] = values
    return found


def _assert_rows(found: dict, expected: dict) -> None:
    """Same keys, and every column equal (doubles within 1e-9: Spark and Python divide alike)."""
    assert sorted(found) == sorted(expected)
    for key, values in expected.items():
        for column, value in values.items():
            actual = found[key][column]
            if isinstance(value, float):
                assert actual == pytest.approx(value, abs=1e-9), (key, column)
            else:
                assert actual == value and type(actual) is type(value), (key, column, actual)


def test_daily_rows_count_each_transaction_once_on_its_event_day_in_usd(staged: Lake, spark) -> None:
    daily = _table(spark, staged, DAILY)
    _assert_rows(daily, DAILY_ROWS)
    assert set(next(iter(daily.values()))) == set(DAILY_COLUMNS)  # every column is checked


def test_seven_day_rows_hold_every_window_figure_and_forget_a_day_after_six_days(staged: Lake, spark) -> None:
    weekly = _table(spark, staged, WEEKLY)
    _assert_rows(weekly, WEEKLY_ROWS)
    assert set(next(iter(weekly.values()))) == set(_window_columns(7))
    assert ("ann", jan(7)) in weekly and ("ann", jan(8)) not in weekly  # Jan 1 is 6 days before Jan 7


def test_thirty_day_window_keeps_a_day_29_days_back_and_drops_it_at_30(staged: Lake, spark) -> None:
    monthly = _table(spark, staged, MONTHLY)
    _assert_rows(monthly, MONTHLY_ROWS)
    assert set(next(iter(monthly.values()))) == set(_window_columns(30))
    assert monthly[("ann", jan(30))]["txn_count_30d"] == 4 and ("ann", jan(31)) not in monthly
    assert monthly[("dan", jan(31))]["txn_count_30d"] == 5  # Jan 2 is 29 days before Jan 31


def test_risk_profile_ratios_flags_and_tiers_match_the_hand_computed_values(staged: Lake, spark) -> None:
    profile = _table(spark, staged, PROFILE)
    _assert_rows(profile, PROFILE_ROWS)
    assert set(next(iter(profile.values()))) == set(PROFILE_COLUMNS)
    tiers = {values["risk_tier"] for values in profile.values()}
    assert tiers == {"high", "elevated", "normal"}


@pytest.fixture(scope="module")
def edge(staged: Lake, tmp_path_factory: pytest.TempPathFactory, spark) -> Lake:
    """The daily table of `staged` in production, and runs of only the window-edge days in batch `edge`."""
    lake = make_lake(Path(tmp_path_factory.mktemp("edge")) / "lake")
    shutil.copytree(staged.root, lake.root)
    lake.catalog.promote("hand", actor="test", tables=[DAILY])
    lake.stage(spark, _lenient(WEEKLY), jan(7), jan(8), "edge")
    lake.stage(spark, _lenient(MONTHLY), jan(30), jan(31), "edge")
    return lake


@pytest.mark.parametrize(
    ("table", "expected", "first", "last", "lookback"),
    [(WEEKLY, WEEKLY_ROWS, jan(7), jan(8), 6), (MONTHLY, MONTHLY_ROWS, jan(30), jan(31), 29)],
)
def test_a_run_of_only_the_window_edge_days_reads_the_whole_lookback_from_production(
    edge: Lake, spark, table: str, expected: dict, first: date, last: date, lookback: int
) -> None:
    found = _table(spark, edge, table, "edge")
    _assert_rows(found, {key: values for key, values in expected.items() if first <= key[1] <= last})
    record = edge.catalog.get_batch("edge").tables[table][first.isoformat()]
    [source] = record.upstream
    assert source.source == "release"
    assert source.partitions == [day.isoformat() for day in _days(first - timedelta(days=lookback), first)]
