"""The real Dagster services for end-to-end tests: a webserver and a daemon on a temporary instance.

`DagsterServices` starts `dagster-webserver` and `dagster-daemon run` on the project's workspace.yaml, with
their own DAGSTER_HOME and storage root, waits until the `backfills` code location is loaded and the
daemons beat, and stops every process it started on exit (run workers and Spark JVMs included).
`WebserverClient` drives it the way the UI does, through GraphQL; `DagsterServices.instance` reads the
same instance directly for event-log queries.

    with DagsterServices(tmp_path / "dagster", tmp_path / "root") as services:
        backfill_id = services.client.launch_partition_backfill([["staging", "t"]], "2025-01-01", ...)
        services.client.wait_for_backfill(backfill_id, timeout=300)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
import yaml
from dagster import DagsterEventType, DagsterInstance
from dagster._utils.error import SerializableErrorInfo
from slack_api import FakeSlack

from backfills.resources.connect_server import ConnectServer, running_server

REPO_DIR = Path(__file__).resolve().parent.parent
WORKSPACE_FILE = REPO_DIR / "workspace.yaml"
INSTANCE_TEMPLATE = REPO_DIR / "orchestration" / "dagster.yaml"
VENV_BIN = REPO_DIR / ".venv" / "bin"
LOCATION_NAME = "backfills"

BACKFILL_TAG = "dagster/backfill"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
PARTITION_TAG = "dagster/partition"

# What `BulkActionStatus` and `RunStatus` call finished, as the GraphQL API spells them.
BACKFILL_FINISHED = frozenset({"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"})
RUN_FINISHED = frozenset({"SUCCESS", "FAILURE", "CANCELED"})

# The environment a test does not choose is cleared, so a developer's shell never leaks into the services.
_INHERITED_SETTINGS_PREFIXES = ("BACKFILLS_",)
_INHERITED_SETTINGS = ("DAGSTER_HOME", "SLACK_BOT_TOKEN")
_LIFECYCLE = (
    DagsterEventType.RUN_ENQUEUED,
    DagsterEventType.RUN_DEQUEUED,
    DagsterEventType.RUN_STARTING,
    DagsterEventType.RUN_START,
    DagsterEventType.STEP_START,
    DagsterEventType.STEP_SUCCESS,
    DagsterEventType.STEP_FAILURE,
    DagsterEventType.RUN_SUCCESS,
    DagsterEventType.RUN_FAILURE,
    DagsterEventType.RUN_CANCELED,
)
# The approvals channel of the governed services (governed_services): who asks, who approves, where.
REQUESTER, APPROVER = "U0ALICE", "U0BOB"  # Slack user IDs: the run tag names the requester by ID
CHANNEL = "C0APPROVALS"
# How often the governed services' backfill daemon looks at backfills (Dagster's is 30 s): the tests'
# backfills take several daemon iterations each, and waiting 30 s for every one was most of their time.
BACKFILL_DAEMON_INTERVAL_SECONDS = 5
_POLL_SECONDS = 1.0
_LOG_TAIL_LINES = 40


class ServicesError(RuntimeError):
    """The webserver or the daemon failed to start, died, or did not answer in time."""


class GraphQLError(RuntimeError):
    """The GraphQL API answered with an error (transport, schema or an error member of a result union)."""


class WaitTimeout(TimeoutError):
    """A backfill or run did not finish in time; the message says where it was."""


# GraphQL documents. Error fragments are per union: a spread on a type outside the union is invalid.

_ERROR = "__typename ... on Error { message } ... on PythonError { stack }"
_LAUNCH_ERRORS = f"""
    {_ERROR}
    ... on RunConfigValidationInvalid {{ errors {{ message }} }}
    ... on InvalidStepError {{ invalidStepKey }}
    ... on InvalidOutputError {{ stepKey invalidOutputName }}
"""
_METADATA = """
    label __typename
    ... on TextMetadataEntry { text }
    ... on IntMetadataEntry { intRepr }
    ... on FloatMetadataEntry { floatRepr }
    ... on BoolMetadataEntry { boolValue }
    ... on JsonMetadataEntry { jsonString }
    ... on PathMetadataEntry { path }
    ... on UrlMetadataEntry { url }
    ... on MarkdownMetadataEntry { mdStr }
    ... on TimestampMetadataEntry { timestamp }
"""
_RUN_FIELDS = """
    runId jobName status creationTime startTime endTime
    tags { key value }
    assetSelection { path }
    stepStats { stepKey status startTime endTime }
