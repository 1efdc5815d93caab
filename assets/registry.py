"""The feature registry: one declarative spec per feature table. Adding a table is adding a spec here."""

from __future__ import annotations

from backfills.assets import transformations as tx
from backfills.assets.models import CARD_RISK_FEATURES, card_risk_score
from backfills.errors import UnknownTableError
from backfills.specs import (
    RAW_TRANSACTIONS,
    CanaryHealthPolicy,
    Column,
    ColumnHealth,
    FeatureInput,
    FeatureSpec,
    KeyCoverage,
    ReferenceModel,
    RowRule,
)

# The model a batch touching the profile is judged by (the model_impact check, checks/model_impact.py).
CARD_RISK = ReferenceModel(
    name="card_risk_v1",
    features=CARD_RISK_FEATURES,
    score=card_risk_score,
    description="Fixed-coefficient card risk score over the profile; declines at 0.5 and above.",
)


def _key(name: str, description: str) -> Column:
    return Column(name, "string", description, derived_from=((RAW_TRANSACTIONS, "customer_id"),))


# Bounds a real value never crosses: a single card transaction of more than 100k USD, or a customer
# spending more than 1B USD in a window, is a data error, not a big spender. The spend bound leaves room
# for skew: the busiest customer of the generator's clean data spends over 10M USD in 30 days at 100k
# transactions a day (the benchmark's scale), and ten times that at 1M a day.
MAX_TICKET_USD = 100_000
MAX_SPEND_USD = 1_000_000_000
# A 7-day count is at most the 30-day count, so the 7d pace is at most 30/7 of the 30d pace.
MAX_VELOCITY_RATIO = 30 / 7 + 1e-6

DAILY = "customer_daily_txn"
WEEKLY = "customer_txn_7d"
MONTHLY = "customer_txn_30d"
PROFILE = "customer_risk_profile"


def _window_columns(days: int) -> tuple[Column, ...]:
    s = f"_{days}d"

    def daily(*columns: str) -> tuple[tuple[str, str], ...]:
        return tuple((DAILY, column) for column in columns)

    return (
        Column("customer_id", "string", "Customer.", derived_from=daily("customer_id")),
        Column("feature_date", "date", "Last day of the window (UTC).", derived_from=daily("feature_date")),
        Column(
            f"txn_count{s}",
            "bigint",
            f"Transactions in the last {days} days.",
            min_value=0,
            derived_from=daily("txn_count"),
        ),
        Column(
            f"approved_count{s}",
            "bigint",
            f"Approved transactions, {days} days.",
            min_value=0,
            derived_from=daily("approved_count"),
        ),
        Column(
            f"declined_count{s}",
            "bigint",
            f"Declined transactions, {days} days.",
            min_value=0,
            derived_from=daily("declined_count"),
        ),
        Column(
            f"amount_sum_usd{s}",
            tx.MONEY,
            f"Approved spend in USD, {days} days.",
            min_value=0,
            max_value=MAX_SPEND_USD,
            derived_from=daily("amount_sum_usd"),
        ),
        Column(
            f"amount_max_usd{s}",
            tx.MONEY,
            f"Largest approved transaction in USD, {days} days.",
            nullable=True,
            min_value=0,
            max_value=MAX_TICKET_USD,
            derived_from=daily("amount_max_usd"),
        ),
        Column(
            f"avg_ticket_usd{s}",
            tx.MONEY,
            f"Average approved ticket in USD, {days} days.",
            nullable=True,
            min_value=0,
            max_value=MAX_TICKET_USD,
            derived_from=daily("amount_sum_usd", "approved_count"),
        ),
        Column(
            f"decline_rate{s}",
            "double",
            f"Share of transactions declined, {days} days.",
            min_value=0,
            max_value=1,
            derived_from=daily("declined_count", "txn_count"),
        ),
        Column(
            f"active_days{s}",
            "int",
            f"Days with at least one transaction, of the last {days}.",
            min_value=1,
            max_value=days,
            derived_from=daily("feature_date"),
        ),
    )


