"""Feature transformations: pure functions from input DataFrames to one feature table's rows.

Every function takes its inputs by table name and the output date range, and returns rows for those dates
only. Money is DECIMAL and every aggregate is exact, so results do not depend on how Spark splits the work
(the content hash of a partition is the same for a range run and for one partition per run).
"""

from __future__ import annotations

from datetime import date

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from backfills.specs import USD_RATES, DateRange, Inputs

MONEY = "decimal(18,2)"


def _between(column: Column, dates: DateRange) -> Column:
    return column.between(F.lit(dates.start), F.lit(dates.end))


def _usd(amount: Column, currency: Column) -> Column:
    rates = F.create_map(*[item for code, rate in USD_RATES.items() for item in (F.lit(code), F.lit(rate))])
    rate = rates[currency].cast("decimal(10,4)")
    return F.round(amount.cast("decimal(18,4)") * rate, 2).cast(MONEY)


def customer_daily_txn(inputs: Inputs, dates: DateRange) -> DataFrame:
    """Per customer and day: transactions by event day (late files included).

    `raw_transactions` holds each transaction once, as its first delivery (assets/deliveries.py decides
    which copy counts, and on which day).
    """
    events = (
        inputs["raw_transactions"]
        .withColumn("feature_date", F.to_date("event_ts"))
        .where(_between(F.col("feature_date"), dates))
        .withColumn("amount_usd", _usd(F.col("amount"), F.col("currency")))
    )
    approved = F.col("status") == "approved"
    return events.groupBy("customer_id", "feature_date").agg(
        F.count(F.lit(1)).alias("txn_count"),
        F.sum(approved.cast("long")).alias("approved_count"),
        F.sum((F.col("status") == "declined").cast("long")).alias("declined_count"),
        F.coalesce(F.sum(F.when(approved, F.col("amount_usd"))), F.lit(0))
        .cast(MONEY)
        .alias("amount_sum_usd"),
        F.max(F.when(approved, F.col("amount_usd"))).cast(MONEY).alias("amount_max_usd"),
        F.countDistinct("merchant_category").alias("merchant_category_count"),
    )


def rolling_window(daily: DataFrame, dates: DateRange, days: int) -> DataFrame:
    """Per customer and day D: daily facts over the window [D - days + 1, D], for every customer active in it.

    A customer with no transactions on D still gets a row while earlier days of the window had some.
    """
    suffix = f"_{days}d"
    day_number = F.datediff(F.col("feature_date"), F.lit(date(1970, 1, 1)))
    facts = ["txn_count", "approved_count", "declined_count", "amount_sum_usd"]
    observed = daily.where(_between(F.col("feature_date"), dates.widened(before=days - 1))).select(
        "customer_id",
        "feature_date",
        *facts,
        "amount_max_usd",
        F.lit(1).alias("active"),
        F.lit(False).alias("target"),
    )
    # One target row per customer and output day; the window then sees every observed day before it.
    targets = (
        observed.select("customer_id")
        .distinct()
        .select(
            "customer_id",
            F.explode(F.sequence(F.lit(dates.start), F.lit(dates.end))).alias("feature_date"),
        )
        .select(
            "customer_id",
            "feature_date",
            *[F.lit(0).cast("long").alias(name) for name in facts[:3]],
            F.lit(0).cast(MONEY).alias("amount_sum_usd"),
            F.lit(None).cast(MONEY).alias("amount_max_usd"),
            F.lit(0).alias("active"),
            F.lit(True).alias("target"),
        )
    )
    frame = Window.partitionBy("customer_id").orderBy(day_number).rangeBetween(-(days - 1), 0)
    windowed = observed.unionByName(targets).select(
        "customer_id",
        "feature_date",
        "target",
        *[F.sum(name).over(frame).alias(name) for name in facts],
        F.max("amount_max_usd").over(frame).alias("amount_max_usd"),
        F.sum("active").over(frame).alias("active_days"),
    )
    result = windowed.where(F.col("target") & (F.col("active_days") > 0))
    return result.select(
        "customer_id",
        "feature_date",
        F.col("txn_count").cast("long").alias(f"txn_count{suffix}"),
        F.col("approved_count").cast("long").alias(f"approved_count{suffix}"),
        F.col("declined_count").cast("long").alias(f"declined_count{suffix}"),
        F.col("amount_sum_usd").cast(MONEY).alias(f"amount_sum_usd{suffix}"),
        F.col("amount_max_usd").cast(MONEY).alias(f"amount_max_usd{suffix}"),
        F.when(F.col("approved_count") > 0, F.col("amount_sum_usd") / F.col("approved_count"))
        .cast(MONEY)
        .alias(f"avg_ticket_usd{suffix}"),
        (F.col("declined_count") / F.col("txn_count")).cast("double").alias(f"decline_rate{suffix}"),
        F.col("active_days").cast("int").alias(f"active_days{suffix}"),
    )


def customer_txn_7d(inputs: Inputs, dates: DateRange) -> DataFrame:
    """Rolling 7-day activity per customer."""
    return rolling_window(inputs["customer_daily_txn"], dates, 7)


def customer_txn_30d(inputs: Inputs, dates: DateRange) -> DataFrame:
    """Rolling 30-day activity per customer."""
    return rolling_window(inputs["customer_daily_txn"], dates, 30)


HIGH_VELOCITY_RATIO = 2.0
HIGH_DECLINE_RATE = 0.3
MIN_TXNS_FOR_DECLINE_FLAG = 3


def customer_risk_profile(inputs: Inputs, dates: DateRange) -> DataFrame:
    """Recent (7d) activity against the 30-day baseline: velocity ratios and risk flags."""
    short = inputs["customer_txn_7d"].where(_between(F.col("feature_date"), dates))
    long = inputs["customer_txn_30d"].where(_between(F.col("feature_date"), dates))
    joined = short.join(long, ["customer_id", "feature_date"], "inner")
    txn_velocity = (F.col("txn_count_7d") / 7) / (F.col("txn_count_30d") / 30)
    spend_velocity = F.when(
        F.col("amount_sum_usd_30d") > 0,
        (F.col("amount_sum_usd_7d").cast("double") / 7) / (F.col("amount_sum_usd_30d").cast("double") / 30),
    )
    high_velocity = txn_velocity >= HIGH_VELOCITY_RATIO
    high_decline = (F.col("decline_rate_7d") >= HIGH_DECLINE_RATE) & (
        F.col("txn_count_7d") >= MIN_TXNS_FOR_DECLINE_FLAG
    )
    return joined.select(
        "customer_id",
        "feature_date",
        F.round(txn_velocity, 6).alias("txn_velocity_ratio"),
        F.round(spend_velocity, 6).alias("spend_velocity_ratio"),
        "decline_rate_7d",
        "decline_rate_30d",
        high_velocity.alias("high_velocity_flag"),
        high_decline.alias("high_decline_flag"),
        F.when(high_velocity & high_decline, "high")
        .when(high_velocity | high_decline, "elevated")
        .otherwise("normal")
        .alias("risk_tier"),
    )
