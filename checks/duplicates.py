"""Re-delivered raw events: how many copies of a txn_id a run's raw input held, and whether they agree.

The daily features count each txn_id once, so exact copies change nothing; the check reports how many
were dropped and warns above the spec's rate, and names txn_ids whose copies differ (a real conflict).
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from backfills.checks.outcome import CheckOutcome
from backfills.checks.samples import SAMPLE_SIZE, plain_rows

DUPLICATE_EVENTS_CHECK = "duplicate_events"
EVENT_ID = "txn_id"


def duplicate_events_outcome(events: DataFrame, *, warn_rate: float) -> CheckOutcome:
    """Warns (never blocks) when dropped copies exceed `warn_rate` of the events or copies disagree."""
    others = [F.col(name) for name in events.columns if name != EVENT_ID]
    per_id = events.groupBy(EVENT_ID).agg(
        F.count(F.lit(1)).alias("copies"),
        F.count_distinct(F.struct(*others)).alias("versions"),
    )
    repeated = F.col("copies") > 1
    shown = F.struct(F.col(EVENT_ID), "copies", "versions")
    totals = per_id.agg(
        F.coalesce(F.sum("copies"), F.lit(0)).alias("events"),
        F.count(F.lit(1)).alias("distinct_ids"),
        F.count_if(F.col("versions") > 1).alias("conflicting"),
        F.min_by(shown, F.when(repeated, F.col(EVENT_ID)), SAMPLE_SIZE).alias("sample"),
    ).first()
    events_count, distinct, conflicting = totals["events"], totals["distinct_ids"], totals["conflicting"]
    dropped = events_count - distinct
    rate = dropped / events_count if events_count else 0.0
    problems = []
    if rate > warn_rate:
        problems.append(
            f"{dropped} re-delivered events dropped ({rate:.2%} of {events_count}, above {warn_rate:.2%})"
        )
    if conflicting:
        problems.append(f"{conflicting} txn_ids have copies that differ (the smallest copy was kept)")
    summary = "; ".join(problems) or f"{dropped} re-delivered events dropped of {events_count}"
    return CheckOutcome(
        name=DUPLICATE_EVENTS_CHECK,
        passed=not problems,
        blocking=False,
        summary=summary + "; each txn_id counted once",
        figures={
            "events": events_count,
            "distinct_txn_ids": distinct,
            "dropped": dropped,
            "dropped_rate": round(rate, 6),
            "threshold": {"warn_rate": warn_rate},
            "conflicting": conflicting,
            "sample": plain_rows(totals["sample"] or []),
        },
    )
