"""End to end through the real Dagster webserver and daemon: an operator backfills every staged table, an
approver signs it off in Slack, the approval sensor promotes it, and the operator rolls it back.

Ten days of all four `staging/*` tables are launched as the UI does (GraphQL `launchPartitionBackfill`),
with at most five days per run, so every table takes two range runs and the daemon has to order them by
the window dependencies. At the same time a second backfill reads a landing day with corrupt amounts. The
runs use one shared Spark Connect server; the approvals channel is the local Slack Web API server. The
Dagster instance keeps runs, event log and sensor ticks in PostgreSQL, as a shared deployment does (README,
"Beyond one machine"): a local server from Debian's `postgresql`, started by the tests (skipped, saying
what is missing, without it). The assertions read what Dagster recorded (runs, step times,
materializations, check evaluations, and the Postgres tables they are in), what Slack received, and what
the catalog says, not what the code is meant to do. The SQLite instance of `make dev` is covered by
tests/test_local_instance.py.

Slow by nature (the backfill daemon looks at backfills every 30 s, a Dagster constant): deselect with
`-m "not end_to_end"`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest
from conftest import make_lake
from dagster import AssetCheckEvaluation, AssetKey, AssetRecordsFilter, DagsterEventType
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from dagster_services import BACKFILL_TAG, DagsterServices, GraphQLError, RunSummary, WaitTimeout, iter_days
from postgres_server import PostgresServer
from slack_api import FakeSlack

from backfills.assets.factory import BATCH_TAG, REQUESTER_TAG, production_key, staging_key
from backfills.assets.generator import Fault, write_landing_zone
from backfills.assets.registry import FEATURES, feature_spec
from backfills.checks.registry import check_names
from backfills.orchestration.jobs import PROMOTE_JOB, ROLLBACK_JOB
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.connect_server import running_server
from backfills.resources.storage import open_store

pytestmark = pytest.mark.end_to_end

FIRST_DAY = "2025-01-01"  # also BACKFILLS_PARTITIONS_START: the 7d and 30d windows start empty
LAST_DAY = "2025-01-10"
# Two more landing days than backfilled (a day's features also read the next day's file), then the days
# of the faulty backfill: its first day's file has negative amounts.
LANDED_DAYS = 15
FAULTY_FIRST, FAULTY_LAST = "2025-01-13", "2025-01-14"
DAYS_PER_RUN = 5  # BACKFILLS_MAX_PARTITIONS_PER_RUN: two range runs per table
REQUESTER, APPROVER = "U0ALICE", "U0BOB"  # Slack user IDs: the run tag names the requester by ID
CHANNEL = "C0APPROVALS"
SENSOR_INTERVAL_SECONDS = 3
TABLES = [spec.name for spec in FEATURES]
DAYS = list(iter_days(FIRST_DAY, LAST_DAY))
# The backfill took about 8 minutes on 2 cores shared with other test runs (load average ~10) and one
# process with the same range runs took 3.3 minutes there: leave room, a failed run ends it sooner.
BACKFILL_TIMEOUT_SECONDS = 900
DAGSTER_DB = "dagster_end_to_end"  # the instance's database on the tests' PostgreSQL server


@dataclass
class OperatorBackfill:
    """What one backfill launched through the webserver left behind (and the faulty one beside it)."""

    services: DagsterServices
    slack: FakeSlack
    storage_root: Path
    previous_release_id: str  # production before the backfill
    faulty_backfill_id: str
    backfill_id: str
    status: str
    runs: list[RunSummary]
    launched_at: float  # wall clock, just before the launch mutation
    seen_finished_at: float  # wall clock, when the poll first saw the backfill finished


def _staged_tables(run: RunSummary) -> list[str]:
    return [key[-1] for key in run.asset_keys if AssetKey(list(key)) == staging_key(key[-1])]


def _step_key(table: str) -> str:
    # Dagster names an asset's op (and its step) after the asset key's path joined by "__".
    return "__".join(staging_key(table).path)


def _run_phases(services: DagsterServices, run: RunSummary, launched_at: float) -> str:
    """Where a run's time went: created (by the backfill daemon), dequeued, worker up, each step."""
    times: dict[str, float] = {}
    steps: list[str] = []
    for event in services.run_timeline(run.run_id):
        if event.event_type == "STEP_START":
            times[f"start {event.step_key}"] = event.timestamp
        elif event.event_type in ("STEP_SUCCESS", "STEP_FAILURE") and f"start {event.step_key}" in times:
            took = event.timestamp - times[f"start {event.step_key}"]
            steps.append(f"{str(event.step_key).split('__')[-1]} {took:.1f}s")
        else:
            times.setdefault(event.event_type, event.timestamp)
    enqueued, starting, started = (times.get(kind) for kind in ("RUN_ENQUEUED", "RUN_STARTING", "RUN_START"))
    parts = [f"created at +{enqueued - launched_at:.1f}s" if enqueued else "never queued"]
    if enqueued and starting:
        parts.append(f"dequeued after {starting - enqueued:.1f}s")
    if starting and started:
        parts.append(f"worker up after {started - starting:.1f}s")
    parts.append(f"steps: {', '.join(steps) or '-'}")
    return " | ".join(parts)


