"""The approval sensor and the promotion and rollback jobs through Dagster: what operators see in the UI
(production asset materializations with release, batch and approvers) and what approvers see in Slack."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Lake, make_lake
from dagster import AssetKey, DagsterInstance, build_sensor_context
from slack_api import FakeSlack
from test_approvals import ALICE, BOB, CAROL, CHANNEL, TABLES, staged_template  # noqa: F401

from backfills.orchestration.definitions import build_definitions
from backfills.orchestration.sensors import APPROVAL_SENSOR


@pytest.fixture
def lake(staged_template: Path, tmp_path: Path) -> Lake:  # noqa: F811
    root = tmp_path / "lake"
    shutil.copytree(staged_template, root)
    return make_lake(root)


@pytest.fixture
def slack(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        server.add_channel(CHANNEL, "feature-approvals")
        for user, name in ((ALICE, "alice"), (BOB, "bob"), (CAROL, "carol")):
            server.add_user(user, name)
        monkeypatch.setenv("SLACK_BOT_TOKEN", server.token)
        yield server


def _defs(lake: Lake, slack: FakeSlack):
    return build_definitions(
        lake.settings(
            slack_bot_token=slack.token,
            slack_channel=CHANNEL,
            slack_api_url=slack.base_url,
            approvers=frozenset({BOB, CAROL}),
        )
    )


def _tick(defs, instance: DagsterInstance):
    sensor = defs.resolve_sensor_def(APPROVAL_SENSOR)
    context = build_sensor_context(instance=instance, definitions=defs, resources=defs.resources)
    return sensor.evaluate_tick(context)


def _run(defs, instance: DagsterInstance, request):
    job = defs.resolve_job_def(request.job_name)
    return job.execute_in_process(run_config=request.run_config, instance=instance, tags=request.tags)


def _approve_and_promote(defs, instance: DagsterInstance, slack: FakeSlack, batch: str):
    _tick(defs, instance)
    message = next(m for m in slack.messages(CHANNEL) if m.get("metadata") and batch in m["text"])
    slack.react(CHANNEL, message["ts"], BOB, "heavy_check_mark")
    [request] = [r for r in _tick(defs, instance).run_requests if r.tags["backfills/batch_id"] == batch]
    return message, request, _run(defs, instance, request)


def test_the_sensor_launches_one_promotion_recorded_on_every_production_partition(
    lake: Lake, slack: FakeSlack, dagster_instance: DagsterInstance
) -> None:
    defs = _defs(lake, slack)
    first = _tick(defs, dagster_instance)
    assert first.run_requests == [] and len([m for m in slack.messages(CHANNEL) if m.get("metadata")]) == 2

    message, request, result = _approve_and_promote(defs, dagster_instance, slack, "jan")
    assert (
        request.run_key
        == f"promote:{lake.catalog.get_batch('jan').batch_id}." + request.run_key.split(".")[1]
    )
    assert result.success
    release = lake.catalog.current_release()
    assert release.batch_id == "jan"
    for table in TABLES:
        events = dagster_instance.fetch_materializations(AssetKey(["production", table]), limit=10).records
        assert sorted(e.partition_key for e in events) == [
            "2025-01-01",
            "2025-01-02",
            "2025-01-03",
            "2025-01-04",
        ]
        metadata = events[0].asset_materialization.metadata
        assert metadata["release_id"].value == release.release_id
        assert metadata["batch_id"].value == "jan" and metadata["approvers"].value == "bob"
        assert metadata["requester"].value == ALICE and metadata["kind"].value == "promotion"
        assert metadata["code_version"].value and metadata["content_hash"].value
    assert any(
        reply["text"].startswith("In production: release") for reply in slack.thread(CHANNEL, message["ts"])
    )
    logs = [
        str(entry) for run in dagster_instance.get_runs() for entry in dagster_instance.all_logs(run.run_id)
    ]
    assert logs and not any(slack.token in entry for entry in logs)  # the secret never reaches the event log
    # The same approval never launches a second promotion: the run key is the same on every tick.
    again = [r for r in _tick(defs, dagster_instance).run_requests if r.tags["backfills/batch_id"] == "jan"]
    assert again == []


def test_the_rollback_job_records_the_rollback_on_the_tables_it_changed(
    lake: Lake, slack: FakeSlack, dagster_instance: DagsterInstance
) -> None:
    defs = _defs(lake, slack)
    _approve_and_promote(defs, dagster_instance, slack, "jan")
    first = lake.catalog.current_release()
    _approve_and_promote(defs, dagster_instance, slack, "fix")
    result = defs.resolve_job_def("rollback_release").execute_in_process(
        run_config={
            "ops": {
                "rollback_op": {
                    "config": {
                        "to_release": first.release_id,
                        "tables": ["customer_daily_txn"],
                        "reason": "fix double-counts refunds",
                        "requested_by": "carol",
                    }
                }
            }
        },
        instance=dagster_instance,
    )
    assert result.success
    current = lake.catalog.current_release()
    assert current.kind == "rollback" and current.rolled_back_to == first.release_id
    daily = dagster_instance.fetch_materializations(
        AssetKey(["production", "customer_daily_txn"]), limit=50
    ).records
    rollbacks = [e for e in daily if e.asset_materialization.metadata["kind"].value == "rollback"]
    assert sorted(e.partition_key for e in rollbacks) == [
        "2025-01-03",
        "2025-01-04",
        "2025-01-05",
        "2025-01-06",
    ]
    removed = {
        e.partition_key for e in rollbacks if "removed_from_production" in e.asset_materialization.metadata
    }
    assert removed == {"2025-01-05", "2025-01-06"}  # jan never had those days
    kept = next(e for e in rollbacks if e.partition_key == "2025-01-03").asset_materialization.metadata
    assert kept["batch_id"].value == "jan" and kept["reason"].value == "fix double-counts refunds"
    weekly = dagster_instance.fetch_materializations(
        AssetKey(["production", "customer_txn_7d"]), limit=50
    ).records
    assert all(e.asset_materialization.metadata["kind"].value == "promotion" for e in weekly)
    assert any("Rolled back customer_daily_txn" in m["text"] for m in slack.messages(CHANNEL))


def test_a_refused_promotion_fails_its_run_and_tells_the_thread(
    lake: Lake, slack: FakeSlack, dagster_instance: DagsterInstance
) -> None:
    defs = _defs(lake, slack)
    _tick(defs, dagster_instance)
    message = next(m for m in slack.messages(CHANNEL) if m.get("metadata") and "jan" in m["text"])
    slack.react(CHANNEL, message["ts"], BOB, "white_check_mark")
    [request] = [
        r for r in _tick(defs, dagster_instance).run_requests if r.tags["backfills/batch_id"] == "jan"
    ]
    record = lake.catalog.get_batch("jan").tables["customer_daily_txn"]["2025-01-01"]
    (lake.root / record.files[0]).unlink()  # a staged file vanished after approval
    result = defs.resolve_job_def(request.job_name).execute_in_process(
        run_config=request.run_config, instance=dagster_instance, tags=request.tags, raise_on_error=False
    )
    assert not result.success and lake.catalog.current_release_id() is None
    told = [reply["text"] for reply in slack.thread(CHANNEL, message["ts"])]
    assert any(text.startswith("Promotion failed:") and "2025-01-01" in text for text in told)
    refused = lake.catalog.events(batch_id="jan")[-1]
    assert refused.kind == "promotion_refused" and "StagedContentChangedError" in refused.details["error"]
