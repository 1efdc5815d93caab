"""The code location loads and every feature asset carries what operators and auditors rely on."""

from __future__ import annotations

import dataclasses
import re

import pytest
from conftest import Lake
from dagster import AssetKey, DailyPartitionsDefinition, TimeWindowPartitionMapping

from backfills.assets import transformations
from backfills.assets.check_results import GATE_CHECK
from backfills.assets.factory import production_key, staging_key
from backfills.assets.registry import FEATURES, dependency_order, feature_spec
from backfills.checks.registry import CHECKS, check_names, checks_of
from backfills.errors import ConfigurationError, UnknownTableError
from backfills.orchestration.definitions import STAGE_FEATURES_JOB, build_definitions, defs
from backfills.orchestration.jobs import PROMOTE_JOB, ROLLBACK_JOB
from backfills.orchestration.sensors import APPROVAL_SENSOR
from backfills.resources.settings import load_settings
from backfills.specs import RAW_TRANSACTIONS


def _assets_by_key(definitions):
    return {key: asset for asset in definitions.resolve_asset_graph().assets_defs for key in asset.keys}


def test_definitions_load_with_every_feature_table_and_the_raw_source() -> None:
    keys = set(_assets_by_key(defs))
    assert AssetKey(RAW_TRANSACTIONS) in keys
    for spec in FEATURES:
        assert staging_key(spec.name) in keys
    assert defs.resolve_job_def(STAGE_FEATURES_JOB) is not None


def test_production_assets_jobs_sensor_and_checks_are_in_the_code_location() -> None:
    keys = set(_assets_by_key(defs))
    graph = defs.resolve_asset_graph()
    for spec in FEATURES:
        production = graph.get(production_key(spec.name))
        assert production_key(spec.name) in keys
        assert staging_key(spec.name) in production.parent_keys
        assert isinstance(production.partitions_def, DailyPartitionsDefinition)
        # One quality gate per staged table, naming every check it runs.
        [gate] = graph.get(staging_key(spec.name)).check_keys
        assert gate.name == GATE_CHECK
        described = defs.resolve_assets_def(staging_key(spec.name)).get_spec_for_check_key(gate).description
        assert all(name in described for name in check_names(spec))
        assert {"diff_vs_production", "cross_table_consistency", "value_ranges", "unique_keys"} <= set(
            check_names(spec)
        )
    assert {job.name for job in (defs.resolve_job_def(PROMOTE_JOB), defs.resolve_job_def(ROLLBACK_JOB))} == {
        "promote_batch",
        "rollback_release",
    }
    sensor = defs.resolve_sensor_def(APPROVAL_SENSOR)
    assert sensor.default_status.name == "RUNNING" and sensor.job_name == PROMOTE_JOB