"""

WORKSPACE_QUERY = f"""
query Workspace {{
  workspaceOrError {{
    {_ERROR}
    ... on Workspace {{
      locationEntries {{
        name loadStatus
        locationOrLoadError {{ {_ERROR} ... on RepositoryLocation {{ repositories {{ name }} }} }}
      }}
    }}
  }}
}}
"""

DAEMON_HEALTH_QUERY = """
query DaemonHealth {
  instance { daemonHealth { allDaemonStatuses {
    daemonType required healthy lastHeartbeatTime lastHeartbeatErrors { message }
  } } }
}
"""

LAUNCH_BACKFILL_MUTATION = f"""
mutation LaunchBackfill($params: LaunchBackfillParams!) {{
  launchPartitionBackfill(backfillParams: $params) {{
    {_LAUNCH_ERRORS}
    ... on LaunchBackfillSuccess {{ backfillId }}
  }}
}}
"""

BACKFILL_QUERY = f"""
query Backfill($backfillId: String!) {{
  partitionBackfillOrError(backfillId: $backfillId) {{
    {_ERROR}
    ... on PartitionBackfill {{
      id status timestamp endTimestamp numPartitions
      tags {{ key value }}
      assetSelection {{ path }}
      error {{ message stack }}
    }}
  }}
}}
"""

RUNS_QUERY = f"""
query Runs($filter: RunsFilter) {{
  runsOrError(filter: $filter) {{
    {_ERROR}
    ... on Runs {{ results {{ {_RUN_FIELDS} }} }}
  }}
}}
"""

RUN_QUERY = f"""
query Run($runId: ID!) {{
  runOrError(runId: $runId) {{
    {_ERROR}
    ... on Run {{ {_RUN_FIELDS} }}
  }}
}}
"""

LAUNCH_RUN_MUTATION = f"""
mutation LaunchRun($params: ExecutionParams!) {{
  launchRun(executionParams: $params) {{
    {_LAUNCH_ERRORS}
    ... on LaunchRunSuccess {{ run {{ runId }} }}
  }}
}}
"""

MATERIALIZATIONS_QUERY = f"""
query Materializations($assetKey: AssetKeyInput!, $partitions: [String!], $limit: Int) {{
  assetOrError(assetKey: $assetKey) {{
    __typename ... on Error {{ message }}
    ... on Asset {{
      assetMaterializations(partitions: $partitions, limit: $limit) {{
        runId partition timestamp
        metadataEntries {{ {_METADATA} }}
      }}
    }}
  }}
}}
"""

CHECK_EXECUTIONS_QUERY = f"""
query CheckExecutions($assetKey: AssetKeyInput!, $checkName: String!, $limit: Int!) {{
  assetCheckExecutions(assetKey: $assetKey, checkName: $checkName, limit: $limit) {{
    runId status timestamp partition
    evaluation {{
      success severity description partition
      metadataEntries {{ {_METADATA} }}
    }}
  }}
}}
"""

SENSOR_QUERY = f"""
query Sensor($selector: SensorSelector!, $limit: Int) {{
  sensorOrError(sensorSelector: $selector) {{
    {_ERROR}
    ... on Sensor {{
      id name
      sensorState {{
        status
        ticks(limit: $limit) {{
          tickId status timestamp endTimestamp runIds runKeys skipReason error {{ message }}
        }}
      }}
    }}
  }}
}}
"""

START_SENSOR_MUTATION = f"""
mutation StartSensor($selector: SensorSelector!) {{
  startSensor(sensorSelector: $selector) {{
    {_ERROR}
    ... on Sensor {{ sensorState {{ status }} }}
  }}
}}
"""

STOP_SENSOR_MUTATION = f"""
mutation StopSensor($id: String!) {{
  stopSensor(id: $id) {{
    {_ERROR}
    ... on StopSensorMutationResult {{ instigationState {{ status }} }}
  }}
}}
"""

ALL_DOCUMENTS = (
    WORKSPACE_QUERY,
    DAEMON_HEALTH_QUERY,
    LAUNCH_BACKFILL_MUTATION,
    BACKFILL_QUERY,
    RUNS_QUERY,
    RUN_QUERY,
    LAUNCH_RUN_MUTATION,
    MATERIALIZATIONS_QUERY,
    CHECK_EXECUTIONS_QUERY,
    SENSOR_QUERY,
    START_SENSOR_MUTATION,
    STOP_SENSOR_MUTATION,
)


# What the client returns: plain records in the words of the UI.


@dataclass(frozen=True)
class StepSummary:
    step_key: str
    status: str | None
    start_time: float | None
    end_time: float | None


@dataclass(frozen=True)
class RunSummary:
    """One run as the Runs page shows it, with the partition range it covered (range or single-day run)."""

    run_id: str
    job_name: str
    status: str
    tags: dict[str, str]
    asset_keys: list[tuple[str, ...]]
    creation_time: float
    start_time: float | None
    end_time: float | None
    steps: list[StepSummary] = field(default_factory=list)

    @property
    def partition_range(self) -> tuple[str, str] | None:
        if RANGE_START_TAG in self.tags:
            return self.tags[RANGE_START_TAG], self.tags[RANGE_END_TAG]
        if PARTITION_TAG in self.tags:
            return self.tags[PARTITION_TAG], self.tags[PARTITION_TAG]
        return None

    @property
    def partitions(self) -> list[str]:
        """Every day of the run's range (daily partitions)."""
        span = self.partition_range
        if span is None:
            return []
        return list(iter_days(*span))

    @property
    def duration(self) -> float | None:
        if self.start_time is None or self.end_time is None:
            return None
        return self.end_time - self.start_time

    @property
    def queued_for(self) -> float | None:
        """Seconds from the run's creation (queued) to its start (the run worker began)."""
        return None if self.start_time is None else self.start_time - self.creation_time

    def step(self, step_key: str) -> StepSummary | None:
        return next((step for step in self.steps if step.step_key == step_key), None)

    def describe(self) -> str:
        span = self.partition_range
        keys = ", ".join("/".join(key) for key in self.asset_keys) or self.job_name
        days = f"{span[0]}..{span[1]}" if span else "-"
        took = f"{self.duration:.1f}s" if self.duration is not None else "-"
        return f"{self.run_id[:8]} {self.status:<9} {days} [{keys}] {took}"


