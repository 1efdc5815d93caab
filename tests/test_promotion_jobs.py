"""The approval sensor and the promotion and rollback jobs through Dagster: what operators see in the UI
(production asset materializations with release, batch and approvers) and what approvers see in Slack."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import Lake, make_lake
from dagster import AssetKey, DagsterInstance, build_sensor_context
from slack_api import FakeSlack
from test_approvals import ALICE, BOB, CAROL, CHANNEL, TABLES

from backfills.assets.reader import FeatureReader
from backfills.orchestration.definitions import build_definitions
from backfills.orchestration.freshness_checks import FRESHNESS_CHECK
from backfills.orchestration.sensors import APPROVAL_SENSOR
from backfills.serving.online_rows import stored_form
from backfills.serving.online_store import open_online_store


@pytest.fixture
def lake(staged_template: Path, tmp_path: Path) -> Lake:
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


def _defs(lake: Lake, slack: FakeSlack, online_store_url: str | None = None):
    return build_definitions(
        lake.settings(
            slack_bot_token=slack.token,
            slack_channel=CHANNEL,
            slack_api_url=slack.base_url,
            approvers=frozenset({BOB, CAROL}),
            online_store_url=online_store_url,
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
    # The run judged each table's freshness after the change: the check's latest execution is this run's.
    judged = {e.asset_key.path[-1]: e for e in result.get_asset_check_evaluations()}
    assert sorted(judged) == sorted(TABLES) and {e.check_name for e in judged.values()} == {FRESHNESS_CHECK}
    daily = judged["customer_daily_txn"].metadata["production_partition"].value
    assert daily == lake.catalog.last_served_day(lake.catalog.current_release(), "customer_daily_txn")
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


@pytest.fixture(params=["sqlite", "redis"])
def online_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The embedded SQLite file, or a database of its own on the real redis-server (emptied afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'online.db'}"
        return
    server = request.getfixturevalue("redis_server")
    url = server.url.rsplit("/", 1)[0] + "/7"
    yield url
    redis.Redis.from_url(url).flushdb()


def test_the_jobs_keep_the_online_store_in_step_with_production(
    lake: Lake, slack: FakeSlack, dagster_instance: DagsterInstance, online_store_url: str, spark
) -> None:
    """After each promotion and rollback, the online store (SQLite and Redis) serves every table's newest
    production partition, each sync an observation of `online/<table>`; the rollback switches back without
    reloading."""
    url = online_store_url
    defs = _defs(lake, slack, online_store_url=url)
    reader = FeatureReader(spark, lake.store)

    def online_rows(table: str) -> dict[str, dict]:
        with open_online_store(url) as store:
            current = store.current(table)
            keys = [
                row["customer_id"]
                for row in reader.read(table, current.partition, current.partition).collect()
            ]
            return {"partition": current.partition, "rows": store.get(table, keys)}

    def offline_rows(table: str, day: str) -> dict[str, dict]:
        rows = reader.read(table, day, day).collect()
        return {row["customer_id"]: json.loads(stored_form(row.asDict())) for row in rows}

    def observed(table: str) -> list[dict]:
        records = dagster_instance.fetch_observations(AssetKey(["online", table]), limit=10).records
        return [
            {k: v.value for k, v in r.asset_observation.metadata.items()} for r in records
        ]  # newest first

    _approve_and_promote(defs, dagster_instance, slack, "jan")
    for table in TABLES:
        synced = online_rows(table)
        assert synced["partition"] == "2025-01-04"
        assert synced["rows"] == offline_rows(table, "2025-01-04")
        [facts] = observed(table)
        assert facts["action"] == "loaded" and facts["parity/passed"] is True
        assert facts["keys_written"] == len(synced["rows"]) == facts["parity/offline_rows"]
        assert facts["release_id"] == lake.catalog.current_release().release_id

    first = lake.catalog.current_release()
    _approve_and_promote(defs, dagster_instance, slack, "fix")  # customer_daily_txn up to Jan 6
    assert online_rows("customer_daily_txn")["partition"] == "2025-01-06"
    assert observed("customer_txn_7d")[0]["action"] == "unchanged"  # its newest partition did not change

    result = defs.resolve_job_def("rollback_release").execute_in_process(
        run_config={
            "ops": {"rollback_op": {"config": {"to_release": first.release_id, "reason": "undo fix"}}}
        },
        instance=dagster_instance,
    )
    assert result.success
    back = observed("customer_daily_txn")[0]
    assert back["action"] == "switched" and back["keys_written"] == 0 and back["partition"] == "2025-01-04"
    assert online_rows("customer_daily_txn")["rows"] == offline_rows("customer_daily_txn", "2025-01-04")
