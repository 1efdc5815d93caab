"""The online store: how long a sync of a table's newest partition takes, and how fast readers get rows.

For each scale (20,000 and 1,000,000 entities) a storage root gets one released partition of
customer_txn_7d (a Parquet file of random valid rows, recorded and promoted through the catalog), and
`serving.online_sync.sync_release` loads it into a fresh store on each backend: the embedded SQLite file and
a local redis-server (Debian's package, started here on 127.0.0.1, nothing persisted): Spark read, rows
streamed into the store in chunks, parity read-back of 1,000 keys, switch. Then lookups of 1 and 100
random keys through `OnlineStore.get`, timed one call at a time (p50 and p99 over `--lookups` calls, after
a warm-up).

Goals on this machine: Redis p99 < 5 ms for 100 keys; a sync of 1M entities < 60 s. Run it alone on the
machine (nothing else running); it writes ONLINE_REPORT.md beside it and the figures to results.json under
`online`.

    python benchmarks/online.py [--scales 20000,1000000] [--lookups 2000] [--results benchmarks/results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from backfills.assets.registry import feature_spec
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import ColumnSchema, PartitionRecord
from backfills.resources.storage import LocalObjectStore
from backfills.serving.online_redis import RedisOnlineStore
from backfills.serving.online_sqlite import SqliteOnlineStore
from backfills.serving.online_store import OnlineStore
from backfills.serving.online_sync import sync_release
from backfills.serving.training import arrow_type

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from redis_server import RedisServer, find_redis_server  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spark_setup import SparkSettings, add_spark_options  # noqa: E402

TABLE = "customer_txn_7d"
DAY = "2025-06-30"
GOAL_REDIS_P99_MS_100_KEYS = 5.0
GOAL_SYNC_1M_SECONDS = 60.0


def _rows(count: int, seed: int) -> pa.Table:
    """`count` random rows of the table that its contract accepts (the date column is the folder's)."""
    spec = feature_spec(TABLE)
    rng = np.random.default_rng(seed)
    txn = rng.integers(1, 200, count)
    declined = txn // 10
    approved = txn - declined
    cents = rng.integers(100, 50_000, count) * approved
    maximum = np.minimum(cents, rng.integers(100, 50_000, count))
    values = {
        "customer_id": [f"C{n:07d}" for n in range(1, count + 1)],
        "txn_count_7d": txn,
        "approved_count_7d": approved,
        "declined_count_7d": declined,
        "amount_sum_usd_7d": [Decimal(int(c)) / 100 for c in cents],
        "amount_max_usd_7d": [Decimal(int(m)) / 100 for m in maximum],
        "avg_ticket_usd_7d": [
            Decimal(int(c // a)) / 100 if a else None for c, a in zip(cents, approved, strict=True)
        ],
        "decline_rate_7d": declined / txn,
        "active_days_7d": rng.integers(1, 8, count).astype(np.int32),
    }
    columns = [column for column in spec.columns if column.name != spec.date_column]
    return pa.table({c.name: pa.array(values[c.name], type=arrow_type(c.type)) for c in columns})


def _release(root: Path, count: int) -> ReleaseCatalog:
    """A storage root whose current release serves one partition of `count` entities."""
    store = LocalObjectStore(root)
    catalog = ReleaseCatalog(store)
    batch = f"bench-{count}"
    base = f"staging/{TABLE}/{batch}/a1"
    key = f"{base}/feature_date={DAY}/part-00000.parquet"
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_rows(count, seed=count), path)
    spec = feature_spec(TABLE)
    record = PartitionRecord(
        table=TABLE,
        partition=DAY,
        batch_id=batch,
        run_id=f"run-{batch}",
        attempt_id="a1",
        base=base,
        files=[key],
        row_count=count,
        content_hash=f"{count:064d}",
        columns=[ColumnSchema(name=c.name, type=c.type) for c in spec.columns],
        code_version=spec.code_version,
        written_at=datetime.now(UTC),
    )
    catalog.record_partitions(batch, [record], run_id=f"run-{batch}")
    catalog.mark_complete(batch, {TABLE: [DAY]})
    catalog.promote(batch, actor="benchmark")
    return catalog


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 3),
    }


