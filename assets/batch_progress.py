"""Where a planned batch stands, per table: partitions staged of those targeted, planned out, checks pending,
and what the partitions not staged yet wait for.

A partition of a batch is staged by a run the backfill daemon launches once every upstream partition its
window reads is staged. So a partition not staged yet waits either for upstream partitions of the same
batch (named, with their days) or, when those are all staged, for its run: the daemon looks at backfills
every 30 seconds, and a run takes a while to start. `backfills batches` and the approval sensor's skip
reason say which.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta

from backfills.resources.catalog_models import BatchManifest
from backfills.specs import FeatureSpec, day_ranges

DAEMON_LOOKS_EVERY_SECONDS = 30  # Dagster's backfill daemon loop, a constant of Dagster


@dataclass(frozen=True)
class TableProgress:
    table: str
    targeted: int
    staged: int
    planned_out: int
    checks_pending: int
    waiting: str | None  # what the partitions not staged yet wait for; None when nothing is left

    def describe(self) -> str:
        line = f"{self.table:<24} staged {self.staged} of {self.targeted} targeted"
        if self.planned_out:
            line += f", {self.planned_out} planned out (not computable)"
        if self.checks_pending:
            line += f", checks pending on {self.checks_pending}"
        if self.waiting:
            line += f"; {self.waiting}"
        return line


def _window(day: str, lookback: int, lateness: int) -> list[str]:
    first = date.fromisoformat(day) - timedelta(days=lookback)
    return [(first + timedelta(days=n)).isoformat() for n in range(lookback + lateness + 1)]


def _waiting(spec: FeatureSpec, left: list[str], unstaged: Mapping[str, set[str]]) -> str:
    upstream: dict[str, set[str]] = {}
    for_upstream = 0
    for day in left:
        blocked = False
        for item in spec.feature_inputs:
            pending = unstaged.get(item.table, set())
            needed = pending.intersection(_window(day, item.lookback_days, item.lateness_days))
            if needed:
                upstream.setdefault(item.table, set()).update(needed)
                blocked = True
        for_upstream += blocked
    parts = []
    if for_upstream:
        needs = "; ".join(f"{table} {day_ranges(sorted(days))}" for table, days in sorted(upstream.items()))
        parts.append(f"{for_upstream} wait for upstream partitions of this batch not staged yet ({needs})")
    if len(left) > for_upstream:
        parts.append(
            f"{len(left) - for_upstream} wait for their run (the backfill daemon launches runs whose "
            f"upstream is staged; it looks every {DAEMON_LOOKS_EVERY_SECONDS}s)"
        )
    return ", ".join(parts)


def table_progress(batch: BatchManifest, specs: Mapping[str, FeatureSpec]) -> list[TableProgress]:
    """Per table the batch's plan targets, in plan order; empty for a batch without a plan or refused."""
    plan = batch.plan
    if plan is None or plan.refusal:
        return []
    unstaged = {
        table: set(days) - set(plan.planned_out.get(table, {})) - set(batch.tables.get(table, {}))
        for table, days in plan.targets.items()
    }
    progress = []
    for table, targeted in plan.targets.items():
        staged = set(batch.tables.get(table, {})) & set(targeted)
        checked = {day for record in batch.checks if record.table == table for day in record.partitions}
        left = sorted(unstaged[table])
        waiting = None
        if left and batch.completed_at is None and table in specs:
            waiting = _waiting(specs[table], left, unstaged)
        progress.append(
            TableProgress(
                table=table,
                targeted=len(targeted),
                staged=len(staged),
                planned_out=len(plan.planned_out.get(table, {})),
                checks_pending=len(staged - checked),
                waiting=waiting,
            )
        )
    return progress


def waiting_summary(batch: BatchManifest, specs: Mapping[str, FeatureSpec]) -> str:
    """What a running batch waits for, one clause per table with partitions left ('' when none)."""
    return "; ".join(f"{item.table}: {item.waiting}" for item in table_progress(batch, specs) if item.waiting)
