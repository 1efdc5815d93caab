"""Rollback drills: a drill that passes leaves production as it was; one that finds a deleted or a modified
file fails, names the partitions, is told in the approvals channel and recorded for auditors (the audit
trail, an observation in Dagster, `backfills drills`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import Lake, make_lake
from dagster import AssetKey, DagsterInstance
from slack_api import FakeSlack
from test_approvals import CHANNEL

from backfills.orchestration.cli import main
from backfills.orchestration.definitions import build_definitions
from backfills.orchestration.drills import DRILL_POINTER_KEY, past_drills, run_drill

DAILY = "customer_daily_txn"


@pytest.fixture
def lake(staged_template: Path, tmp_path: Path) -> Lake:
    """Production with two releases: `jan` (every table, Jan 1..4), then `fix` (customer_daily_txn 3..6)."""
    root = tmp_path / "lake"
    shutil.copytree(staged_template, root)
    lake = make_lake(root)
    lake.catalog.promote("jan", actor="operator", reason="drill tests")
    lake.catalog.promote("fix", actor="operator", reason="drill tests")
    return lake


def _jan_file(lake: Lake, day: str) -> Path:
    record = lake.catalog.get_batch("jan").tables[DAILY][day]
    return lake.root / record.files[0]


def test_a_drill_checks_every_partition_of_the_target_and_leaves_production_alone(lake: Lake):
    before = lake.catalog.current_release_id()
    jan = lake.catalog.get_release(lake.catalog.current_release().parent_id)
    result = run_drill(lake.catalog, actor="auditor")
    assert result.passed and result.problems == [] and result.target_release_id == jan.release_id
    expected = sum(len(lake.catalog.served(jan, table)) for table in jan.served_tables())
    assert result.partitions_checked == expected == 16  # 4 tables x Jan 1..4
    assert result.files_checked >= expected and result.seconds_to_restore > 0
    assert lake.catalog.current_release_id() == before  # readers never moved
    assert not lake.store.exists(DRILL_POINTER_KEY)  # the shadow pointer is back
    [recorded] = past_drills(lake.catalog)
    assert recorded["drill_id"] == result.drill_id and recorded["passed"] and recorded["actor"] == "auditor"


def test_a_drill_names_the_partitions_whose_files_were_deleted_or_modified(lake: Lake):
    _jan_file(lake, "2025-01-02").unlink()
    with _jan_file(lake, "2025-01-03").open("ab") as modified:
        modified.write(b"tampered")
    result = run_drill(lake.catalog)
    assert not result.passed and result.problem_count == 2
    assert any(f"{DAILY} 2025-01-02" in problem and "missing" in problem for problem in result.problems)
    assert any(f"{DAILY} 2025-01-03" in problem and "bytes" in problem for problem in result.problems)
    assert not past_drills(lake.catalog)[-1]["passed"]


def test_the_drill_job_records_an_observation_and_tells_the_channel_when_it_fails(
    lake: Lake, dagster_instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
):
    with FakeSlack() as slack:
        slack.add_channel(CHANNEL, "feature-approvals")
        monkeypatch.setenv("SLACK_BOT_TOKEN", slack.token)
        defs = build_definitions(
            lake.settings(slack_bot_token=slack.token, slack_channel=CHANNEL, slack_api_url=slack.base_url)
        )
        job = defs.resolve_job_def("rollback_drill")
        assert job.execute_in_process(instance=dagster_instance).success
        _jan_file(lake, "2025-01-04").unlink()
        failed = job.execute_in_process(instance=dagster_instance, raise_on_error=False)
        messages = [m["text"] for m in slack.messages(CHANNEL)]
    assert not failed.success
    assert len(messages) == 1 and "FAILED" in messages[0] and f"{DAILY} 2025-01-04" in messages[0]
    records = dagster_instance.fetch_observations(AssetKey(["audit", "rollback_drills"]), limit=5).records
    verdicts = [record.asset_observation.metadata["passed"].value for record in records]
    assert verdicts == [False, True]  # newest first
    schedule = defs.resolve_schedule_def("weekly_rollback_drill")
    assert schedule.cron_schedule == "0 4 * * 1" and schedule.default_status.value == "STOPPED"


def test_the_commands_run_a_drill_and_list_past_drills(
    lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("BACKFILLS_STORAGE_ROOT", str(lake.root))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    assert main(["drill", "--as", "auditor"]) == 0
    assert "passed: 16 partitions" in capsys.readouterr().out
    _jan_file(lake, "2025-01-01").unlink()
    assert main(["drill"]) == 2
    assert f"{DAILY} 2025-01-01" in capsys.readouterr().err
    assert main(["drills", "--format", "json"]) == 0
    drills = json.loads(capsys.readouterr().out)
    assert [drill["passed"] for drill in drills] == [True, False]
