"""Typed records of the release catalog: batch manifests, releases, the CURRENT pointer and audit events.

Pure data, no I/O: the catalog writes them with `model_dump_json`, reads them with `model_validate_json`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict


def _as_utc(value: datetime) -> datetime:
    # A naive datetime is ambiguous (local time or UTC?), and catalog times decide order: refuse to guess.
    if value.tzinfo is None:
        raise ValueError(f"{value.isoformat()} has no time zone: catalog times must be timezone-aware (UTC)")
    return value.astimezone(UTC)


def _as_partition_date(value: str) -> str:
    try:
        parsed = date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"partition {value!r} is not a date in YYYY-MM-DD form") from None
    if parsed.isoformat() != value:
        raise ValueError(f"partition {value!r} is not a date in YYYY-MM-DD form")
    return value


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
PartitionDate = Annotated[str, AfterValidator(_as_partition_date)]


class CatalogModel(BaseModel):
    # Unknown fields fail loudly: silently dropping them would lose data on the next read-modify-write.
    model_config = ConfigDict(extra="forbid")


class ColumnSchema(CatalogModel):
    name: str
    type: str


class UpstreamSource(CatalogModel):
    """Where a partition's input came from: the same batch, a production release, or the landing zone."""

    table: str
    source: Literal["batch", "release", "landing"]
    source_id: str | None = None
    partitions: list[str] = []


class PartitionRecord(CatalogModel):
    """One completely written staged partition: where its files are and what produced them."""

    table: str
    partition: PartitionDate
    batch_id: str
    run_id: str
    attempt_id: str
    base: str
    files: list[str]
    row_count: int
    content_hash: str
    columns: list[ColumnSchema]
    code_version: str
    upstream: list[UpstreamSource] = []
    written_at: UtcDatetime
    null_counts: dict[str, int] = {}  # per nullable column


class CheckRecord(CatalogModel):
    """The verdict of one check over the partitions one run staged (or tried to stage) of one table."""

    table: str
    check: str
    partitions: list[PartitionDate]
    verdict: Literal["passed", "warned", "failed"]
    blocking: bool
    summary: str
    figures: dict[str, Any] = {}
    run_id: str
    checked_at: UtcDatetime

    @property
    def blocks(self) -> bool:
        return self.blocking and self.verdict == "failed"


class BatchManifest(CatalogModel):
    """Everything staged under one batch ID: table -> partition date -> record."""

    batch_id: str
    created_at: UtcDatetime
    updated_at: UtcDatetime
    state: str = "staging"
    requester: str | None = None
    runs: list[str] = []
    tables: dict[str, dict[str, PartitionRecord]] = {}
    checks: list[CheckRecord] = []

    def partition(self, table: str, date: str) -> PartitionRecord | None:
        """The record of one staged partition, or None if the batch has not staged it."""
        return self.tables.get(table, {}).get(date)

    def partition_count(self) -> int:
        """How many partitions the batch has staged, over all tables."""
        return sum(len(partitions) for partitions in self.tables.values())

    def blocking_failures(
        self, table: str | None = None, partitions: set[str] | None = None
    ) -> list[CheckRecord]:
        """Failed blocking checks, optionally of one table and touching some of the given partitions."""
        return [
            record
            for record in self.checks
            if record.blocks
            and (table is None or record.table == table)
            and (partitions is None or partitions.intersection(record.partitions))
        ]

    def partitions_by_table(self) -> dict[str, list[str]]:
        """Table -> sorted partition dates staged in the batch."""
        return {table: sorted(partitions) for table, partitions in sorted(self.tables.items())}


class ReleasedPartition(CatalogModel):
    """A partition as production serves it: which batch produced it and where its files are."""

    batch_id: str
    base: str
    files: list[str]
    row_count: int
    content_hash: str


class Release(CatalogModel):
    """An immutable full snapshot of production (table -> date -> partition), not a delta."""

    release_id: str
    parent_id: str | None
    created_at: UtcDatetime
    kind: Literal["promotion", "rollback"]
    batch_id: str | None = None
    rolled_back_to: str | None = None
    actor: str | None = None
    reason: str | None = None
    tables: dict[str, dict[str, ReleasedPartition]] = {}

    def partition_count(self) -> int:
        """How many partitions production serves in this release, over all tables."""
        return sum(len(partitions) for partitions in self.tables.values())


class CurrentPointer(CatalogModel):
    """The content of `catalog/CURRENT`: which release production readers see."""

    release_id: str
    updated_at: UtcDatetime


class AuditEvent(CatalogModel):
    """One append-only entry of the audit trail ("staged", "promoted", "rolled_back", ...)."""

    event_id: str
    at: UtcDatetime
    kind: str
    batch_id: str | None = None
    release_id: str | None = None
    actor: str | None = None
    tables: dict[str, list[str]] = {}
    details: dict[str, Any] = {}
