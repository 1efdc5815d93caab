"""The operator's flow through the real Dagster services, shared by the end-to-end and browser tests (a
pytest plugin, see conftest.py): one backfill of every staged table launched as the UI does, a faulty one
beside it, and then its approval in Slack and the promotion the approval sensor launches.

Ten days of all four `staging/*` tables are launched as the UI does (GraphQL `launchPartitionBackfill`),
with at most five days per run, so every table takes two range runs and the daemon has to order them by
the window dependencies. At the same time a second backfill reads a landing day with corrupt amounts. The
runs use one shared Spark Connect server; the approvals channel is the local Slack Web API server. The
Dagster instance keeps runs, event log and sensor ticks in PostgreSQL, as a shared deployment does (README,
"Beyond one machine"): a local server from Debian's `postgresql`, started by the tests (skipped, saying
what is missing, without it).

Both fixtures are session-scoped, so the slow part (about four minutes) runs once for every module that
reads it; each records what the tests assert about the moment it passed (the batch before the approval,
the requests posted before it), since a later module may move the flow on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
from conftest import make_lake
from dagster_services import (
    APPROVER,
    CHANNEL,
    REQUESTER,
    DagsterServices,
    GraphQLError,
    RunSummary,
    WaitTimeout,
    governed_services,
    iter_days,
)
from postgres_server import PostgresServer
from slack_api import FakeSlack

from backfills.assets.factory import BATCH_TAG, REQUESTER_TAG, staging_key
from backfills.assets.generator import Fault, write_landing_zone
from backfills.assets.registry import FEATURES
from backfills.orchestration.jobs import PROMOTE_JOB
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import BatchManifest, Release
from backfills.resources.connect_server import ConnectServer, running_server
from backfills.resources.lifecycle import BatchState
from backfills.resources.storage import open_store

FIRST_DAY = "2025-01-01"  # also BACKFILLS_PARTITIONS_START: the 7d and 30d windows start empty
LAST_DAY = "2025-01-10"
# Two more landing days than backfilled (a day's features also read the next day's file), then the days
# of the faulty backfill: its first day's file has negative amounts.
LANDED_DAYS = 15
FAULTY_FIRST, FAULTY_LAST = "2025-01-13", "2025-01-14"
DAYS_PER_RUN = 5  # BACKFILLS_MAX_PARTITIONS_PER_RUN: two range runs per table
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
    batch_when_finished: BatchManifest  # the batch as the finished backfill left it, before any decision

    @property
    def catalog(self) -> ReleaseCatalog:
        return ReleaseCatalog(open_store(str(self.storage_root)))


@dataclass
class Promotion:
    """The approval of the operator's batch in Slack and the promotion run the sensor launched for it."""

    request: dict  # the approval request message
    requests_after_more_ticks: int  # requests for the batch, a few sensor ticks after the first one
    request_seconds: float  # backfill seen finished -> request seen
    release: Release  # production after the promotion
    run: RunSummary
    approval_seconds: float  # reaction -> promotion run finished


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
    lake.catalog.move_batch("load", BatchState.PROMOTED)
    return release.release_id


def wait_for(what: str, found, timeout: float = 120.0, poll: float = 1.0):
    """The first truthy result of `found()`, polled until `timeout` (then the test fails saying what)."""
    deadline = time.monotonic() + timeout
    while (result := found()) in (None, [], False):
        assert time.monotonic() < deadline, f"waited {timeout:.0f}s for {what}"
        time.sleep(poll)
    return result


def approval_requests(slack: FakeSlack) -> list[dict]:
    """Approval requests carry metadata; notices do not."""
    return [message for message in slack.messages(CHANNEL) if message.get("metadata")]


# Session fixtures whose processes stop right after the last test that uses them rather than at the end of
# the session: an idle daemon still ticks (backfills, sensors, run queue) and would take CPU from every
# later module. Closed in the order listed (the services before the Spark Connect server they use).
STOP_AFTER_LAST_USER = ("operator_backfill", "connect_server")
_LAST_USER_OF = pytest.StashKey[list[str]]()
_RUNNING: dict[str, ExitStack] = {}


@pytest.hookimpl(trylast=True)  # after the order of the run is set and deselected tests are gone
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for name in STOP_AFTER_LAST_USER:
        users = [item for item in items if name in getattr(item, "fixturenames", ())]
        if users:
            users[-1].stash.setdefault(_LAST_USER_OF, []).append(name)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    result = yield
    for name in item.stash.get(_LAST_USER_OF, []):
        stack = _RUNNING.pop(name, None)
        if stack is not None:
            stack.close()
    return result


