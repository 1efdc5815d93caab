"""Publish, rollback and release-read time of the catalog, small and large: does its cost grow with history?

Simulated catalog records, no data files (the catalog never reads them): a small catalog of 4 tables x 30
daily partitions and a large one of 100 tables x 3,650 (ten years), each built by one promotion per table.
Then, on each, the same work is timed R times (medians): publishing a batch of one table x 30 days, rolling
back to the release before it, and reading what a release serves of one table over 30 days from a catalog
object with nothing cached (what `FeatureReader` and time travel do). Goals: publish and rollback <= 50 ms,
read <= 100 ms at the large scale, and large / small <= 1.2 for each.

    python benchmarks/catalog_scale.py [--repetitions 7] [--work DIR] [--results benchmarks/results.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import ColumnSchema, PartitionRecord, UpstreamSource
from backfills.resources.storage import LocalObjectStore

SCALES = {"small": (4, 30), "large": (100, 3650)}
FIRST_DAY = date(2016, 1, 1)
CHANGED_DAYS = 30


def _record(table: str, day: str, batch_id: str) -> PartitionRecord:
    base = f"staging/{table}/{batch_id}/a1"
    return PartitionRecord(
        table=table,
        partition=day,
        batch_id=batch_id,
        run_id=f"run-{batch_id}",
        attempt_id="a1",
        base=base,
        files=[f"{base}/feature_date={day}/part-00000.parquet"],
        row_count=20_000,
        content_hash=hashlib.sha256(f"{base}/{day}".encode()).hexdigest(),
        columns=[ColumnSchema(name="customer_id", type="string"), ColumnSchema(name="value", type="double")],
        code_version="v1",
        upstream=[
            UpstreamSource(table="raw_transactions", source="landing", source_id=None, partitions=[day])
        ],
        written_at=datetime.now(UTC),
    )


def _days(count: int, first: date = FIRST_DAY) -> list[str]:
    return [(first + timedelta(days=n)).isoformat() for n in range(count)]


def _stage(catalog: ReleaseCatalog, batch_id: str, table: str, days: list[str]) -> None:
    records = [_record(table, day, batch_id) for day in days]
    catalog.record_partitions(batch_id, records, run_id=f"run-{batch_id}")


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure(name: str, root: Path, repetitions: int) -> dict[str, float | int]:
    tables, days = SCALES[name]
    store = LocalObjectStore(root / name)
    catalog = ReleaseCatalog(store)
    history = _days(days)
    built = time.perf_counter()
    for index in range(tables):
        batch = f"history-{index:03d}"
        _stage(catalog, batch, f"table_{index:03d}", history)
        catalog.promote(batch, actor="benchmark")
    setup = time.perf_counter() - built
    publish, rollback, read = [], [], []
    changed = history[len(history) // 2 : len(history) // 2 + CHANGED_DAYS]
    for repetition in range(repetitions):
        table = f"table_{repetition % tables:03d}"
        batch = f"change-{repetition:02d}"
        _stage(catalog, batch, table, changed)
        before = catalog.current_release_id()
        assert before is not None
        publish.append(_timed(lambda batch=batch: catalog.promote(batch, actor="benchmark")))
        after = catalog.current_release_id()
        fresh = ReleaseCatalog(store)  # nothing cached
        read.append(
            _timed(
                lambda fresh=fresh, table=table, after=after: fresh.release_partitions(
                    table, changed[0], changed[-1], release_id=after
                )
            )
        )
        served = fresh.release_partitions(table, changed[0], changed[-1], release_id=after)
        assert {entry.batch_id for entry in served.values()} == {batch}, "the release serves the change"
        rollback.append(
            _timed(lambda before=before: catalog.rollback(before, actor="benchmark", reason="benchmark"))
        )
    return {
        "tables": tables,
        "days": days,
        "partitions": tables * days,
        "setup_seconds": round(setup, 1),
        "publish_seconds": statistics.median(publish),
        "rollback_seconds": statistics.median(rollback),
        "release_read_seconds": statistics.median(read),
        "catalog_bytes": sum(path.stat().st_size for path in (root / name).rglob("*") if path.is_file()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=7, help="timed repetitions per scale (7)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (a temporary one by default)")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        figures = {name: measure(name, Path(scratch), args.repetitions) for name in SCALES}
    for name, found in figures.items():
        print(
            f"{name}: {found['tables']} tables x {found['days']} days, publish "
            f"{found['publish_seconds'] * 1000:.1f} ms, rollback {found['rollback_seconds'] * 1000:.1f} ms, "
            f"read {found['release_read_seconds'] * 1000:.1f} ms (setup {found['setup_seconds']} s, "
            f"{found['catalog_bytes'] / 1e6:.1f} MB)"
        )
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    for key in ("publish_seconds", "rollback_seconds", "release_read_seconds"):
        results[key] = {name: round(found[key], 4) for name, found in figures.items()}
    results["catalog_large_scale"] = "100 tables x 3650 days"
    results["catalog_repetitions"] = args.repetitions
    args.results.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
