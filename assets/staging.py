"""Compute a range of one feature table's partitions into a batch's staging area, then gate them.

Inputs come from the landing zone, or from the batch's own staged upstream partitions, else production.
A partition enters the batch manifest only after its files are completely written and read back;
the checks of the spec then run over what was written and their verdicts go into the manifest.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from pyspark.sql import DataFrame, SparkSession

from backfills.assets.raw_transactions import (
    LANDED_DATE,
    landing_keys,
    landing_lineage,
    read_landed,
    within_lateness,
)
from backfills.assets.registry import RAW_TRANSACTIONS, FeatureSpec, feature_spec
from backfills.assets.transformations import DateRange
from backfills.assets.upstream import ResolvedUpstream, resolve_upstream
from backfills.checks.contracts import check_landing_schema, enforce_contract, feature_contract, raw_contract
from backfills.checks.gate import GateInputs, ProductionRows, check_records, run_gate
from backfills.checks.outcome import CheckOutcome
from backfills.errors import (
    BatchNotFoundError,
    BatchSealedError,
    ContractViolationError,
    EmptyInputError,
    SchemaDriftError,
)
from backfills.resources.catalog import WRITABLE_BATCH_STATES, ReleaseCatalog
from backfills.resources.catalog_models import (
    BatchManifest,
    CheckRecord,
    ColumnSchema,
    PartitionRecord,
    Release,
    UpstreamSource,
)
from backfills.resources.feature_store import (
    PartitionFiles,
    empty_partition_hash,
    partition_facts,
    read_partitions,
    write_partitions,
)
from backfills.resources.storage import ObjectStore


@dataclass(frozen=True)
class StagedRun:
    """What one run staged: the manifest records of its partitions and where the files are."""

    table: str
    batch_id: str
    records: list[PartitionRecord]
    replaced: int
    location: str
    checks: list[CheckOutcome]

    @property
    def row_count(self) -> int:
        return sum(record.row_count for record in self.records)

    @property
    def upstream(self) -> list[UpstreamSource]:
        """The run's inputs, merged over its partitions."""
        merged: dict[tuple[str, str, str | None], set[str]] = {}
        for record in self.records:
            for source in record.upstream:
                merged.setdefault((source.table, source.source, source.source_id), set()).update(
                    source.partitions
                )
        return [
            UpstreamSource(table=table, source=kind, source_id=source_id, partitions=sorted(days))
            for (table, kind, source_id), days in sorted(merged.items(), key=lambda item: str(item[0]))
        ]


def _open_batch(catalog: ReleaseCatalog, batch_id: str) -> BatchManifest | None:
    try:
        batch = catalog.get_batch(batch_id)
    except BatchNotFoundError:
        return None
    if batch.state not in WRITABLE_BATCH_STATES:
        # Fail before any Spark work; the catalog refuses the write as well.
        raise BatchSealedError(
            f"batch {batch_id} is {batch.state} and accepts no more partitions; launch a new backfill instead"
        )
    return batch


RAW_INPUT_CHECK = "raw_input_contract"
CONTRACT_CHECK = "output_contract"


@dataclass(frozen=True)
class _RunContext:
    spec: FeatureSpec
    dates: DateRange
    batch_id: str
    run_id: str
    requester: str | None
    catalog: ReleaseCatalog


@contextmanager
def _blocks_batch(run: _RunContext, check: str) -> Iterator[None]:
    """Bad data inside the block fails the run and records a failed blocking check with its evidence."""
    try:
        yield
    except (ContractViolationError, SchemaDriftError, EmptyInputError) as error:
        days = [day.isoformat() for day in run.dates.days()]
        record = CheckRecord(
            table=run.spec.name,
            check=check,
            partitions=days,
            verdict="failed",
            blocking=True,
            summary=str(error),
            figures=getattr(error, "report", {}) or {"error": str(error)},
            run_id=run.run_id,
            checked_at=datetime.now(UTC),
        )
        run.catalog.record_checks(
            run.batch_id,
            [record],
            table=run.spec.name,
            partitions=days,
            run_id=run.run_id,
            requester=run.requester,
        )
        raise