@dataclass(frozen=True)
class RunEvent:
    """One lifecycle event of a run (RUN_ENQUEUED, RUN_START, STEP_SUCCESS, ...) and when it happened."""

    timestamp: float
    event_type: str
    step_key: str | None


@dataclass(frozen=True)
class BackfillSummary:
    backfill_id: str
    status: str
    launched_at: float  # the backfill's own timestamp (when it was created)
    ended_at: float | None
    partition_count: int | None
    tags: dict[str, str]
    error: str | None


@dataclass(frozen=True)
class MaterializationSummary:
    run_id: str
    partition: str | None
    timestamp: float  # seconds
    metadata: dict[str, Any]


@dataclass(frozen=True)
class CheckExecutionSummary:
    run_id: str
    status: str  # SUCCEEDED, FAILED, EXECUTION_FAILED, IN_PROGRESS, SKIPPED
    timestamp: float
    partition: str | None
    passed: bool | None
    severity: str | None
    description: str | None
    metadata: dict[str, Any]


@dataclass(frozen=True)
class SensorTick:
    tick_id: str
    status: str  # STARTED, SKIPPED, SUCCESS, FAILURE
    timestamp: float
    end_timestamp: float | None
    run_ids: list[str]
    run_keys: list[str]
    skip_reason: str | None
    error: str | None


