"""The example domain's reference model: a fixed-coefficient card risk score over the risk profile.

No training and no download: a logistic score of the profile's velocity ratios, decline rates and decline
flag with coefficients fixed here, and a decline decision above a threshold. Rounded to 6 decimals, so the
same rows always give the same scores, wherever Spark computes them.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

DECLINE_THRESHOLD = 0.5
INTERCEPT = -3.2
COEFFICIENTS = {
    "txn_velocity_ratio": 0.8,
    "spend_velocity_ratio": 0.5,  # null (no spend in 30 days) counts as 1: no change of pace
    "decline_rate_7d": 3.0,
    "decline_rate_30d": 1.5,
    "high_decline_flag": 0.9,
}
CARD_RISK_FEATURES = tuple(COEFFICIENTS)


def _term(column: str, weight: float) -> Column:
    if column == "spend_velocity_ratio":
        value = F.coalesce(F.col(column), F.lit(1.0))
    elif column == "high_decline_flag":
        value = F.col(column).cast("double")
    else:
        value = F.col(column)
    return F.lit(weight) * value


def card_risk_score(rows: DataFrame) -> DataFrame:
    """`rows` with `score` (the probability of a risky customer, 0..1) and `decision` (decline/approve)."""
    linear = F.lit(INTERCEPT)
    for column, weight in COEFFICIENTS.items():
        linear = linear + _term(column, weight)
    score = F.round(F.lit(1.0) / (F.lit(1.0) + F.exp(-linear)), 6)
    return rows.withColumn("score", score).withColumn(
        "decision", F.when(F.col("score") >= DECLINE_THRESHOLD, "decline").otherwise("approve")
    )
