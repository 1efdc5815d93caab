"""What Dagster's bookkeeping costs per event, by event kind and instance storage (issue 27, item 2).

A partitioned asset like a staged feature table runs one range run of N partitions that does no work of its
own: it only reports what a step reports, in one of three shapes: `per_check` (ten partitioned checks, a
result per partition and check, an observation per partition: the layout before the quality gate), `gate`
(one partitioned gate check, a result per partition, the evidence once per step: today's) and `floor` (the
range's materializations alone). The run's wall time is then all bookkeeping.
Each shape is timed on a fresh instance of each storage: Dagster's default SQLite (a database per run plus
an index), the consolidated SQLite event log (one database), and PostgreSQL (started here from Debian's
package, like the tests do).

    .venv/bin/python benchmarks/dagster_bookkeeping.py --partitions 365
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml
from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetObservation,
    BackfillPolicy,
    DagsterInstance,
    DailyPartitionsDefinition,
    Definitions,
    MaterializeResult,
    MetadataValue,
    Output,
    asset,
    define_asset_job,
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the PostgreSQL server the tests start

CHECKS = 10
PARTITIONS = DailyPartitionsDefinition(start_date="2024-01-01", end_date="2026-01-01")


def _evidence(kilobytes: float) -> dict[str, Any]:
    """Figures like a check's evidence, about `kilobytes` of JSON."""
    return {
        "observed": [
            {"column": f"c{i}", "value": i / 7, "threshold": 0.05} for i in range(int(kilobytes * 20))
        ]
    }


def _check_metadata(day: str, kilobytes: float) -> dict[str, Any]:
    return {
        "batch_id": "bench",
        "partition": day,
        "rows": 1000,
        "evidence": MetadataValue.json(_evidence(kilobytes)),
    }


# What a step reports, by shape: (observations per partition, materialization metadata, evaluations).
Shape = Callable[[AssetExecutionContext], Iterator[Any]]


def per_check(context: AssetExecutionContext) -> Iterator[Any]:
    """The layout before the quality gate: an observation per partition, range-wide materialization metadata
    holding a map of every partition (copied to each partition's materialization), and an evaluation per
    partition and check."""
    days = context.partition_keys
    for day in days:
        context.log_event(
            AssetObservation(context.asset_key, partition=day, metadata={"content_hash": "0" * 64})
        )
    per_day = {day: "0" * 64 for day in days}
    yield MaterializeResult(
        metadata={
            "content_hash_per_partition": MetadataValue.json(per_day),
            "rows": MetadataValue.json(per_day),
        }
    )
    for day in days:
        for number in range(CHECKS):
            yield _evaluation(context, f"check_{number}", day, _check_metadata(day, 3))
    yield from _outputs(context)


def gate(context: AssetExecutionContext) -> Iterator[Any]:
    """Today's layout: one gate result per partition (every check's verdict and the partition's figures),
    the run-wide evidence once per step."""
    context.log_event(
        AssetObservation(context.asset_key, metadata={"evidence": MetadataValue.json(_evidence(30))})
    )
    yield MaterializeResult(metadata={"batch_id": "bench"})
    for day in context.partition_keys:
        yield _evaluation(context, "check_0", day, _check_metadata(day, 2))
    yield from _outputs(context)


def floor(context: AssetExecutionContext) -> Iterator[Any]:
    """Only the range's materializations (one per partition, Dagster's), small metadata."""
    yield MaterializeResult(metadata={"batch_id": "bench"})
    yield from _outputs(context)


def _evaluation(context: AssetExecutionContext, check: str, day: str, metadata: dict[str, Any]) -> Any:
    return AssetCheckEvaluation(
        asset_key=context.asset_key,
        check_name=check,
        passed=True,
        metadata=metadata,
        severity=AssetCheckSeverity.ERROR,
        blocking=True,
        partition=day,
    )


def _outputs(context: AssetExecutionContext) -> Iterator[Any]:
    for output_name in context.assets_def.check_specs_by_output_name:
        yield Output(None, output_name=output_name)


SHAPES: Mapping[str, Shape] = {"per_check": per_check, "gate": gate, "floor": floor}


def _definitions(shape: str) -> Definitions:
    checks = CHECKS if shape == "per_check" else 1

    @asset(
        key="bench_table",
        partitions_def=PARTITIONS,
        backfill_policy=BackfillPolicy.single_run(),
        check_specs=[
            AssetCheckSpec(f"check_{n}", asset="bench_table", blocking=True, partitions_def=PARTITIONS)
            for n in range(checks)
        ],
    )
    def bench_table(context):  # noqa: ANN001 - Dagster reads the annotation, which must not be a string
        yield from SHAPES[shape](context)

    return Definitions(assets=[bench_table], jobs=[define_asset_job("bench", selection=[bench_table])])


def _instance(home: Path, storage: str, postgres: Any) -> DagsterInstance:
    home.mkdir(parents=True)
    settings: dict[str, Any] = {"telemetry": {"enabled": False}}
    if storage == "sqlite_consolidated":
        settings["event_log_storage"] = {
            "module": "dagster._core.storage.event_log",
            "class": "ConsolidatedSqliteEventLogStorage",
            "config": {"base_dir": str(home / "history")},
        }
    elif storage == "postgres":
        database = f"bench_{home.name}"
        postgres.create_database(database)
        settings["storage"] = postgres.dagster_storage(database)
    (home / "dagster.yaml").write_text(yaml.safe_dump(settings))
    return DagsterInstance.from_config(str(home))


def measure(shape: str, storage: str, partitions: int, root: Path, postgres: Any) -> dict[str, Any]:
    keys = PARTITIONS.get_partition_keys()[:partitions]
    job = _definitions(shape).get_job_def("bench")
    with _instance(root / f"{shape}-{storage}", storage, postgres) as instance:
        tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
        started = time.monotonic()
        result = job.execute_in_process(instance=instance, tags=tags)
        seconds = time.monotonic() - started
        assert result.success
        events = instance.get_records_for_run(result.run_id, limit=1_000_000).records
    return {
        "shape": shape,
        "storage": storage,
        "partitions": partitions,
        "seconds": round(seconds, 2),
        "events": len(events),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=365)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--storages", default="sqlite,sqlite_consolidated,postgres")
    args = parser.parse_args(argv)
    results = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bookkeeping-") as workdir:
        root = Path(workdir)
        postgres = None
        if "postgres" in args.storages:
            from postgres_server import PostgresServer

            postgres = stack.enter_context(PostgresServer(root / "postgres"))
        for storage in args.storages.split(","):
            for shape in args.shapes.split(","):
                found = measure(shape, storage, args.partitions, root, postgres)
                found["ms_per_event"] = round(1000 * found["seconds"] / max(found["events"], 1), 2)
                print(json.dumps(found), flush=True)
                results.append(found)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