def _window_rules(days: int) -> tuple[RowRule, ...]:
    s = f"_{days}d"
    return (
        RowRule("outcomes_add_up", f"approved_count{s} + declined_count{s} <= txn_count{s}"),
        # The average is rounded to cents, so sum and average x count differ by at most half a cent each.
        RowRule(
            "average_matches_sum",
            f"avg_ticket_usd{s} IS NULL OR abs(amount_sum_usd{s} - avg_ticket_usd{s} * approved_count{s}) "
            f"<= 0.005 * approved_count{s}",
        ),
        RowRule("largest_within_sum", f"amount_max_usd{s} IS NULL OR amount_max_usd{s} <= amount_sum_usd{s}"),
    )


def _raw(*columns: str) -> tuple[tuple[str, str], ...]:
    return tuple((RAW_TRANSACTIONS, column) for column in columns)


FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec(
        name=DAILY,
        description=(
            "Per customer and day (UTC, by event time): transaction counts, approved spend in USD, largest "
            "ticket, declines. Events delivered a day late are included; each txn_id counts once, as its "
            "earliest delivery says."
        ),
        owner="team:risk-features",
        # The contract holds each event within a day of its file, so a copy whose time moved past midnight
        # can arrive as the next day's late event: 2 files after its first delivery.
        inputs=(FeatureInput(RAW_TRANSACTIONS, lateness_days=1, redelivery_days=2),),
        transform=tx.customer_daily_txn,
        # One row per customer with at least one event that day: the raw distinct customers.
        key_coverage=(KeyCoverage(RAW_TRANSACTIONS, "equal", upstream_date="to_date(event_ts)"),),
        row_rules=(
            RowRule("outcomes_add_up", "approved_count + declined_count <= txn_count"),
            RowRule("largest_within_sum", "amount_max_usd IS NULL OR amount_max_usd <= amount_sum_usd"),
        ),
        columns=(
            _key("customer_id", "Customer."),
            Column("feature_date", "date", "Event day (UTC).", derived_from=_raw("event_ts")),
            Column("txn_count", "bigint", "Distinct transactions.", min_value=0, derived_from=_raw("txn_id")),
            Column(
                "approved_count", "bigint", "Approved transactions.", min_value=0, derived_from=_raw("status")
            ),
            Column(
                "declined_count", "bigint", "Declined transactions.", min_value=0, derived_from=_raw("status")
            ),
            Column(
                "amount_sum_usd",
                tx.MONEY,
                "Approved spend in USD.",
                min_value=0,
                max_value=MAX_SPEND_USD,
                derived_from=_raw("amount", "currency", "status"),
            ),
            Column(
                "amount_max_usd",
                tx.MONEY,
                "Largest approved transaction in USD.",
                nullable=True,
                min_value=0,
                max_value=MAX_TICKET_USD,
                derived_from=_raw("amount", "currency", "status"),
            ),
            Column(
                "merchant_category_count",
                "bigint",
                "Distinct merchant categories.",
                min_value=0,
                derived_from=_raw("merchant_category"),
            ),
        ),
    ),
    FeatureSpec(
        name=WEEKLY,
        description="Rolling 7-day transaction activity per customer, from customer_daily_txn.",
        owner="team:risk-features",
        inputs=(FeatureInput(DAILY, lookback_days=6),),
        transform=tx.customer_txn_7d,
        key_coverage=(KeyCoverage(DAILY, "covers"),),
        columns=_window_columns(7),
        row_rules=_window_rules(7),
    ),
    FeatureSpec(
        name=MONTHLY,
        description="Rolling 30-day transaction activity per customer, from customer_daily_txn.",
        owner="team:risk-features",
        inputs=(FeatureInput(DAILY, lookback_days=29),),
        transform=tx.customer_txn_30d,
        key_coverage=(KeyCoverage(DAILY, "covers"),),
        columns=_window_columns(30),
        row_rules=_window_rules(30),
    ),
    FeatureSpec(
        name=PROFILE,
        reference_models=(CARD_RISK,),
        # Besides the model: a canary whose slice's 7-day decline rate moves by a quarter is rolled back.
        canary_health=CanaryHealthPolicy(columns=(ColumnHealth("decline_rate_7d", max_mean_shift=0.25),)),
        description="Velocity of the last 7 days against the 30-day baseline, with risk flags and a tier.",
        owner="team:risk-models",
        inputs=(FeatureInput(WEEKLY), FeatureInput(MONTHLY)),
        transform=tx.customer_risk_profile,
        # Anyone active in the last 7 days is active in the last 30: the profile has exactly the 7d customers.
        key_coverage=(KeyCoverage(WEEKLY, "equal"), KeyCoverage(MONTHLY, "subset")),
        input_rules=(
            RowRule(
                "windows_nest",
                "txn_count_7d <= txn_count_30d AND declined_count_7d <= declined_count_30d "
                "AND amount_sum_usd_7d <= amount_sum_usd_30d AND active_days_7d <= active_days_30d",
            ),
        ),
        row_rules=(
            RowRule(
                "tier_matches_flags", "(risk_tier = 'high') = (high_velocity_flag AND high_decline_flag)"
            ),
        ),
        columns=(
            Column("customer_id", "string", "Customer.", derived_from=((WEEKLY, "customer_id"),)),
            Column("feature_date", "date", "Feature day (UTC).", derived_from=((WEEKLY, "feature_date"),)),
            Column(
                "txn_velocity_ratio",
                "double",
                "Daily transactions, 7d average over 30d average.",
                min_value=0,
                max_value=MAX_VELOCITY_RATIO,
                derived_from=((WEEKLY, "txn_count_7d"), (MONTHLY, "txn_count_30d")),
            ),
            Column(
                "spend_velocity_ratio",
                "double",
                "Daily spend, 7d average over 30d average.",
                nullable=True,
                min_value=0,
                max_value=MAX_VELOCITY_RATIO,
                derived_from=((WEEKLY, "amount_sum_usd_7d"), (MONTHLY, "amount_sum_usd_30d")),
            ),
            Column(
                "decline_rate_7d",
                "double",
                "Decline rate, 7 days.",
                min_value=0,
                max_value=1,
                derived_from=((WEEKLY, "decline_rate_7d"),),
            ),
            Column(
                "decline_rate_30d",
                "double",
                "Decline rate, 30 days.",
                min_value=0,
                max_value=1,
                derived_from=((MONTHLY, "decline_rate_30d"),),
            ),
            Column(
                "high_velocity_flag",
                "boolean",
                f"7d pace at least {tx.HIGH_VELOCITY_RATIO}x the 30d pace.",
                derived_from=((WEEKLY, "txn_count_7d"), (MONTHLY, "txn_count_30d")),
            ),
            Column(
                "high_decline_flag",
                "boolean",
                f"7d decline rate at least {tx.HIGH_DECLINE_RATE}.",
                derived_from=((WEEKLY, "decline_rate_7d"), (WEEKLY, "txn_count_7d")),
            ),
            Column(
                "risk_tier",
                "string",
                "high (both flags), elevated (one), normal.",
                derived_from=((WEEKLY, "decline_rate_7d"), (MONTHLY, "txn_count_30d")),
            ),
        ),
    ),
)

FEATURES_BY_NAME: dict[str, FeatureSpec] = {spec.name: spec for spec in FEATURES}


def feature_spec(name: str) -> FeatureSpec:
    """The spec of a feature table, with a clear error listing the known tables."""
    try:
        return FEATURES_BY_NAME[name]
    except KeyError:
        known = ", ".join(FEATURES_BY_NAME)
        raise UnknownTableError(f"unknown feature table {name!r}; known tables: {known}") from None


def dependency_order(specs: tuple[FeatureSpec, ...] = FEATURES) -> list[FeatureSpec]:
    """Specs with every table after the tables it reads."""
    by_name = {spec.name: spec for spec in specs}
    ordered: list[FeatureSpec] = []
    placed: set[str] = set()

    def place(spec: FeatureSpec, trail: tuple[str, ...]) -> None:
        if spec.name in placed:
            return
        if spec.name in trail:
            raise ValueError(f"feature registry has a cycle: {' -> '.join((*trail, spec.name))}")
        for item in spec.feature_inputs:
            if item.table in by_name:
                place(by_name[item.table], (*trail, spec.name))
        placed.add(spec.name)
        ordered.append(spec)

    for spec in specs:
        place(spec, ())
    return ordered
