"""Feature values on a tiny landing zone whose answers were worked out by hand.

Customer A buys on Jan 1 (one purchase delivered late, in Jan 2's file) and Jan 4; customer B on Jan 1
(re-delivered in Jan 2's file) and Jan 2. Jan 3 has a file with no events. (An event later than the
allowed lateness blocks the batch: see test_quality_gates.py.)
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Lake, make_lake

from backfills.assets.generator import CURRENCIES, RAW_SCHEMA, landing_key
from backfills.assets.reader import FeatureReader
from backfills.assets.registry import dependency_order
from backfills.specs import USD_RATES

FIRST, LAST = date(2025, 1, 1), date(2025, 1, 10)


def _txn(
    txn_id: str, customer: str, at: str, amount: float, currency: str, category: str, status: str
) -> dict:
    stamp = datetime.fromisoformat(at).replace(tzinfo=UTC)
    return {
        "txn_id": txn_id,
        "customer_id": customer,
        "event_ts": stamp,
        "amount": amount,
        "currency": currency,
        "merchant_category": category,
        "status": status,
    }


FILES = {
    "2025-01-01": [
        _txn("t1", "A", "2025-01-01T10:00:00", 10.00, "USD", "grocery", "approved"),
        _txn("t2", "A", "2025-01-01T11:00:00", 20.00, "EUR", "travel", "approved"),
        _txn("t3", "A", "2025-01-01T12:00:00", 5.00, "USD", "grocery", "declined"),
        _txn("t4", "B", "2025-01-01T09:00:00", 100.00, "USD", "travel", "approved"),
    ],
    "2025-01-02": [
        _txn("t4", "B", "2025-01-01T09:00:00", 100.00, "USD", "travel", "approved"),  # re-delivered
        _txn("t5", "A", "2025-01-01T23:30:00", 7.00, "USD", "fuel", "approved"),  # one day late
        _txn("t6", "B", "2025-01-02T08:00:00", 50.00, "GBP", "grocery", "approved"),
    ],
    "2025-01-03": [],
    "2025-01-04": [_txn("t7", "A", "2025-01-04T10:00:00", 1000.0, "JPY", "online_retail", "approved")],
}


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory, spark) -> tuple[Lake, str]:
    lake = make_lake(Path(tmp_path_factory.mktemp("hand")))
    day = FIRST
    while day <= LAST + timedelta(days=1):
        rows = FILES.get(day.isoformat(), [])
        table = pa.Table.from_pylist(rows, schema=RAW_SCHEMA)
        path = lake.root / landing_key(day)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        day += timedelta(days=1)
    for spec in dependency_order():
        # Most days of this tiny data set are empty on purpose: allow them (they would block by default).
        lake.stage(spark, dataclasses.replace(spec, empty_partition_blocks=False), FIRST, LAST, "hand")
    return lake, "hand"


def _rows(spark, lake: Lake, batch: str, table: str) -> dict[tuple[str, str], dict]:
    frame = FeatureReader(spark, lake.store).read_batch(table, batch)
    return {(row["customer_id"], row["feature_date"].isoformat()): row.asDict() for row in frame.collect()}


def test_daily_counts_late_events_and_counts_a_redelivered_txn_once(staged, spark) -> None:
    lake, batch = staged
    daily = _rows(spark, lake, batch, "customer_daily_txn")
    assert set(daily) == {("A", "2025-01-01"), ("B", "2025-01-01"), ("B", "2025-01-02"), ("A", "2025-01-04")}
    a1 = daily[("A", "2025-01-01")]
    assert (a1["txn_count"], a1["approved_count"], a1["declined_count"]) == (4, 3, 1)
    # 10.00 USD + 20.00 EUR * 1.08 + 7.00 USD (the late one); the declined 5.00 is not spend.
    assert a1["amount_sum_usd"] == Decimal("38.60") and a1["amount_max_usd"] == Decimal("21.60")
    assert a1["merchant_category_count"] == 3
    b1 = daily[("B", "2025-01-01")]
    # t4 twice (re-delivered) counts once.
    assert (b1["txn_count"], b1["amount_sum_usd"]) == (1, Decimal("100.00"))
    assert daily[("B", "2025-01-02")]["amount_sum_usd"] == Decimal("63.50")  # 50 GBP * 1.27
    assert daily[("A", "2025-01-04")]["amount_sum_usd"] == Decimal("6.70")  # 1000 JPY * 0.0067


def test_seven_day_window_carries_activity_through_quiet_days_and_drops_it_after_a_week(
    staged, spark
) -> None:
    lake, batch = staged
    week = _rows(spark, lake, batch, "customer_txn_7d")
    a = {day: week.get(("A", day)) for day in [f"2025-01-{n:02d}" for n in range(1, 11)]}
    assert a["2025-01-03"]["txn_count_7d"] == 4  # Jan 3 has no events: Jan 1 still in the window
    assert a["2025-01-03"]["active_days_7d"] == 1
    jan4 = a["2025-01-04"]
    assert (jan4["txn_count_7d"], jan4["approved_count_7d"], jan4["declined_count_7d"]) == (5, 4, 1)
    assert jan4["amount_sum_usd_7d"] == Decimal("45.30")
    assert jan4["avg_ticket_usd_7d"] == Decimal("11.33")  # 45.30 / 4 = 11.325, rounded half up
    assert jan4["decline_rate_7d"] == pytest.approx(0.2)
    assert jan4["active_days_7d"] == 2
    assert a["2025-01-07"]["txn_count_7d"] == 5  # window Jan 1..Jan 7
    jan8 = a["2025-01-08"]  # window Jan 2..Jan 8: Jan 1 has left
    assert (jan8["txn_count_7d"], jan8["amount_sum_usd_7d"], jan8["amount_max_usd_7d"]) == (
        1,
        Decimal("6.70"),
        Decimal("6.70"),
    )
    assert week[("B", "2025-01-08")]["txn_count_7d"] == 1  # only Jan 2 left
    assert ("B", "2025-01-09") not in week  # nothing in Jan 3..Jan 9: no row


def test_thirty_day_window_and_risk_profile(staged, spark) -> None:
    lake, batch = staged
    month = _rows(spark, lake, batch, "customer_txn_30d")
    assert month[("A", "2025-01-10")]["txn_count_30d"] == 5
    assert month[("A", "2025-01-10")]["amount_sum_usd_30d"] == Decimal("45.30")
    assert month[("B", "2025-01-10")]["amount_sum_usd_30d"] == Decimal("163.50")
    assert len(month) == 20  # both customers on every day from Jan 1

    profile = _rows(spark, lake, batch, "customer_risk_profile")
    a8 = profile[("A", "2025-01-08")]
    assert a8["txn_velocity_ratio"] == pytest.approx((1 / 7) / (5 / 30), abs=1e-6)
    assert a8["risk_tier"] == "normal" and not a8["high_velocity_flag"]
    b1 = profile[("B", "2025-01-01")]  # first day: 7d and 30d the same, ratio 30/7
    assert b1["txn_velocity_ratio"] == pytest.approx(30 / 7, abs=1e-6)
    assert b1["high_velocity_flag"] and b1["risk_tier"] == "elevated"
    assert set(profile) == set(_rows(spark, lake, batch, "customer_txn_7d"))


def test_each_partition_records_its_lineage_in_the_manifest(staged) -> None:
    lake, batch = staged
    manifest = lake.catalog.get_batch(batch)
    record = manifest.tables["customer_txn_7d"]["2025-01-08"]
    [source] = record.upstream
    assert (source.table, source.source, source.source_id) == ("customer_daily_txn", "batch", "hand")
    assert source.partitions == [f"2025-01-{n:02d}" for n in range(2, 9)]
    daily = manifest.tables["customer_daily_txn"]["2025-01-01"]
    assert [(s.table, s.source, s.partitions) for s in daily.upstream] == [
        ("raw_transactions", "landing", ["2025-01-01", "2025-01-02"])
    ]
    assert daily.row_count == 2 and len(daily.files) == 1
    assert [column.name for column in daily.columns][:2] == ["customer_id", "feature_date"]
    empty = manifest.tables["customer_daily_txn"]["2025-01-03"]
    assert empty.row_count == 0 and empty.files == []


def test_daily_spend_matches_the_raw_approved_amounts_in_every_currency(lake, spark) -> None:
    """On generated data (seven currencies): staged spend equals the raw approved amounts converted to USD."""
    day = date(2025, 1, 5)
    lake.stage(spark, "customer_daily_txn", day, day, "spend")
    raw = pa.concat_tables(
        [pq.read_table(lake.root / landing_key(d)) for d in (day, day + timedelta(days=1))]
    ).to_pylist()
    events = {row["txn_id"]: row for row in raw if row["event_ts"].date() == day}
    assert {row["currency"] for row in events.values()} == set(CURRENCIES)
    approved = [row for row in events.values() if row["status"] == "approved"]
    expected = sum(Decimal(str(row["amount"])) * Decimal(USD_RATES[row["currency"]]) for row in approved)
    staged = FeatureReader(spark, lake.store).read_batch("customer_daily_txn", "spend").collect()
    total = sum(row["amount_sum_usd"] for row in staged)
    assert abs(total - expected) <= Decimal("0.01") * len(approved)
    assert sum(row["txn_count"] for row in staged) == len(events)
