"""Compute a range of one feature table's partitions into a batch's staging area, then gate them.

Inputs come from the landing zone, or from the batch's own staged upstream partitions, else production.
A partition enters the batch manifest only after its files are completely written and read back;
the checks of the spec then run over what was written and their verdicts go into the manifest.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from backfills.assets.deliveries import counted_events, deliveries_of
from backfills.assets.raw_transactions import LandingRead, landing_read, marked_landing
from backfills.assets.registry import feature_spec
from backfills.assets.upstream import ResolvedUpstream, resolve_upstream
from backfills.checks.check import GateInputs, ProductionRows
from backfills.checks.contract_checks import CONTRACT_CHECK, RAW_INPUT_CHECK
from backfills.checks.contracts import (
    check_columns,
    check_landing_schema,
    contract_measures,
    enforce_on_pass,
    feature_contract,
    raw_contract,
)
from backfills.checks.expectations import null_measure
from backfills.checks.gate import check_records, day_outcomes, gate_measures, run_gate
from backfills.checks.outcome import CheckOutcome
from backfills.checks.staged_pass import Measure, PassFigures, merge_measures, run_pass
from backfills.errors import (
    BatchNotFoundError,
    BatchSealedError,
    ContractViolationError,
    EmptyInputError,
    SchemaDriftError,
)
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import (
    BatchManifest,
    CheckRecord,
    ColumnSchema,
    PartitionRecord,
    Release,
    StagedFile,
    UpstreamSource,
)
from backfills.resources.feature_store import (
    PartitionFiles,
    empty_partition_hash,
    read_partitions,
    write_partitions,
)
from backfills.resources.storage import ObjectStore
from backfills.specs import (
    LANDED_DATE,
    PREVIOUS_DELIVERY,
    RAW_TRANSACTIONS,
    REDELIVERED,
    DateRange,
    FeatureInput,
    FeatureSpec,
)


@dataclass(frozen=True)
class StagedRun:
    """What one run staged: the manifest records of its partitions and where the files are."""

    table: str
    batch_id: str
    records: list[PartitionRecord]
    replaced: int
    location: str
    checks: list[CheckOutcome]
    checks_by_day: dict[str, list[CheckOutcome]]  # what each partition shows, per check (Dagster UI)

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
    if not batch.state.accepts_partitions:
        # Fail before any Spark work; the catalog refuses the write as well.
        raise BatchSealedError(
            f"batch {batch_id} is {batch.state} and accepts no more partitions; launch a new backfill instead"
        )
    return batch


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


@dataclass(frozen=True)
class _Inputs:
    """What a run's transformation reads, by table, and where it came from."""

    frames: dict[str, DataFrame]
    resolved: dict[str, ResolvedUpstream]
    landing: LandingRead | None = None
    deliveries: DataFrame | None = None  # every landed copy of the run's event days, marked
    empty_landing_days: list[str] = field(default_factory=list)
    cached: DataFrame | None = None  # what `deliveries` reads from, held in the Spark cache

    def release(self) -> None:
        """Drop what the inputs hold cached."""
        if self.cached is not None:
            self.cached.unpersist()

    def lineage(self, spec: FeatureSpec, day: date) -> list[UpstreamSource]:
        """Where one partition's inputs came from (landing files, batch or release partitions)."""
        upstream: list[UpstreamSource] = []
        for item in spec.inputs:
            if item.table == RAW_TRANSACTIONS and self.landing is not None:
                upstream.append(
                    self.landing.lineage(day, before=item.redelivery_days, after=item.lateness_days)
                )
            elif item.table in self.resolved:
                upstream.extend(self.resolved[item.table].sources_for(_window(day, item.lookback_days)))
        return upstream


def _raw_input(run: _RunContext, spark: SparkSession, store: ObjectStore, item: FeatureInput) -> _Inputs:
    """Landing files checked for schema drift (from footers) and against the raw contract, before use; then
    each transaction once, as its first delivery (assets/deliveries.py).

    The landing rows are read once: marked and cached, they feed the contract's pass, the transformation,
    key coverage and the duplicate-events check (released by `_Inputs.release`). A violation (or an empty
    day, where the spec says it blocks) blocks the batch with its evidence in the manifest and fails the
    run; nothing is staged.
    """
    landing = landing_read(
        store, run.dates, lateness_days=item.lateness_days, redelivery_days=item.redelivery_days
    )
    with _blocks_batch(run, RAW_INPUT_CHECK):
        # The earlier files only tell which events were delivered already, but they must be readable.
        check_landing_schema(spark, store, landing.keys)
    marked = marked_landing(spark, store, landing, redelivery_days=item.redelivery_days).cache()
    try:
        with _blocks_batch(run, RAW_INPUT_CHECK):
            # The contract covers the files of the run's days and the late ones after them.
            checked = marked.where(F.col(LANDED_DATE) >= F.lit(run.dates.start)).drop(
                REDELIVERED, PREVIOUS_DELIVERY
            )
            contract = raw_contract(item.lateness_days)
            partitions = f"{run.dates.start}..{run.dates.end}"
            check_columns(checked, contract, table=RAW_TRANSACTIONS, partitions=partitions)
            # One aggregation over the landing rows: every contract rule, and rows per file day.
            figures = run_pass(
                checked,
                keys=["txn_id", LANDED_DATE],
                date_column=LANDED_DATE,
                schema_ddl=None,
                measures=contract_measures(contract),
                unique_keys=False,
            )
            enforce_on_pass(contract, figures, table=RAW_TRANSACTIONS, partitions=partitions)
            empty = [
                day.isoformat()
                for day in run.dates.days()
                if day.isoformat() not in figures.days or figures.days[day.isoformat()].rows == 0
            ]
            if empty and run.spec.empty_partition_blocks:
                raise EmptyInputError(
                    f"{RAW_TRANSACTIONS} landing files for {', '.join(empty)} have no rows: an empty day "
                    "blocks the batch (set empty_partition_blocks=False in the spec if empty days are "
                    "expected)"
                )
    except BaseException:
        marked.unpersist()
        raise
    deliveries = deliveries_of(marked, run.dates, lateness_days=item.lateness_days)
    return _Inputs(
        frames={item.table: counted_events(deliveries)},
        resolved={},
        landing=landing,
        deliveries=deliveries,
        empty_landing_days=empty,
        cached=marked,
    )


