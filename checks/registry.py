"""Every check of the gate, once: the single source of the check names for the Dagster asset checks of each
staged table and for the run that evaluates them. A new check is one module implementing `Check` and one
line here."""

from __future__ import annotations

from backfills.checks.check import Check
from backfills.checks.contract_checks import OutputContract, RawInputContract
from backfills.checks.cross_table import CrossTableConsistency
from backfills.checks.diff_check import DiffVsProduction
from backfills.checks.duplicates import DuplicateEvents
from backfills.checks.expectations import EXPECTATION_CHECKS
from backfills.checks.model_impact import ModelImpact
from backfills.checks.non_empty import NonEmptyDays
from backfills.specs import FeatureSpec

CHECKS: tuple[Check, ...] = (
    RawInputContract(),
    OutputContract(),
    *EXPECTATION_CHECKS,
    NonEmptyDays(),
    CrossTableConsistency(),
    DiffVsProduction(),
    DuplicateEvents(),
    ModelImpact(),
)


def checks_of(spec: FeatureSpec) -> list[Check]:
    """The checks a staged table of `spec` carries, by name."""
    return sorted((check for check in CHECKS if check.applies(spec)), key=lambda check: check.name)


def check_names(spec: FeatureSpec) -> list[str]:
    """Names of the asset checks a staged table of `spec` carries."""
    return [check.name for check in checks_of(spec)]
