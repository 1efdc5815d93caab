"""The floor: the same feature computation as one plain PySpark script in a process and JVM of its own, with
no Dagster, no checks and no catalog; and `measure_floor`, which runs it as a subprocess and times it.

As a script: `python benchmarks/floor.py --landing ROOT --output DIR --start DAY --end DAY --result FILE`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from memory import MemorySample, MemorySampler
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from spark_setup import SparkSettings, add_spark_options

from backfills.assets.deliveries import counted_events, deliveries_of, mark_redeliveries
from backfills.assets.generator import LANDING_PREFIX
from backfills.assets.registry import dependency_order, feature_spec
from backfills.resources.feature_store import partition_facts
from backfills.specs import LANDED_DATE, RAW_SCHEMA_DDL, RAW_TRANSACTIONS, DateRange, FeatureSpec

FLOOR_SCRIPT = Path(__file__).resolve()


# The script


def _landed(spark: SparkSession, landing: Path) -> DataFrame:
    """Every landing file, each row with the day of the file it came from."""
    files = sorted(str(path) for path in (landing / LANDING_PREFIX).glob("date=*/*.parquet"))
    day = F.regexp_extract(F.col("_metadata.file_path"), r"date=(\d{4}-\d{2}-\d{2})", 1)
    return spark.read.schema(RAW_SCHEMA_DDL).parquet(*files).withColumn(LANDED_DATE, F.to_date(day))


def _table(spark: SparkSession, output: Path, spec: FeatureSpec) -> DataFrame:
    # The schema names feature_date, so Spark takes it from the folder names with the declared type.
    return spark.read.schema(spec.schema_ddl).parquet(str(output / spec.name)).select(*spec.column_names)


def compute(spark: SparkSession, landing: Path, output: Path, dates: DateRange) -> dict[str, float]:
    """Every feature table over `dates`, in dependency order, each read back by the tables after it."""
    seconds = {}
    for spec in dependency_order():
        began = time.perf_counter()
        inputs: dict[str, DataFrame] = {}
        for item in spec.inputs:
            if item.table == RAW_TRANSACTIONS:
                # The same rule as staging: each transaction once, as its earliest delivery.
                marked = mark_redeliveries(_landed(spark, landing), redelivery_days=item.redelivery_days)
                inputs[item.table] = counted_events(
                    deliveries_of(marked, dates, lateness_days=item.lateness_days)
                )
            else:
                inputs[item.table] = _table(spark, output, feature_spec(item.table))
        rows = spec.transform(inputs, dates).select(*spec.column_names)
        # The staged layout: one file per feature_date, rows in key order.
        (
            rows.repartition(F.col(spec.date_column))
            .sortWithinPartitions(spec.date_column, *spec.entity_keys)
            .write.mode("overwrite")
            .partitionBy(spec.date_column)
            .parquet(str(output / spec.name))
        )
        seconds[spec.name] = time.perf_counter() - began
    return seconds


def content_hashes(spark: SparkSession, output: Path) -> dict[str, dict[str, str]]:
    """Table -> day -> content hash of what the floor wrote, computed as staging computes it."""
    hashes = {}
    for spec in dependency_order():
        facts = partition_facts(
            _table(spark, output, spec), date_column=spec.date_column, schema_ddl=spec.schema_ddl
        )
        hashes[spec.name] = {day: fact.content_hash for day, fact in sorted(facts.items())}
    return hashes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--landing", type=Path, required=True, help="storage root holding raw/transactions")
    parser.add_argument("--output", type=Path, required=True, help="folder for the feature tables")
    parser.add_argument("--start", type=date.fromisoformat, required=True)
    parser.add_argument("--end", type=date.fromisoformat, required=True)
    parser.add_argument("--result", type=Path, required=True, help="JSON file for the timings")
    parser.add_argument("--hashes", action="store_true", help="after timing, also hash every partition")
    add_spark_options(parser, driver_memory="3g")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    # The same session settings as a governed run's local session.
    spark = SparkSettings.from_args(args).session()
    result: dict[str, object] = {"session_seconds": time.perf_counter() - began}
    result["tables"] = compute(spark, args.landing, args.output, DateRange(args.start, args.end))
    result["written_at"] = time.time()
    if args.hashes:
        result["hashes"] = content_hashes(spark, args.output)
    spark.stop()
    args.result.write_text(json.dumps(result))
    return 0


# Running it


@dataclass(frozen=True)
class FloorRun:
    seconds: float  # from spawning the process to the last table written: interpreter, JVM and compute
    session_seconds: float  # of which: starting the Spark session (the JVM)
    table_seconds: dict[str, float]
    hashes: dict[str, dict[str, str]] | None
    peak: MemorySample | None
    load: tuple[float, float]  # 1-minute load average before and after


def measure_floor(
    landing: Path,
    output: Path,
    dates: DateRange,
    *,
    spark: SparkSettings,
    hashes: bool,
) -> FloorRun:
    """Run the floor script in a fresh process (its own JVM) and time it from spawn to written."""
    result_file = output.with_suffix(".json")
    command = [
        sys.executable,
        str(FLOOR_SCRIPT),
        f"--landing={landing}",
        f"--output={output}",
        f"--start={dates.start}",
        f"--end={dates.end}",
        f"--result={result_file}",
        *spark.arguments(),
        *(["--hashes"] if hashes else []),
    ]
    load_before = os.getloadavg()[0]
    spawned_at = time.time()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with MemorySampler(lambda: [process.pid]) as sampler:
        log, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"the floor script failed (exit {process.returncode}):\n{log[-4000:]}")
    result = json.loads(result_file.read_text())
    written_at = float(result["written_at"])
    return FloorRun(
        seconds=written_at - spawned_at,
        session_seconds=float(result["session_seconds"]),
        table_seconds=dict(result["tables"]),
        hashes=result.get("hashes"),
        peak=sampler.peak(until=written_at),
        load=(load_before, os.getloadavg()[0]),
    )


if __name__ == "__main__":
    sys.exit(main())