def _read_inputs(
    run: _RunContext,
    spark: SparkSession,
    store: ObjectStore,
    *,
    batch: BatchManifest | None,
    release: Release | None,
    earliest: date,
) -> _Inputs:
    """Every input of the run: raw events from the landing zone, feature tables from batch or production."""
    raw = _Inputs(frames={}, resolved={})
    frames: dict[str, DataFrame] = {}
    resolved: dict[str, ResolvedUpstream] = {}
    for item in run.spec.inputs:
        if item.table == RAW_TRANSACTIONS:
            raw = _raw_input(run, spark, store, item)
            frames |= raw.frames
            continue
        needed = run.dates.widened(before=item.lookback_days)
        upstream = resolve_upstream(
            table=item.table,
            needed=needed,
            earliest=earliest,
            batch=batch,
            batch_id=run.batch_id,
            release_id=release.release_id if release else None,
            released=(
                run.catalog.served(
                    release, item.table, start=needed.start.isoformat(), end=needed.end.isoformat()
                )
                if release
                else {}
            ),
            reader=f"{run.spec.name} {run.dates.start}..{run.dates.end}",
        )
        upstream_spec = feature_spec(item.table)
        resolved[item.table] = upstream
        frames[item.table] = read_partitions(
            spark,
            store,
            upstream.parts.values(),
            schema_ddl=upstream_spec.schema_ddl,
            columns=upstream_spec.column_names,
        )
    return replace(raw, frames=frames, resolved=resolved)


def _production_rows(
    run: _RunContext, spark: SparkSession, store: ObjectStore, release: Release | None
) -> ProductionRows:
    """The current release's partitions of the run's days, which the staged rows would replace."""
    spec, dates = run.spec, run.dates
    span = {"start": dates.start.isoformat(), "end": dates.end.isoformat()}
    served = run.catalog.served(release, spec.name, **span) if release else {}
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


def _window(day: date, lookback: int = 0) -> DateRange:
    return DateRange(day - timedelta(days=lookback), day)


@dataclass(frozen=True)
class _Written:
    """One attempt's files per day, the rows written (cached until the gate is done) and the one pass over
    them: row counts, content hashes, null counts and every check's figures, per day."""

    attempt_id: str
    base: str
    files: dict[str, PartitionFiles]
    rows: DataFrame
    figures: PassFigures
    checks: dict[str, StagedFile]  # per file: size and checksum, for promotion to verify without Spark


def _write(run: _RunContext, store: ObjectStore, inputs: _Inputs) -> _Written:
    """Compute the run's rows, count everything the contract, the manifest and the checks need in one pass,
    hold the rows to the output contract, and write them to a fresh attempt folder.

    Nothing is written when the contract is broken (the batch is blocked with the evidence instead). The rows
    stay cached for the gate; `_release` drops them.
    """
    spec, dates = run.spec, run.dates
    partitions = f"{dates.start}..{dates.end}"
    attempt_id = uuid.uuid4().hex[:12]
    base = f"staging/{spec.name}/{run.batch_id}/{attempt_id}"
    contract = feature_contract(spec)
    rows = spec.transform(inputs.frames, dates).select(*spec.column_names).cache()
    try:
        with _blocks_batch(run, CONTRACT_CHECK):
            check_columns(rows, contract, table=spec.name, partitions=partitions)
            figures = run_pass(
                rows,
                keys=[*spec.entity_keys, spec.date_column],
                date_column=spec.date_column,
                schema_ddl=spec.schema_ddl,
                measures=merge_measures(
                    [*contract_measures(contract), *gate_measures(spec), *_null_measures(spec)]
                ),
            )
            enforce_on_pass(contract, figures, table=spec.name, partitions=partitions)
        wanted = {day.isoformat() for day in dates.days()}
        stray = sorted(set(figures.days) - wanted)
        if stray:
            raise RuntimeError(
                f"{spec.name} produced rows for {stray[:3]} outside its run's dates {partitions}"
            )
        files = write_partitions(
            rows, store, base, date_column=spec.date_column, sort_columns=spec.entity_keys
        )
    except BaseException:
        rows.unpersist()
        raise
    sizes = {item.key: item.size for item in store.describe(base)}
    checks = {
        key: StagedFile(size=sizes[key], checksum=store.checksum(key))
        for part in files.values()
        for key in part.files
    }
    return _Written(attempt_id, base, files, rows, figures, checks)


