"""Benchmark harness for what exists now: the synthetic generator's throughput, and staging a feature table
as one range run against the same days staged one partition per run. Writes benchmarks/REPORT.md.

It measures and reports; it asserts nothing (the test suite does that). `make bench` runs it with the
defaults; `.venv/bin/python benchmarks/run.py --help` lists the options.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pyspark
from pyspark.sql import SparkSession

from backfills.assets.generator import generate_file, write_landing_zone
from backfills.assets.registry import DAILY, WEEKLY, feature_spec
from backfills.assets.staging import stage_partitions
from backfills.assets.transformations import DateRange
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.spark import build_session
from backfills.resources.storage import LocalObjectStore

BENCHMARKS_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCHMARKS_DIR.parent
START = date(2025, 1, 1)
# Staged in this order: the 7-day table reads the daily table staged in the same batch.
STAGED_TABLES = (DAILY, WEEKLY)
LAYOUTS = ("range", "per-partition")
LOAD_AT_START = os.getloadavg()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=3, help="repetitions of each measurement (3)")
    parser.add_argument("--customers", type=int, default=20_000, help="distinct customers (20000)")
    parser.add_argument("--seed", type=int, default=7, help="generator seed (7)")
    parser.add_argument(
        "--generator-rows-per-day", type=int, default=100_000, help="rows per day for (a) (100000)"
    )
    parser.add_argument("--generator-days", type=int, default=5, help="days per repetition of (a) (5)")
    parser.add_argument(
        "--stage-rows-per-day", type=int, default=100_000, help="rows per day for (b) (100000)"
    )
    parser.add_argument("--stage-days", type=int, default=14, help="feature days staged in (b) (14)")
    parser.add_argument("--master", default="local[2]", help="Spark master (local[2])")
    parser.add_argument("--driver-memory", default="3g", help="Spark driver memory (3g)")
    parser.add_argument("--shuffle-partitions", type=int, default=4, help="Spark shuffle partitions (4)")
    parser.add_argument(
        "--report", type=Path, default=BENCHMARKS_DIR / "REPORT.md", help="where to write the report"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=BENCHMARKS_DIR / ".work",
        help="folder under which a fresh scratch folder for the data is made (benchmarks/.work)",
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch data afterwards")
    args = parser.parse_args(argv)
    for name in ("repetitions", "customers", "generator_rows_per_day", "generator_days", "stage_days"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


@dataclass
class Samples:
    """Repeated measurements of one quantity."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def cell(self, digits: int = 2) -> str:
        """'median (min–max)' for a report table."""
        return f"{self.median:.{digits}f} ({min(self.values):.{digits}f}–{max(self.values):.{digits}f})"


@dataclass
class StagingResult:
    table: str
    seconds: dict[str, Samples]  # layout -> wall seconds per repetition
    rows: int
    hashes_equal: bool


# The machine