def _validated_raw(
    run: _RunContext, spark: SparkSession, store: ObjectStore, keys: list[str], lateness_days: int
) -> tuple[DataFrame, list[str]]:
    """Landing files checked for schema drift (from footers) and against the raw contract, before use,
    with the run's days whose landing file has no rows.

    A violation (or an empty day, where the spec says it blocks) blocks the batch with its evidence in the
    manifest and fails the run; nothing is staged.
    """
    with _blocks_batch(run, RAW_INPUT_CHECK):
        check_landing_schema(spark, store, keys)
        raw = read_landed(spark, store, keys)
        enforce_contract(
            raw,
            raw_contract(lateness_days),
            table=RAW_TRANSACTIONS,
            partitions=f"{run.dates.start}..{run.dates.end}",
            key_columns=["txn_id", LANDED_DATE],
        )
        empty = _empty_files(raw, run.dates)
        if empty and run.spec.empty_partition_blocks:
            raise EmptyInputError(
                f"{RAW_TRANSACTIONS} landing files for {', '.join(empty)} have no rows: an empty day blocks "
                "the batch (set empty_partition_blocks=False in the spec if empty days are expected)"
            )
    return raw, empty


def _empty_files(raw: DataFrame, dates: DateRange) -> list[str]:
    counts = {row[0].isoformat(): row[1] for row in raw.groupBy(LANDED_DATE).count().collect()}
    return [day.isoformat() for day in dates.days() if counts.get(day.isoformat(), 0) == 0]


def _production_rows(
    spark: SparkSession, store: ObjectStore, spec: FeatureSpec, release: Release | None, dates: DateRange
) -> ProductionRows:
    """The current release's partitions of the run's days, which the staged rows would replace."""
    served = release.tables.get(spec.name, {}) if release else {}
    days = [day.isoformat() for day in dates.days() if day.isoformat() in served]
    rows = None
    if days:
        rows = read_partitions(
            spark,
            store,
            [PartitionFiles(served[day].base, tuple(served[day].files)) for day in days],
            schema_ddl=spec.schema_ddl,
            columns=spec.column_names,
        )
    return ProductionRows(release_id=release.release_id if release else None, days=days, rows=rows)


def _window(day: date, lookback: int = 0, lateness: int = 0) -> DateRange:
    return DateRange(day - timedelta(days=lookback), day + timedelta(days=lateness))


