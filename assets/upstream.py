"""Where a feature partition's upstream partitions come from: the same batch first, else production (I4)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from backfills.errors import BlockedUpstreamError, MissingUpstreamPartitionError
from backfills.resources.catalog_models import BatchManifest, ReleasedPartition, UpstreamSource
from backfills.resources.feature_store import PartitionFiles
from backfills.specs import DateRange, day_ranges


@dataclass(frozen=True)
class ResolvedUpstream:
    """The partitions of one upstream table a run reads, and where each came from."""

    table: str
    parts: dict[str, PartitionFiles]  # date -> files
    origin: dict[str, tuple[str, str]]  # date -> ("batch" | "release", id)

    def sources_for(self, days: DateRange) -> list[UpstreamSource]:
        """Lineage of the partitions inside `days`, grouped by where they came from."""
        grouped: dict[tuple[str, str], list[str]] = {}
        for day in days.days():
            key = day.isoformat()
            if key in self.origin:
                grouped.setdefault(self.origin[key], []).append(key)
        return [
            UpstreamSource(table=self.table, source=kind, source_id=source_id, partitions=partitions)
            for (kind, source_id), partitions in sorted(grouped.items())
        ]


def resolve_upstream(
    *,
    table: str,
    needed: DateRange,
    earliest: date,
    batch: BatchManifest | None,
    batch_id: str,
    release_id: str | None,
    released: Mapping[str, ReleasedPartition],
    reader: str,
) -> ResolvedUpstream:
    """Find every needed partition of `table` in the batch or the current release (`released`: what it
    serves of the needed days), or say what is missing.

    Days before `earliest` (the first partition of the asset) have no data by definition and are skipped.
    """
    staged = batch.tables.get(table, {}) if batch else {}
    parts: dict[str, PartitionFiles] = {}
    origin: dict[str, tuple[str, str]] = {}
    missing: list[str] = []
    for day in needed.days():
        if day < earliest:
            continue
        key = day.isoformat()
        if key in staged:
            record = staged[key]
            parts[key] = PartitionFiles(record.base, tuple(record.files))
            origin[key] = ("batch", batch_id)
        elif key in released and release_id is not None:
            entry = released[key]
            parts[key] = PartitionFiles(entry.base, tuple(entry.files))
            origin[key] = ("release", release_id)
        else:
            missing.append(key)
    from_batch = {day for day, (kind, _) in origin.items() if kind == "batch"}
    blocked = batch.blocking_failures(table, from_batch) if batch and from_batch else []
    if blocked:
        reasons = "; ".join(f"{record.check}: {record.summary}" for record in blocked[:3])
        raise BlockedUpstreamError(
            f"{reader} in batch {batch_id} was not computed: its upstream {table} failed blocking checks in "
            f"this batch ({reasons}). Fix the input and rerun {table} for those days in the batch."
        )
    if missing:
        production = f"current release {release_id}" if release_id else "production (nothing promoted yet)"
        raise MissingUpstreamPartitionError(
            f"{reader} in batch {batch_id} needs {table} for {day_ranges(missing)}, which is neither staged "
            f"in batch {batch_id} nor in {production}. Add {table} for those days to the backfill, or "
            "promote a batch that has them first."
        )
    return ResolvedUpstream(table=table, parts=parts, origin=origin)