def _first_line(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unknown ({error})"
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[0] if lines else "unknown"


def _proc_field(path: str, field: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def machine() -> dict[str, str]:
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else "java"
    memory_kib = _proc_field("/proc/meminfo", "MemTotal")
    memory = f"{int(memory_kib.split()[0]) / 2**20:.1f} GiB" if memory_kib else "unknown"
    cpu = _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown"
    return {
        "cores": f"{os.cpu_count()} ({cpu})",
        "memory": memory,
        "os": platform.platform(),
        "python": platform.python_version(),
        "java": _first_line([java, "-version"]),
        "pyspark": pyspark.__version__,
        # Other work on the machine slows every figure down: look here before comparing two reports.
        "load average at start (1, 5, 15 min)": ", ".join(f"{load:.2f}" for load in LOAD_AT_START),
    }


def source_version() -> str:
    commit = _first_line(["git", "-C", str(PROJECT_DIR), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(PROJECT_DIR), "status", "--porcelain"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return f"{commit}{' with uncommitted changes' if dirty else ''}"


def _process_tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name may contain spaces and parentheses: the parent PID follows the last ')'.
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = [root], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        tree.extend(children)
        frontier = children
    return tree


def peak_memory() -> list[tuple[str, float]]:
    """Peak resident memory (VmHWM) of this process and every process it started (the Spark JVM)."""
    peaks = []
    for pid in _process_tree(os.getpid()):
        hwm = _proc_field(f"/proc/{pid}/status", "VmHWM")
        name = _proc_field(f"/proc/{pid}/status", "Name")
        if hwm:
            peaks.append((f"{name} (pid {pid})", int(hwm.split()[0]) / 1024))
    return peaks


# The measurements


def bench_generator(args: argparse.Namespace, work: Path) -> Samples:
    """Seconds per day for write_landing_zone into a fresh local store (Parquet files on disk)."""
    # The customer table is drawn once per process and cached; draw it (and warm numpy) before timing.
    generate_file(START, seed=args.seed, customers=args.customers, rows_per_day=args.generator_rows_per_day)
    per_day = []
    for repetition in range(args.repetitions):
        root = work / f"generator-{repetition}"
        began = time.perf_counter()
        write_landing_zone(
            LocalObjectStore(root),
            start=START,
            days=args.generator_days,
            customers=args.customers,
            rows_per_day=args.generator_rows_per_day,
            seed=args.seed,
        )
        per_day.append((time.perf_counter() - began) / args.generator_days)
        print(f"  generator repetition {repetition + 1}: {per_day[-1]:.3f} s per day", flush=True)
        shutil.rmtree(root)
    return Samples(per_day)


def stage(
    table: str,
    dates: DateRange,
    *,
    layout: str,
    batch_id: str,
    spark: SparkSession,
    store: LocalObjectStore,
    catalog: ReleaseCatalog,
) -> None:
    """Stage `dates` of `table` as one range run, or one run per partition."""
    spec = feature_spec(table)
    runs = [dates] if layout == "range" else [DateRange(day, day) for day in dates.days()]
    for run in runs:
        stage_partitions(
            spec,
            run,
            batch_id=batch_id,
            run_id=f"{batch_id}-{run.start.isoformat()}",
            requester="benchmark",
            earliest=START,
            spark=spark,
            store=store,
            catalog=catalog,
        )


def bench_staging(
    args: argparse.Namespace, spark: SparkSession, store: LocalObjectStore
) -> tuple[list[StagingResult], float]:
    """Each repetition stages both tables in both layouts, each layout into its own batch."""
    catalog = ReleaseCatalog(store)
    session = {"spark": spark, "store": store, "catalog": catalog}
    dates = DateRange(START, date.fromordinal(START.toordinal() + args.stage_days - 1))
    # Spark's first job pays class loading and JIT warm-up; keep it out of the comparison.
    began = time.perf_counter()
    stage(DAILY, DateRange(START, START), layout="range", batch_id="warmup", **session)
    warmup = time.perf_counter() - began
    seconds = {table: {layout: [] for layout in LAYOUTS} for table in STAGED_TABLES}
    batches: dict[str, list[str]] = {layout: [] for layout in LAYOUTS}
    for repetition in range(args.repetitions):
        # Alternate which layout goes first, so neither always runs on a warmer JVM or page cache.
        order = LAYOUTS if repetition % 2 == 0 else tuple(reversed(LAYOUTS))
        for table in STAGED_TABLES:
            for layout in order:
                batch_id = f"bench-{repetition}-{layout}"
                began = time.perf_counter()
                stage(table, dates, layout=layout, batch_id=batch_id, **session)
                elapsed = time.perf_counter() - began
                seconds[table][layout].append(elapsed)
                print(f"  staging repetition {repetition + 1}: {table} {layout}: {elapsed:.2f} s", flush=True)
        for layout in LAYOUTS:
            batches[layout].append(f"bench-{repetition}-{layout}")

    def hashes(batch_id: str, table: str) -> dict[str, str]:
        return {day: record.content_hash for day, record in catalog.get_batch(batch_id).tables[table].items()}

    results = []
    for table in STAGED_TABLES:
        reference = hashes(batches["range"][0], table)
        first = catalog.get_batch(batches["range"][0]).tables[table]
        results.append(
            StagingResult(
                table=table,
                seconds={layout: Samples(seconds[table][layout]) for layout in LAYOUTS},
                rows=sum(record.row_count for record in first.values()),
                hashes_equal=all(
                    hashes(batch_id, table) == reference for layout in LAYOUTS for batch_id in batches[layout]
                ),
            )
        )
    return results, warmup


# The report


def render(
    args: argparse.Namespace,
    *,
    started: datetime,
    total_seconds: float,
    spark_start: float,
    warmup: float,
    generator: Samples,
    staging: list[StagingResult],
    landed_rows: int,
    peaks: list[tuple[str, float]],
) -> str:
    facts = machine()
    command = " ".join(["benchmarks/run.py", *sys.argv[1:]])
    lines = [
        "# Benchmark report",
        "",
        f"Written by `{command}` on {started:%Y-%m-%d %H:%M} UTC from commit {source_version()}, "
        f"in {total_seconds / 60:.1f} minutes. Figures are medians of {args.repetitions} repetitions, "
        "with the smallest and largest in brackets. How to read them: benchmarks/README.md.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in facts.items()],
        "",
        "## Scale",
        "",
        "| | |",
        "|---|---|",
        f"| customers | {args.customers} |",
        f"| (a) generator | {args.generator_days} days per repetition, "
        f"{args.generator_rows_per_day} rows per day |",
        f"| (b) staging | {args.stage_days} feature days from {START}; landing zone of {args.stage_days + 1} "
        f"files ({args.stage_rows_per_day} rows per day, {landed_rows} in all; the last holds late events) |",
        f"| Spark | `{args.master}`, driver memory {args.driver_memory}, "
        f"{args.shuffle_partitions} shuffle partitions, one session for all of (b) |",
        "",
        "## (a) Generator throughput",
        "",
        "`write_landing_zone` into a fresh `LocalObjectStore`: generating, encoding Parquet and writing the "
        "file of each day.",
        "",
        "| rows per day | seconds per day | rows per second (median) |",
        "|---|---|---|",
        f"| {args.generator_rows_per_day} | {generator.cell(3)} | "
        f"{args.generator_rows_per_day / generator.median:,.0f} |",
        "",
        "## (b) Staging: one range run against one partition per run",
        "",
        "`stage_partitions` of the same days, once as one call for the whole range and once as one call per "
        "day, each layout into its own batch, in one Spark session (no Dagster). The 7-day table reads the "
        "daily table staged in the same batch.",
        "",
        "| table | days | rows staged | range run (s) | one partition per run (s) | per partition / range "
        "| content hashes equal across layouts and repetitions |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in staging:
        ranged, single = result.seconds["range"], result.seconds["per-partition"]
        lines.append(
            f"| `{result.table}` | {args.stage_days} | {result.rows} | {ranged.cell()} | {single.cell()} | "
            f"{single.median / ranged.median:.1f}x | {'yes' if result.hashes_equal else '**no**'} |"
        )
    lines += [
        "",
        f"Not in the figures: starting the Spark session ({spark_start:.1f} s, once) and a one-day warm-up "
        f"run ({warmup:.1f} s).",
        "",
        "## Peak resident memory",
        "",
        "Peak resident set (VmHWM) of the harness and the processes it started, over the whole run; the sum "
        "is an upper bound of what they held at one time.",
        "",
        "| process | peak MiB |",
        "|---|---|",
        *[f"| {name} | {mib:,.0f} |" for name, mib in peaks],
        f"| total | {sum(mib for _, mib in peaks):,.0f} |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    began = time.perf_counter()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.work_dir))
    try:
        print(f"(a) generator: {args.generator_days} days x {args.generator_rows_per_day} rows", flush=True)
        generator = bench_generator(args, work)

        print(f"(b) staging: {args.stage_days} days x {args.stage_rows_per_day} rows", flush=True)
        store = LocalObjectStore(work / "staging-root")
        summary = write_landing_zone(
            store,
            start=START,
            days=args.stage_days + 1,  # the day after the range holds the last day's late events
            customers=args.customers,
            rows_per_day=args.stage_rows_per_day,
            seed=args.seed,
        )
        landed_rows = sum(summary.rows_per_day.values())
        spark_began = time.perf_counter()
        spark = build_session(
            master=args.master,
            remote=None,
            driver_memory=args.driver_memory,
            shuffle_partitions=args.shuffle_partitions,
            bind_address="127.0.0.1",
        )
        spark_start = time.perf_counter() - spark_began
        try:
            staging, warmup = bench_staging(args, spark, store)
            peaks = peak_memory()
        finally:
            spark.stop()
    finally:
        if args.keep_work:
            print(f"scratch data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    report = render(
        args,
        started=started,
        total_seconds=time.perf_counter() - began,
        spark_start=spark_start,
        warmup=warmup,
        generator=generator,
        staging=staging,
        landed_rows=landed_rows,
        peaks=peaks,
    )
    args.report.write_text(report)
    print(f"\n{report}\nwrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
