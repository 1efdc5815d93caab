"""Model impact against a hand-computed case: four customers of the risk profile, production's rows and a
batch's rows of the same day, scored by the reference model (card_risk_v1) through Spark; the flips, their
directions, the means and the top movers are worked out here from the model's published coefficients, and
the spec's policy turns the share of flips into a pass, a warning or a block."""

from __future__ import annotations

import dataclasses
import math
from datetime import date

import pytest

from backfills.assets.models import COEFFICIENTS, DECLINE_THRESHOLD, INTERCEPT
from backfills.assets.registry import feature_spec
from backfills.checks.check import GateInputs, ProductionRows
from backfills.checks.model_impact import MODEL_IMPACT_CHECK, ModelImpact
from backfills.checks.registry import check_names
from backfills.checks.staged_pass import PassFigures
from backfills.specs import DateRange, ModelImpactPolicy

PROFILE = "customer_risk_profile"
DAY = date(2025, 1, 10)
COLUMNS = [
    "txn_velocity_ratio",
    "spend_velocity_ratio",
    "decline_rate_7d",
    "decline_rate_30d",
    "high_decline_flag",
]
PRODUCTION = {
    "c1": (1.0, 1.0, 0.1, 0.1, False),  # approve
    "c2": (2.0, 2.0, 0.5, 0.3, True),  # decline
    "c3": (1.0, None, 0.2, 0.2, False),  # approve
    "c4": (1.5, 1.5, 0.3, 0.3, False),  # decline
}
STAGED = {
    "c1": (2.5, 2.0, 0.4, 0.2, True),  # now declined
    "c2": (1.0, 1.0, 0.1, 0.1, False),  # now approved
    "c3": (1.2, None, 0.2, 0.2, False),  # a higher score, still approved
    "c4": (1.5, 1.5, 0.3, 0.3, False),  # unchanged
}


def _score(values: tuple) -> float:
    """The model by hand: a logistic score of the weighted features (a missing spend ratio counts as 1)."""
    features = dict(zip(COLUMNS, values, strict=True))
    features["spend_velocity_ratio"] = (
        1.0 if features["spend_velocity_ratio"] is None else features["spend_velocity_ratio"]
    )
    linear = INTERCEPT + sum(weight * float(features[name]) for name, weight in COEFFICIENTS.items())
    return round(1 / (1 + math.exp(-linear)), 6)


def _rows(spark, values: dict[str, tuple]):
    schema = (
        "customer_id string, feature_date date, txn_velocity_ratio double, spend_velocity_ratio double, "
        "decline_rate_7d double, decline_rate_30d double, high_decline_flag boolean"
    )
    return spark.createDataFrame([(key, DAY, *row) for key, row in values.items()], schema)


def _judge(spark, policy: ModelImpactPolicy | None = None, production: dict | None = PRODUCTION):
    spec = feature_spec(PROFILE)
    if policy is not None:
        spec = dataclasses.replace(spec, model_impact=policy)
    rows = _rows(spark, production) if production is not None else None
    gate = GateInputs(
        dates=DateRange(DAY, DAY),
        staged=_rows(spark, STAGED),
        figures=PassFigures(days={}, keys=()),
        records=[],
        inputs={},
        production=ProductionRows("r1", [DAY.isoformat()] if rows is not None else [], rows),
    )
    return ModelImpact().judge(spec, gate)


def test_the_profile_carries_the_model_impact_check():
    assert MODEL_IMPACT_CHECK in check_names(feature_spec(PROFILE))
    assert MODEL_IMPACT_CHECK not in check_names(feature_spec("customer_daily_txn"))


def test_flips_means_and_movers_match_the_hand_computed_scores(spark):
    old = {key: _score(row) for key, row in PRODUCTION.items()}
    new = {key: _score(row) for key, row in STAGED.items()}
    decision = lambda score: "decline" if score >= DECLINE_THRESHOLD else "approve"  # noqa: E731
    assert [decision(old[k]) for k in old] == ["approve", "decline", "approve", "decline"]
    assert [decision(new[k]) for k in new] == ["decline", "approve", "approve", "decline"]

    outcome = _judge(spark)
    facts = outcome.figures["models"]["card_risk_v1"]
    assert facts["rows_scored"] == 4 and facts["decision_flips"] == 2 and facts["flip_rate"] == 0.5
    assert (facts["approve_to_decline"], facts["decline_to_approve"]) == (1, 1)
    assert facts["score_mean"]["production"] == pytest.approx(sum(old.values()) / 4)
    assert facts["score_mean"]["staged"] == pytest.approx(sum(new.values()) / 4)
    assert facts["score_quantiles"]["staged"]["p50"] in new.values()
    movers = [(row["customer_id"], row["score_change"]) for row in outcome.figures["sample"]]
    expected = sorted(
        ((k, round(new[k] - old[k], 6)) for k in old if new[k] != old[k]), key=lambda m: -abs(m[1])
    )
    assert movers == expected  # c4 did not move
    # Half the entity-days flip: far above the default block rate (5%).
    assert (outcome.passed, outcome.blocking, outcome.verdict) == (False, True, "failed")
    assert "2 of 4 entity-days flip" in outcome.summary


@pytest.mark.parametrize(
    ("policy", "verdict"),
    [
        (ModelImpactPolicy(warn_flip_rate=0.4, block_flip_rate=0.6), "warned"),
        (ModelImpactPolicy(warn_flip_rate=0.5, block_flip_rate=0.9), "passed"),  # at the rate: not above
    ],
)
def test_the_policy_decides_between_pass_warn_and_block(spark, policy: ModelImpactPolicy, verdict: str):
    assert _judge(spark, policy).verdict == verdict


def test_days_production_does_not_serve_have_nothing_to_compare(spark):
    outcome = _judge(spark, production=None)
    assert outcome.passed and outcome.figures["rows_scored"] == 0
