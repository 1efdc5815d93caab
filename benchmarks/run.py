"""The benchmark of `make bench`: a governed backfill of every feature table through the real Dagster daemon,
checks included, against the same computation as one plain PySpark script (the floor); with a JVM per run,
with one shared Spark Connect server, and one partition per run; promotion and rollback at 1x and 10x
partitions; the approval latency; the peak memory of every process. Writes benchmarks/REPORT.md.

It measures and reports; it asserts nothing (the test suite does that). `--help` lists the options.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster
import pyspark
from figures import Samples  # noqa: F401 (checks.py imports it from here)
from floor import measure_floor
from governed import GovernedSetup, measure_governed
from memory import peak_resident_sets, proc_field
from promotion import bench_promotion
from report import Results, render, results_figures
from spark_setup import SparkSettings, add_spark_options

from backfills.assets.generator import write_landing_zone
from backfills.resources.storage import LocalObjectStore
from backfills.specs import DateRange

BENCHMARKS_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCHMARKS_DIR.parent
START = date(2025, 1, 1)
LOAD_AT_START = os.getloadavg()
MEASUREMENTS = ("floor", "a", "b", "c", "promotion")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    scale = parser.add_argument_group("scale")
    scale.add_argument("--days", type=int, default=365, help="days backfilled, from 2025-01-01 (365)")
    scale.add_argument("--rows-per-day", type=int, default=100_000, help="raw transactions per day (100000)")
    scale.add_argument("--customers", type=int, default=20_000, help="distinct customers (20000)")
    scale.add_argument("--seed", type=int, default=7, help="generator seed (7)")
    scale.add_argument("--repetitions", type=int, default=3, help="repetitions of every measurement (3)")
    scale.add_argument(
        "--per-partition-days",
        type=int,
        default=15,
        help="days backfilled one partition per run (c), extrapolated to --days (15)",
    )
    scale.add_argument(
        "--promotion-repetitions", type=int, default=5, help="repetitions of promotion and rollback (5)"
    )
    parser.add_argument(
        "--only",
        default=",".join(MEASUREMENTS),
        help="comma-separated subset of: floor, a (JVM per run), b (shared Spark Connect), "
        "c (one partition per run), promotion (needs a or b); default: all",
    )
    parser.add_argument(
        "--sensor-interval",
        type=int,
        default=30,
        help="approval sensor interval in a and b (30, the default)",
    )
    parser.add_argument(
        "--short-sensor-interval", type=int, default=5, help="approval sensor interval in c (5)"
    )
    add_spark_options(parser, driver_memory="3g")
    parser.add_argument(
        "--backfill-timeout", type=float, default=6 * 3600, help="seconds one backfill may take (21600)"
    )
    parser.add_argument(
        "--report", type=Path, default=BENCHMARKS_DIR / "REPORT.md", help="where to write the report"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=BENCHMARKS_DIR / "results.json",
        help="machine-readable figures, merged into this file (benchmarks/results.json)",
    )
    parser.add_argument(
        "--results-key",
        default=None,
        help="write the figures under this key of --results instead of at its top level (say, a spread "
        "run at another scale)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=BENCHMARKS_DIR / ".work",
        help="folder under which a fresh scratch folder for the data is made (benchmarks/.work)",
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch data afterwards")
    parser.add_argument(
        "--render-only",
        type=Path,
        metavar="RESULTS",
        help="measure nothing: write the report from the results a run saved (benchmarks/.work/*.pickle)",
    )
    args = parser.parse_args(argv)
    for name in ("days", "rows_per_day", "customers", "repetitions", "per_partition_days"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    args.only = [item.strip() for item in args.only.split(",") if item.strip()]
    unknown = sorted(set(args.only) - set(MEASUREMENTS))
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(MEASUREMENTS)}")
    args.per_partition_days = min(args.per_partition_days, args.days)
    return args


# The machine (checks.py imports these)


def _first_line(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unknown ({error})"
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[0] if lines else "unknown"


def machine() -> dict[str, str]:
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else "java"
    memory_kib = proc_field("/proc/meminfo", "MemTotal")
    memory = f"{int(memory_kib.split()[0]) / 2**20:.1f} GiB" if memory_kib else "unknown"
    cpu = proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown"
    return {
        "cores": f"{os.cpu_count()} ({cpu})",
        "memory": memory,
        "os": platform.platform(),
        "python": platform.python_version(),
        "java": _first_line([java, "-version"]),
        "pyspark": pyspark.__version__,
        "dagster": dagster.__version__,
        # Other work on the machine slows every figure down: look here before comparing two reports.
        "load average at start (1, 5, 15 min)": ", ".join(f"{load:.2f}" for load in LOAD_AT_START),
        "load average at the end (1, 5, 15 min)": ", ".join(f"{load:.2f}" for load in os.getloadavg()),
    }


def source_version() -> str:
    commit = _first_line(["git", "-C", str(PROJECT_DIR), "rev-parse", "--short", "HEAD"])
    # The reports and results.json the benchmarks write are not source: they do not make the code dirty.
    reports = [":!benchmarks/*.md", ":!benchmarks/results.json"]
    dirty = subprocess.run(
        ["git", "-C", str(PROJECT_DIR), "status", "--porcelain", "--", ".", *reports],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{commit}{' with uncommitted changes' if dirty else ''}"


def peak_memory() -> list[tuple[str, float]]:
    """Peak resident memory (VmHWM, MiB) of this process and every process it started."""
    return peak_resident_sets()


# The measurements


def setups(args: argparse.Namespace) -> dict[str, GovernedSetup]:
    return {
        "a": GovernedSetup(
            "a", "multi_run(31), a Spark JVM per run", 31, False, args.days, args.sensor_interval
        ),
        "b": GovernedSetup(
            "b", "multi_run(31), one shared Spark Connect server", 31, True, args.days, args.sensor_interval
        ),
        "c": GovernedSetup(
            "c",
            "one partition per run, a Spark JVM per run",
            1,
            False,
            args.per_partition_days,
            args.short_sensor_interval,
        ),
    }


def generate(args: argparse.Namespace, landing: Path, results: Results) -> None:
    began = time.perf_counter()
    summary = write_landing_zone(
        LocalObjectStore(landing),
        start=START,
        days=args.days + 1,  # the day after the range holds the last day's late events
        customers=args.customers,
        rows_per_day=args.rows_per_day,
        seed=args.seed,
    )
    results.generation_seconds = time.perf_counter() - began
    results.landed_rows = sum(summary.rows_per_day.values())


def run_measurements(
    args: argparse.Namespace, work: Path, results: Results, checkpoint: Callable[[], None]
) -> tuple[Path, str] | None:
    """Every repetition runs each selected configuration once, in an order rotated from one repetition to
    the next (`checkpoint` after each); returns the storage root and batch of the last full-range governed
    backfill that succeeded."""
    spark = SparkSettings.from_args(args)
    landing = work / "landing"
    configurations = [key for key in ("floor", "a", "b", "c") if key in args.only]
    kept: tuple[Path, str] | None = None
    by_key = setups(args)
    for repetition in range(args.repetitions):
        shift = repetition % max(1, len(configurations))
        order = configurations[shift:] + configurations[:shift]
        results.order.append(order)
        for key in order:
            folder = work / f"{repetition + 1}-{key}"
            print(f"repetition {repetition + 1}: {key} (load {os.getloadavg()[0]:.1f})", flush=True)
            try:
                if key == "floor":
                    floor = measure_floor(
                        landing,
                        folder / "output",
                        DateRange(START, START + timedelta(days=args.days - 1)),
                        spark=spark,
                        hashes=not any(run.hashes for run in results.floors),
                    )
                    results.floors.append(floor)
                    print(f"  floor: {floor.seconds:.1f} s", flush=True)
                    shutil.rmtree(folder, ignore_errors=True)
                    checkpoint()
                    continue
                run = measure_governed(
                    by_key[key],
                    start=START,
                    landing=landing,
                    folder=folder,
                    spark=spark,
                    timeout=args.backfill_timeout,
                )
            except Exception as error:  # one failed configuration must not lose the others' figures
                results.errors.append(f"repetition {repetition + 1}, {key}: {type(error).__name__}: {error}")
                print(f"  failed: {traceback.format_exc()}", flush=True)
                shutil.rmtree(folder, ignore_errors=True)
                checkpoint()
                continue
            results.governed.setdefault(key, []).append(run)
            print(f"  {key}: {run.status} in {run.seconds:.1f} s, {len(run.runs)} runs", flush=True)
            if run.ok and key in ("a", "b") and "promotion" in args.only:
                if kept is not None:
                    shutil.rmtree(kept[0].parent, ignore_errors=True)
                kept = (run.storage_root, run.batch_id)
            else:
                shutil.rmtree(folder, ignore_errors=True)
            checkpoint()
    return kept


def run_promotion(args: argparse.Namespace, work: Path, source: tuple[Path, str], results: Results) -> None:
    print("promotion and rollback at 1x and 10x partitions", flush=True)
    spark = SparkSettings.from_args(args).session()
    try:
        results.promotion = bench_promotion(
            source[0], source[1], work, repetitions=args.promotion_repetitions, spark=spark
        )
        results.promotion_source = source[1]
    except Exception as error:
        results.errors.append(f"promotion: {type(error).__name__}: {error}")
        print(f"  failed: {traceback.format_exc()}", flush=True)
    finally:
        spark.stop()


@dataclass
class SavedRun:
    """What the report is written from, saved after every configuration and before writing the report, so
    neither an interrupted run nor a failure in the report loses a measurement."""

    args: argparse.Namespace
    started: datetime
    total_seconds: float
    facts: dict[str, str]
    commit: str
    results: Results


def write_report(saved: SavedRun, path: Path) -> None:
    report = render(
        saved.args,
        started=saved.started,
        total_seconds=saved.total_seconds,
        facts=saved.facts,
        commit=saved.commit,
        results=saved.results,
    )
    path.write_text(report)
    print(f"\n{report}\nwrote {path}")
    figures = results_figures(saved.args, saved.results, saved.commit)
    results_path: Path = saved.args.results
    merged = json.loads(results_path.read_text()) if results_path.exists() else {}
    if saved.args.results_key:
        merged[saved.args.results_key] = figures
    else:
        merged.update(figures)
    results_path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    print(f"wrote {results_path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        saved = pickle.loads(args.render_only.read_bytes())
        write_report(saved, args.report)
        return 0
    args.command = " ".join(["benchmarks/run.py", *sys.argv[1:]])
    started = datetime.now(UTC)
    began = time.perf_counter()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.work_dir))
    results = Results()
    results_file = args.work_dir / f"results-{started:%Y%m%dT%H%M%S}.pickle"

    def save(facts: dict[str, str]) -> SavedRun:
        saved = SavedRun(args, started, time.perf_counter() - began, facts, source_version(), results)
        results_file.write_bytes(pickle.dumps(saved))
        return saved

    try:
        print(f"generating {args.days + 1} days x {args.rows_per_day} rows", flush=True)
        generate(args, work / "landing", results)
        kept = run_measurements(args, work, results, lambda: save(machine()))
        if "promotion" in args.only:
            if kept is None:
                results.errors.append(
                    "promotion: no successful full-range governed backfill (a or b) to copy"
                )
            else:
                run_promotion(args, work, kept, results)
    finally:
        if args.keep_work:
            print(f"scratch data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    saved = save(machine())
    print(f"results saved in {results_file} (re-render with --render-only)", flush=True)
    write_report(saved, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