def _timings(outcome: OperatorBackfill, startup_seconds: float | None) -> str:
    runs = outcome.runs
    started = [run.start_time for run in runs if run.start_time is not None]
    ended = [run.end_time for run in runs if run.end_time is not None]

    def since_launch(moment: float) -> str:
        return f"{moment - outcome.launched_at:.1f}s"

    lines = [
        f"services ready after {startup_seconds or 0:.1f}s",
        f"backfill {outcome.backfill_id}: {outcome.status}, {len(runs)} runs",
        f"launch -> first run started: {since_launch(min(started)) if started else 'never'}",
        f"launch -> last run ended: {since_launch(max(ended)) if ended else 'never'}",
        f"launch -> backfill seen finished: {since_launch(outcome.seen_finished_at)}",
        "runs (id, status, days, assets, start-to-end):",
    ]
    for run in runs:
        lines.append(f"  {run.describe()}")
        lines.append(f"      {_run_phases(outcome.services, run, outcome.launched_at)}")
    return "\n".join(lines)


def _failure_report(services: DagsterServices, backfill_id: str, status: str, runs: list[RunSummary]) -> str:
    lines = [f"backfill {backfill_id} ended {status}, not COMPLETED_SUCCESS"]
    error = services.client.backfill(backfill_id).error
    if error:
        lines.append(f"backfill error: {error}")
    for run in runs:
        lines.append(f"  {run.describe()}")
        lines.extend(f"      {message}" for message in services.run_failures(run.run_id))
    lines.append(services.log_tails())
    return "\n".join(lines)


def _previous_load(storage_root: Path, spark) -> str:
    """Production before the operator's backfill: customer_daily_txn for the same days, published earlier."""
    lake = make_lake(storage_root)
    write_landing_zone(
        lake.store,
        start=date.fromisoformat(FIRST_DAY),
        days=LANDED_DAYS,
        customers=60,
        rows_per_day=400,
        seed=11,
        faults=[Fault("negative_amounts", date.fromisoformat(FAULTY_FIRST))],
    )
    lake.stage(
        spark, "customer_daily_txn", date.fromisoformat(FIRST_DAY), date.fromisoformat(LAST_DAY), "load"
    )
    lake.catalog.mark_complete("load", lake.catalog.get_batch("load").partitions_by_table())
    release = lake.catalog.promote("load", actor="initial-load", reason="production before the test")
    lake.catalog.seal_batch("load", "promoted", allowed_from=("checked",))
    return release.release_id