@pytest.fixture(scope="session")
def connect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConnectServer]:
    """One Spark Connect server for the governed services of the session (the operator's flow, and the
    launches of tests/test_launch_from_dialog.py): its JVM starts once, and the later deployment's runs
    find it warm. Stopped after the last test that uses it."""
    with ExitStack() as stack:
        _RUNNING["connect_server"] = stack
        yield stack.enter_context(
            running_server(port=0, driver_memory="1g", state_dir=tmp_path_factory.mktemp("spark"))
        )


@pytest.fixture(scope="session")
def operator_backfill(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    spark,
    connect_server: ConnectServer,
) -> Iterator[OperatorBackfill]:
    """One backfill of every staged table for FIRST_DAY..LAST_DAY, launched like the UI does, and a faulty
    one beside it, on a Postgres-backed instance; the services stay up for the tests that read what they
    left behind, and stop after the last of them."""
    base = tmp_path_factory.mktemp("end_to_end")
    storage_root = base / "storage"
    previous_release_id = _previous_load(storage_root, spark)
    postgres_server.create_database(DAGSTER_DB)
    with ExitStack() as stack:
        _RUNNING["operator_backfill"] = stack
        services, slack = stack.enter_context(
            governed_services(
                base,
                storage_root,
                sensor_interval_seconds=SENSOR_INTERVAL_SECONDS,
                partitions_start=FIRST_DAY,
                max_partitions_per_run=DAYS_PER_RUN,
                connect=connect_server,
                instance_config={"storage": postgres_server.dagster_storage(DAGSTER_DB)},
            )
        )
        launched_at = time.time()
        backfill_id = services.client.launch_partition_backfill(
            [staging_key(table).path for table in TABLES], FIRST_DAY, LAST_DAY, {REQUESTER_TAG: REQUESTER}
        )
        daily, tags = [staging_key("customer_daily_txn").path], {REQUESTER_TAG: REQUESTER}
        faulty_id = services.client.launch_partition_backfill(daily, FAULTY_FIRST, FAULTY_LAST, tags)
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
            batch_when_finished=ReleaseCatalog(open_store(str(storage_root))).get_batch(backfill_id),
        )
        print(f"\n{_timings(outcome, services.startup_seconds)}")
        if status != "COMPLETED_SUCCESS":
            report = _failure_report(services, backfill_id, status, outcome.runs)
            pytest.fail(f"{report}\n{postgres_server.log_tail()}", pytrace=False)
        services.client.wait_for_backfill(faulty_id, BACKFILL_TIMEOUT_SECONDS)
        yield outcome


@pytest.fixture(scope="session")
def promotion(operator_backfill: OperatorBackfill) -> Promotion:
    """The approver reacts to the batch's approval request in Slack; the sensor launches the promotion."""
    outcome = operator_backfill
    client, slack = outcome.services.client, outcome.slack
    waited_from = time.monotonic()
    [request] = wait_for(
        "the approval request",
        lambda: [m for m in approval_requests(slack) if outcome.backfill_id in m["text"]],
    )
    request_seconds = time.monotonic() - waited_from
    time.sleep(3 * SENSOR_INTERVAL_SECONDS)  # more ticks: still one request
    requests = [m for m in approval_requests(slack) if outcome.backfill_id in m["text"]]

    slack.react(CHANNEL, request["ts"], APPROVER, "white_check_mark")
    approved_at = time.monotonic()
    promotions = wait_for(
        "the promotion run", lambda: client.runs(tags={BATCH_TAG: outcome.backfill_id}, job_name=PROMOTE_JOB)
    )
    assert len(promotions) == 1, [run.describe() for run in promotions]
    run = client.wait_for_run(promotions[0].run_id, timeout=300)
    assert run.status == "SUCCESS", outcome.services.run_failures(run.run_id)
    release = outcome.catalog.current_release()
    assert release is not None
    return Promotion(
        request=request,
        requests_after_more_ticks=len(requests),
        request_seconds=request_seconds,
        release=release,
        run=run,
        approval_seconds=time.monotonic() - approved_at,
    )


PHASE_REPORTS = pytest.StashKey[dict]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the test item, so a fixture's teardown knows whether the test failed
    (the browser test saves a screenshot then)."""
    report = yield
    item.stash.setdefault(PHASE_REPORTS, {})[report.when] = report
    return report


def failed(item: pytest.Item) -> bool:
    """Whether the test's setup or call failed (for use in its fixtures' teardown)."""
    return any(report.failed for report in item.stash.get(PHASE_REPORTS, {}).values())
