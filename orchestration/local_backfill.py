"""Run a backfill in this process: the same asset job and range runs the daemon would launch, in order.

For the demo and scripted use on one machine. Every run is recorded in the Dagster instance and carries
the batch tag, so all its runs write into one batch. The Dagster UI's backfill (through the daemon) is
the operator's path; this one exists so a backfill needs no running daemon.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta

from dagster import DagsterInstance, Definitions
from dagster._utils.error import SerializableErrorInfo

from backfills.assets.factory import BATCH_TAG, REQUESTER_TAG, staging_key
from backfills.assets.registry import FEATURES, dependency_order, feature_spec
from backfills.assets.run_layout import PlannedRun, layout, plan_runs
from backfills.errors import BackfillsError
from backfills.orchestration.definitions import STAGE_FEATURES_JOB
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.settings import DEFAULT_MAX_ROWS_PER_RUN
from backfills.specs import DateRange

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
# The console shows one line per run and the root cause of a failure; every event (tracebacks included) is
# still in the instance for the Dagster UI.
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


class BackfillRunFailedError(BackfillsError):
    """A run of a local backfill failed; later runs were not started."""


def root_cause(error: SerializableErrorInfo | None) -> str:
    """The innermost error of a step failure: ours, not Dagster's wrapper around it."""
    if error is None:
        return "unknown error"
    while error.cause is not None:
        error = error.cause
    # Spark errors carry the JVM stack after the first line; the first line says what went wrong. Dagster's
    # message starts with the exception's qualified name, which the class name already gives.
    first_line = (error.message.strip().splitlines() or [""])[0]
    first_line = re.sub(rf"^[\w.]*{re.escape(error.cls_name or '')}: ", "", first_line)
    return f"{error.cls_name}: {first_line}"


def new_batch_id() -> str:
    return f"local-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def backfill_layout(
    tables: Sequence[str] | None,
    dates: DateRange,
    catalog: ReleaseCatalog,
    *,
    downstream: bool,
    max_rows_per_run: int,
    max_partitions_per_run: int | None,
) -> tuple[dict[str, DateRange], dict[str, int | None]]:
    """What a backfill of `tables` (default: every feature table) over `dates` stages, table -> days (with
    `downstream`, the tables downstream of them too, over their blast radius), and table -> the most
    partitions one of its runs stages (assets/run_layout.py): for the run and for its dry run alike."""
    chosen = [feature_spec(name).name for name in tables] if tables else [spec.name for spec in FEATURES]
    ranges = blast_radius(chosen, dates, catalog) if downstream else dict.fromkeys(chosen, dates)
    per_run = layout(
        [feature_spec(name) for name in ranges],
        catalog.store,
        catalog,
        max_rows_per_run=max_rows_per_run,
        max_partitions_per_run=max_partitions_per_run,
    )
    return ranges, per_run


def blast_radius(tables: Sequence[str], dates: DateRange, catalog: ReleaseCatalog) -> dict[str, DateRange]:
    """The chosen tables over `dates`, plus every table downstream of them over the days whose window
    includes a changed day (7-day table: 6 days more), up to the last day production serves it: later
    days have nothing to replace. A downstream table production does not serve gets the same days."""
    release = catalog.current_release()
    ranges = {name: dates for name in tables}
    for spec in dependency_order():
        if spec.name in ranges:
            continue
        reach = [
            (ranges[item.table], item.lookback_days) for item in spec.feature_inputs if item.table in ranges
        ]
        if not reach:
            continue
        start = min(upstream.start for upstream, _ in reach)
        served = catalog.last_served_day(release, spec.name) if release else None
        if served:
            last_served = date.fromisoformat(served)
            end = min(max(upstream.end + timedelta(days=days) for upstream, days in reach), last_served)
        else:
            end = max(upstream.end for upstream, _ in reach)
        ranges[spec.name] = DateRange(start, max(end, start))
    return ranges


def run_local_backfill(
    defs: Definitions,
    instance: DagsterInstance,
    *,
    start: date,
    end: date,
    tables: Sequence[str] | None = None,
    max_partitions_per_run: int | None = None,
    max_rows_per_run: int = DEFAULT_MAX_ROWS_PER_RUN,
    batch_id: str | None = None,
    requester: str | None = None,
    downstream: bool = False,
    on_run: Callable[[PlannedRun], None] | None = None,
) -> str:
    """Stage `tables` (default: every feature table) for start..end into one batch; return the batch ID.
    Each table runs in runs of `max_partitions_per_run` days, or by default in as few runs as
    `max_rows_per_run` allows (assets/run_layout.py): one, unless its data is too large.

    When the last run has finished (or one failed) the batch is marked complete with the partitions it
    targeted, which lets the approval flow ask for its approval (or say why it cannot). With `downstream`,
    the tables downstream of `tables` are recomputed too, over their blast radius.
    """
    batch_id = batch_id or new_batch_id()
    job = defs.resolve_job_def(STAGE_FEATURES_JOB)
    catalog: ReleaseCatalog = defs.resources["catalog"].catalog()
    ranges, per_run = backfill_layout(
        tables,
        DateRange(start, end),
        catalog,
        downstream=downstream,
        max_rows_per_run=max_rows_per_run,
        max_partitions_per_run=max_partitions_per_run,
    )
    planned_runs = plan_runs(ranges, per_run)
    expected = {name: [day.isoformat() for day in span.days()] for name, span in ranges.items()}
    for planned in planned_runs:
        tags = {
            BATCH_TAG: batch_id,
            RANGE_START_TAG: planned.dates.start.isoformat(),
            RANGE_END_TAG: planned.dates.end.isoformat(),
        }
        if requester:
            tags[REQUESTER_TAG] = requester
        if on_run is not None:
            on_run(planned)
        result = job.execute_in_process(
            run_config=QUIET_LOGS,
            instance=instance,
            asset_selection=[staging_key(planned.table)],
            tags=tags,
            raise_on_error=False,
        )
        if not result.success:
            failures = [
                root_cause(event.step_failure_data.error)
                for event in result.all_events
                if event.is_step_failure
            ]
            reason = failures[0] if failures else "see the run's logs in the Dagster UI"
            message = (
                f"run {result.run_id} staging {planned.table} {planned.dates.start}..{planned.dates.end} "
                f"into batch {batch_id} failed: {reason}"
            )
            catalog.mark_complete(batch_id, expected, note=message)
            raise BackfillRunFailedError(message)
    catalog.mark_complete(batch_id, expected)
    return batch_id