@pytest.fixture(scope="module")
def operator_backfill(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer, spark
) -> Iterator[OperatorBackfill]:
    """One backfill of every staged table for FIRST_DAY..LAST_DAY, launched like the UI does, and a faulty
    one beside it, on a Postgres-backed instance; the services stay up for the module's tests, which read
    what they left behind."""
    base = tmp_path_factory.mktemp("end_to_end")
    storage_root = base / "storage"
    previous_release_id = _previous_load(storage_root, spark)
    postgres_server.create_database(DAGSTER_DB)
    with (
        FakeSlack() as slack,
        running_server(port=0, driver_memory="1g", state_dir=base / "spark") as connect,
    ):
        slack.add_channel(CHANNEL, "feature-approvals")
        slack.add_user(REQUESTER, "alice")
        slack.add_user(APPROVER, "bob")
        services = DagsterServices(
            base / "dagster_home",
            storage_root,
            partitions_start=FIRST_DAY,
            max_partitions_per_run=DAYS_PER_RUN,
            env={
                "BACKFILLS_SPARK_REMOTE": connect.url,
                "SLACK_BOT_TOKEN": slack.token,
                "BACKFILLS_SLACK_CHANNEL": CHANNEL,
                "BACKFILLS_SLACK_API_URL": slack.base_url,
                "BACKFILLS_APPROVERS": APPROVER,
                "BACKFILLS_SENSOR_INTERVAL_SECONDS": str(SENSOR_INTERVAL_SECONDS),
            },
            instance_config={"storage": postgres_server.dagster_storage(DAGSTER_DB)},
        )
        with services:
            launched_at = time.time()
            backfill_id = services.client.launch_partition_backfill(
                [staging_key(table).path for table in TABLES], FIRST_DAY, LAST_DAY, {REQUESTER_TAG: REQUESTER}
            )
            faulty_id = services.client.launch_partition_backfill(
                [staging_key("customer_daily_txn").path],
                FAULTY_FIRST,
                FAULTY_LAST,
                {REQUESTER_TAG: REQUESTER},
            )
            try:
                status = services.client.wait_for_backfill(backfill_id, BACKFILL_TIMEOUT_SECONDS)
            except (GraphQLError, WaitTimeout) as error:  # the instance's database may be what failed
                pytest.fail(f"{error}\n{services.log_tails()}\n{postgres_server.log_tail()}", pytrace=False)
            outcome = OperatorBackfill(
                services=services,
                slack=slack,
                storage_root=storage_root,
                previous_release_id=previous_release_id,
                faulty_backfill_id=faulty_id,
                backfill_id=backfill_id,
                status=status,
                runs=services.client.runs(backfill_id=backfill_id),
                launched_at=launched_at,
                seen_finished_at=time.time(),
            )
            print(f"\n{_timings(outcome, services.startup_seconds)}")
            if status != "COMPLETED_SUCCESS":
                report = _failure_report(services, backfill_id, status, outcome.runs)
                pytest.fail(f"{report}\n{postgres_server.log_tail()}", pytrace=False)
            services.client.wait_for_backfill(faulty_id, BACKFILL_TIMEOUT_SECONDS)
            yield outcome
        # No orphans: run workers and their Spark JVMs belong to the services' process groups.
        assert not services.leftover_processes(), f"still running after stop: {services.leftover_processes()}"


def test_backfill_stages_every_partition_of_every_table_in_range_runs(operator_backfill: OperatorBackfill):
    outcome = operator_backfill
    instance = outcome.services.instance
    assert outcome.status == "COMPLETED_SUCCESS"
    assert all(run.status == "SUCCESS" for run in outcome.runs), [run.describe() for run in outcome.runs]
    assert all(run.tags.get(REQUESTER_TAG) == REQUESTER for run in outcome.runs)
    run_ids = {run.run_id for run in outcome.runs}

    for table in TABLES:
        key = staging_key(table)
        # The backfill policy: several range runs of at most DAYS_PER_RUN days, together covering the days.
        table_runs = [run for run in outcome.runs if table in _staged_tables(run)]
        assert len(table_runs) >= 2, f"{table}: {[run.describe() for run in table_runs]}"
        assert all(1 <= len(run.partitions) <= DAYS_PER_RUN for run in table_runs)
        assert sorted(day for run in table_runs for day in run.partitions) == DAYS

        # Every partition materialized exactly once, by a run of this backfill.
        records = instance.fetch_materializations(AssetRecordsFilter(asset_key=key), limit=1000).records
        in_backfill = [record for record in records if record.run_id in run_ids]
        counts = Counter(record.partition_key for record in in_backfill)
        assert sorted(counts) == DAYS, f"{table}: materialized {sorted(counts)}"
        assert set(counts.values()) == {1}, f"{table}: materialized more than once: {counts}"

        # The UI (GraphQL) shows the same, with the batch in the metadata.
        events = outcome.services.client.asset_materializations(key.path, partitions=DAYS)
        assert sorted(event.partition for event in events if event.run_id in run_ids) == DAYS
        assert {event.metadata["batch_id"] for event in events} == {outcome.backfill_id}


