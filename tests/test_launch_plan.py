"""Planning a launch from the Materialize dialog: which targeted partitions are computed, which blast-radius
partitions are planned out (and why), and which launches are refused before anything is computed.

The targets are what Dagster targets after widening the dialog's selection downstream (every partition
whose window includes a selected day, up to the last partition); production is what the current release
serves. The expected outcomes are worked out by hand from the windows in the registry: 7 days
(customer_txn_7d), 30 days (customer_txn_30d), same day (customer_risk_profile).
"""

from __future__ import annotations

from datetime import date, timedelta

from backfills.assets.launch_plan import plan_launch
from backfills.assets.registry import dependency_order

DAILY, WEEKLY, MONTHLY, PROFILE = (
    "customer_daily_txn",
    "customer_txn_7d",
    "customer_txn_30d",
    "customer_risk_profile",
)
ALL = (DAILY, WEEKLY, MONTHLY, PROFILE)
FIRST = date(2025, 1, 1)  # the first partition
NOTHING_PROMOTED = "production (nothing promoted yet)"


def days(first: str, last: str) -> list[str]:
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]


def plan(targets, served=None, production="current release r1"):
    return plan_launch(
        dependency_order(), targets, served=served or {}, earliest=FIRST, production=production
    )


def test_all_partitions_from_the_first_day_are_all_computed():
    targets = {table: days("2025-01-01", "2025-02-20") for table in ALL}
    planned = plan(targets, production=NOTHING_PROMOTED)
    assert planned.refusal is None
    assert planned.planned_out == {}
    assert planned.computable == targets


def test_ten_days_with_production_serving_the_rest_are_all_computed():
    # The dialog's last ten days of the four tables: every window reaches back into days production serves.
    targets = {table: days("2025-02-11", "2025-02-20") for table in ALL}
    served = {table: set(days("2025-01-01", "2025-02-20")) for table in ALL}
    planned = plan(targets, served)
    assert planned.refusal is None and planned.planned_out == {}
    assert planned.computable == targets


def test_a_partial_first_load_plans_out_the_windows_that_reach_before_it():
    targets = {table: days("2025-02-11", "2025-02-20") for table in ALL}
    planned = plan(targets, production=NOTHING_PROMOTED)
    assert planned.refusal is None
    assert planned.computable[DAILY] == days("2025-02-11", "2025-02-20")
    # A 7-day window is whole from the 7th selected day on: Feb 17 reads Feb 11..17.
    assert planned.computable[WEEKLY] == days("2025-02-17", "2025-02-20")
    assert sorted(planned.planned_out[WEEKLY]) == days("2025-02-11", "2025-02-16")
    assert planned.planned_out[WEEKLY]["2025-02-11"] == (
        "needs customer_daily_txn 2025-02-05..2025-02-10, which this batch does not compute and "
        "production (nothing promoted yet) does not serve"
    )
    assert planned.planned_out_summary[WEEKLY] == (
        "needs customer_daily_txn 2025-02-05..2025-02-10, which this batch does not compute and "
        "production (nothing promoted yet) does not serve"
    )
    # No 30-day window fits in ten days, and a profile needs both windows of its day.
    assert planned.computable[MONTHLY] == [] and sorted(planned.planned_out[MONTHLY]) == targets[MONTHLY]
    assert planned.computable[PROFILE] == []
    assert "customer_txn_7d 2025-02-11" in planned.planned_out[PROFILE]["2025-02-11"]
    assert planned.planned_out[PROFILE]["2025-02-20"].startswith("needs customer_txn_30d 2025-02-20,")


def test_a_planned_out_partition_is_not_read_from_production_downstream():
    # Production serves the 7-day table everywhere but the daily one only up to Jan 31; the batch
    # recomputes Jan 29..31 of the daily table, so 7d Feb 1..4 cannot be recomputed. Production's copy of
    # them predates the batch: the profile must not read it next to the batch's new 30-day values.
    targets = {
        DAILY: days("2025-01-29", "2025-01-31"),
        WEEKLY: days("2025-01-29", "2025-02-04"),
        MONTHLY: days("2025-01-29", "2025-02-04"),
        PROFILE: days("2025-01-29", "2025-02-04"),
    }
    served = {
        DAILY: set(days("2025-01-01", "2025-01-31")),
        WEEKLY: set(days("2025-01-01", "2025-02-04")),
        MONTHLY: set(days("2025-01-01", "2025-02-04")),
        PROFILE: set(days("2025-01-01", "2025-02-04")),
    }
    planned = plan(targets, served)
    assert planned.refusal is None
    assert planned.computable[WEEKLY] == days("2025-01-29", "2025-01-31")
    assert sorted(planned.planned_out[WEEKLY]) == days("2025-02-01", "2025-02-04")
    assert sorted(planned.planned_out[PROFILE]) == days("2025-02-01", "2025-02-04")
    assert "customer_txn_7d 2025-02-01" in planned.planned_out[PROFILE]["2025-02-01"]
    assert planned.computable[PROFILE] == days("2025-01-29", "2025-01-31")


def test_a_downstream_table_alone_without_its_upstream_is_refused_with_what_to_select():
    planned = plan({WEEKLY: days("2025-02-11", "2025-02-20")}, production=NOTHING_PROMOTED)
    assert planned.refusal is not None
    assert "customer_txn_7d 2025-02-11..2025-02-20 cannot be computed" in planned.refusal
    assert "needs customer_daily_txn 2025-02-05..2025-02-20" in planned.refusal
    assert "add customer_daily_txn from 2025-02-05 to the selection" in planned.refusal


def test_a_downstream_table_alone_over_days_production_serves_is_computed():
    served = {DAILY: set(days("2025-01-01", "2025-02-20"))}
    planned = plan({WEEKLY: days("2025-02-11", "2025-02-20")}, served)
    assert planned.refusal is None and planned.computable[WEEKLY] == days("2025-02-11", "2025-02-20")


def test_a_launch_whose_every_partition_is_planned_out_is_refused():
    # Only downstream tables, and production serves none of their inputs: nothing to compute at all.
    targets = {MONTHLY: days("2025-02-11", "2025-02-12"), PROFILE: days("2025-02-11", "2025-02-12")}
    planned = plan(targets, production=NOTHING_PROMOTED)
    assert planned.refusal is not None and "customer_txn_30d 2025-02-11..2025-02-12" in planned.refusal
