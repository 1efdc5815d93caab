"""Re-delivered raw events: copies of a txn_id that did not count (assets/deliveries.py says which copy does),
and whether they agree with the copy delivered before them.

Figures are per event day, each copy counted on the day of its own event time, so every layout of runs over
the same days reports the same copies. Exact copies change nothing: the check reports how many were dropped
and warns when a day's share of them is above the spec's rate. Copies that differ (another amount, status,
customer, currency, category or time) are a real conflict: the check warns and names each txn_id with the
version that counts and the one dropped.
"""

from __future__ import annotations

from functools import reduce
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from backfills.checks.check import Check, GateInputs
from backfills.checks.outcome import CheckOutcome
from backfills.checks.samples import SAMPLE_SIZE, plain_rows
from backfills.specs import (
    EVENT_FIELDS,
    EVENT_ID,
    LANDED_DATE,
    PREVIOUS_DELIVERY,
    RAW_TRANSACTIONS,
    REDELIVERED,
    FeatureSpec,
)

DUPLICATE_EVENTS_CHECK = "duplicate_events"


def _version(prefix: str) -> Column:
    """One delivered copy as evidence: its file day and fields, the time as UTC text."""
    fields = [
        F.col(f"{prefix}{name}").cast("string").alias(name)
        if name == "event_ts"
        else F.col(f"{prefix}{name}")
        for name in EVENT_FIELDS
    ]
    return F.struct(F.col(f"{prefix}{LANDED_DATE}").alias("delivered_in_file_of"), *fields)


def _describe(conflict: dict[str, Any]) -> str:
    kept, dropped = conflict["counted"], conflict["dropped"]
    changed = [name for name in EVENT_FIELDS if kept.get(name) != dropped.get(name)]
    what = ", ".join(f"{name} {kept.get(name)} -> {dropped.get(name)}" for name in changed)
    return (
        f"{conflict[EVENT_ID]} (counted as delivered {kept['delivered_in_file_of']}; the copy of "
        f"{dropped['delivered_in_file_of']} differs: {what})"
    )


def _same_as_previous() -> Column:
    """True where a marked row's content equals the copy delivered before it (nulls equal nulls)."""
    return reduce(
        lambda left, right: left & right,
        [F.col(name).eqNullSafe(F.col(f"{PREVIOUS_DELIVERY}.{name}")) for name in EVENT_FIELDS],
    )


def duplicate_events_outcome(deliveries: DataFrame, *, warn_rate: float) -> CheckOutcome:
    """Warns (never blocks) when a day's dropped copies exceed `warn_rate` of its events, or copies differ.

    `deliveries` are the marked rows of the run's event days (`assets.deliveries.deliveries_of`).
    """
    redelivered = F.col(REDELIVERED)
    conflicting = redelivered & ~_same_as_previous()
    exact_copy = F.struct(F.col(EVENT_ID), F.col(LANDED_DATE).alias("delivered_again_in_file_of"))
    conflict = F.struct(
        F.col(EVENT_ID),
        _version(f"{PREVIOUS_DELIVERY}.").alias("counted"),
        _version("").alias("dropped"),
    )
    day = F.to_date("event_ts").alias("day")
    # Events are counted over every copy; the copies that did not count (few) are aggregated on their own,
    # so that sampling them does not put every row through an object aggregate.
    events_per_day = {row["day"]: row["count"] for row in deliveries.groupBy(day).count().collect()}
    copies = (
        deliveries.where(redelivered)
        .groupBy(day)
        .agg(
            F.count(F.lit(1)).alias("dropped"),
            F.count_if(conflicting).alias("conflicting"),
            F.min_by(exact_copy, F.when(~conflicting, F.col(EVENT_ID)), SAMPLE_SIZE).alias("copies"),
            F.min_by(conflict, F.when(conflicting, F.col(EVENT_ID)), SAMPLE_SIZE).alias("conflicts"),
        )
        .orderBy("day")
        .collect()
    )
    dropped_per_day = {row["day"]: row["dropped"] for row in copies}
    events = sum(events_per_day.values())
    dropped = sum(dropped_per_day.values())
    conflicting_count = sum(row["conflicting"] for row in copies)
    rates = {
        key.isoformat(): dropped_per_day.get(key, 0) / count
        for key, count in sorted(events_per_day.items())
        if count
    }
    above = {day: rate for day, rate in rates.items() if rate > warn_rate}
    conflicts = plain_rows([item for row in copies for item in row["conflicts"] or []], size=SAMPLE_SIZE)
    problems = []
    if above:
        worst = max(above, key=lambda day: above[day])
        problems.append(
            f"{dropped} re-delivered events dropped; on {len(above)} day(s) above {warn_rate:.2%} of the "
            f"day's events (worst {worst}: {above[worst]:.2%})"
        )
    if conflicting_count:
        shown = "; ".join(_describe(item) for item in conflicts[:3])
        problems.append(
            f"{conflicting_count} re-delivered copies differ from the copy delivered before them, and the "
            f"earliest delivery counts: {shown}"
        )
    summary = "; ".join(problems) or f"{dropped} re-delivered events dropped of {events}"
    return CheckOutcome(
        name=DUPLICATE_EVENTS_CHECK,
        passed=not problems,
        blocking=False,
        summary=summary + "; each txn_id counted once, its earliest delivery",
        figures={
            "events": events,
            "counted": events - dropped,
            "dropped": dropped,
            "dropped_rate": round(dropped / events, 6) if events else 0.0,
            "max_day_dropped_rate": round(max(rates.values(), default=0.0), 6),
            "threshold": {"warn_rate": warn_rate},
            "days_above_rate": sorted(above),
            "conflicting": conflicting_count,
            "conflicts": conflicts,
            "sample": plain_rows([item for row in copies for item in row["copies"] or []]),
        },
    )


class DuplicateEvents(Check):
    name = DUPLICATE_EVENTS_CHECK
    description = "re-delivered raw events: how many copies did not count, and every copy that differs"

    def applies(self, spec: FeatureSpec) -> bool:
        return any(item.table == RAW_TRANSACTIONS for item in spec.inputs)

    def judge(self, spec: FeatureSpec, gate: GateInputs) -> CheckOutcome:
        if gate.deliveries is None:
            raise ValueError(f"{spec.name} reads raw events but its run passed no deliveries to the gate")
        return duplicate_events_outcome(gate.deliveries, warn_rate=spec.duplicate_events_warn_rate)
