"""Backfills into staging through Dagster: determinism, batch isolation, upstream resolution, crashes."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import conftest
import pyarrow.parquet as pq
import pytest
from conftest import Lake, make_lake
from dagster import AssetCheckKey, DagsterInstance
from test_catalog import record

from backfills.assets.check_results import GATE_CHECK
from backfills.assets.factory import staging_key
from backfills.assets.generator import landing_key
from backfills.assets.reader import FeatureReader
from backfills.assets.registry import FEATURES, dependency_order, feature_spec
from backfills.assets.staging import StagedRun
from backfills.checks.registry import check_names
from backfills.errors import (
    BatchNotFoundError,
    BatchSealedError,
    InvalidInputError,
    MissingUpstreamPartitionError,
)
from backfills.orchestration.definitions import build_definitions
from backfills.orchestration.local_backfill import BackfillRunFailedError, blast_radius, run_local_backfill
from backfills.resources.catalog_models import UpstreamSource
from backfills.resources.feature_store import empty_partition_hash
from backfills.resources.lifecycle import BatchState
from backfills.specs import DateRange

JAN_1 = date(2025, 1, 1)
DAILY, WEEKLY = "customer_daily_txn", "customer_txn_7d"


def _backfill(lake: Lake, instance, start: date, end: date, *, per_run: int, batch: str, tables=None) -> str:
    return run_local_backfill(
        build_definitions(lake.settings()),
        instance,
        start=start,
        end=end,
        tables=tables,
        max_partitions_per_run=per_run,
        batch_id=batch,
        requester="alice",
    )


def _hashes(lake: Lake, batch: str) -> dict[str, dict[str, str]]:
    manifest = lake.catalog.get_batch(batch)
    return {
        table: {day: record.content_hash for day, record in records.items()}
        for table, records in manifest.tables.items()
    }


def _stage(lake: Lake, spark, table: str, start: date, end: date, batch: str):
    return lake.stage(spark, table, start, end, batch)


@dataclass
class Layouts:
    """Jan 1..3 of every table staged through Dagster in three run layouts, each its own batch: `range`
    (one range run per table) alone on `range_instance`, then `single` (one partition per run) and `second`
    (ranges of two days and one) on `other_instance`; and the files of `range` before the other two."""

    lake: Lake
    range_instance: DagsterInstance
    other_instance: DagsterInstance
    range_fingerprint: dict[str, str]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory, generated_landing_zone: Path) -> Iterator[Layouts]:
    """The backfills of the layout tests, run once for the module (each takes a run per table and layout):
    the tests read what they left behind."""
    base = tmp_path_factory.mktemp("layouts")
    shutil.copytree(generated_landing_zone / "raw", base / "lake" / "raw")
    lake = make_lake(base / "lake")
    homes = base / "range_home", base / "other_home"
    for home in homes:
        home.mkdir()
    end = date(2025, 1, 3)
    with DagsterInstance.local_temp(str(homes[0])) as range_instance:
        _backfill(lake, range_instance, JAN_1, end, per_run=3, batch="range")
        range_fingerprint = _fingerprint(lake, "range")
        with DagsterInstance.local_temp(str(homes[1])) as other_instance:
            _backfill(lake, other_instance, JAN_1, end, per_run=1, batch="single")
            _backfill(lake, other_instance, JAN_1, end, per_run=2, batch="second")
            yield Layouts(lake, range_instance, other_instance, range_fingerprint)


def test_one_partition_per_run_and_one_range_run_give_identical_content_hashes(layouts: Layouts) -> None:
    lake = layouts.lake
    ranged, single = _hashes(lake, "range"), _hashes(lake, "single")
    assert set(ranged) == {spec.name for spec in FEATURES}
    assert all(len(days) == 3 for days in ranged.values())
    assert ranged == single
    manifest = lake.catalog.get_batch("range")
    assert all(record.row_count > 0 for records in manifest.tables.values() for record in records.values())
    assert manifest.requester == "alice" and len(manifest.runs) == 4
    assert len(lake.catalog.get_batch("single").runs) == 12


def test_materializations_and_per_partition_gate_results_carry_batch_lineage(layouts: Layouts) -> None:
    lake, instance = layouts.lake, layouts.range_instance  # the instance of the `range` batch alone
    key = staging_key("customer_txn_7d")
    materializations = instance.fetch_materializations(key, limit=10).records
    assert sorted(m.partition_key for m in materializations) == ["2025-01-01", "2025-01-02", "2025-01-03"]
    metadata = materializations[0].asset_materialization.metadata
    manifest = lake.catalog.get_batch("range")
    records = manifest.tables["customer_txn_7d"]
    assert metadata["batch_id"].value == "range"
    assert metadata["partitions"].value == "2025-01-01..2025-01-03"
    assert metadata["dagster/row_count"].value == sum(r.row_count for r in records.values())
    assert metadata["code_version"].value == feature_spec("customer_txn_7d").code_version
    assert metadata["upstream"].value == [
        {
            "table": "customer_daily_txn",
            "source": "batch",
            "source_id": "range",
            "partitions": ["2025-01-01", "2025-01-02", "2025-01-03"],
        }
    ]
    # Each partition's own figures ride on its gate result; the run-wide evidence is observed once.
    gates = instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(key, GATE_CHECK), limit=10
    )
    results = {g.partition: g.event.dagster_event.event_specific_data.metadata for g in gates}
    assert {day: found["content_hash"].value for day, found in results.items()} == {
        day: r.content_hash for day, r in records.items()
    }
    assert {day: found["rows"].value for day, found in results.items()} == {
        day: r.row_count for day, r in records.items()
    }
    [evidence] = instance.fetch_observations(key, limit=10).records
    assert evidence.partition_key is None and evidence.asset_observation.metadata["partitions"].value == (
        "2025-01-01..2025-01-03"
    )
    assert set(check_names(feature_spec("customer_txn_7d"))) == {
        name.removeprefix("evidence/")
        for name in evidence.asset_observation.metadata
        if name.startswith("evidence/")
    }


def test_rerunning_a_partition_in_the_same_batch_replaces_it_and_leaves_one_copy(lake: Lake, spark) -> None:
    _stage(lake, spark, "customer_daily_txn", JAN_1, date(2025, 1, 3), "redo")
    before = lake.catalog.get_batch("redo").tables["customer_daily_txn"]
    _stage(lake, spark, "customer_daily_txn", date(2025, 1, 2), date(2025, 1, 2), "redo")
    after = lake.catalog.get_batch("redo").tables["customer_daily_txn"]
    assert after["2025-01-02"].attempt_id != before["2025-01-02"].attempt_id
    assert after["2025-01-02"].content_hash == before["2025-01-02"].content_hash
    assert after["2025-01-01"] == before["2025-01-01"]
    on_disk = [
        k for k in lake.store.list("staging/customer_daily_txn/redo") if "feature_date=2025-01-02" in k
    ]
    assert [k for k in on_disk if k.endswith(".parquet")] == after["2025-01-02"].files
    rows = FeatureReader(spark, lake.store).read_batch("customer_daily_txn", "redo")
    per_day = {
        r["feature_date"].isoformat(): r["count"] for r in rows.groupBy("feature_date").count().collect()
    }
    assert per_day == {day: record.row_count for day, record in after.items()}


def test_a_staging_run_tells_its_log_how_many_rows_it_wrote_in_how_many_partitions(lake: Lake, spark) -> None:
    heard: list[str] = []
    lake.stage(spark, DAILY, JAN_1, date(2025, 1, 3), "told", progress=heard.append)
    records = lake.catalog.get_batch("told").tables[DAILY]
    rows = sum(record.row_count for record in records.values())
    assert rows > 0 and len(records) == 3
    wrote = f"{DAILY}: wrote {rows:,} rows in 3 partitions (2025-01-01..2025-01-03) in "
    assert [line for line in heard if line.startswith(wrote)], heard


@pytest.mark.skipif(
    conftest.TEST_SPARK_REMOTE is not None,
    reason="a Spark Connect client cannot list what the server keeps cached: runs on a local session",
)
def test_a_staging_run_leaves_nothing_cached_in_spark_memory(lake: Lake, spark) -> None:
    """A long backfill stages hundreds of runs in one Spark application: what a run caches (its inputs and
    the rows it wrote) must be released when it ends, or executor memory fills run by run."""
    persisted = spark.sparkContext._jsc.getPersistentRDDs  # the cached data, by RDD
    before = persisted().size()
    lake.stage(spark, DAILY, JAN_1, date(2025, 1, 3), "cached")
    lake.stage(spark, WEEKLY, date(2025, 1, 3), date(2025, 1, 3), "cached")  # reads DAILY's staging
    assert persisted().size() == before


def _fingerprint(lake: Lake, batch: str) -> dict[str, str]:
    keys = [f"catalog/batches/{batch}.json"] + [
        key for spec in FEATURES for key in lake.store.list(f"staging/{spec.name}/{batch}")
    ]
    return {key: hashlib.sha256(lake.store.get(key)).hexdigest() for key in keys}


def test_a_second_batch_for_the_same_days_never_changes_the_first(layouts: Layouts) -> None:
    # `single` and `second` were staged after `range`, for the same days, in other run layouts.
    lake = layouts.lake
    assert _fingerprint(lake, "range") == layouts.range_fingerprint
    assert _hashes(lake, "second") == _hashes(lake, "range")


def test_downstream_only_backfill_reads_the_current_release_and_a_full_one_its_own_staging(
    lake: Lake, spark
) -> None:
    _stage(lake, spark, "customer_daily_txn", JAN_1, date(2025, 1, 20), "daily")
    release = lake.catalog.promote("daily", actor="alice", reason="initial load")

    _stage(lake, spark, "customer_txn_7d", date(2025, 1, 15), date(2025, 1, 20), "downstream")
    record = lake.catalog.get_batch("downstream").tables["customer_txn_7d"]["2025-01-15"]
    assert [(s.source, s.source_id, s.partitions[0], s.partitions[-1]) for s in record.upstream] == [
        ("release", release.release_id, "2025-01-09", "2025-01-15")
    ]

    _stage(lake, spark, "customer_daily_txn", date(2025, 1, 15), date(2025, 1, 20), "full")
    _stage(lake, spark, "customer_txn_7d", date(2025, 1, 15), date(2025, 1, 20), "full")
    record = lake.catalog.get_batch("full").tables["customer_txn_7d"]["2025-01-16"]
    # The window's days in the batch come from the batch; the days before it from production.
    assert sorted((s.source, s.partitions[0], s.partitions[-1]) for s in record.upstream) == [
        ("batch", "2025-01-15", "2025-01-16"),
        ("release", "2025-01-10", "2025-01-14"),
    ]
    assert _hashes(lake, "full")["customer_txn_7d"] == _hashes(lake, "downstream")["customer_txn_7d"]


def test_missing_upstream_partitions_fail_the_run_naming_table_and_days(
    lake: Lake, dagster_instance, spark
) -> None:
    with pytest.raises(
        MissingUpstreamPartitionError, match=r"customer_daily_txn for 2025-01-01\.\.2025-01-05"
    ):
        _stage(lake, spark, "customer_txn_7d", JAN_1, date(2025, 1, 5), "orphan")
    with pytest.raises(
        BackfillRunFailedError, match=r"customer_daily_txn for 2025-01-01\.\.2025-01-02.*nothing promoted"
    ):
        _backfill(
            lake,
            dagster_instance,
            JAN_1,
            date(2025, 1, 2),
            per_run=2,
            batch="orphan2",
            tables=["customer_txn_7d"],
        )
    with pytest.raises(BatchNotFoundError):
        lake.catalog.get_batch("orphan")


def test_a_day_missing_from_the_landing_zone_fails_clearly(lake: Lake, spark) -> None:
    lake.store.delete("raw/transactions/date=2025-01-03/part-00000.parquet")
    with pytest.raises(InvalidInputError, match="no landing file for 2025-01-03"):
        _stage(lake, spark, "customer_daily_txn", JAN_1, date(2025, 1, 5), "gap")


def test_staging_into_a_sealed_batch_is_refused_before_any_spark_work(lake: Lake, spark) -> None:
    _stage(lake, spark, DAILY, JAN_1, JAN_1, "sealed")
    lake.catalog.mark_complete("sealed", {DAILY: ["2025-01-01"]})
    lake.catalog.move_batch("sealed", BatchState.APPROVED)
    before = lake.store.list(f"staging/{DAILY}/sealed")

    with pytest.raises(BatchSealedError, match="batch sealed is approved and accepts no more partitions"):
        _stage(lake, spark, DAILY, date(2025, 1, 2), date(2025, 1, 2), "sealed")

    assert lake.store.list(f"staging/{DAILY}/sealed") == before  # nothing written, not even an attempt


def test_a_day_without_any_event_is_staged_as_an_empty_partition(lake: Lake, spark) -> None:
    """A quiet day (its file and the next, where its late events would be, hold no rows), in a table that
    expects them, is recorded with no rows, no files and the hash of an empty partition."""
    for day in (3, 4):
        key = landing_key(date(2025, 1, day))
        empty = pq.read_table(lake.root / key).slice(0, 0)
        pq.write_table(empty, lake.root / key)
    expecting_quiet_days = dataclasses.replace(feature_spec(DAILY), empty_partition_blocks=False)

    lake.stage(spark, expecting_quiet_days, date(2025, 1, 3), date(2025, 1, 3), "quiet")

    quiet = lake.catalog.get_batch("quiet").tables[DAILY]["2025-01-03"]
    assert (quiet.row_count, quiet.files) == (0, [])
    assert quiet.content_hash == empty_partition_hash(feature_spec(DAILY).schema_ddl)


def test_a_downstream_backfill_covers_every_window_that_includes_a_changed_day(
    lake, spark, dagster_instance
) -> None:
    for spec in dependency_order():
        lake.stage(spark, spec, date(2025, 1, 1), date(2025, 1, 16), "history")
    lake.catalog.promote("history", actor="carol")
    ranges = blast_radius(["customer_daily_txn"], DateRange(date(2025, 1, 5), date(2025, 1, 6)), lake.catalog)
    assert {name: (span.start.day, span.end.day) for name, span in ranges.items()} == {
        "customer_daily_txn": (5, 6),
        "customer_txn_7d": (5, 12),  # a 7-day window ending on the 12th still holds the 6th
        "customer_txn_30d": (5, 16),  # clipped to the last day production serves
        "customer_risk_profile": (5, 16),
    }
    batch = run_local_backfill(
        build_definitions(lake.settings()),
        dagster_instance,
        start=date(2025, 1, 5),
        end=date(2025, 1, 6),
        tables=["customer_daily_txn"],
        max_partitions_per_run=31,
        batch_id="fix",
        downstream=True,
    )
    manifest = lake.catalog.get_batch(batch)
    assert {table: len(days) for table, days in manifest.partitions_by_table().items()} == {
        "customer_daily_txn": 2,
        "customer_risk_profile": 12,
        "customer_txn_30d": 12,
        "customer_txn_7d": 8,
    }
    assert (
        manifest.state == "checked"
        and manifest.completed_at is not None
        and not manifest.missing_partitions()
    )
    weekly = manifest.tables["customer_txn_7d"]["2025-01-12"]
    sources = {(s.table, s.source): s.partitions for s in weekly.upstream}
    assert sources[("customer_daily_txn", "batch")] == ["2025-01-06"]
    assert sources[("customer_daily_txn", "release")] == [f"2025-01-{d:02d}" for d in range(7, 13)]


def test_a_runs_inputs_name_each_source_once_with_its_days_in_a_stable_order() -> None:
    """The lineage a run's materialization shows: each source of its input once, the days every partition
    read from it merged, sources in order of table, kind and ID."""

    def read(day: str, *sources: UpstreamSource):
        return record(DAILY, day, "b9").model_copy(update={"upstream": list(sources)})

    released = UpstreamSource(table=DAILY, source="release", source_id="r2", partitions=["2025-01-01"])
    run = StagedRun(
        table=WEEKLY,
        batch_id="b9",
        records=[
            read(
                "2025-01-07",
                released,
                UpstreamSource(table=DAILY, source="batch", source_id="b9", partitions=["2025-01-03"]),
            ),
            read(
                "2025-01-08",
                UpstreamSource(table=DAILY, source="batch", source_id="b9", partitions=["2025-01-02"]),
            ),
        ],
        replaced=0,
        location="staging/customer_txn_7d/b9",
        checks=[],
        checks_by_day={},
    )

    assert run.upstream == [
        UpstreamSource(table=DAILY, source="batch", source_id="b9", partitions=["2025-01-02", "2025-01-03"]),
        released,
    ]