@pytest.mark.parametrize(
    ("environment", "problem"),
    [
        ({"SLACK_BOT_TOKEN": "xoxb-1"}, "BACKFILLS_SLACK_CHANNEL is not"),
        ({"BACKFILLS_SLACK_CHANNEL": "C1"}, "SLACK_BOT_TOKEN is not"),
        ({"BACKFILLS_APPROVAL_QUORUM": "0"}, "BACKFILLS_APPROVAL_QUORUM='0' must be greater than 0"),
        (
            {"BACKFILLS_APPROVAL_EXPIRY_HOURS": "soon"},
            "BACKFILLS_APPROVAL_EXPIRY_HOURS='soon' is not a number",
        ),
        ({"BACKFILLS_ROLLBACK_REQUIRES_APPROVAL": "maybe"}, "must be true or false"),
        ({"BACKFILLS_PARTITIONS_END": "2025-02-30"}, "BACKFILLS_PARTITIONS_END='2025-02-30' is not a date"),
        (
            {"BACKFILLS_PARTITIONS_START": "2025-03-01", "BACKFILLS_PARTITIONS_END": "2025-02-28"},
            "BACKFILLS_PARTITIONS_END=2025-02-28 is before BACKFILLS_PARTITIONS_START=2025-03-01",
        ),
    ],
)
def test_bad_settings_are_named(monkeypatch: pytest.MonkeyPatch, environment: dict, problem: str) -> None:
    for name in ("SLACK_BOT_TOKEN", "BACKFILLS_SLACK_CHANNEL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=re.escape(problem)):
        load_settings()


def test_partitions_end_at_the_last_landed_day_when_it_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKFILLS_PARTITIONS_START", "2025-01-01")
    monkeypatch.setenv("BACKFILLS_PARTITIONS_END", "2025-01-24")
    definitions = build_definitions(load_settings())
    for spec in FEATURES:
        keys = _assets_by_key(definitions)[staging_key(spec.name)].partitions_def.get_partition_keys()
        assert (keys[0], keys[-1], len(keys)) == ("2025-01-01", "2025-01-24", 24)
    monkeypatch.delenv("BACKFILLS_PARTITIONS_END")
    unbounded = _assets_by_key(build_definitions(load_settings()))[staging_key("customer_daily_txn")]
    assert unbounded.partitions_def.get_partition_keys()[-1] > "2025-01-24"  # up to yesterday


def test_the_slack_token_is_not_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-secret-value")
    monkeypatch.setenv("BACKFILLS_SLACK_CHANNEL", "C1")
    settings = load_settings()
    assert settings.uses_slack and "xoxb-secret-value" not in repr(settings)


def test_every_feature_asset_is_daily_partitioned_with_policy_version_owner_and_description(
    lake: Lake,
) -> None:
    definitions = build_definitions(lake.settings(max_partitions_per_run=12))
    graph = definitions.resolve_asset_graph()
    for spec in FEATURES:
        node = graph.get(staging_key(spec.name))
        assert isinstance(node.partitions_def, DailyPartitionsDefinition)
        assert node.partitions_def.start.strftime("%Y-%m-%d") == "2025-01-01"
        assert node.backfill_policy.policy_type.name == "MULTI_RUN"
        assert node.backfill_policy.max_partitions_per_run == 12
        assert node.code_version == spec.code_version and len(spec.code_version) == 16
        assert node.owners == [spec.owner]
        assert node.description == spec.description
        schema = node.metadata["dagster/column_schema"]
        assert [column.name for column in schema.columns] == spec.column_names
        assert "dagster/column_lineage" in node.metadata


@pytest.mark.parametrize(
    ("table", "upstream", "start_offset", "end_offset"),
    [
        ("customer_daily_txn", AssetKey(RAW_TRANSACTIONS), -2, 1),  # 2 earlier files: re-deliveries
        ("customer_txn_7d", staging_key("customer_daily_txn"), -6, 0),
        ("customer_txn_30d", staging_key("customer_daily_txn"), -29, 0),
        ("customer_risk_profile", staging_key("customer_txn_7d"), 0, 0),
        ("customer_risk_profile", staging_key("customer_txn_30d"), 0, 0),
    ],
)
def test_window_dependencies_map_to_the_upstream_days_they_read(
    table: str, upstream: AssetKey, start_offset: int, end_offset: int
) -> None:
    asset = _assets_by_key(defs)[staging_key(table)]
    mapping = asset.get_partition_mapping(upstream)
    assert isinstance(mapping, TimeWindowPartitionMapping)
    assert (mapping.start_offset, mapping.end_offset) == (start_offset, end_offset)
    assert mapping.allow_nonexistent_upstream_partitions


def test_a_30_day_window_maps_to_30_upstream_days_and_is_cut_at_the_first_partition() -> None:
    asset = _assets_by_key(defs)[staging_key("customer_txn_30d")]
    mapping = asset.get_partition_mapping(staging_key("customer_daily_txn"))
    days_def = asset.partitions_def

    def upstream_of(day: str) -> list[str]:
        result = mapping.get_upstream_mapped_partitions_result_for_partitions(
            days_def.subset_with_partition_keys([day]), days_def, days_def
        )
        return sorted(result.partitions_subset.get_partition_keys())

    window = upstream_of("2025-03-01")
    assert (window[0], window[-1], len(window)) == ("2025-01-31", "2025-03-01", 30)
    assert upstream_of("2025-01-03") == ["2025-01-01", "2025-01-02", "2025-01-03"]


def test_dependency_order_puts_every_table_after_what_it_reads() -> None:
    order = [spec.name for spec in dependency_order()]
    for spec in FEATURES:
        for item in spec.feature_inputs:
            assert order.index(item.table) < order.index(spec.name)


def test_code_version_changes_when_a_transformation_helper_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = feature_spec("customer_txn_7d")
    before = spec.code_version
    original = transformations.rolling_window

    def rolling_window(daily, dates, days):  # a changed helper: different source text
        return original(daily, dates, days + 0)

    monkeypatch.setattr(transformations, "rolling_window", rolling_window)
    # A deployment of the changed helper builds its specs anew (a spec computes its version once).
    assert dataclasses.replace(spec).code_version != before
    monkeypatch.undo()
    assert dataclasses.replace(spec).code_version == spec.code_version == before
    assert dataclasses.replace(spec, columns=spec.columns[:-1]).code_version != before


def test_an_unknown_table_is_named_with_the_known_ones() -> None:
    with pytest.raises(UnknownTableError, match="customer_txn_9d.*customer_daily_txn"):
        feature_spec("customer_txn_9d")


def test_the_check_registry_names_each_check_once_and_decides_which_a_table_carries(spark) -> None:
    names = [check.name for check in CHECKS]
    assert len(names) == len(set(names)), names
    assert all(check.description for check in CHECKS)
    daily, weekly = feature_spec("customer_daily_txn"), feature_spec("customer_txn_7d")
    assert "duplicate_events" in check_names(daily) and "duplicate_events" not in check_names(weekly)
    # A table without row rules or cross-table rules carries neither check, in Dagster and in the run alike.
    bare = dataclasses.replace(weekly, row_rules=(), key_coverage=(), input_rules=())
    assert "row_consistency" not in check_names(bare) and "cross_table_consistency" not in check_names(bare)
    assert {"value_ranges", "null_rates", "unique_keys", "non_empty_partitions", "diff_vs_production"} <= set(
        check_names(bare)
    )
    # The pass keeps one measure per name: two checks may share a name only for the same condition.
    for spec in FEATURES:
        conditions: dict[str, set[str]] = {}
        for check in checks_of(spec):
            for measure in check.measures(spec):
                conditions.setdefault(measure.name, set()).add(str(measure.condition))
        assert {name: found for name, found in conditions.items() if len(found) > 1} == {}, spec.name
