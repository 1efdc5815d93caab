"""The approval sensor and the promotion and rollback jobs through Dagster: what operators see in the UI
(production asset materializations with release, batch and approvers) and what approvers see in Slack."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import redis
from conftest import Lake, make_lake
from dagster import AssetKey, DagsterInstance, build_sensor_context
from dagster_services import free_port
from slack_api import FakeSlack
from test_approvals import ALICE, BOB, CAROL, CHANNEL, TABLES
from test_canary import _approve as approve

from backfills.assets.reader import FeatureReader
from backfills.orchestration.cli import EXIT_ONLINE_NOT_SYNCED, INSTANCE_CONFIG, main
from backfills.orchestration.definitions import build_definitions
from backfills.orchestration.freshness_checks import FRESHNESS_CHECK
from backfills.orchestration.local_backfill import root_cause
from backfills.orchestration.sensors import APPROVAL_SENSOR
from backfills.serving.online_rows import stored_form
from backfills.serving.online_store import open_online_store
from backfills.serving.online_sync import online_status


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


# Promotions at the same moment, and what a promotion says when the sync after it fails

WORKER = Path(__file__).with_name("command_worker.py")
DAILY = "customer_daily_txn"
# Three rounds of two promotions, each of one day of the daily table: disjoint partitions.
ROUNDS = [(date(2025, 1, 7 + 2 * n), date(2025, 1, 8 + 2 * n)) for n in range(3)]


def _batch(day: date) -> str:
    return f"day-{day:%m%d}"


@pytest.fixture(scope="module")
def racing_template(staged_template: Path, tmp_path_factory: pytest.TempPathFactory, spark) -> Path:
    """Production serves `jan`; six approved batches of the daily table wait, one day each (Jan 7..12)."""
    root = tmp_path_factory.mktemp("racing") / "lake"
    shutil.copytree(staged_template, root)
    lake = make_lake(root)
    lake.catalog.promote("jan", actor="setup")
    for day in (day for pair in ROUNDS for day in pair):
        lake.stage(spark, DAILY, day, day, _batch(day), requester=ALICE)
        lake.catalog.mark_complete(_batch(day), {DAILY: [day.isoformat()]})
        approve(lake, _batch(day))
    return root


class Terminals:
    """Two `backfills` processes (tests/command_worker.py), as two operators' terminals: the same command
    line reaches both at the same moment."""

    def __init__(self, log_dir: Path) -> None:
        self.logs = [log_dir / f"terminal-{n}.log" for n in (1, 2)]
        self.processes = []
        for log in self.logs:
            with open(log, "wb") as output:
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, str(WORKER)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=output,
                        text=True,
                        start_new_session=True,
                    )
                )

    def run_together(self, env: dict[str, str], commands: list[list[str]]) -> list[dict]:
        """Each command in a terminal of its own (the first ones), all at once; their answers in order."""
        busy = list(zip(self.processes, self.logs, commands, strict=False))
        for process, _, argv in busy:
            process.stdin.write(json.dumps({"env": env, "argv": argv}) + "\n")
        for process, _, _ in busy:
            process.stdin.flush()
        answers = []
        for process, log, _ in busy:
            line = process.stdout.readline()
            assert line, f"a terminal died:\n{log.read_text()[-3000:]}"
            answers.append(json.loads(line))
        return answers

    def close(self) -> None:
        for process in self.processes:
            process.stdin.close()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(scope="module")
def terminals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Terminals]:
    started = Terminals(tmp_path_factory.mktemp("terminals"))
    yield started
    started.close()


def test_promotions_started_at_the_same_moment_both_publish_and_the_online_store_ends_on_the_newest(
    racing_template: Path, terminals: Terminals, online_store_url: str, tmp_path: Path, spark
) -> None:
    """Three rounds of two `backfills promote` of disjoint batches, in two processes at once, on SQLite
    and Redis: each reports its batch in production, the syncs after them never collide, and the online
    store ends on the newest release, equal to the offline rows."""
    root = tmp_path / "lake"
    shutil.copytree(racing_template, root)
    lake = make_lake(root)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(INSTANCE_CONFIG, home / "dagster.yaml")
    # The instance's storage is created once, before the race: two processes creating it at once collide
    # in Dagster's own schema migration.
    DagsterInstance.from_config(str(home)).dispose()
    env = {
        "BACKFILLS_STORAGE_ROOT": str(root),
        "DAGSTER_HOME": str(home),
        "BACKFILLS_APPROVERS": BOB,
        "BACKFILLS_ONLINE_STORE": online_store_url,
        "BACKFILLS_SPARK_MASTER": "local[1]",
        "BACKFILLS_PARTITIONS_START": "2025-01-01",
    }
    reader = FeatureReader(spark, lake.store)
    for first, second in ROUNDS:
        batches = [_batch(first), _batch(second)]
        answers = terminals.run_together(env, [["promote", batch] for batch in batches])
        for batch, answer in zip(batches, answers, strict=True):
            if answer["code"] == 2 and "CURRENT moved" in answer["err"]:
                # Both staged a release on the same production: one swap won, the other changed nothing
                # and says to run it again (the catalog's compare-and-swap), which publishes it.
                assert "nothing was changed; run the promotion again" in answer["err"]
                [answer] = terminals.run_together(env, [["promote", batch]])
            assert answer["code"] == 0, answer["err"]
            assert f"batch {batch} is in production" in answer["out"]
        current = lake.catalog.current_release()
        served = lake.catalog.release_partitions(DAILY, "2025-01-07", "2025-01-12")
        assert {served[day.isoformat()].batch_id for day in (first, second)} == set(batches)
        with open_online_store(online_store_url) as store:
            assert store.synced_release() == current.release_id
            status = {item["table"]: item for item in online_status(lake.catalog, store)}
            assert all(item["in_step"] and item["parity"]["passed"] for item in status.values())
            assert store.current(DAILY).partition == second.isoformat()
            offline = reader.read(DAILY, second, second).collect()
            rows = {row["customer_id"]: json.loads(stored_form(row.asDict())) for row in offline}
            assert store.get(DAILY, sorted(rows)) == rows
    failed = [event for event in lake.catalog.events() if event.kind == "online_sync_failed"]
    assert failed == []


def test_a_promotion_says_it_published_and_names_the_online_sync_that_failed_after_it(
    lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    approve(lake, "fix")
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: the online store is down
    for name, value in {
        "BACKFILLS_STORAGE_ROOT": str(lake.root),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "BACKFILLS_APPROVERS": BOB,
        "BACKFILLS_ONLINE_STORE": down,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)

    assert main(["promote", "fix"]) == EXIT_ONLINE_NOT_SYNCED
    out, err = capsys.readouterr()
    release = lake.catalog.current_release()
    assert release.batch_id == "fix"
    assert f"batch fix is in production, release {release.release_id}" in out
    [run] = DagsterInstance.get().get_runs()
    said = (
        f"batch fix is in production as release {release.release_id}; the online store was not updated: "
        f"OnlineStoreError: cannot reach the online store at {down}"
    )
    assert err.startswith(
        f"error: OnlineSyncFailedError: step sync_online_op of promote_batch run {run.run_id} failed after "
        f"promote_op went through: {said}"
    )
    assert err.rstrip().endswith("retry with `backfills online sync`")
    steps = {
        event.step_key: event.dagster_event
        for event in DagsterInstance.get().all_logs(run.run_id)
        if event.dagster_event
        and (event.dagster_event.is_step_success or event.dagster_event.is_step_failure)
    }
    assert steps["promote_op"].is_step_success and steps["sync_online_op"].is_step_failure
    failure = root_cause(steps["sync_online_op"].step_failure_data.error)
    assert failure.startswith(f"OnlineSyncFailedError: {said}")

    monkeypatch.setenv("BACKFILLS_ONLINE_STORE", f"sqlite:///{tmp_path / 'online.db'}")
    assert main(["online", "sync"]) == 0
    capsys.readouterr()
    assert main(["online", "status"]) == 0
    status = capsys.readouterr().out.splitlines()
    # Production serves the daily table only: the others are not behind it.
    assert [line.split(";")[0] for line in status] == [
        f"{DAILY}: in step",
        "customer_txn_7d: not served by production yet",
        "customer_txn_30d: not served by production yet",
        "customer_risk_profile: not served by production yet",
    ]
