"""What a backfill will do, said before it is launched: per table the partitions, the runs, the rows they
read and how long that should take (`backfills backfill --dry-run`, and the first log line of a backfill).

The rows come from the estimates the run layout uses (assets/run_layout.py); the time from the recorded
runs of the same table (assets/run_history.py), or the plan says there is no history to go by.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from backfills.assets.registry import dependency_order, feature_spec
from backfills.assets.run_history import TimeEstimate, estimate_run, newest_runs
from backfills.assets.run_layout import PlannedRun, RowsPerDay, estimate_rows_per_day, plan_runs, rows_read
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.storage import ObjectStore
from backfills.specs import DateRange, day_ranges


@dataclass(frozen=True)
class TablePlan:
    table: str
    dates: DateRange
    runs: list[DateRange]
    rows: float | None  # rows the runs read, estimated (None: no data to estimate from)
    rows_basis: str
    time: TimeEstimate


@dataclass(frozen=True)
class BackfillPlan:
    tables: list[TablePlan]

    @property
    def seconds(self) -> float | None:
        """The whole backfill's time, its runs one after another (None if any table has no history)."""
        times = [table.time.seconds for table in self.tables]
        return None if any(seconds is None for seconds in times) else sum(times)  # type: ignore[misc]

    def describe(self) -> str:
        lines = [f"plan: {len(self.tables)} tables, {sum(len(t.runs) for t in self.tables)} runs"]
        for table in self.tables:
            days = [day.isoformat() for day in table.dates.days()]
            rows = "rows unknown" if table.rows is None else f"~{table.rows:,.0f} rows read"
            took = "time unknown" if table.time.seconds is None else f"~{_duration(table.time.seconds)}"
            lines.append(
                f"  {table.table}: {len(days)} partitions ({day_ranges(days)}) in {len(table.runs)} "
                f"run{'s' if len(table.runs) != 1 else ''}; {rows} ({table.rows_basis}); {took} "
                f"({table.time.basis})"
            )
        total = self.seconds
        lines.append(
            "  estimated time: "
            + (_duration(total) if total is not None else "unknown: some table has no earlier run")
        )
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def plan_backfill(
    ranges: Mapping[str, DateRange],
    partitions_per_run: Mapping[str, int | None],
    store: ObjectStore,
    catalog: ReleaseCatalog,
) -> BackfillPlan:
    """The plan of staging `ranges` (table -> days) in runs of `partitions_per_run` partitions."""
    specs = dependency_order(tuple(feature_spec(name) for name in ranges))
    estimates = estimate_rows_per_day(dependency_order(), store, catalog)
    runs = plan_runs(dict(ranges), partitions_per_run)
    return BackfillPlan([_table_plan(spec.name, ranges[spec.name], runs, estimates, store) for spec in specs])


def _table_plan(
    table: str,
    dates: DateRange,
    runs: Sequence[PlannedRun],
    estimates: Mapping[str, RowsPerDay],
    store: ObjectStore,
) -> TablePlan:
    mine = [run.dates for run in runs if run.table == table]
    spec = feature_spec(table)
    read = [rows_read(spec, len(span.days()), estimates) for span in mine]
    known = [rows for rows in read if rows is not None]
    sources = "; ".join(
        f"{item.table}: {estimates[item.table].source}" for item in spec.inputs if item.table in estimates
    )
    history = newest_runs(store, table)
    times = [estimate_run(history, len(span.days())) for span in mine]
    seconds = [time.seconds for time in times]
    time = (
        TimeEstimate(None, times[0].basis)
        if not times or any(value is None for value in seconds)
        else TimeEstimate(sum(seconds), times[0].basis)  # type: ignore[arg-type]
    )
    return TablePlan(table, dates, mine, sum(known) if known else None, sources, time)
