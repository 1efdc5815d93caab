"""How many partitions one run of a table stages: as many as fit under a limit on the rows the run reads.

A run pays fixed costs (a worker, a Spark session, fixed job latency, its lookback read again), so a backfill
should run each table in as few runs as memory allows: one, unless the rows it reads would pass
`max_rows_per_run`. The limit is in rows, not days, because that is what memory scales with.

Dagster fixes a table's backfill policy when the code location loads, so the rows a partition reads are
estimated then, from what is stored:

- raw events: the row counts of the newest landing files (their Parquet footers), per file day;
- a feature table: the row counts production serves for its newest partitions; before anything is promoted,
  the largest estimate of its own inputs (one row per entity and day never outnumbers the events).

Without any data there is nothing to read, and a table runs in one run.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import pyarrow.parquet as pq

from backfills.assets.generator import LANDING_PREFIX
from backfills.assets.registry import dependency_order, feature_spec
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.storage import LocalObjectStore, ObjectStore
from backfills.specs import RAW_TRANSACTIONS, DateRange, FeatureSpec

# How many of the newest days an estimate looks at.
SAMPLE_DAYS = 7


@dataclass(frozen=True)
class RowsPerDay:
    """The rows one day of a table holds, as estimated (None: no data to go by), and from what."""

    rows: float | None
    source: str


def _landing_day(key: str) -> str | None:
    for part in key.split("/"):
        if part.startswith("date="):
            return part.removeprefix("date=")
    return None


def landing_rows_per_day(store: ObjectStore) -> RowsPerDay:
    """Raw events per file day: the median over the newest landing days of the rows in their files."""
    by_day: dict[str, list[str]] = {}
    for item in store.describe(f"{LANDING_PREFIX}/"):
        day = _landing_day(item.key)
        if day is not None and item.key.endswith(".parquet"):
            by_day.setdefault(day, []).append(item.key)
    newest = sorted(by_day)[-SAMPLE_DAYS:]
    if not newest:
        return RowsPerDay(None, "no landing files yet")
    counts = [sum(_rows_in(store, key) for key in by_day[day]) for day in newest]
    return RowsPerDay(statistics.median(counts), f"the landing files of {len(newest)} days")


def _rows_in(store: ObjectStore, key: str) -> int:
    """The rows of one Parquet file, from its footer: read alone when the file is local."""
    if isinstance(store, LocalObjectStore):
        return pq.read_metadata(store.data_uri(key)).num_rows
    return pq.read_metadata(io.BytesIO(store.get(key))).num_rows


def served_rows_per_day(catalog: ReleaseCatalog, table: str) -> RowsPerDay:
    """A feature table's rows per partition: the median over the newest partitions production serves."""
    release = catalog.current_release()
    if release is None:
        return RowsPerDay(None, "nothing promoted yet")
    served = catalog.served(release, table)
    newest = [served[day].row_count for day in sorted(served)[-SAMPLE_DAYS:]]
    if not newest:
        return RowsPerDay(None, f"release {release.release_id} serves no {table} partition")
    return RowsPerDay(statistics.median(newest), f"{len(newest)} partitions of release {release.release_id}")


def estimate_rows_per_day(
    specs: Sequence[FeatureSpec], store: ObjectStore, catalog: ReleaseCatalog
) -> dict[str, RowsPerDay]:
    """Rows per day of raw events and of every feature table (`specs` in dependency order)."""
    estimates = {RAW_TRANSACTIONS: landing_rows_per_day(store)}
    for spec in specs:
        served = served_rows_per_day(catalog, spec.name)
        if served.rows is not None:
            estimates[spec.name] = served
            continue
        inputs = [estimates[item.table].rows for item in spec.inputs if item.table in estimates]
        known = [rows for rows in inputs if rows is not None]
        estimates[spec.name] = (
            RowsPerDay(max(known), f"at most its inputs' rows ({served.source})")
            if known
            else RowsPerDay(None, served.source)
        )
    return estimates


def _read_per_run(spec: FeatureSpec, estimates: Mapping[str, RowsPerDay]) -> tuple[float, float] | None:
    """(rows read once per run, rows read per partition) of a run of `spec`: each input's rows per day
    times its extra days (lookback, lateness, re-delivery) and times one. None when no input is estimated."""
    known = [
        (item, per_day)
        for item in spec.inputs
        if (per_day := estimates.get(item.table, RowsPerDay(None, "")).rows) is not None
    ]
    if not known:
        return None
    fixed = sum(
        (item.lookback_days + item.lateness_days + item.redelivery_days) * rows for item, rows in known
    )
    return fixed, sum(rows for _, rows in known)


def rows_read(spec: FeatureSpec, partitions: int, estimates: Mapping[str, RowsPerDay]) -> float | None:
    """The rows a run of `partitions` consecutive partitions of `spec` reads (None: no input estimated)."""
    read = _read_per_run(spec, estimates)
    return None if read is None else read[0] + partitions * read[1]


def partitions_per_run(
    spec: FeatureSpec, estimates: Mapping[str, RowsPerDay], max_rows_per_run: int
) -> int | None:
    """The most partitions of `spec` one run may stage and still read at most `max_rows_per_run` rows (at
    least one); None when nothing is known to be read, so nothing limits the run."""
    read = _read_per_run(spec, estimates)
    if read is None or read[1] <= 0:
        return None
    fixed, per_partition = read
    return max(1, int((max_rows_per_run - fixed) // per_partition))


def layout(
    specs: Sequence[FeatureSpec],
    store: ObjectStore,
    catalog: ReleaseCatalog,
    *,
    max_rows_per_run: int,
    max_partitions_per_run: int | None = None,
) -> dict[str, int | None]:
    """Table -> the most partitions one of its runs stages (None: all of a backfill's in one run).
    `max_partitions_per_run`, when set, is the operator's fixed number of days for every table."""
    if max_partitions_per_run is not None:
        return {spec.name: max_partitions_per_run for spec in specs}
    estimates = estimate_rows_per_day(specs, store, catalog)
    return {spec.name: partitions_per_run(spec, estimates, max_rows_per_run) for spec in specs}


@dataclass(frozen=True)
class PlannedRun:
    table: str
    dates: DateRange


def plan_runs(ranges: dict[str, DateRange], partitions_per_run: Mapping[str, int | None]) -> list[PlannedRun]:
    """Range runs in dependency order, each table's at most its `partitions_per_run` days (None: one run),
    as its BackfillPolicy has them."""
    runs = []
    for spec in dependency_order(tuple(feature_spec(name) for name in ranges)):
        dates = ranges[spec.name]
        per_run = partitions_per_run.get(spec.name) or len(dates.days())
        start = dates.start
        while start <= dates.end:
            end = min(dates.end, start + timedelta(days=per_run - 1))
            runs.append(PlannedRun(spec.name, DateRange(start, end)))
            start = end + timedelta(days=1)
    return runs
