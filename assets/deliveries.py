"""Which delivered copy of a transaction counts, and on which day: the rule that makes every transaction count
exactly once, whatever the run layout.

A txn_id can land more than once: re-delivered in a later file, with its event time moved across midnight,
or with other content. The rule, applied to each landed row on its own:

- a row is a **re-delivery** when the same txn_id was delivered earlier in the same file (a copy that sorts
  before it by event_ts, customer_id, amount, currency, merchant_category, status) or in one of the
  `redelivery_days` files before it; re-deliveries never count;
- every other row is the transaction's **first delivery** and counts once, on the UTC day of its event_ts
  (from a file on that day or up to the lateness after it).

So the earliest delivery wins, with its content and its time. Whether a row is a re-delivery depends only on
the files up to `redelivery_days` before its own, so a run reads those files too (its first day included):
one day per run and 31 days per run count the same transactions. Copies more than `redelivery_days` files
apart are different transactions by this rule.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from backfills.specs import EVENT_FIELDS, EVENT_ID, LANDED_DATE, PREVIOUS_DELIVERY, REDELIVERED, DateRange


def mark_redeliveries(landed: DataFrame, *, redelivery_days: int) -> DataFrame:
    """Every landed row with `redelivered` (see the module rule) and `previous_delivery` (null for none)."""
    content = [F.col(name) for name in EVENT_FIELDS]
    order = Window.partitionBy(EVENT_ID).orderBy(F.col(LANDED_DATE), *content)
    previous = F.lag(F.struct(F.col(LANDED_DATE), *content)).over(order)
    marked = landed.withColumn(PREVIOUS_DELIVERY, previous)
    gap = F.datediff(F.col(LANDED_DATE), F.col(f"{PREVIOUS_DELIVERY}.{LANDED_DATE}"))
    # A missing txn_id breaks the raw contract (and blocks); it is never a copy of another missing one.
    redelivered = (
        F.col(EVENT_ID).isNotNull() & F.col(PREVIOUS_DELIVERY).isNotNull() & (gap <= redelivery_days)
    )
    return marked.withColumn(REDELIVERED, F.coalesce(redelivered, F.lit(False)))


def deliveries_of(marked: DataFrame, dates: DateRange, *, lateness_days: int) -> DataFrame:
    """The marked rows whose event falls on one of `dates`, from a file on that day or up to the lateness
    after it: every copy that could count on those days (and, read from earlier files, nothing else)."""
    day = F.to_date("event_ts")
    delay = F.datediff(F.col(LANDED_DATE), day)
    return marked.where(day.between(F.lit(dates.start), F.lit(dates.end)) & delay.between(0, lateness_days))


def counted_events(deliveries: DataFrame) -> DataFrame:
    """One row per transaction that counts on the deliveries' days: the first deliveries, raw columns only."""
    return deliveries.where(~F.col(REDELIVERED)).select(EVENT_ID, *EVENT_FIELDS)
