"""End to end through the real Dagster webserver and daemon: an operator backfills every staged table, an
approver signs it off in Slack, the approval sensor promotes it, and the operator rolls it back.

The flow itself (the backfill, the faulty one beside it, the approval and promotion) is in
tests/operator_flow.py, shared with the browser test. The assertions read what Dagster recorded (runs,
step times, materializations, check evaluations, and the Postgres tables they are in), what Slack
received, and what the catalog says, not what the code is meant to do. The SQLite instance of `make dev`
is covered by tests/test_local_instance.py.

Slow by nature (real services, several backfill daemon iterations per backfill; the tests' daemon looks
every 5 s instead of Dagster's 30 s, see tests/dagster_services.py): deselect with `-m "not end_to_end"`.
"""

from __future__ import annotations

import re
from collections import Counter
from contextlib import closing
from datetime import date, timedelta

import pytest
from dagster import AssetCheckEvaluation, AssetKey, AssetRecordsFilter, DagsterEventType
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
from dagster_services import APPROVER, BACKFILL_TAG, CHANNEL, REQUESTER, RunSummary
from operator_flow import (
    DAGSTER_DB,
    DAYS,
    DAYS_PER_RUN,
    FAULTY_FIRST,
    FAULTY_LAST,
    TABLES,
    OperatorBackfill,
    Promotion,
    approval_requests,
    wait_for,
)
from postgres_server import PostgresServer

from backfills.assets.check_results import GATE_CHECK
from backfills.assets.factory import REQUESTER_TAG, production_key, staging_key
from backfills.assets.registry import feature_spec
from backfills.assets.staging import RAW_INPUT_CHECK
from backfills.checks.registry import check_names
from backfills.orchestration.jobs import ROLLBACK_JOB

pytestmark = pytest.mark.end_to_end


def _staged_tables(run: RunSummary) -> list[str]:
    return [key[-1] for key in run.asset_keys if AssetKey(list(key)) == staging_key(key[-1])]


def _step_key(table: str) -> str:
    # Dagster names an asset's op (and its step) after the asset key's path joined by "__".
    return "__".join(staging_key(table).path)


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
            # One gate result per partition of the range run, each tied to that partition's
            # materialization in this run.
            expected = sorted((GATE_CHECK, day) for day in run.partitions)
            assert sorted((item.check_name, item.partition) for item in mine) == expected, run.describe()
            assert {item.target_materialization_data.run_id for item in mine} == {run.run_id}
            failed = [f"{item.partition}: {item.description}" for item in mine if not item.passed]
            assert not failed, f"{table} in {run.describe()}: {failed}"
            assert all(item.blocking for item in mine), f"{table}: a non-blocking gate in {run.describe()}"

    # The asset's Checks tab (GraphQL) shows the same: every partition of the gate has a succeeded
    # execution of its run, none left SKIPPED (Dagster plans one execution per partition), each naming
    # every check of the table as passed.
    for table in TABLES:
        executions = outcome.services.client.asset_check_executions(staging_key(table).path, GATE_CHECK)
        ours = [item for item in executions if item.run_id in run_ids]
        assert sorted(item.partition for item in ours) == DAYS, f"{table}: {ours}"
        assert {item.status for item in ours} == {"SUCCEEDED"}, f"{table}: {ours}"
        assert all(item.passed for item in ours), table
        assert all(item.metadata["partition"] == item.partition for item in ours)
        checks = check_names(feature_spec(table))
        assert all(item.metadata["checks_passed"] == len(checks) for item in ours), table
        assert all(f"| {name} | passed |" in item.metadata["checks"] for item in ours for name in checks)


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
        (run.run_id, staging_key(table).to_string(), GATE_CHECK)
        for run in outcome.runs
        for table in _staged_tables(run)
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
    batch = outcome.batch_when_finished
    assert batch.requester == REQUESTER
    assert batch.state == "checked"  # nobody had decided yet
    assert batch.partitions_by_table() == {table: DAYS for table in sorted(TABLES)}
    run_ids = {run.run_id for run in outcome.runs}
    assert set(batch.runs) == run_ids
    for table in TABLES:
        for day in DAYS:
            record = batch.partition(table, day)
            assert record is not None and record.batch_id == outcome.backfill_id
            assert record.run_id in run_ids and record.row_count > 0
    assert not batch.blocking_failures()


