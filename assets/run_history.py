"""How long staging runs took: one small record per run and table, kept under the storage root, from which
the next backfill's time is estimated before it is launched (`backfills backfill --dry-run`).

A run's time is mostly a fixed part (a worker, Spark's job latency, its lookback read again) plus a part
that grows with its partitions. With runs of different lengths in the history both parts are fitted (least
squares); with runs of one length only, the time per partition of the newest runs is scaled.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from backfills.errors import ObjectNotFoundError
from backfills.resources.storage import ObjectStore

HISTORY_PREFIX = "catalog/runs"
# How many of a table's newest runs an estimate looks at.
NEWEST_RUNS = 20


@dataclass(frozen=True)
class RunTiming:
    """One staging run of one table: how many partitions it staged, how many rows, in how many seconds."""

    table: str
    run_id: str
    batch_id: str
    partitions: int
    rows: int
    seconds: float
    finished_at: str  # ISO 8601, UTC


def record_run(store: ObjectStore, timing: RunTiming) -> None:
    """Keep one run's timing (a rerun of the same run replaces it)."""
    store.put(f"{HISTORY_PREFIX}/{timing.table}/{timing.run_id}.json", json.dumps(asdict(timing)).encode())


def timing(table: str, run_id: str, batch_id: str, partitions: int, rows: int, seconds: float) -> RunTiming:
    finished = datetime.now(UTC).isoformat()
    return RunTiming(table, run_id, batch_id, partitions, rows, round(seconds, 3), finished)


def newest_runs(store: ObjectStore, table: str, count: int = NEWEST_RUNS) -> list[RunTiming]:
    """The table's newest recorded runs, newest last."""
    runs = []
    for key in store.list(f"{HISTORY_PREFIX}/{table}/"):
        try:
            runs.append(RunTiming(**json.loads(store.get(key))))
        except (ObjectNotFoundError, ValueError, TypeError):
            continue  # removed meanwhile, or not a record of ours: no history is better than a wrong one
    return sorted(runs, key=lambda run: run.finished_at)[-count:]


@dataclass(frozen=True)
class TimeEstimate:
    """Seconds one run of `partitions` partitions should take, and what that is based on."""

    seconds: float | None
    basis: str


def estimate_run(runs: list[RunTiming], partitions: int) -> TimeEstimate:
    """The time of a run of `partitions` partitions, from earlier runs of the same table."""
    if not runs:
        return TimeEstimate(None, "no earlier run of this table to go by")
    lengths = {run.partitions for run in runs}
    if len(lengths) == 1:
        per_partition = statistics.median(run.seconds / run.partitions for run in runs)
        return TimeEstimate(
            per_partition * partitions, f"{len(runs)} earlier runs of {runs[0].partitions} partitions, scaled"
        )
    fit = statistics.linear_regression([run.partitions for run in runs], [run.seconds for run in runs])
    fixed, per_partition = max(fit.intercept, 0.0), max(fit.slope, 0.0)
    return TimeEstimate(
        fixed + per_partition * partitions,
        f"{len(runs)} earlier runs: {fixed:.0f} s per run + {per_partition:.2f} s per partition",
    )