def _lookups(store: OnlineStore, count: int, calls: int) -> dict[str, dict[str, float]]:
    rng = random.Random(1)
    keys = [f"C{n:07d}" for n in range(1, count + 1)]
    found = {}
    for size in (1, 100):
        for _ in range(50):  # warm-up
            store.get(TABLE, rng.sample(keys, size))
        samples = []
        for _ in range(calls):
            wanted = rng.sample(keys, size)
            started = time.perf_counter()
            rows = store.get(TABLE, wanted)
            samples.append(time.perf_counter() - started)
            assert all(rows[key] is not None for key in wanted)
        found[f"{size}_keys"] = _percentiles(samples)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--scales", default="20000,1000000", help="entities per partition (20000,1000000)")
    parser.add_argument("--lookups", type=int, default=2000, help="timed lookups per size and backend (2000)")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("results.json"))
    parser.add_argument("--report", type=Path, default=Path(__file__).with_name("ONLINE_REPORT.md"))
    add_spark_options(parser, driver_memory="3g")
    args = parser.parse_args(argv)
    begun = time.perf_counter()
    spark = SparkSettings.from_args(args).session()
    scales = [int(value) for value in args.scales.split(",")]
    figures: dict[str, object] = {"scales": scales, "lookups": args.lookups, "day": DAY}
    sync: dict[str, dict[str, float]] = {"sqlite": {}, "redis": {}}
    lookup: dict[str, dict[str, object]] = {"sqlite": {}, "redis": {}}
    with tempfile.TemporaryDirectory(prefix="online-bench-") as work:
        work_dir = Path(work)
        with RedisServer(work_dir / "redis", binary=find_redis_server()) as redis_server:
            for count in scales:
                catalog = _release(work_dir / f"root-{count}", count)
                for backend in ("sqlite", "redis"):
                    store: OnlineStore = (
                        SqliteOnlineStore(work_dir / f"online-{count}.db")
                        if backend == "sqlite"
                        else RedisOnlineStore(redis_server.url, key_prefix=f"bench:{count}")
                    )
                    with store:
                        started = time.perf_counter()
                        [done] = sync_release(lambda: spark, catalog, store, tables=[TABLE])
                        seconds = time.perf_counter() - started
                        assert done.action == "loaded" and done.keys_written == count, done
                        assert done.parity and done.parity["passed"], done.parity
                        sync[backend][str(count)] = round(seconds, 2)
                        print(f"{backend} sync of {count} entities: {seconds:.1f}s", flush=True)
                        lookup[backend][str(count)] = _lookups(store, count, args.lookups)
                        print(f"{backend} lookups over {count}: {lookup[backend][str(count)]}", flush=True)
    largest = str(max(scales))
    million = "1000000"
    figures.update(
        {
            "sync_seconds": sync,
            "lookup": lookup,
            "goals": {
                "redis_p99_ms_100_keys": GOAL_REDIS_P99_MS_100_KEYS,
                "sync_1m_seconds": GOAL_SYNC_1M_SECONDS,
                "redis_p99_met": lookup["redis"][largest]["100_keys"]["p99_ms"] < GOAL_REDIS_P99_MS_100_KEYS,
                "sync_1m_met": (
                    max(sync["sqlite"][million], sync["redis"][million]) < GOAL_SYNC_1M_SECONDS
                    if million in sync["redis"]
                    else None
                ),
            },
            "commit": _commit(),
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "load_average_at_end": round(os.getloadavg()[0], 2),
            "seconds": round(time.perf_counter() - begun, 1),
        }
    )
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    results["online"] = figures
    args.results.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    args.report.write_text(_report(figures))
    print(json.dumps(figures, indent=2, sort_keys=True))
    return 0


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    )
    return done.stdout.strip() or "unknown"


def _verdict(met: bool | None) -> str:
    return "not measured" if met is None else ("**met**" if met else "**missed**")


def _report(figures: dict) -> str:
    """ONLINE_REPORT.md: the goals first, then every figure."""
    goals, sync, lookup = figures["goals"], figures["sync_seconds"], figures["lookup"]
    largest = str(max(figures["scales"]))
    lines = [
        "# Online store benchmark",
        "",
        f"Written by `benchmarks/online.py` on {figures['measured_at']} from commit {figures['commit']}, "
        f"in {figures['seconds']:.0f} s; {figures['lookups']} timed lookups per size, backend and scale. "
        "How it measures: the docstring of `benchmarks/online.py`.",
        "",
        "## Goals",
        "",
        "| goal | measured | verdict |",
        "|---|---|---|",
        f"| Redis p99 < {goals['redis_p99_ms_100_keys']:g} ms for 100 keys ({largest} entities) | "
        f"{lookup['redis'][largest]['100_keys']['p99_ms']} ms | {_verdict(goals['redis_p99_met'])} |",
        f"| sync of 1,000,000 entities < {goals['sync_1m_seconds']:g} s | "
        + (
            f"SQLite {sync['sqlite']['1000000']} s, Redis {sync['redis']['1000000']} s"
            if goals["sync_1m_met"] is not None
            else "-"
        )
        + f" | {_verdict(goals['sync_1m_met'])} |",
        "",
        "## Sync of the newest partition (Spark read, load, parity read-back, switch)",
        "",
        "| entities | SQLite | Redis |",
        "|---|---|---|",
    ]
    lines += [f"| {int(n):,} | {sync['sqlite'][n]} s | {sync['redis'][n]} s |" for n in sync["redis"]]
    lines += ["", "## Lookups through `OnlineStore.get` (p50 / p99)", ""]
    lines += ["| entities | keys | SQLite | Redis |", "|---|---|---|---|"]
    for n in lookup["redis"]:
        for size in ("1_keys", "100_keys"):
            sqlite, redis = lookup["sqlite"][n][size], lookup["redis"][n][size]
            lines.append(
                f"| {int(n):,} | {size.split('_')[0]} | {sqlite['p50_ms']} / {sqlite['p99_ms']} ms "
                f"| {redis['p50_ms']} / {redis['p99_ms']} ms |"
            )
    lines += ["", f"1-minute load average at the end: {figures['load_average_at_end']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
