"""A backfill runs each table in as few runs as a limit on the rows read allows: one, unless the data is too
large (assets/run_layout.py). The estimates come from what is stored: landing file footers, and the row
counts production serves.

No Spark: the landing files come from the generator, the promoted partitions are records written by hand.
"""

from __future__ import annotations

import io
import statistics
from datetime import date, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import make_lake
from test_catalog import record

from backfills.assets.factory import staging_key
from backfills.assets.generator import landing_key, write_landing_zone
from backfills.assets.registry import FEATURES, dependency_order, feature_spec
from backfills.assets.run_history import RunTiming, estimate_run, newest_runs, record_run
from backfills.assets.run_layout import (
    estimate_rows_per_day,
    landing_rows_per_day,
    layout,
    partitions_per_run,
    plan_runs,
    rows_read,
)
from backfills.orchestration.cli import main
from backfills.orchestration.definitions import build_definitions
from backfills.specs import RAW_TRANSACTIONS, DateRange

DAILY, WEEKLY = "customer_daily_txn", "customer_txn_7d"
ROWS_PER_DAY = 300


@pytest.fixture
def landed(tmp_path: Path):
    lake = make_lake(tmp_path / "lake")
    write_landing_zone(lake.store, start=date(2025, 1, 1), days=10, customers=40, rows_per_day=ROWS_PER_DAY)
    return lake


def _promote(lake, table: str, rows: dict[str, int]) -> None:
    records = [record(table, day, "b1").model_copy(update={"row_count": n}) for day, n in rows.items()]
    lake.catalog.record_partitions("b1", records, run_id="run-1")
    lake.catalog.promote("b1", actor="ops", reason="layout test")


def test_nothing_stored_means_one_run_per_table(tmp_path: Path) -> None:
    lake = make_lake(tmp_path / "empty")
    per_run = layout(FEATURES, lake.store, lake.catalog, max_rows_per_run=1)
    assert per_run == {spec.name: None for spec in FEATURES}
    assert [(run.table, run.dates) for run in plan_runs({DAILY: _days(1, 90)}, per_run)] == [
        (DAILY, _days(1, 90))
    ]


def test_raw_events_are_counted_from_the_newest_landing_files(landed) -> None:
    counts = [
        pq.read_metadata(landed.root / landing_key(date(2025, 1, day))).num_rows for day in range(4, 11)
    ]

    estimates = estimate_rows_per_day(dependency_order(), landed.store, landed.catalog)

    assert estimates[RAW_TRANSACTIONS].rows == statistics.median(counts)
    assert abs(estimates[RAW_TRANSACTIONS].rows - ROWS_PER_DAY) < ROWS_PER_DAY / 10
    # Before any promotion a feature table is taken to hold at most as many rows a day as its inputs.
    assert estimates[DAILY].rows == estimates[RAW_TRANSACTIONS].rows
    assert "at most its inputs" in estimates[DAILY].source


def test_a_run_holds_as_many_partitions_as_the_row_limit_allows(landed) -> None:
    daily = feature_spec(DAILY)
    [raw] = daily.inputs
    extra = raw.lookback_days + raw.lateness_days + raw.redelivery_days
    estimates = estimate_rows_per_day(dependency_order(), landed.store, landed.catalog)
    limit = (extra + 20) * estimates[RAW_TRANSACTIONS].rows

    assert partitions_per_run(daily, estimates, limit) == 20
    assert rows_read(daily, 20, estimates) == limit
    assert partitions_per_run(daily, estimates, limit - 1) == 19
    assert partitions_per_run(daily, estimates, 1) == 1  # never less than one partition
    # The default limit holds a year of 100k events a day in one run.
    big = {table: estimate.__class__(100_000, "benchmark scale") for table, estimate in estimates.items()}
    assert partitions_per_run(daily, big, 50_000_000) >= 365


def test_a_feature_table_is_estimated_from_what_production_serves(landed) -> None:
    _promote(landed, DAILY, {f"2025-01-0{day}": 10 * day for day in range(1, 10)})

    estimates = estimate_rows_per_day(dependency_order(), landed.store, landed.catalog)

    assert estimates[DAILY].rows == 60  # the median of the newest 7 partitions: days 3..9
    weekly = feature_spec(WEEKLY)
    [daily] = weekly.inputs
    assert partitions_per_run(weekly, estimates, (daily.lookback_days + 5) * 60) == 5


def test_the_backfill_policy_is_one_run_or_runs_of_the_computed_length(landed, monkeypatch) -> None:
    one_run = build_definitions(landed.settings(max_partitions_per_run=None)).resolve_asset_graph()
    for spec in FEATURES:
        policy = one_run.get(staging_key(spec.name)).backfill_policy
        assert policy.policy_type.name == "SINGLE_RUN", spec.name

    small = landed.settings(max_partitions_per_run=None, max_rows_per_run=10 * ROWS_PER_DAY)
    graph = build_definitions(small).resolve_asset_graph()
    daily = graph.get(staging_key(DAILY)).backfill_policy
    expected = partitions_per_run(
        feature_spec(DAILY), estimate_rows_per_day(FEATURES, landed.store, landed.catalog), 10 * ROWS_PER_DAY
    )
    assert daily.policy_type.name == "MULTI_RUN" and daily.max_partitions_per_run == expected == 7