def test_each_table_ran_after_the_upstream_partitions_its_window_reads(operator_backfill: OperatorBackfill):
    """I4 as Dagster executed it: for every run (and table in it), every upstream run whose days intersect
    the table's window (lookback and lateness included) had finished before it started; inside one run,
    the upstream step had finished before the downstream step started."""
    outcome = operator_backfill
    executions = [(table, run) for run in outcome.runs for table in _staged_tables(run)]
    waits: dict[str, list[float]] = {"between runs": [], "inside a run": []}
    for table, run in executions:
        for upstream in feature_spec(table).inputs:
            if upstream.table not in TABLES:
                continue  # the landing zone is not part of the backfill
            first = date.fromisoformat(run.partitions[0]) - timedelta(days=upstream.lookback_days)
            last = date.fromisoformat(run.partitions[-1]) + timedelta(days=upstream.lateness_days)
            window = {day for day in DAYS if first.isoformat() <= day <= last.isoformat()}
            feeders = [
                other
                for name, other in executions
                if name == upstream.table and window.intersection(other.partitions)
            ]
            fed = {day for other in feeders for day in other.partitions}
            assert window <= fed, (
                f"{table} {run.describe()}: {upstream.table} days {sorted(window - fed)} not run"
            )
            for feeder in feeders:
                if feeder.run_id == run.run_id:
                    before, after = run.step(_step_key(upstream.table)), run.step(_step_key(table))
                    assert before and after, f"steps of {run.describe()}: {[s.step_key for s in run.steps]}"
                    assert before.end_time is not None and after.start_time is not None
                    gap = after.start_time - before.end_time
                    where, kind = f"inside run {run.describe()}", "inside a run"
                else:
                    assert feeder.end_time is not None and run.start_time is not None
                    gap = run.start_time - feeder.end_time
                    where, kind = f"{run.describe()} after {feeder.describe()}", "between runs"
                assert gap >= 0, (
                    f"{table} started {-gap:.1f}s before its {upstream.table} input finished: {where}"
                )
                waits[kind].append(gap)
    assert waits["between runs"], "no run of the backfill waited for another: the windows were not exercised"
    for kind, gaps in waits.items():
        if gaps:
            print(f"\nshortest wait for upstream {kind}: {min(gaps):.1f}s over {len(gaps)} pairs", end="")


