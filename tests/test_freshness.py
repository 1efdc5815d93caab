"""Freshness SLAs: each table's newest production (and online) partition against the newest due, worked out by
hand around the due time; the Dagster check and sensor that show it in the UI and tell the approvals
channel once per day; and `backfills freshness`."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from conftest import Lake, make_lake
from dagster import AssetCheckKey, DagsterInstance, build_sensor_context
from slack_api import FakeSlack
from test_approvals import CHANNEL, TABLES

from backfills.assets.factory import production_key
from backfills.assets.registry import feature_spec
from backfills.orchestration.cli import main
from backfills.orchestration.definitions import build_definitions
from backfills.orchestration.freshness_checks import FRESHNESS_CHECK, FRESHNESS_JOB, FRESHNESS_SENSOR
from backfills.serving.freshness import expected_partition, freshness, table_freshness
from backfills.serving.online_sqlite import SqliteOnlineStore
from backfills.serving.online_sync import sync_release

DAILY = "customer_daily_txn"


@pytest.fixture
def lake(staged_template: Path, tmp_path: Path) -> Lake:
    root = tmp_path / "lake"
    shutil.copytree(staged_template, root)
    return make_lake(root)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        ("2025-01-05T05:59:59", "2025-01-03"),  # Jan 4 is due at 06:00 on Jan 5
        ("2025-01-05T06:00:00", "2025-01-04"),
        ("2025-01-05T23:59:59", "2025-01-04"),
        ("2025-01-06T06:00:00", "2025-01-05"),
    ],
)
def test_the_newest_partition_due_follows_the_sla(now: str, expected: str):
    assert expected_partition(_at(now), 6.0).isoformat() == expected


def test_production_is_late_by_the_partitions_it_misses_and_overdue_since_the_first_was_due(lake: Lake):
    spec = feature_spec(DAILY)
    never = table_freshness(lake.catalog, spec, now=_at("2025-01-05T07:00:00"))
    assert never.production.late and never.production.partition is None

    lake.catalog.promote("jan", actor="operator", reason="freshness tests")  # Jan 1..4
    fresh = table_freshness(lake.catalog, spec, now=_at("2025-01-05T07:00:00"))
    assert not fresh.late and fresh.production == fresh.production.__class__("2025-01-04", False, 0, 0.0)

    late = table_freshness(lake.catalog, spec, now=_at("2025-01-07T07:30:00"))  # Jan 5 and 6 are due
    assert late.late and late.production.days_behind == 2
    assert late.production.hours_overdue == 25.5  # Jan 5 was due on Jan 6 at 06:00
    assert "LATE by 2 day(s)" in late.describe()

    # Partitions that end at the landed data: nothing later is due.
    ended = table_freshness(
        lake.catalog, spec, now=_at("2025-03-01T00:00:00"), last_partition=date(2025, 1, 4)
    )
    assert not ended.late and ended.expected_partition == "2025-01-04"


def test_the_online_store_is_judged_by_the_partition_readers_are_on(lake: Lake, spark, tmp_path: Path):
    lake.catalog.promote("jan", actor="operator", reason="freshness tests")
    with SqliteOnlineStore(tmp_path / "online.db") as store:
        before = {
            item.table: item for item in freshness(lake.catalog, now=_at("2025-01-05T07:00:00"), online=store)
        }
        assert all(not item.production.late and item.online.late for item in before.values())
        sync_release(lambda: spark, lake.catalog, store)
        after = freshness(lake.catalog, now=_at("2025-01-05T07:00:00"), online=store)
        assert [item.table for item in after if item.late] == []


def test_the_sensor_runs_the_check_when_a_verdict_changes_and_tells_the_channel_once_a_day(
    lake: Lake, tmp_path: Path, dagster_instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
):
    lake.catalog.promote("jan", actor="operator", reason="freshness tests")  # 2025 data, judged today: late
    with FakeSlack() as slack:
        slack.add_channel(CHANNEL, "feature-approvals")
        monkeypatch.setenv("SLACK_BOT_TOKEN", slack.token)
        defs = build_definitions(
            lake.settings(
                slack_bot_token=slack.token,
                slack_channel=CHANNEL,
                slack_api_url=slack.base_url,
                online_store_url=f"sqlite:///{tmp_path / 'online.db'}",
            )
        )
        sensor = defs.resolve_sensor_def(FRESHNESS_SENSOR)
        cursor = None
        ticks = []
        for _ in range(2):
            context = build_sensor_context(
                instance=dagster_instance, definitions=defs, resources=defs.resources, cursor=cursor
            )
            ticks.append(sensor.evaluate_tick(context))
            cursor = ticks[-1].cursor
        notices = [m["text"] for m in slack.messages(CHANNEL) if m["text"].startswith("Late:")]
    assert sorted(text.split()[1] for text in notices) == sorted(TABLES)  # once each, not once per tick
    keys = {AssetCheckKey(production_key(table), FRESHNESS_CHECK) for table in TABLES}
    [request] = ticks[0].run_requests
    assert set(request.asset_check_keys) == keys  # every verdict is new on the first tick
    assert ticks[1].run_requests == []  # nothing changed on the second: no run
    assert sensor.job_name == FRESHNESS_JOB
    result = defs.resolve_job_def(FRESHNESS_JOB).execute_in_process(
        instance=dagster_instance, resources=defs.resources
    )
    assert result.success
    for key in keys:  # the check's result is an execution in a run, which the UI shows with its figures
        [record] = dagster_instance.event_log_storage.get_asset_check_execution_history(key, limit=10)
        assert record.run_id == result.run_id
        evaluation = record.event.dagster_event.event_specific_data
        assert not evaluation.passed and evaluation.metadata["production_partition"].value == "2025-01-04"
        assert evaluation.severity.value == "WARN"


def test_the_command_prints_the_lag_of_production_and_online(
    lake: Lake, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("BACKFILLS_STORAGE_ROOT", str(lake.root))
    monkeypatch.setenv("BACKFILLS_PARTITIONS_END", "2025-01-04")
    lake.catalog.promote("jan", actor="operator", reason="freshness tests")
    assert main(["freshness", "--format", "json"]) == 0
    tables = {item["table"]: item for item in json.loads(capsys.readouterr().out)}
    assert sorted(tables) == sorted(TABLES)
    assert (
        tables[DAILY]["production"]["partition"] == "2025-01-04" and not tables[DAILY]["production"]["late"]
    )
    assert tables[DAILY]["online"]["late"]  # never synced: the embedded store under the root is empty