def test_local_runs_follow_each_tables_length() -> None:
    runs = plan_runs({DAILY: _days(1, 10), WEEKLY: _days(1, 10)}, {DAILY: 4, WEEKLY: None})
    assert [(run.table, run.dates) for run in runs] == [
        (DAILY, _days(1, 4)),
        (DAILY, _days(5, 8)),
        (DAILY, _days(9, 10)),
        (WEEKLY, _days(1, 10)),
    ]


def _days(first: int, last: int) -> DateRange:
    start = date(2025, 1, 1)
    return DateRange(start + timedelta(days=first - 1), start + timedelta(days=last - 1))


def test_a_run_is_estimated_from_earlier_runs_of_its_table() -> None:
    assert estimate_run([], 30).seconds is None
    same = [_timing(n, partitions=10, seconds=20.0 + n) for n in range(3)]
    assert estimate_run(same, 30).seconds == pytest.approx(3 * 21.0)  # median 2.1 s per partition, scaled
    # Runs of different lengths separate the fixed part from the part per partition.
    mixed = [_timing(0, partitions=1, seconds=12.0), _timing(1, partitions=31, seconds=42.0)]
    estimate = estimate_run(mixed, 365)
    assert estimate.seconds == pytest.approx(11.0 + 365 * 1.0)
    assert "11 s per run + 1.00 s per partition" in estimate.basis


def test_recorded_runs_are_read_back_newest_last(tmp_path: Path) -> None:
    lake = make_lake(tmp_path / "lake")
    for n in range(3):
        record_run(lake.store, _timing(n, partitions=n + 1, seconds=float(n)))
    record_run(lake.store, _timing(9, table=WEEKLY, partitions=1, seconds=1.0))
    assert [run.run_id for run in newest_runs(lake.store, DAILY)] == ["run-0", "run-1", "run-2"]
    assert [run.run_id for run in newest_runs(lake.store, DAILY, count=2)] == ["run-1", "run-2"]


def test_a_dry_run_states_the_plan_and_stages_nothing(
    lake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKFILLS_STORAGE_ROOT", str(lake.root))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "no_dagster_home"))
    for n, partitions in enumerate((1, 31)):
        record_run(lake.store, _timing(n, partitions=partitions, seconds=10.0 + partitions))

    assert main(["backfill", "--start", "2025-01-01", "--end", "2025-01-31", "--dry-run"]) == 0

    out = capsys.readouterr().out
    assert "plan: 4 tables, 4 runs" in out
    assert f"{DAILY}: 31 partitions (2025-01-01..2025-01-31) in 1 run; ~" in out
    assert "(customer_daily_txn: 41 s" not in out and "~41 s (2 earlier runs: 10 s per run + 1.00 s" in out
    assert f"{WEEKLY}: 31 partitions" in out and "no earlier run of this table to go by" in out
    assert "estimated time: unknown" in out and "dry run: nothing was staged" in out
    assert lake.catalog.list_batches() == [] and not (tmp_path / "no_dagster_home").exists()

    monkeypatch.setenv("BACKFILLS_MAX_ROWS_PER_RUN", "6000")
    assert main(["backfill", "--start", "2025-01-01", "--end", "2025-01-31", "--dry-run"]) == 0
    out = capsys.readouterr().out
    per_run = partitions_per_run(
        feature_spec(DAILY), estimate_rows_per_day(FEATURES, lake.store, lake.catalog), 6_000
    )
    runs = -(-31 // per_run)
    assert runs > 1 and f"{DAILY}: 31 partitions (2025-01-01..2025-01-31) in {runs} runs" in out


def _timing(n: int, *, partitions: int, seconds: float, table: str = DAILY) -> RunTiming:
    finished = f"2026-12-0{n % 9 + 1}T00:00:00+00:00"
    return RunTiming(table, f"run-{n}", "b1", partitions, partitions * 100, seconds, finished)


def test_landing_rows_are_read_from_the_footers_on_a_folder_and_on_s3(store) -> None:
    write_landing_zone(store, start=date(2025, 1, 1), days=3, customers=10, rows_per_day=50)
    counts = [
        pq.read_metadata(io.BytesIO(store.get(landing_key(date(2025, 1, day))))).num_rows for day in (1, 2, 3)
    ]
    estimate = landing_rows_per_day(store)
    assert estimate.rows == statistics.median(counts) and estimate.source == "the landing files of 3 days"