def test_blocking_checks_of_every_staged_table_ran_and_passed_for_each_partition(
    operator_backfill: OperatorBackfill,
):
    outcome = operator_backfill
    instance = outcome.services.instance
    run_ids = {run.run_id for run in outcome.runs}
    for run in outcome.runs:
        records = instance.get_records_for_run(
            run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
        ).records
        evaluations: list[AssetCheckEvaluation] = [
            record.event_log_entry.dagster_event.event_specific_data for record in records
        ]
        for table in _staged_tables(run):
            mine = [item for item in evaluations if item.asset_key == staging_key(table)]
            expected = {(check, day) for check in check_names(feature_spec(table)) for day in run.partitions}
            # One result per check and partition of the range run, each tied to that partition's
            # materialization in this run.
            assert sorted((item.check_name, item.partition) for item in mine) == sorted(expected), (
                run.describe()
            )
            assert {item.target_materialization_data.run_id for item in mine} == {run.run_id}
            failed = [f"{item.check_name}: {item.description}" for item in mine if not item.passed]
            assert not failed, f"{table} in {run.describe()}: {failed}"
            assert all(item.blocking for item in mine), f"{table}: non-blocking checks in {run.describe()}"

    # The asset's Checks tab (GraphQL) shows the same: every partition of every check has a succeeded
    # execution of its run, and none is left SKIPPED (Dagster plans one execution per partition).
    for table in TABLES:
        for check in check_names(feature_spec(table)):
            executions = outcome.services.client.asset_check_executions(staging_key(table).path, check)
            ours = [item for item in executions if item.run_id in run_ids]
            assert sorted(item.partition for item in ours) == DAYS, f"{table}.{check}: {ours}"
            assert {item.status for item in ours} == {"SUCCEEDED"}, f"{table}.{check}: {ours}"
            assert all(item.passed for item in ours), f"{table}.{check}"
            assert all(item.metadata["partition"] == item.partition for item in ours)


def test_the_instance_keeps_runs_check_results_and_sensor_ticks_in_postgres(
    operator_backfill: OperatorBackfill, postgres_server: PostgresServer
):
    """What the UI showed above was read from PostgreSQL: the services and the test process all use the
    Postgres storages, the rows are in its tables, and nothing fell back to SQLite under DAGSTER_HOME."""
    outcome = operator_backfill
    instance = outcome.services.instance
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    assert not sorted(outcome.services.dagster_home.rglob("*.db")), "SQLite files under DAGSTER_HOME"

    run_ids = [run.run_id for run in outcome.runs]
    passed = {
        (run.run_id, staging_key(table).to_string(), check)
        for run in outcome.runs
        for table in _staged_tables(run)
        for check in check_names(feature_spec(table))
    }
    with closing(postgres_server.connect(DAGSTER_DB)) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT status FROM bulk_actions WHERE key = %s", (outcome.backfill_id,))
        assert cursor.fetchall() == [("COMPLETED_SUCCESS",)]
        cursor.execute(
            "SELECT runs.run_id, runs.status FROM runs JOIN run_tags ON run_tags.run_id = runs.run_id "
            "WHERE run_tags.key = %s AND run_tags.value = %s",
            (BACKFILL_TAG, outcome.backfill_id),
        )
        assert sorted(cursor.fetchall()) == sorted((run_id, "SUCCESS") for run_id in run_ids)
        cursor.execute(
            "SELECT run_id, asset_key, check_name, execution_status FROM asset_check_executions "
            "WHERE run_id = ANY(%s) AND execution_status NOT IN ('SKIPPED', 'PLANNED')",
            (run_ids,),
        )
        executions = cursor.fetchall()
        assert {row[:3] for row in executions} == passed
        assert {row[3] for row in executions} == {"SUCCEEDED"}
        cursor.execute("SELECT count(*) FROM job_ticks")
        [(ticks,)] = cursor.fetchall()
        assert ticks > 0, "no sensor tick recorded in Postgres"


def test_batch_manifest_holds_every_partition_checked_and_requested_by_the_operator(
    operator_backfill: OperatorBackfill,
):
    outcome = operator_backfill
    batch = ReleaseCatalog(open_store(str(outcome.storage_root))).get_batch(outcome.backfill_id)
    assert batch.requester == REQUESTER
    assert batch.state == "checked"  # nobody has approved yet
    assert batch.partitions_by_table() == {table: DAYS for table in sorted(TABLES)}
    run_ids = {run.run_id for run in outcome.runs}
    assert set(batch.runs) == run_ids
    for table in TABLES:
        for day in DAYS:
            record = batch.partition(table, day)
            assert record is not None and record.batch_id == outcome.backfill_id
            assert record.run_id in run_ids and record.row_count > 0
    assert not batch.blocking_failures()