def _null_measures(spec: FeatureSpec) -> list[Measure]:
    """The nulls of each nullable column, which the manifest records per partition."""
    return [Measure(null_measure(c.name), F.col(c.name).isNull()) for c in spec.columns if c.nullable]


def _records(run: _RunContext, written: _Written, inputs: _Inputs) -> list[PartitionRecord]:
    """The manifest record of every day of the run, from the pass over the rows written."""
    spec = run.spec
    nullable = [column.name for column in spec.columns if column.nullable]
    columns = [ColumnSchema(name=column.name, type=column.type) for column in spec.columns]
    now = datetime.now(UTC)
    records = []
    for day in run.dates.days():
        key = day.isoformat()
        found = written.figures.days.get(key)
        files = list(written.files[key].files) if key in written.files else []
        records.append(
            PartitionRecord(
                table=spec.name,
                partition=key,
                batch_id=run.batch_id,
                run_id=run.run_id,
                attempt_id=written.attempt_id,
                base=written.base,
                files=files,
                row_count=found.rows if found else 0,
                content_hash=found.content_hash if found else empty_partition_hash(spec.schema_ddl),
                columns=columns,
                code_version=spec.code_version,
                upstream=inputs.lineage(spec, day),
                written_at=now,
                null_counts={name: found.counts[null_measure(name)] for name in nullable} if found else {},
                file_checks={file: written.checks[file] for file in files},
            )
        )
    return records


def _gate(
    run: _RunContext,
    spark: SparkSession,
    store: ObjectStore,
    *,
    written: _Written,
    records: list[PartitionRecord],
    inputs: _Inputs,
    release: Release | None,
    progress: Callable[[str], None],
) -> tuple[list[CheckOutcome], dict[str, list[CheckOutcome]]]:
    """Every check of the spec over what the run wrote; the verdicts go into the manifest. Returns them,
    and what each partition shows per check."""
    gate = GateInputs(
        dates=run.dates,
        staged=written.rows,
        figures=written.figures,
        records=records,
        inputs=inputs.frames,
        production=_production_rows(run, spark, store, release),
        empty_landing_days=inputs.empty_landing_days,
        deliveries=inputs.deliveries,
    )
    outcomes = run_gate(run.spec, gate, progress)
    days = [record.partition for record in records]
    run.catalog.record_checks(
        run.batch_id,
        check_records(outcomes, table=run.spec.name, partitions=days, run_id=run.run_id),
        table=run.spec.name,
        partitions=days,
        run_id=run.run_id,
        requester=run.requester,
    )
    return outcomes, day_outcomes(run.spec, gate, outcomes)


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
    progress: Callable[[str], None] = lambda _: None,
) -> StagedRun:
    """Compute `dates` of `spec` and record them in batch `batch_id`, replacing earlier attempts:
    inputs, then write, then record (the partitions become part of the batch), then gate. `progress`
    hears what the run is doing (rows written and their rate, each check), for the run's log."""
    batch = _open_batch(catalog, batch_id)
    run = _RunContext(spec, dates, batch_id, run_id, requester, catalog)
    release = catalog.current_release()
    started = time.monotonic()
    inputs = _read_inputs(run, spark, store, batch=batch, release=release, earliest=earliest)
    try:
        written = _write(run, store, inputs)
        try:
            records = _records(run, written, inputs)
            rows, seconds = sum(record.row_count for record in records), time.monotonic() - started
            progress(
                f"{spec.name}: wrote {rows:,} rows in {len(records)} partitions ({dates.start}..{dates.end}) "
                f"in {seconds:.1f}s, {rows / max(seconds, 1e-3):,.0f} rows/s"
            )
            _, replaced = catalog.record_partitions(batch_id, records, run_id=run_id, requester=requester)
            outcomes, by_day = _gate(
                run,
                spark,
                store,
                written=written,
                records=records,
                inputs=inputs,
                release=release,
                progress=progress,
            )
        finally:
            written.rows.unpersist()
    finally:
        inputs.release()
    # Superseded attempts of this open batch are referenced by nothing any more: keep one copy on disk.
    for old in replaced:
        if old.attempt_id != written.attempt_id:
            for key in old.files:
                store.delete(key)
    return StagedRun(
        table=spec.name,
        batch_id=batch_id,
        records=records,
        replaced=len(replaced),
        location=store.data_uri(f"staging/{spec.name}/{batch_id}"),
        checks=outcomes,
        checks_by_day=by_day,
    )