def test_a_faulty_backfill_is_blocked_gets_a_notice_and_no_request(operator_backfill: OperatorBackfill):
    outcome = operator_backfill
    catalog = outcome.catalog
    batch = catalog.get_batch(outcome.faulty_backfill_id)
    assert batch.state == "blocked" and batch.tables == {}
    [failure] = batch.blocking_failures()
    assert failure.check == "raw_input_contract" and "amount" in failure.summary
    notice = wait_for(
        "the blocked notice",
        lambda: [m for m in outcome.slack.messages(CHANNEL) if outcome.faulty_backfill_id in m["text"]],
    )
    assert len(notice) == 1 and "is blocked" in notice[0]["text"] and not notice[0].get("metadata")
    assert not [m for m in approval_requests(outcome.slack) if outcome.faulty_backfill_id in m["text"]]
    assert all(release.batch_id != outcome.faulty_backfill_id for release in catalog.list_releases())

    # Dagster shows the same verdict on each partition of the blocked run: the failed contract with its
    # count per broken rule and the offending rows (36 negative amounts, all on the first day).
    client = outcome.services.client
    [faulty_run] = client.runs(backfill_id=outcome.faulty_backfill_id)
    executions = client.asset_check_executions(staging_key("customer_daily_txn").path, GATE_CHECK)
    failed = [item for item in executions if item.run_id == faulty_run.run_id]
    assert sorted(item.partition for item in failed) == [FAULTY_FIRST, FAULTY_LAST], executions
    for item in failed:
        assert (item.status, item.passed, item.severity) == ("FAILED", False, "ERROR"), item
        assert item.description.startswith(f"failed: {RAW_INPUT_CHECK} (") and "amount" in item.description
        assert item.metadata[f"{RAW_INPUT_CHECK}/amount/min/count"] == 36
        table = item.metadata["offending_rows"].splitlines()
        assert "amount" in table[0] and any(re.search(r"\| -\d", line) for line in table[2:]), table


def test_an_approval_in_slack_promotes_the_batch_to_production_with_its_approvers(
    operator_backfill: OperatorBackfill, promotion: Promotion
):
    outcome = operator_backfill
    client, slack, catalog = outcome.services.client, outcome.slack, outcome.catalog
    print(f"\nbackfill seen finished -> request posted: {promotion.request_seconds:.1f}s after the wait")
    assert REQUESTER in str(promotion.request["blocks"])
    assert promotion.requests_after_more_ticks == 1
    print(f"approval -> promotion finished: {promotion.approval_seconds:.1f}s")
    release = promotion.release
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
    wait_for(
        "the thread to hear about production",
        lambda: [
            m for m in slack.thread(CHANNEL, promotion.request["ts"]) if m["text"].startswith("In production")
        ],
    )


def test_a_rollback_launched_in_dagster_restores_the_previous_release(
    operator_backfill: OperatorBackfill, promotion: Promotion
):
    outcome = operator_backfill
    catalog = outcome.catalog
    rollback = outcome.services.client.launch_run(
        ROLLBACK_JOB,
        {
            "ops": {
                "rollback_op": {
                    "config": {"to_release": "previous", "reason": "end-to-end test", "requested_by": "ops"}
                }
            }
        },
    )
    assert outcome.services.client.wait_for_run(rollback, timeout=300).status == "SUCCESS"
    current = catalog.current_release()
    assert current.kind == "rollback" and current.rolled_back_to == outcome.previous_release_id
    assert current.parent_id == promotion.release.release_id
    assert catalog.snapshot(current) == catalog.snapshot(catalog.get_release(outcome.previous_release_id))