def _wait_for(what: str, found, timeout: float = 120.0, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while (result := found()) in (None, [], False):
        assert time.monotonic() < deadline, f"waited {timeout:.0f}s for {what}"
        time.sleep(poll)
    return result


def _requests(slack: FakeSlack) -> list[dict]:
    return [message for message in slack.messages(CHANNEL) if message.get("metadata")]


def test_a_faulty_backfill_is_blocked_gets_a_notice_and_no_request(operator_backfill: OperatorBackfill):
    outcome = operator_backfill
    catalog = ReleaseCatalog(open_store(str(outcome.storage_root)))
    batch = catalog.get_batch(outcome.faulty_backfill_id)
    assert batch.state == "blocked" and batch.tables == {}
    [failure] = batch.blocking_failures()
    assert failure.check == "raw_input_contract" and "amount" in failure.summary
    notice = _wait_for(
        "the blocked notice",
        lambda: [m for m in outcome.slack.messages(CHANNEL) if outcome.faulty_backfill_id in m["text"]],
    )
    assert len(notice) == 1 and "is blocked" in notice[0]["text"] and not notice[0].get("metadata")
    assert not [m for m in _requests(outcome.slack) if outcome.faulty_backfill_id in m["text"]]
    assert catalog.current_release_id() == outcome.previous_release_id


def test_an_approval_in_slack_promotes_the_batch_and_a_rollback_restores_the_previous_release(
    operator_backfill: OperatorBackfill,
):
    outcome = operator_backfill
    client, slack = outcome.services.client, outcome.slack
    catalog = ReleaseCatalog(open_store(str(outcome.storage_root)))
    requested_at = time.monotonic()
    [request] = _wait_for("the approval request", lambda: _requests(slack))
    print(
        f"\nbackfill seen finished -> request posted: {time.monotonic() - requested_at:.1f}s after the wait"
    )
    assert outcome.backfill_id in request["text"] and REQUESTER in str(request["blocks"])
    time.sleep(3 * SENSOR_INTERVAL_SECONDS)  # more ticks: still one request
    assert len(_requests(slack)) == 1

    slack.react(CHANNEL, request["ts"], APPROVER, "white_check_mark")
    approved_at = time.monotonic()
    promotions = _wait_for(
        "the promotion run", lambda: client.runs(tags={BATCH_TAG: outcome.backfill_id}, job_name=PROMOTE_JOB)
    )
    assert len(promotions) == 1
    promotion = client.wait_for_run(promotions[0].run_id, timeout=300)
    assert promotion.status == "SUCCESS", outcome.services.run_failures(promotion.run_id)
    print(f"approval -> promotion finished: {time.monotonic() - approved_at:.1f}s")
    release = catalog.current_release()
    assert release.batch_id == outcome.backfill_id and release.parent_id == outcome.previous_release_id
    assert {table: sorted(days) for table, days in catalog.snapshot(release).items()} == {
        table: DAYS for table in TABLES
    }
    assert [approver.user_id for approver in release.approvers] == [APPROVER]
    for table in TABLES:
        events = client.asset_materializations(production_key(table).path, partitions=DAYS)
        mine = [event for event in events if event.metadata.get("release_id") == release.release_id]
        assert sorted(event.partition for event in mine) == DAYS
        assert {event.metadata["approvers"] for event in mine} == {"bob"}
    _wait_for(
        "the thread to hear about production",
        lambda: [m for m in slack.thread(CHANNEL, request["ts"]) if m["text"].startswith("In production")],
    )

    rollback = client.launch_run(
        ROLLBACK_JOB,
        {"ops": {"rollback_op": {"config": {"reason": "end-to-end test", "requested_by": "ops"}}}},
    )
    assert client.wait_for_run(rollback, timeout=300).status == "SUCCESS"
    current = catalog.current_release()
    assert current.kind == "rollback" and current.rolled_back_to == outcome.previous_release_id
    assert catalog.snapshot(current) == catalog.snapshot(catalog.get_release(outcome.previous_release_id))