def _metadata(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Metadata entries as label -> Python value (JSON parsed, numbers as numbers)."""
    values: dict[str, Any] = {}
    for entry in entries:
        kind = entry["__typename"]
        if kind == "JsonMetadataEntry":
            value: Any = json.loads(entry["jsonString"])
        elif kind == "IntMetadataEntry":
            value = int(entry["intRepr"])
        elif kind == "FloatMetadataEntry":
            value = float(entry["floatRepr"])
        else:
            present = [v for k, v in entry.items() if k not in ("label", "__typename")]
            value = present[0] if present else kind  # table schemas and the like: their kind only
        values[entry["label"]] = value
    return values


def _run(data: Mapping[str, Any]) -> RunSummary:
    return RunSummary(
        run_id=data["runId"],
        job_name=data["jobName"],
        status=data["status"],
        tags={tag["key"]: tag["value"] for tag in data["tags"]},
        asset_keys=[tuple(key["path"]) for key in data.get("assetSelection") or []],
        creation_time=data["creationTime"],
        start_time=data["startTime"],
        end_time=data["endTime"],
        steps=[
            StepSummary(step["stepKey"], step["status"], step["startTime"], step["endTime"])
            for step in data.get("stepStats") or []
        ],
    )


def _error_text(result: Mapping[str, Any]) -> str:
    parts = [result.get("__typename", "?")]
    if result.get("message"):
        parts.append(result["message"].strip())
    for item in result.get("errors") or []:
        parts.append(item["message"])
    if result.get("invalidStepKey"):
        parts.append(f"invalid step {result['invalidStepKey']}")
    if result.get("stack"):
        parts.append("".join(result["stack"][-6:]).rstrip())
    return ": ".join(parts[:2]) + ("\n" + "\n".join(parts[2:]) if len(parts) > 2 else "")


def _expect(result: Mapping[str, Any], typename: str, what: str) -> Mapping[str, Any]:
    """The result if it is the success member of its union, else a GraphQLError naming the error."""
    if result.get("__typename") != typename:
        raise GraphQLError(f"{what} failed: {_error_text(result)}")
    return result


def _asset_key_input(asset_key: Sequence[str]) -> dict[str, list[str]]:
    return {"path": list(asset_key)}


class WebserverClient:
    """A small GraphQL client for the webserver, with the operations the UI uses.

    `health_check` runs before each poll of the wait helpers, so a dead daemon fails a wait at once
    instead of at its timeout.
    """

    def __init__(
        self,
        url: str,
        *,
        location_name: str = LOCATION_NAME,
        repository_name: str = "__repository__",
        health_check: Callable[[], None] | None = None,
        request_timeout: float = 60.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.location_name = location_name
        self.repository_name = repository_name
        self.health_check = health_check or (lambda: None)
        self.request_timeout = request_timeout
        self._http = requests.Session()

    # Transport

    def execute(self, document: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """POST one GraphQL document; its `data`, or GraphQLError with the server's messages."""
        response = self._http.post(
            f"{self.url}/graphql",
            json={"query": document, "variables": dict(variables or {})},
            timeout=self.request_timeout,
        )
        try:
            body = response.json()
        except ValueError:
            raise GraphQLError(
                f"HTTP {response.status_code} from {self.url}/graphql: {response.text[:500]}"
            ) from None
        if body.get("errors"):
            messages = "; ".join(error.get("message", str(error)) for error in body["errors"])
            raise GraphQLError(f"GraphQL error (HTTP {response.status_code}): {messages}")
        # A resolver that raised answers HTTP 500 with a PythonError member in `data`: let the caller's
        # union check name it rather than dumping the body here.
        if body.get("data") is None:
            raise GraphQLError(f"HTTP {response.status_code} from {self.url}/graphql: {response.text[:500]}")
        return body["data"]

    def _repository(self) -> dict[str, str]:
        return {"repositoryLocationName": self.location_name, "repositoryName": self.repository_name}

    # Workspace and daemon

    def code_locations(self) -> dict[str, Mapping[str, Any]]:
        """Location name -> its workspace entry (`loadStatus`, `locationOrLoadError`)."""
        result = self.execute(WORKSPACE_QUERY)["workspaceOrError"]
        _expect(result, "Workspace", "reading the workspace")
        return {entry["name"]: entry for entry in result["locationEntries"]}

    def daemon_statuses(self) -> list[Mapping[str, Any]]:
        return self.execute(DAEMON_HEALTH_QUERY)["instance"]["daemonHealth"]["allDaemonStatuses"]

    # Backfills

    def launch_partition_backfill(
        self,
        asset_keys: Sequence[Sequence[str]],
        start: str,
        end: str,
        tags: Mapping[str, str] | None = None,
        *,
        title: str | None = None,
    ) -> str:
        """Launch a backfill of exactly `start..end` of every given asset; returns the backfill ID.

        Each asset gets its own partition range (`partitionsByAssets`), so Dagster targets those days
        only. With `assetSelection` + `partitionNames` it would also target every downstream partition
        whose window includes the days, which cannot succeed on an empty production.
        """
        params: dict[str, Any] = {
            "partitionsByAssets": [
                {"assetKey": _asset_key_input(key), "partitions": {"ranges": [{"start": start, "end": end}]}}
                for key in asset_keys
            ],
            "tags": [{"key": key, "value": value} for key, value in (tags or {}).items()],
        }
        if title:
            params["title"] = title
        result = self.execute(LAUNCH_BACKFILL_MUTATION, {"params": params})["launchPartitionBackfill"]
        return _expect(result, "LaunchBackfillSuccess", "launching the backfill")["backfillId"]

    def launch_from_dialog(
        self,
        asset_keys: Sequence[Sequence[str]],
        partition_names: Sequence[str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Launch a backfill with exactly the payload the UI's Materialize dialog sends: `assetSelection`
        with `partitionNames` (the chosen range), or `allPartitions` when no names are given. Dagster
        widens it downstream through the partition mappings. Returns the backfill ID."""
        params: dict[str, Any] = {
            "assetSelection": [_asset_key_input(key) for key in asset_keys],
            "fromFailure": False,
            "tags": [{"key": key, "value": value} for key, value in (tags or {}).items()],
        }
        if partition_names is None:
            params["allPartitions"] = True
        else:
            params["partitionNames"] = list(partition_names)
        result = self.execute(LAUNCH_BACKFILL_MUTATION, {"params": params})["launchPartitionBackfill"]
        return _expect(result, "LaunchBackfillSuccess", "launching the backfill")["backfillId"]

    def backfill(self, backfill_id: str) -> BackfillSummary:
        result = self.execute(BACKFILL_QUERY, {"backfillId": backfill_id})["partitionBackfillOrError"]
        data = _expect(result, "PartitionBackfill", f"reading backfill {backfill_id}")
        error = data.get("error")
        return BackfillSummary(
            backfill_id=data["id"],
            status=data["status"],
            launched_at=data["timestamp"],
            ended_at=data["endTimestamp"],
            partition_count=data["numPartitions"],
            tags={tag["key"]: tag["value"] for tag in data["tags"]},
            error=f"{error['message']}{''.join(error['stack'][-6:])}" if error else None,
        )

    def wait_for_backfill(self, backfill_id: str, timeout: float, *, poll: float = 2.0) -> str:
        """Poll the backfill until it is finished; its final status (e.g. COMPLETED_SUCCESS)."""
        deadline = time.monotonic() + timeout
        while True:
            self.health_check()
            status = self.backfill(backfill_id).status
            if status in BACKFILL_FINISHED:
                return status
            if time.monotonic() > deadline:
                runs = "\n".join(f"  {run.describe()}" for run in self.runs(backfill_id=backfill_id))
                raise WaitTimeout(
                    f"backfill {backfill_id} still {status} after {timeout:.0f}s; "
                    f"its runs:\n{runs or '  none'}"
                )
            time.sleep(poll)

    # Runs

    def runs(
        self,
        *,
        backfill_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        job_name: str | None = None,
    ) -> list[RunSummary]:
        """Runs matching the filter (a backfill's runs by its `dagster/backfill` tag), oldest first."""
        wanted = dict(tags or {})
        if backfill_id:
            wanted[BACKFILL_TAG] = backfill_id
        run_filter: dict[str, Any] = {"tags": [{"key": k, "value": v} for k, v in wanted.items()]}
        if job_name:
            run_filter["pipelineName"] = job_name
        result = self.execute(RUNS_QUERY, {"filter": run_filter})["runsOrError"]
        runs = [_run(item) for item in _expect(result, "Runs", "listing runs")["results"]]
        return sorted(runs, key=lambda run: (run.creation_time, run.run_id))

    def run(self, run_id: str) -> RunSummary:
        result = self.execute(RUN_QUERY, {"runId": run_id})["runOrError"]
        return _run(_expect(result, "Run", f"reading run {run_id}"))

    def launch_run(
        self,
        job_name: str,
        run_config: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Launch (queue) a run of a job of the `backfills` location; returns its run ID."""
        params = {
            "selector": {**self._repository(), "jobName": job_name},
            "runConfigData": dict(run_config or {}),
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
        }
        result = self.execute(LAUNCH_RUN_MUTATION, {"params": params})["launchRun"]
        return _expect(result, "LaunchRunSuccess", f"launching {job_name}")["run"]["runId"]

    def wait_for_run(self, run_id: str, timeout: float, *, poll: float = 1.0) -> RunSummary:
        """Poll the run until it is finished (SUCCESS, FAILURE or CANCELED); the finished run."""
        deadline = time.monotonic() + timeout
        while True:
            self.health_check()
            run = self.run(run_id)
            if run.status in RUN_FINISHED:
                return run
            if time.monotonic() > deadline:
                raise WaitTimeout(f"run {run_id} still {run.status} after {timeout:.0f}s: {run.describe()}")
            time.sleep(poll)

    # Assets and checks

    def asset_materializations(
        self, asset_key: Sequence[str], *, partitions: Sequence[str] | None = None, limit: int | None = None
    ) -> list[MaterializationSummary]:
        """Materializations of an asset (optionally of some partitions), newest first."""
        variables = {"assetKey": _asset_key_input(asset_key), "partitions": partitions, "limit": limit}
        result = self.execute(MATERIALIZATIONS_QUERY, variables)["assetOrError"]
        if result.get("__typename") == "AssetNotFoundError":
            return []  # never materialized: the UI shows no events either
        events = _expect(result, "Asset", f"reading materializations of {'/'.join(asset_key)}")
        return [
            MaterializationSummary(
                run_id=event["runId"],
                partition=event["partition"],
                timestamp=int(event["timestamp"]) / 1000,  # milliseconds, as a string
                metadata=_metadata(event["metadataEntries"]),
            )
            for event in events["assetMaterializations"]
        ]

    def asset_check_executions(
        self, asset_key: Sequence[str], check_name: str, *, limit: int = 100
    ) -> list[CheckExecutionSummary]:
        """Executions of one asset check, newest first, with their evaluation when there is one."""
        variables = {"assetKey": _asset_key_input(asset_key), "checkName": check_name, "limit": limit}
        executions = self.execute(CHECK_EXECUTIONS_QUERY, variables)["assetCheckExecutions"]
        summaries = []
        for execution in executions:
            evaluation = execution.get("evaluation") or {}
            summaries.append(
                CheckExecutionSummary(
                    run_id=execution["runId"],
                    status=execution["status"],
                    timestamp=execution["timestamp"],
                    partition=execution["partition"],
                    passed=evaluation.get("success"),
                    severity=evaluation.get("severity"),
                    description=evaluation.get("description"),
                    metadata=_metadata(evaluation.get("metadataEntries") or []),
                )
            )
        return summaries

    # Sensors

    def _sensor_selector(self, name: str) -> dict[str, str]:
        return {**self._repository(), "sensorName": name}

    def _sensor(self, name: str, limit: int = 25) -> Mapping[str, Any]:
        variables = {"selector": self._sensor_selector(name), "limit": limit}
        result = self.execute(SENSOR_QUERY, variables)["sensorOrError"]
        return _expect(result, "Sensor", f"reading sensor {name}")

    def sensor_status(self, name: str) -> str:
        """RUNNING, STOPPED or DECLARED_IN_CODE."""
        return self._sensor(name, limit=1)["sensorState"]["status"]

    def start_sensor(self, name: str) -> str:
        result = self.execute(START_SENSOR_MUTATION, {"selector": self._sensor_selector(name)})["startSensor"]
        return _expect(result, "Sensor", f"starting sensor {name}")["sensorState"]["status"]

    def stop_sensor(self, name: str) -> str:
        sensor_id = self._sensor(name, limit=1)["id"]
        result = self.execute(STOP_SENSOR_MUTATION, {"id": sensor_id})["stopSensor"]
        return _expect(result, "StopSensorMutationResult", f"stopping sensor {name}")["instigationState"][
            "status"
        ]

    def sensor_ticks(self, name: str, *, limit: int = 25) -> list[SensorTick]:
        """The sensor's latest ticks, newest first."""
        return [
            SensorTick(
                tick_id=tick["tickId"],
                status=tick["status"],
                timestamp=tick["timestamp"],
                end_timestamp=tick["endTimestamp"],
                run_ids=list(tick["runIds"]),
                run_keys=list(tick["runKeys"]),
                skip_reason=tick["skipReason"],
                error=(tick["error"] or {}).get("message"),
            )
            for tick in self._sensor(name, limit)["sensorState"]["ticks"]
        ]


# Processes


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, process group, start time in clock ticks) of a live process, from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces or parentheses: split after its closing parenthesis.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[2]), int(fields[19])


def _descendants(roots: Sequence[int]) -> dict[int, int]:
    """Every live descendant of `roots` as pid -> start time (to tell a reused pid from ours)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
            starts[int(entry.name)] = stat[2]
    found: dict[int, int] = {}
    pending = list(roots)
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found[child] = starts[child]
                pending.append(child)
    return found


@dataclass
class _Service:
    name: str
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        parts = []
        for path in (self.stdout, self.stderr):
            text = path.read_text(errors="replace") if path.exists() else ""
            last = "\n".join(text.splitlines()[-lines:])
            parts.append(f"--- {self.name} {path.name} ({path}), last {lines} lines ---\n{last}")
        return "\n".join(parts)


class DagsterServices:
    """`dagster-webserver` and `dagster-daemon run` on a temporary instance, as a context manager.

    `dagster_home` gets a `dagster.yaml` made from orchestration/dagster.yaml (plus `instance_config`,
    merged at the top level): SQLite storage under `dagster_home` by default, as `make dev` has; for a
    shared deployment's PostgreSQL storage pass `instance_config={"storage": postgres.dagster_storage(db)}`
    (tests/postgres_server.py). `storage_root` is BACKFILLS_STORAGE_ROOT. `env` adds or overrides
    environment variables of both processes (and so of the code servers and run workers they start).
    Logs go to `<dagster_home>/../service-logs/`.
    """

    def __init__(
        self,
        dagster_home: Path,
        storage_root: Path,
        *,
        partitions_start: str = "2025-01-01",
        partitions_end: str | None = None,
        max_partitions_per_run: int | None = 31,  # None: the layout by rows (assets/run_layout.py)
        env: Mapping[str, str] | None = None,
        instance_config: Mapping[str, Any] | None = None,
        startup_timeout: float = 300.0,
        stop_grace_seconds: float = 15.0,
        backfill_daemon_interval_seconds: int | None = None,
    ) -> None:
        self.dagster_home = Path(dagster_home)
        self.storage_root = Path(storage_root)
        self.logs_dir = self.dagster_home.parent / "service-logs"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self.stop_grace_seconds = stop_grace_seconds
        self.env = {
            "BACKFILLS_STORAGE_ROOT": str(self.storage_root),
            "BACKFILLS_PARTITIONS_START": partitions_start,
            **({"BACKFILLS_PARTITIONS_END": partitions_end} if partitions_end else {}),
            **(
                {"BACKFILLS_MAX_PARTITIONS_PER_RUN": str(max_partitions_per_run)}
                if max_partitions_per_run
                else {}
            ),
            "BACKFILLS_SPARK_DRIVER_MEMORY": "1g",
            "BACKFILLS_SPARK_SHUFFLE_PARTITIONS": "2",
            "BACKFILLS_DAGSTER_URL": self.url,
            **(env or {}),
        }
        self.instance_config = dict(instance_config or {})
        self.backfill_daemon_interval_seconds = backfill_daemon_interval_seconds
        self.client = WebserverClient(self.url, health_check=self.check_alive)
        self.startup_seconds: float | None = None
        self._services: list[_Service] = []
        self._instance: DagsterInstance | None = None
        self._stopped = False

    def __enter__(self) -> DagsterServices:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # Setup

    def write_instance_config(self) -> Path:
        """The instance's dagster.yaml: the project's run-queue settings plus `instance_config` (such as
        a `storage:` section)."""
        config = yaml.safe_load(INSTANCE_TEMPLATE.read_text()) or {}
        config.update(self.instance_config)
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        target = self.dagster_home / "dagster.yaml"
        target.write_text(yaml.safe_dump(config, sort_keys=False))
        return target

    def process_env(self) -> dict[str, str]:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(_INHERITED_SETTINGS_PREFIXES) and name not in _INHERITED_SETTINGS
        }
        env.update(self.env)
        env["DAGSTER_HOME"] = str(self.dagster_home)
        env["PYTHONUNBUFFERED"] = "1"  # so the log files are current when a failure shows their tails
        return env

    def _spawn(self, name: str, command: list[str]) -> _Service:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        stdout, stderr = self.logs_dir / f"{name}.out", self.logs_dir / f"{name}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                command,
                cwd=self.dagster_home,
                env=self.process_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                # Own process group: code servers, run workers and Spark JVMs inherit it, so one
                # signal to the group reaches them all, and nothing reaches the test process.
                start_new_session=True,
            )
        return _Service(name, process, stdout, stderr)

    def start(self) -> None:
        """Start both processes and wait until the code location is loaded and the daemons beat."""
        if not WORKSPACE_FILE.is_file():
            raise ServicesError(f"no workspace file at {WORKSPACE_FILE}")
        self.storage_root.mkdir(parents=True, exist_ok=True)
        self.write_instance_config()
        # Started together, the webserver and the daemon would both create the schema and one can fail
        # (SQLite: "table alembic_version already exists"): create it here first, in SQLite or Postgres.
        DagsterInstance.from_config(str(self.dagster_home)).dispose()
        began = time.monotonic()
        workspace = str(WORKSPACE_FILE)
        try:
            self._services.append(
                self._spawn(
                    "webserver",
                    [_tool("dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.port), "-w", workspace],
                )
            )
            self._services.append(self._spawn("daemon", self._daemon_command(workspace)))
            self._wait_for_code_location(began + self.startup_timeout)
            self._wait_for_daemons(began + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def _daemon_command(self, workspace: str) -> list[str]:
        """`dagster-daemon run`; with `backfill_daemon_interval_seconds`, the same daemon whose backfill loop
        waits that long between iterations instead of Dagster's 30 s (a module constant, set before the
        daemon starts): tests wait less for ticks, and the daemon still decides what runs when."""
        command = [_tool("dagster-daemon"), "run", "-w", workspace]
        if self.backfill_daemon_interval_seconds is None:
            return command
        script = (
            "import sys; import dagster._daemon.controller as controller; "
            "assert controller.DEFAULT_DAEMON_INTERVAL_SECONDS == 30, 'Dagster changed its daemon interval'; "
            f"controller.DEFAULT_DAEMON_INTERVAL_SECONDS = {int(self.backfill_daemon_interval_seconds)}; "
            "from dagster._daemon.cli import main; sys.argv = ['dagster-daemon', *sys.argv[1:]]; main()"
        )
        return [_tool("python"), "-c", script, *command[1:]]

    def _wait_for_code_location(self, deadline: float) -> None:
        last = "webserver not answering yet"
        while True:
            self.check_alive()
            try:
                entry = self.client.code_locations().get(LOCATION_NAME)
            except (requests.ConnectionError, requests.Timeout, GraphQLError) as error:
                entry, last = None, f"webserver not ready: {error}"
            if entry is None and "not ready" not in last:
                last = f"code location {LOCATION_NAME!r} not in the workspace yet"
            if entry is not None:
                location = entry.get("locationOrLoadError") or {}
                if entry["loadStatus"] == "LOADED" and location.get("__typename") == "RepositoryLocation":
                    self.client.repository_name = location["repositories"][0]["name"]
                    return
                if entry["loadStatus"] == "LOADED":
                    raise ServicesError(
                        f"code location {LOCATION_NAME!r} failed to load: {_error_text(location)}\n"
                        + self.log_tails()
                    )
                last = f"code location {LOCATION_NAME!r} is {entry['loadStatus']}"
            if time.monotonic() > deadline:
                raise ServicesError(
                    f"timed out after {self.startup_timeout:.0f}s: {last}\n{self.log_tails()}"
                )
            time.sleep(_POLL_SECONDS)

    def _wait_for_daemons(self, deadline: float) -> None:
        # The webserver reports the heartbeats the daemon writes to the instance.
        while True:
            self.check_alive()
            statuses = self.client.daemon_statuses()
            waiting = [s["daemonType"] for s in statuses if s["required"] and not s["healthy"]]
            if statuses and not waiting:
                return
            if time.monotonic() > deadline:
                errors = [e["message"] for s in statuses for e in s["lastHeartbeatErrors"]]
                raise ServicesError(
                    f"timed out after {self.startup_timeout:.0f}s waiting for daemons {waiting} to beat; "
                    f"their errors: {errors or 'none'}\n{self.log_tails()}"
                )
            time.sleep(_POLL_SECONDS)

    # While running

    def check_alive(self) -> None:
        """ServicesError with the logs' tails if the webserver or the daemon has exited."""
        for service in self._services:
            code = service.process.poll()
            if code is not None:
                raise ServicesError(f"{service.name} exited with code {code}\n{self.log_tails()}")

    def log_tails(self, lines: int = _LOG_TAIL_LINES) -> str:
        return "\n".join(service.tail(lines) for service in self._services)

    @property
    def instance(self) -> DagsterInstance:
        """The same instance, opened in the test process (read it only: the services own it)."""
        if self._instance is None:
            self._instance = DagsterInstance.from_config(str(self.dagster_home))
        return self._instance

    def run_timeline(self, run_id: str) -> list[RunEvent]:
        """A run's lifecycle from the event log: queued, dequeued, starting (launched), started (the run
        worker is up), each step's start and end, and the run's end."""
        return [
            RunEvent(entry.timestamp, entry.dagster_event.event_type.name, entry.step_key)
            for entry in self.instance.all_logs(run_id, of_type=set(_LIFECYCLE))
            if entry.dagster_event is not None
        ]

    def run_failures(self, run_id: str) -> list[str]:
        """The error messages of a run's failed steps and of the run itself, from the event log."""
        messages = []
        failures = {DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}
        for entry in self.instance.all_logs(run_id, of_type=failures):
            event = entry.dagster_event
            error = event.step_failure_data.error if event and event.is_step_failure else None
            step = f"{event.step_key}: " if event and event.step_key else ""
            messages.append(f"{step}{_error_chain(error) if error else entry.message}")
        return messages

    # Teardown

    def stop(self) -> None:
        """Stop everything started: SIGTERM to each process group, SIGKILL to what is left after the grace
        period, then to any descendant that left the group (matched by pid and start time). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._instance is not None:
            with suppress(Exception):
                self._instance.dispose()
            self._instance = None
        running = [service for service in self._services if service.process.poll() is None]
        roots = [service.process.pid for service in self._services]
        known = _descendants(roots)
        for service in running:
            _signal_group(service.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_seconds
        for service in running:
            with suppress(subprocess.TimeoutExpired):
                service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        known.update(_descendants(roots))
        for service in self._services:
            _signal_group(service.process.pid, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):
                service.process.wait(timeout=10)
        for pid, started in known.items():
            stat = _proc_stat(pid)
            if stat is not None and stat[2] == started:
                with suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        # SIGKILL is delivered asynchronously: wait until the groups are really empty.
        deadline = time.monotonic() + 10
        while self.leftover_processes() and time.monotonic() < deadline:
            time.sleep(0.1)

    def leftover_processes(self) -> list[int]:
        """Processes still alive in the services' process groups (empty after a clean stop)."""
        groups = {service.process.pid for service in self._services}
        alive = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                stat = _proc_stat(int(entry.name))
                if stat is not None and stat[1] in groups and _is_running(int(entry.name)):
                    alive.append(int(entry.name))
        return alive


def _error_chain(error: SerializableErrorInfo) -> str:
    """An error and its causes, innermost last: Dagster wraps the user's exception in its own."""
    messages = []
    current: SerializableErrorInfo | None = error
    while current is not None:
        messages.append(current.message.strip())
        current = current.cause
    return " <- caused by: ".join(messages)


def _is_running(pid: int) -> bool:
    # A zombie has exited and only waits to be reaped by its parent.
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def _signal_group(pgid: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _tool(name: str) -> str:
    """A command of the project's venv (the one running the tests, else the checkout's .venv)."""
    for candidate in (Path(sys.executable).parent / name, VENV_BIN / name):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ServicesError(f"{name} is not installed: run `make install` (it comes with dagster-webserver)")
    return found


def iter_days(start: str, end: str) -> Iterator[str]:
    """Every day from `start` to `end`, inclusive, as YYYY-MM-DD."""
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    for offset in range((last - first).days + 1):
        yield (first + timedelta(days=offset)).isoformat()


@contextmanager
def governed_services(
    base: Path,
    storage_root: Path,
    *,
    sensor_interval_seconds: int = 3,
    connect: ConnectServer | None = None,
    **options: Any,
) -> Iterator[tuple[DagsterServices, FakeSlack]]:
    """The services as a team runs them: a shared Spark Connect server for the runs (`connect`, or one
    started for the block) and an approvals channel on the local Slack Web API (CHANNEL, with REQUESTER
    alice and APPROVER bob, the only approver); its backfill daemon looks at backfills every
    BACKFILL_DAEMON_INTERVAL_SECONDS. `options` go to DagsterServices. On exit everything is stopped, and
    no process the services started (run workers, Spark JVMs) may be left."""
    with ExitStack() as stack:
        slack = stack.enter_context(FakeSlack())
        if connect is None:
            connect = stack.enter_context(
                running_server(port=0, driver_memory="1g", state_dir=base / "spark")
            )
        slack.add_channel(CHANNEL, "feature-approvals")
        slack.add_user(REQUESTER, "alice")
        slack.add_user(APPROVER, "bob")
        env = {
            "BACKFILLS_SPARK_REMOTE": connect.url,
            "SLACK_BOT_TOKEN": slack.token,
            "BACKFILLS_SLACK_CHANNEL": CHANNEL,
            "BACKFILLS_SLACK_API_URL": slack.base_url,
            "BACKFILLS_APPROVERS": APPROVER,
            "BACKFILLS_SENSOR_INTERVAL_SECONDS": str(sensor_interval_seconds),
        }
        options.setdefault("backfill_daemon_interval_seconds", BACKFILL_DAEMON_INTERVAL_SECONDS)
        services = DagsterServices(
            base / "dagster_home", storage_root, env=env | options.pop("env", {}), **options
        )
        with services:
            yield services, slack
        left = services.leftover_processes()
        assert not left, f"still running after stop: {left}"
