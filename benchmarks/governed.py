"""Governed backfills through the real Dagster webserver and daemon (the tests' harness): launch all four
staged tables as the UI does, wait, and record where the time went, the peak memory of every process, and
the latency of the approval request and of the promotion through a local Slack Web API server."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, TypeVar

TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))  # the harness of the end-to-end tests, reused rather than copied

from dagster_services import DagsterServices, RunSummary  # noqa: E402
from memory import MemorySample, MemorySampler  # noqa: E402
from slack_api import FakeSlack  # noqa: E402
from spark_setup import SparkSettings  # noqa: E402

from backfills.assets.factory import BATCH_TAG, REQUESTER_TAG, staging_key  # noqa: E402
from backfills.assets.registry import dependency_order  # noqa: E402
from backfills.orchestration.jobs import PROMOTE_JOB, ROLLBACK_JOB  # noqa: E402
from backfills.resources.catalog import ReleaseCatalog  # noqa: E402
from backfills.resources.connect_server import running_server  # noqa: E402
from backfills.resources.storage import LocalObjectStore  # noqa: E402

TABLES = [spec.name for spec in dependency_order()]
REQUESTER, APPROVER = "U0ALICE", "U0BOB"  # Slack user IDs: the requester may not approve their own batch
CHANNEL = "C0APPROVALS"
APPROVE_REACTION = "white_check_mark"
# Waiting for the request and the promotion: a few sensor ticks, plus the promotion's own work (it re-reads
# every staged file) on a loaded machine.
APPROVAL_TIMEOUT_SECONDS = 1800.0

T = TypeVar("T")


@dataclass(frozen=True)
class GovernedSetup:
    """One way of running the same backfill: days per run, where Spark runs, how often the sensor looks."""

    key: str
    title: str
    max_partitions_per_run: int
    shared_server: bool
    days: int  # backfilled from the first partition
    sensor_interval: int


@dataclass(frozen=True)
class RunFacts:
    """One run of the backfill as Dagster recorded it (epoch seconds)."""

    run_id: str
    status: str
    tables: list[str]
    days: int
    created: float
    started: float | None
    ended: float | None
    worker_start: float | None  # RUN_STARTING -> RUN_START: the run worker's process coming up
    steps: dict[
        str, float
    ]  # table -> step seconds (its Spark work, write, checks; the first also Spark start)

    @property
    def duration(self) -> float | None:
        return None if self.started is None or self.ended is None else self.ended - self.started


@dataclass(frozen=True)
class JobRun:
    """A promotion or rollback run: when it was asked for, created, started and finished (epoch seconds)."""

    asked: float
    created: float
    started: float | None
    ended: float | None
    worker_start: float | None
    status: str


@dataclass(frozen=True)
class ApprovalFacts:
    sensor_interval: int
    requested: float  # the request message's Slack ts
    approved: float  # when the approver's reaction was added
    promotion: JobRun
    rollback: JobRun | None


@dataclass
class GovernedRun:
    setup: GovernedSetup
    status: str
    batch_id: str
    storage_root: Path
    services_start: float
    server_start: float | None
    launched: float
    backfill_ended: float  # the backfill's end as the daemon recorded it
    runs: list[RunFacts]
    backfill_peak: MemorySample | None
    overall_peak: MemorySample | None
    load: tuple[float, float]
    hashes: dict[str, dict[str, str]]  # table -> day -> content hash of the staged batch
    approval: ApprovalFacts | None = None
    failures: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "COMPLETED_SUCCESS"

    @property
    def seconds(self) -> float:
        """Launch to the backfill finished (as recorded by the daemon)."""
        return self.backfill_ended - self.launched

    @property
    def first_created(self) -> float:
        return min(run.created for run in self.runs)

    @property
    def first_started(self) -> float:
        return min(run.started for run in self.runs if run.started is not None)

    @property
    def last_ended(self) -> float:
        return max(run.ended for run in self.runs if run.ended is not None)


def _wait(what: str, found: Callable[[], T | None], timeout: float, alive: Callable[[], None]) -> T:
    deadline = time.monotonic() + timeout
    while True:
        alive()
        result = found()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f}s for {what}")
        time.sleep(0.25)


def _timeline(services: DagsterServices, run_id: str) -> dict[str, float]:
    times: dict[str, float] = {}
    for event in services.run_timeline(run_id):
        times.setdefault(event.event_type, event.timestamp)
    return times


def _worker_start(times: dict[str, float]) -> float | None:
    if "RUN_STARTING" in times and "RUN_START" in times:
        return times["RUN_START"] - times["RUN_STARTING"]
    return None


def _run_facts(services: DagsterServices, run: RunSummary) -> RunFacts:
    steps = {
        str(step.step_key).split("__")[-1]: step.end_time - step.start_time
        for step in run.steps
        if step.start_time is not None and step.end_time is not None
    }
    return RunFacts(
        run_id=run.run_id,
        status=run.status,
        tables=[key[-1] for key in run.asset_keys],
        days=len(run.partitions),
        created=run.creation_time,
        started=run.start_time,
        ended=run.end_time,
        worker_start=_worker_start(_timeline(services, run.run_id)),
        steps=steps,
    )


def _job_run(services: DagsterServices, run: RunSummary, asked: float) -> JobRun:
    return JobRun(
        asked=asked,
        created=run.creation_time,
        started=run.start_time,
        ended=run.end_time,
        worker_start=_worker_start(_timeline(services, run.run_id)),
        status=run.status,
    )


def _approve_and_promote(
    services: DagsterServices, slack: FakeSlack, batch_id: str, sensor_interval: int
) -> ApprovalFacts:
    """Wait for the sensor's request, approve it with a reaction, wait for the promotion run it launches,
    then roll back through the rollback job."""
    client, alive = services.client, services.check_alive

    def request() -> dict[str, Any] | None:
        posted = [m for m in slack.messages(CHANNEL) if m.get("metadata") and batch_id in m["text"]]
        return posted[0] if posted else None

    message = _wait("the approval request", request, APPROVAL_TIMEOUT_SECONDS, alive)
    slack.react(CHANNEL, message["ts"], APPROVER, APPROVE_REACTION)
    approved = time.time()
    [promotion] = _wait(
        "the promotion run",
        lambda: client.runs(tags={BATCH_TAG: batch_id}, job_name=PROMOTE_JOB),
        APPROVAL_TIMEOUT_SECONDS,
        alive,
    )
    promoted = client.wait_for_run(promotion.run_id, timeout=APPROVAL_TIMEOUT_SECONDS)
    rollback = None
    if promoted.status == "SUCCESS":
        asked = time.time()
        run_id = client.launch_run(
            ROLLBACK_JOB,
            {
                "ops": {
                    "rollback_op": {
                        "config": {
                            "to_release": "previous",
                            "reason": "benchmark",
                            "requested_by": "benchmark",
                        }
                    }
                }
            },
        )
        rollback = _job_run(services, client.wait_for_run(run_id, timeout=APPROVAL_TIMEOUT_SECONDS), asked)
    return ApprovalFacts(
        sensor_interval=sensor_interval,
        requested=float(message["ts"]),
        approved=approved,
        promotion=_job_run(services, promoted, approved),
        rollback=rollback,
    )


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link every file of `source` into `target` (the landing zone, read only, costs no copy)."""
    for path in source.rglob("*"):
        if path.is_file():
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, destination)