def stage_partitions(
    spec: FeatureSpec,
    dates: DateRange,
    *,
    batch_id: str,
    run_id: str,
    requester: str | None,
    earliest: date,
    spark: SparkSession,
    store: ObjectStore,
    catalog: ReleaseCatalog,
) -> StagedRun:
    """Compute `dates` of `spec` and record them in batch `batch_id`, replacing earlier attempts."""
    batch = _open_batch(catalog, batch_id)
    run = _RunContext(spec, dates, batch_id, run_id, requester, catalog)
    release = catalog.current_release()

    inputs: dict[str, DataFrame] = {}
    landed: list[str] = []
    empty_landing_days: list[str] = []
    resolved: dict[str, ResolvedUpstream] = {}
    for item in spec.inputs:
        if item.table == RAW_TRANSACTIONS:
            keys = landing_keys(store, dates, lateness_days=item.lateness_days)
            raw, empty_landing_days = _validated_raw(run, spark, store, keys, item.lateness_days)
            inputs[item.table] = within_lateness(raw, item.lateness_days)
            landed = landing_lineage(keys).partitions
            continue
        upstream = resolve_upstream(
            table=item.table,
            needed=dates.widened(before=item.lookback_days),
            earliest=earliest,
            batch=batch,
            batch_id=batch_id,
            release=release,
            reader=f"{spec.name} {dates.start}..{dates.end}",
        )
        resolved[item.table] = upstream
        upstream_spec = feature_spec(item.table)
        inputs[item.table] = read_partitions(
            spark,
            store,
            upstream.parts.values(),
            schema_ddl=upstream_spec.schema_ddl,
            columns=upstream_spec.column_names,
        )

    attempt_id = uuid.uuid4().hex[:12]
    base = f"staging/{spec.name}/{batch_id}/{attempt_id}"
    # Cached: the contract and the write read the same rows, which would otherwise be computed twice.
    rows = spec.transform(inputs, dates).select(*spec.column_names).cache()
    try:
        with _blocks_batch(run, CONTRACT_CHECK):
            enforce_contract(
                rows,
                feature_contract(spec),
                table=spec.name,
                partitions=f"{dates.start}..{dates.end}",
                key_columns=[*spec.entity_keys, spec.date_column],
            )
        files = write_partitions(
            rows, store, base, date_column=spec.date_column, sort_columns=spec.entity_keys
        )
    finally:
        rows.unpersist()
    wanted = {day.isoformat() for day in dates.days()}
    stray = sorted(set(files) - wanted)
    if stray:
        raise RuntimeError(
            f"{spec.name} produced rows for {stray[:3]} outside its run's dates {dates.start}..{dates.end}"
        )
    written = read_partitions(
        spark, store, files.values(), schema_ddl=spec.schema_ddl, columns=spec.column_names
    )
    nullable = [column.name for column in spec.columns if column.nullable]
    facts = partition_facts(
        written, date_column=spec.date_column, schema_ddl=spec.schema_ddl, null_columns=nullable
    )

    columns = [ColumnSchema(name=column.name, type=column.type) for column in spec.columns]
    now = datetime.now(UTC)
    records = []
    for day in dates.days():
        key = day.isoformat()
        upstream: list[UpstreamSource] = []
        for item in spec.inputs:
            if item.table == RAW_TRANSACTIONS:
                days = {d.isoformat() for d in _window(day, lateness=item.lateness_days).days()}
                upstream.append(
                    UpstreamSource(
                        table=item.table,
                        source="landing",
                        source_id=None,
                        partitions=sorted(days.intersection(landed)),
                    )
                )
            else:
                upstream.extend(resolved[item.table].sources_for(_window(day, lookback=item.lookback_days)))
        fact = facts.get(key)
        records.append(
            PartitionRecord(
                table=spec.name,
                partition=key,
                batch_id=batch_id,
                run_id=run_id,
                attempt_id=attempt_id,
                base=base,
                files=list(files[key].files) if key in files else [],
                row_count=fact.row_count if fact else 0,
                content_hash=fact.content_hash if fact else empty_partition_hash(spec.schema_ddl),
                columns=columns,
                code_version=spec.code_version,
                upstream=upstream,
                written_at=now,
                null_counts=fact.null_counts if fact else {},
            )
        )
    _, replaced = catalog.record_partitions(batch_id, records, run_id=run_id, requester=requester)
    outcomes = run_gate(
        spec,
        GateInputs(
            dates=dates,
            staged=written,
            records=records,
            inputs=inputs,
            production=_production_rows(spark, store, spec, release, dates),
            empty_landing_days=empty_landing_days,
        ),
    )
    days = [record.partition for record in records]
    catalog.record_checks(
        batch_id,
        check_records(outcomes, table=spec.name, partitions=days, run_id=run_id),
        table=spec.name,
        partitions=days,
        run_id=run_id,
        requester=requester,
    )
    # Superseded attempts of this open batch are referenced by nothing any more: keep one copy on disk.
    for old in replaced:
        if old.attempt_id != attempt_id:
            for key in old.files:
                store.delete(key)
    return StagedRun(
        table=spec.name,
        batch_id=batch_id,
        records=records,
        replaced=len(replaced),
        location=store.data_uri(f"staging/{spec.name}/{batch_id}"),
        checks=outcomes,
    )
