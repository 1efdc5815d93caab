"""Typed records of the release catalog: batch manifests, releases, the CURRENT pointer and audit events.

Pure data, no I/O: the catalog writes them with `model_dump_json`, reads them with `model_validate_json`.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from backfills.resources.lifecycle import BatchState


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


class StagedFile(CatalogModel):
    """What a staged file was when it was written: its size and a checksum of its bytes (`sha256:…` locally,
    the object store's `etag:…` on S3), so promotion can tell a changed file without reading rows."""

    size: int
    checksum: str


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
    file_checks: dict[str, StagedFile] = {}  # per file; empty in manifests written before they were kept


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


class LaunchPlan(CatalogModel):
    """What the backfill writing a batch set out to compute, decided before its first partition (see
    assets/launch_plan.py): the partitions it targets, those planned out with why, or why it was refused."""

    planned_at: UtcDatetime
    release_id: str | None  # production when the plan was made
    targets: dict[str, list[PartitionDate]]
    planned_out: dict[str, dict[PartitionDate, str]] = {}
    planned_out_summary: dict[str, str] = {}  # per table, why over all its planned-out days
    refusal: str | None = None

    def planned_out_count(self) -> int:
        return sum(len(days) for days in self.planned_out.values())


class BatchManifest(CatalogModel):
    """Everything staged under one batch ID: table -> partition date -> record.

    State: see `BatchState` (resources/lifecycle.py); the catalog changes it only along its transitions.
    """

    batch_id: str
    created_at: UtcDatetime
    updated_at: UtcDatetime
    state: BatchState = BatchState.STAGING
    requester: str | None = None  # the first requester a run named, for display
    # Who wrote into the batch: the `backfills/requester` tag of every run that recorded partitions in it,
    # once each, first seen first; None stands for runs that had no tag. None of them may approve it.
    contributors: list[str | None] = []
    runs: list[str] = []
    tables: dict[str, dict[str, PartitionRecord]] = {}
    checks: list[CheckRecord] = []
    # Set once the backfill that writes the batch has finished: the partitions it targeted, per table.
    completed_at: UtcDatetime | None = None
    expected: dict[str, list[PartitionDate]] = {}
    completion_note: str | None = None  # why an incomplete batch cannot be approved (failed runs, ...)
    plan: LaunchPlan | None = None  # set by the first run of a Dagster backfill

    @model_validator(mode="before")
    @classmethod
    def _contributors_of_older_manifests(cls, stored: Any) -> Any:
        # Manifests written before contributors were recorded know only their requester.
        if isinstance(stored, dict) and "contributors" not in stored and stored.get("tables"):
            return {**stored, "contributors": [stored.get("requester")]}
        return stored

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

    def missing_partitions(self) -> dict[str, list[str]]:
        """Expected partitions the batch has not staged (and did not plan out), per table."""
        planned_out = self.plan.planned_out if self.plan else {}
        missing = {
            table: sorted(set(days) - set(self.tables.get(table, {})) - set(planned_out.get(table, {})))
            for table, days in self.expected.items()
        }
        return {table: days for table, days in sorted(missing.items()) if days}

    def fingerprint(self) -> str:
        """One hash of every staged partition's content hash and code version: an approval is bound to
        exactly this content, from exactly this code (I8)."""
        digest = hashlib.sha256(self.batch_id.encode())
        for table, partitions in sorted(self.tables.items()):
            for day, record in sorted(partitions.items()):
                digest.update(f"|{table}|{day}|{record.content_hash}|{record.code_version}".encode())
        return digest.hexdigest()

    def code_versions(self) -> dict[str, list[str]]:
        """Table -> the code versions that staged its partitions (one, unless code changed mid-batch)."""
        return {
            table: sorted({record.code_version for record in partitions.values()})
            for table, partitions in sorted(self.tables.items())
        }


class ReleasedPartition(CatalogModel):
    """A partition as production serves it: which batch produced it and where its files are."""

    batch_id: str
    base: str
    files: list[str]
    row_count: int
    content_hash: str


class Approver(CatalogModel):
    """Who approved a batch, and when and where they said so."""

    user_id: str
    display_name: str | None = None
    at: UtcDatetime
    permalink: str | None = None


class TableCode(CatalogModel):
    """Which code staged a table's partitions of a batch, and which code was deployed when it was promoted.

    `staged` is also the code the approval covers: the approval is bound to the batch's fingerprint, which
    holds every partition's code version (I8), so promotion refuses a batch whose staged code differs from
    the approved one."""

    staged: list[str]
    deployed: str

    @property
    def changed(self) -> bool:
        return self.staged != [self.deployed]


# The refusals a forced promotion can override: a newer batch in production, code other than the approved
# code deployed, production partitions of downstream tables left stale.
Override = Literal["stale_batch", "code_version", "stale_downstream"]


class StaleDownstream(CatalogModel):
    """Production partitions of one downstream table that a promotion leaves computed from upstream rows
    production no longer serves (their window reads a day the promotion changed, and it does not recompute
    them): which days, and which of the promotion's tables changed under them."""

    upstream: list[str]
    days: list[PartitionDate]


class StaleSince(StaleDownstream):
    """Stale partitions of a table as a release serves them, with the release that left them stale."""

    since: str


class ApprovalFacts(CatalogModel):
    """Governance facts a promotion release records: who asked, who approved, when, under which request,
    and the code versions (staged and deployed) per table."""

    requester: str | None = None
    approvers: list[Approver] = []
    approved_at: UtcDatetime | None = None
    request_id: str | None = None
    # Published over a refusal on purpose: older data over newer production data, other code deployed, or
    # downstream partitions left stale. `overrides` names the refusals the force overrode.
    forced: bool = False
    code_versions: dict[str, TableCode] = {}
    overrides: list[Override] = []
    left_stale: dict[str, StaleDownstream] = {}


class Segment(CatalogModel):
    """The partitions of one table in one month as releases serve them: an immutable catalog object."""

    partitions: dict[PartitionDate, ReleasedPartition] = {}


class TableIndex(CatalogModel):
    """One table as a release serves it: the segment of each month ("YYYY-MM" -> object key) and how many
    partitions each holds. Immutable and shared by every release that serves the table the same way."""

    segments: dict[str, str] = {}
    partition_counts: dict[str, int] = {}


class Release(CatalogModel):
    """An immutable release of production: per table, the index of the partitions it serves (a tree of
    shared objects, resources/release_tree.py), its parent, and the partitions it changed against it.

    Releases of the first catalog format hold the whole snapshot instead (`snapshot_tables`, stored as
    `tables`); they are still read (and the first release published over one converts it). Code that wants
    a release's partitions asks the catalog (`ReleaseCatalog.snapshot`), which reads either format.
    """

    model_config = ConfigDict(validate_by_name=True, serialize_by_alias=True)  # merged with CatalogModel's

    release_id: str
    parent_id: str | None
    created_at: UtcDatetime
    kind: Literal["promotion", "rollback"]
    batch_id: str | None = None
    rolled_back_to: str | None = None
    actor: str | None = None
    reason: str | None = None
    snapshot_tables: dict[str, dict[str, ReleasedPartition]] = Field(default={}, alias="tables")
    table_indexes: dict[str, str] = {}  # table -> TableIndex object key
    partition_counts: dict[str, int] = {}  # table -> partitions served
    changed: dict[str, list[str]] = {}  # table -> days added, replaced or removed against the parent
    # Governance facts of a promotion (and of a rollback that needed approval): see ApprovalFacts.
    requester: str | None = None
    approvers: list[Approver] = []
    approved_at: UtcDatetime | None = None
    request_id: str | None = None
    forced: bool = False
    code_versions: dict[str, TableCode] = {}
    overrides: list[Override] = []
    left_stale: dict[str, StaleDownstream] = {}  # what this promotion left stale (accepted with force)
    # Every release, promotion or rollback: table -> code version -> how many of the partitions it serves
    # that code staged. None in releases written before it was kept.
    served_code_versions: dict[str, dict[str, int]] | None = None
    # Every stale partition production serves in this release, per table, until a release replaces it.
    stale: dict[str, list[StaleSince]] = {}

    @property
    def is_snapshot(self) -> bool:
        """Whether this release is of the first catalog format (a full snapshot in `tables`)."""
        return not self.table_indexes and bool(self.snapshot_tables)

    def served_tables(self) -> list[str]:
        return sorted(self.snapshot_tables if self.is_snapshot else self.table_indexes)

    def table_partition_counts(self) -> dict[str, int]:
        """Table -> how many partitions production serves in this release (either catalog format)."""
        if self.is_snapshot:
            return {table: len(partitions) for table, partitions in sorted(self.snapshot_tables.items())}
        return dict(sorted(self.partition_counts.items()))

    def partition_count(self) -> int:
        """How many partitions production serves in this release, over all tables."""
        return sum(self.table_partition_counts().values())

    def stale_marks(self, table: str, day: str) -> list[StaleSince]:
        """Why production's partition of the table on that day is stale in this release (empty: it is not)."""
        return [mark for mark in self.stale.get(table, []) if day in mark.days]


class CurrentPointer(CatalogModel):
    """The content of `catalog/CURRENT`: which release production readers see."""

    release_id: str
    updated_at: UtcDatetime


CanaryStatus = Literal["open", "completed", "rolled_back"]


class CanaryStep(CatalogModel):
    """One step of a canary: opened at a percent, widened to one, completed (100) or rolled back; by whom or
    what (a person, a job, the health guard) and when."""

    action: Literal["opened", "widened", "completed", "rolled_back"]
    percent: float
    at: UtcDatetime
    actor: str | None = None
    reason: str | None = None


class Canary(CatalogModel):
    """The content of `catalog/CANARY`: the last canary release and how far it is exposed.

    While `status` is "open", the entities in the slice (`slice_rule` over each table's entity key, at
    `percent`) read `release_id`, a promotion release of `batch_id` staged on top of `base_release_id`, and
    every other entity reads production. Completion makes `release_id` production; rollback closes it.
    """

    release_id: str
    base_release_id: str | None
    batch_id: str
    percent: float
    slice_rule: str
    status: CanaryStatus = "open"
    opened_at: UtcDatetime
    steps: list[CanaryStep] = []

    @property
    def is_open(self) -> bool:
        return self.status == "open"


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


VoteDecision = Literal["approve", "reject"]
RequestStatus = Literal["posting", "pending", "approved", "rejected", "expired", "superseded", "promoted"]


class VoteRecord(CatalogModel):
    """One vote as read from the approvals channel, with whether the policy counted it and why not."""

    user_id: str
    display_name: str | None = None
    decision: VoteDecision
    at: UtcDatetime
    source: str  # reaction, reply, cli
    is_bot: bool = False
    deactivated: bool = False  # the voter's account is deactivated (Slack: deleted)
    permalink: str | None = None
    counted: bool = False
    ignored_because: str | None = None


class NotAVote(CatalogModel):
    """A thread reply that names a decision but is not a vote ("Approve? not yet"), with why, as told."""

    user_id: str
    display_name: str | None = None
    text: str  # the reply as written, trimmed to 200 characters
    at: UtcDatetime  # the reply's time: with user_id, what makes it the same reply on every read
    permalink: str | None = None
    reason: str


class ApprovalRequest(CatalogModel):
    """The approval request of one batch content (fingerprint): where it was posted, the votes, the outcome.

    Created before the message is posted (status `posting`) so that a crash or a lost response never leads to
    a second message: the next attempt looks for the posted message before posting again.
    """

    request_id: str
    batch_id: str
    fingerprint: str
    requester: str | None
    channel: Literal["slack", "local"]
    # Who wrote into the batch (the requester tags of its runs) -> the user ID each resolves to in the
    # channel (None: no user), as of the latest reading; None on requests made before contributors were
    # resolved, whose tags are taken as user IDs.
    contributors: dict[str, str | None] | None = None
    created_at: UtcDatetime
    expires_at: UtcDatetime
    status: RequestStatus = "posting"
    posting_claimed_at: UtcDatetime | None = None  # a lease: two posters never both post
    post_attempts: int = 0  # after the first, look for the message before posting again
    slack_channel: str | None = None
    message_ts: str | None = None
    permalink: str | None = None
    posted_at: UtcDatetime | None = None
    summary: str = ""  # the request as posted, in plain text
    cli_votes: list[VoteRecord] = []  # votes cast with `backfills approve/reject` (local channel)
    votes: list[VoteRecord] = []  # every vote read at the last evaluation, counted or not
    not_votes: list[NotAVote] = []  # every reply seen that names a decision but is not a vote, once each
    required: int = 1
    decision_summary: str | None = None
    decided_at: UtcDatetime | None = None
    superseded_by: str | None = None
    promotion_run_id: str | None = None
    release_id: str | None = None
    # thread notices already sent, once each: outcomes, promoted, not_counted:<user>:<time of the reply>
    notices: list[str] = []

    @property
    def approvers(self) -> list[Approver]:
        return [
            Approver(user_id=v.user_id, display_name=v.display_name, at=v.at, permalink=v.permalink)
            for v in self.votes
            if v.counted and v.decision == "approve"
        ]