def _batch_hashes(storage_root: Path, batch_id: str) -> dict[str, dict[str, str]]:
    batch = ReleaseCatalog(LocalObjectStore(storage_root)).get_batch(batch_id)
    return {
        table: {day: record.content_hash for day, record in sorted(records.items())}
        for table, records in batch.tables.items()
    }


def measure_governed(
    setup: GovernedSetup,
    *,
    start: date,
    landing: Path,
    folder: Path,
    spark: SparkSettings,
    timeout: float,
    approve: bool = True,
) -> GovernedRun:
    """One backfill of every staged table over `setup.days` days, through freshly started services."""
    storage_root = folder / "storage"
    _link_tree(landing, storage_root)
    first, last = start.isoformat(), (start + timedelta(days=setup.days - 1)).isoformat()
    load_before = os.getloadavg()[0]
    env = {
        "BACKFILLS_SPARK_MASTER": spark.master,
        "BACKFILLS_SPARK_DRIVER_MEMORY": spark.driver_memory,
        "BACKFILLS_SPARK_SHUFFLE_PARTITIONS": str(spark.shuffle_partitions),
        "BACKFILLS_APPROVERS": APPROVER,
        "BACKFILLS_SLACK_CHANNEL": CHANNEL,
        "BACKFILLS_SENSOR_INTERVAL_SECONDS": str(setup.sensor_interval),
    }
    with ExitStack() as stack:
        slack = stack.enter_context(FakeSlack())
        slack.add_channel(CHANNEL, "feature-approvals")
        slack.add_user(REQUESTER, "alice")
        slack.add_user(APPROVER, "bob")
        env |= {"SLACK_BOT_TOKEN": slack.token, "BACKFILLS_SLACK_API_URL": slack.base_url}
        server_start, server_pids = None, []
        if setup.shared_server:
            began = time.monotonic()
            server = stack.enter_context(
                running_server(
                    port=0,
                    master=spark.master,
                    driver_memory=spark.driver_memory,
                    shuffle_partitions=spark.shuffle_partitions,
                    state_dir=folder / "spark-connect",
                )
            )
            server_start = time.monotonic() - began
            server_pids = [server.pid]
            env["BACKFILLS_SPARK_REMOTE"] = server.url
        # Everything this process started (webserver, daemon, code servers, run workers, their JVMs) and
        # the Connect server (a daemon of its own), but not this process itself.
        sampler = stack.enter_context(
            MemorySampler(lambda: [os.getpid(), *server_pids], exclude=[os.getpid()])
        )
        services = stack.enter_context(
            DagsterServices(
                folder / "dagster_home",
                storage_root,
                partitions_start=first,
                max_partitions_per_run=setup.max_partitions_per_run,
                env=env,
                startup_timeout=600,
            )
        )
        launched = time.time()
        batch_id = services.client.launch_partition_backfill(
            [staging_key(table).path for table in TABLES], first, last, {REQUESTER_TAG: REQUESTER}
        )
        status = services.client.wait_for_backfill(batch_id, timeout)
        seen = time.time()
        ended = services.client.backfill(batch_id).ended_at or seen
        runs = services.client.runs(backfill_id=batch_id)
        failures = tuple(
            f"{run.describe()}: {'; '.join(services.run_failures(run.run_id))[:600]}"
            for run in runs
            if run.status != "SUCCESS"
        )
        result = GovernedRun(
            setup=setup,
            status=status,
            batch_id=batch_id,
            storage_root=storage_root,
            services_start=services.startup_seconds or 0.0,
            server_start=server_start,
            launched=launched,
            backfill_ended=ended,
            runs=[_run_facts(services, run) for run in runs],
            backfill_peak=None,
            overall_peak=None,
            load=(load_before, load_before),
            hashes=_batch_hashes(storage_root, batch_id) if status == "COMPLETED_SUCCESS" else {},
            failures=failures,
        )
        if result.ok and approve:
            result.approval = _approve_and_promote(services, slack, batch_id, setup.sensor_interval)
    # The services, the server and the sampler have stopped: every process is accounted for.
    result.backfill_peak = sampler.peak(since=launched, until=ended)
    result.overall_peak = sampler.peak()
    result.load = (load_before, os.getloadavg()[0])
    return result
