"""Promotion and rollback: what must hold before production changes (I6), the atomic switch itself (I2), and
the per-partition facts each change records for the production assets (I5). Free of Dagster: the jobs in
`orchestration/jobs.py` are thin wrappers.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import SparkSession

from backfills.assets.registry import feature_spec
from backfills.errors import (
    ApprovalNotFoundError,
    BatchNotApprovedError,
    BatchNotFoundError,
    CodeVersionChangedError,
    InvalidRequestError,
    RestoredContentChangedError,
    StagedContentChangedError,
    StaleBatchError,
)
from backfills.orchestration.approval_flow import newer_batch_serving, policy_votes
from backfills.orchestration.approval_policy import ApprovalRules, RequestFacts, Vote, decide
from backfills.orchestration.contributors import request_facts
from backfills.orchestration.stale_downstream import stale_downstream, verify_downstream
from backfills.resources.approvals_store import ApprovalStore
from backfills.resources.canary import refuse_while_open
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import (
    ApprovalFacts,
    ApprovalRequest,
    BatchManifest,
    Override,
    PartitionRecord,
    Release,
    TableCode,
)
from backfills.resources.feature_store import PartitionFacts, PartitionFiles, partition_facts, read_partitions
from backfills.resources.lifecycle import BatchState
from backfills.resources.spark import failure_summary
from backfills.resources.storage import ObjectStore


@dataclass(frozen=True)
class PublishedChange:
    """A release made current, the one it replaced, and the partitions whose production entry changed."""

    release: Release
    previous_release_id: str | None
    changed: dict[str, list[str]]


def _approved_request(approvals: ApprovalStore, batch: BatchManifest) -> ApprovalRequest:
    try:
        request = approvals.latest(batch.batch_id)
    except ApprovalNotFoundError as error:
        raise BatchNotApprovedError(f"batch {batch.batch_id} cannot be promoted: {error}") from None
    if request.fingerprint != batch.fingerprint():
        raise BatchNotApprovedError(
            f"batch {batch.batch_id} cannot be promoted: its content changed after approval request "
            f"{request.request_id} (partitions were recomputed); the new content needs a request of its own"
        )
    if request.status != "approved":  # a promoted one belongs to a promoted batch, refused before
        raise BatchNotApprovedError(
            f"batch {batch.batch_id} cannot be promoted: its approval request is {request.status}"
            + (f" ({request.decision_summary})" if request.decision_summary else "")
        )
    return request


def verify_approval(
    approvals: ApprovalStore, rules: ApprovalRules, batch: BatchManifest, now: datetime
) -> ApprovalRequest:
    """The batch's approval, re-judged now under the current rules (allowlist, requester, quorum, expiry).

    BatchNotApprovedError names what is missing, e.g. whose approval was ignored and why.
    """
    if not batch.state.promotable or batch.blocking_failures():
        raise BatchNotApprovedError(
            f"batch {batch.batch_id} is {batch.state}: only a batch whose every blocking check passed can be "
            "promoted"
        )
    missing = batch.missing_partitions()
    if batch.completed_at is None or missing or batch.completion_note:
        raise BatchNotApprovedError(
            f"batch {batch.batch_id} is incomplete ({batch.completion_note or missing or 'still running'}); "
            "only a complete batch can be promoted"
        )
    return judge_approval(approvals, rules, batch, now)


def judge_approval(
    approvals: ApprovalStore, rules: ApprovalRules, batch: BatchManifest, now: datetime
) -> ApprovalRequest:
    """The batch's approval request, judged again now under the current rules: approved for its content,
    not expired, superseded or vetoed. `verify_approval` first checks that the batch may be published at
    all; completing a canary judges only this (its batch was verified when the canary opened, sealed since).
    """
    request = _approved_request(approvals, batch)
    # Everyone who wrote into the batch, as the request last resolved them: one it never resolved (written
    # in since) is refused as written and counts as unknown.
    facts = request_facts(batch, request.created_at, request.contributors)
    decision = decide(facts, policy_votes(request.votes), rules, now)
    if decision.outcome != "approved":
        raise BatchNotApprovedError(
            f"batch {batch.batch_id} is not approved under the current rules: {decision.summary}"
        )
    return request


def code_versions(batch: BatchManifest) -> dict[str, TableCode]:
    """Per table of the batch: the code versions that staged it and the one deployed in this process."""
    return {
        table: TableCode(staged=staged, deployed=feature_spec(table).code_version)
        for table, staged in batch.code_versions().items()
    }


def verify_code(batch: BatchManifest, code: dict[str, TableCode], *, force: bool, reason: str | None) -> None:
    """An approval covers the code that staged the batch (I8): other code deployed since refuses promotion,
    unless forced with a reason (recorded on the release and in the audit trail).

    CodeVersionChangedError names each table with its staged and deployed versions.
    """
    changed = {table: versions for table, versions in code.items() if versions.changed}
    if not changed:
        return
    described = "; ".join(
        f"{table} was staged by code version {', '.join(versions.staged)} but {versions.deployed} is deployed"
        for table, versions in sorted(changed.items())
    )
    if not force:
        raise CodeVersionChangedError(
            f"batch {batch.batch_id} cannot be promoted: the approval covers the code that staged it, and "
            f"other code is deployed now: {described}. Nothing was published; recompute the batch under the "
            "deployed code and ask for approval again, or promote with force and a reason (recorded)"
        )
    if not reason or not reason.strip():
        raise CodeVersionChangedError(
            f"batch {batch.batch_id}: promoting with force over changed code needs a reason ({described}); "
            "nothing was published"
        )


def file_problems(store: ObjectStore, table: str, day: str, record: PartitionRecord) -> list[str]:
    """What changed in one partition's files since staging, from sizes and checksums (no rows read)."""
    problems = []
    sizes = {item.key: item.size for item in store.describe(record.base)} if record.files else {}
    for key in record.files:
        recorded = record.file_checks[key]
        if key not in sizes:
            problems.append(f"{table} {day} ({key} is missing)")
        elif sizes[key] != recorded.size:
            problems.append(f"{table} {day} ({key} is {sizes[key]} bytes, was {recorded.size} when staged)")
        elif store.checksum(key) != recorded.checksum:
            problems.append(f"{table} {day} ({key} changed: its checksum is not the one recorded at staging)")
    return problems


def row_problems(
    spark: SparkSession, store: ObjectStore, table: str, records: dict[str, PartitionRecord]
) -> list[str]:
    """Partitions whose files no longer hold the recorded rows: content hashes recomputed with Spark."""
    problems = [
        f"{table} {day} ({key} is missing)"
        for day, record in sorted(records.items())
        for key in record.files
        if not store.exists(key)
    ]
    if problems:
        return problems
    try:
        facts = _facts(spark, store, table, list(records.values()))
    except (PySparkException, Py4JJavaError):
        # A file that cannot be read (local checksums catch overwritten files) fails the whole read: find
        # which partitions it is by reading them one by one.
        facts = {}
        for day, record in sorted(records.items()):
            try:
                facts |= _facts(spark, store, table, [record])
            except (PySparkException, Py4JJavaError) as error:
                problems.append(f"{table} {day} (its files cannot be read: {failure_summary(error)})")
                facts[day] = None
    for day, record in sorted(records.items()):
        if day in facts and facts[day] is None:
            continue
        found = facts.get(day)
        if record.row_count == 0 and found is None:
            continue
        if found is None or found.content_hash != record.content_hash:
            rows_now = found.row_count if found else 0
            problems.append(f"{table} {day} (recorded {record.row_count} rows, files now hold {rows_now})")
    return problems


def verify_content(
    spark: SparkSession, store: ObjectStore, batch: BatchManifest, *, deep: bool = False
) -> int:
    """Check that every staged file is what was checked and approved: its size and checksum against the
    manifest (no Spark, O(files)); with `deep`, and for partitions staged before checksums were recorded,
    also recompute the content hashes from the rows with Spark.

    Returns the partitions verified; StagedContentChangedError names those whose files changed or vanished.
    """
    problems: list[str] = []
    by_rows: dict[str, dict[str, PartitionRecord]] = {}
    for table, records in sorted(batch.tables.items()):
        for day, record in sorted(records.items()):
            if record.file_checks or not record.files:
                problems.extend(file_problems(store, table, day, record))
            if deep or (record.files and not record.file_checks):
                by_rows.setdefault(table, {})[day] = record
    for table, records in by_rows.items():
        problems.extend(row_problems(spark, store, table, records))
    if problems:
        raise StagedContentChangedError(
            f"batch {batch.batch_id} cannot be promoted: staged files no longer match the content that was "
            f"checked and approved: {_listed(problems)}. Nothing was published; recompute the batch and ask "
            "for approval again."
        )
    return batch.partition_count()


def _listed(problems: list[str], shown: int = 5) -> str:
    """The first problems, and how many more (each named once)."""
    unique = list(dict.fromkeys(problems))
    more = f" and {len(unique) - shown} more" if len(unique) > shown else ""
    return "; ".join(unique[:shown]) + more


@dataclass(frozen=True)
class RestoreCheck:
    """What reading back the partitions a release serves found: how many partitions and files were checked,
    the batch records they were checked against (table -> day), and one line per problem naming the table
    and day (`failed` holds those partitions)."""

    partitions: int
    files: int
    records: dict[str, dict[str, PartitionRecord]]
    problems: list[str]
    failed: frozenset[tuple[str, str]]


def restore_check(
    catalog: ReleaseCatalog, release: Release, days: dict[str, list[str]] | None = None
) -> RestoreCheck:
    """Check what readers of `release` would read, without reading rows: for every partition it serves (or
    only those of `days`, table -> days), the entry agrees with its batch's manifest (same files, same
    content hash), and each file has the size and checksum recorded at staging, as promotion checks a batch.
    A partition staged before checksums were kept is checked for presence only (its rows need Spark)."""
    manifests: dict[str, BatchManifest | None] = {}
    records: dict[str, dict[str, PartitionRecord]] = {}
    problems: dict[tuple[str, str], list[str]] = {}
    partitions = files = 0
    for table in sorted(release.served_tables() if days is None else days):
        served = catalog.served(release, table, days=None if days is None else days[table])
        for day, entry in sorted(served.items()):
            partitions += 1
            if entry.batch_id not in manifests:
                try:
                    manifests[entry.batch_id] = catalog.get_batch(entry.batch_id)
                except BatchNotFoundError:
                    manifests[entry.batch_id] = None
            manifest = manifests[entry.batch_id]
            record = manifest.partition(table, day) if manifest else None
            found = problems.setdefault((table, day), [])
            if record is None:
                found.append(f"{table} {day} (its batch's manifest no longer lists the partition)")
                continue
            records.setdefault(table, {})[day] = record
            files += len(record.files)
            if record.content_hash != entry.content_hash:
                found.append(
                    f"{table} {day} (the release records another content hash than its batch's manifest)"
                )
            if (record.base, record.files) != (entry.base, entry.files):
                found.append(f"{table} {day} (the release points at other files than its batch's manifest)")
            if record.file_checks or not record.files:
                found.extend(file_problems(catalog.store, table, day, record))
            else:
                found.extend(
                    f"{table} {day} ({key} is missing)"
                    for key in record.files
                    if not catalog.store.exists(key)
                )
    return RestoreCheck(
        partitions=partitions,
        files=files,
        records=records,
        problems=[problem for found in problems.values() for problem in found],
        failed=frozenset(partition for partition, found in problems.items() if found),
    )


def _facts(
    spark: SparkSession, store: ObjectStore, table: str, records: list[PartitionRecord]
) -> dict[str, PartitionFacts | None]:
    spec = feature_spec(table)
    rows = read_partitions(
        spark,
        store,
        [PartitionFiles(record.base, tuple(record.files)) for record in records],
        schema_ddl=spec.schema_ddl,
        columns=spec.column_names,
    )
    return dict(partition_facts(rows, date_column=spec.date_column, schema_ddl=spec.schema_ddl))


def verified_publication(
    catalog: ReleaseCatalog,
    approvals: ApprovalStore,
    rules: ApprovalRules,
    spark: SparkSession,
    batch: BatchManifest,
    *,
    now: datetime,
    force: bool,
    reason: str | None,
    deep_verify: bool,
) -> tuple[ApprovalRequest, ApprovalFacts]:
    """What must hold before a batch is published, to production or to a canary: its approval under the
    current rules, the code that staged it, no downstream partition of production left stale, its staged
    content, and no newer batch in production (unless forced). Returns the approval request and the facts
    the release records, with the refusals a force overrode."""
    request = verify_approval(approvals, rules, batch, now)
    code = code_versions(batch)
    verify_code(batch, code, force=force, reason=reason)
    current = catalog.current_release()
    stale = stale_downstream(catalog, batch, current)
    verify_downstream(batch, stale, force=force, reason=reason)
    verify_content(spark, catalog.store, batch, deep=deep_verify)
    newer = newer_batch_serving(catalog, batch, current)
    if newer is not None and not force:
        raise StaleBatchError(
            f"batch {batch.batch_id} is older than batch {newer}, which production already serves for some "
            "of the same partitions; promoting it would put older data back. Nothing was published; promote "
            "with force and a reason (recorded on the release) only if that is what you mean"
        )
    if newer is not None and not (reason and reason.strip()):
        raise StaleBatchError(
            f"batch {batch.batch_id}: promoting with force over batch {newer}, which production serves for "
            "some of the same partitions, needs a reason (recorded on the release); nothing was published"
        )
    overridden: dict[Override, bool] = {
        "stale_batch": newer is not None,
        "code_version": any(versions.changed for versions in code.values()),
        "stale_downstream": bool(stale),
    }
    overrides = [name for name, used in overridden.items() if used]
    approval = ApprovalFacts(
        requester=batch.requester,
        approvers=request.approvers,
        approved_at=request.decided_at,
        request_id=request.request_id,
        forced=bool(overrides),
        code_versions=code,
        overrides=overrides,
        left_stale=stale,
    )
    return request, approval


def promote(
    catalog: ReleaseCatalog,
    rules: ApprovalRules,
    spark: SparkSession,
    batch_id: str,
    *,
    requested_by: str | None,
    force: bool = False,
    reason: str | None = None,
    now: datetime | None = None,
    run_id: str | None = None,
    deep_verify: bool = False,
) -> PublishedChange:
    """Publish an approved batch: verify approval, code versions and content, refuse a stale batch unless
    forced, then write the release and swap CURRENT atomically. Staged files are verified by size and
    checksum; `deep_verify` also recomputes their content hashes with Spark. A promotion whose release is
    already current only finishes its bookkeeping (a retry after a crash). `run_id` (the promotion's Dagster
    run) is noted on the approval request. Refused while a canary is open."""
    now = now or datetime.now(UTC)
    approvals = ApprovalStore(catalog.store)
    batch = catalog.get_batch(batch_id)
    current = catalog.current_release()
    if batch.state == BatchState.PROMOTED or (
        current and current.kind == "promotion" and current.batch_id == batch_id
    ):
        if current is None or current.batch_id != batch_id:
            raise InvalidRequestError(
                f"batch {batch_id} was promoted already and production has moved on since; to serve it "
                "again, roll back to its release (`backfills releases` lists them)"
            )
        finish_promotion(catalog, approvals, batch, current, run_id)
        return PublishedChange(current, current.parent_id, {})
    refuse_while_open(catalog, f"promote batch {batch_id} to production")
    request, approval = verified_publication(
        catalog, approvals, rules, spark, batch, now=now, force=force, reason=reason, deep_verify=deep_verify
    )
    release = catalog.promote(
        batch_id, actor=requested_by, reason=reason or request.decision_summary, approval=approval
    )
    finish_promotion(catalog, approvals, batch, release, run_id)
    return PublishedChange(release, release.parent_id, release.changed)


def finish_promotion(
    catalog: ReleaseCatalog,
    approvals: ApprovalStore,
    batch: BatchManifest,
    release: Release,
    run_id: str | None,
) -> None:
    """The bookkeeping after a batch's release became production: the batch is promoted, its approval
    request too (with the release and the run). Idempotent."""
    catalog.move_batch(batch.batch_id, BatchState.PROMOTED)
    if release.request_id is None:
        return

    def promoted(request: ApprovalRequest) -> ApprovalRequest:
        update: dict[str, object] = {"status": "promoted", "release_id": release.release_id}
        if request.promotion_run_id is None and run_id is not None:
            update["promotion_run_id"] = run_id  # the run that published it (not a retry that finished up)
        return request.model_copy(update=update)

    approvals.update(batch.batch_id, release.request_id, promoted)


def roll_back(
    catalog: ReleaseCatalog,
    *,
    to: str,
    reason: str,
    requested_by: str | None,
    tables: list[str] | None = None,
    approved_by: list[str] | None = None,
    rules: ApprovalRules | None = None,
    now: datetime | None = None,
    force: bool = False,
) -> PublishedChange:
    """Republish an earlier release, whole or some tables, atomically.

    With `rules` (rollback needs approval), `approved_by` must satisfy them the way a batch approval does
    (allowlist, quorum, not the requester). Refused while a canary is open (roll the canary back first).

    The partitions the rollback puts back are verified first, as promotion verifies a batch (`restore_check`:
    every file's size and checksum, the content hash against the batch's manifest); a problem refuses the
    rollback (RestoredContentChangedError, naming the partitions) unless `force`d, which the release records
    (`forced`, with the rollback's reason) and an audit event names. The partitions it leaves as they are
    are not read again: production serves them now and will after, whatever the rollback finds, so reading
    them would make a rollback's cost grow with history rather than with what it changes (drills read all).
    """
    now = now or datetime.now(UTC)
    refuse_while_open(catalog, f"roll production back to {to}")
    approvers = []
    if rules is not None:
        votes = [Vote(user_id=user, decision="approve", at=now, source="cli") for user in approved_by or []]
        facts = RequestFacts(batch_id=f"rollback-to-{to}", requester=requested_by, requested_at=now)
        decision = decide(facts, votes, rules, now)
        if decision.outcome != "approved":
            raise BatchNotApprovedError(
                f"rollback to {to} needs approval (BACKFILLS_ROLLBACK_REQUIRES_APPROVAL): "
                f"{decision.summary}; nothing was changed"
            )
        approvers = [vote.user_id for vote in decision.approvals]
    overridden: list[str] = []

    def verified(release: Release) -> Release:
        check = restore_check(catalog, release, release.changed)
        if not check.problems:
            return release
        if not force:
            raise RestoredContentChangedError(
                f"rollback to {release.rolled_back_to} refused: files of the partitions it would restore no "
                f"longer match what their batches recorded at staging: {_listed(check.problems)}. Nothing "
                "was changed; roll back to another release, or restage those partitions, or roll back with "
                "force (recorded with the reason) if restoring them as they are is what you mean"
            )
        overridden.extend(check.problems)
        return release.model_copy(update={"forced": True})

    release = catalog.rollback(
        to,
        actor=requested_by,
        reason=reason + (f" (approved by {', '.join(approvers)})" if approvers else ""),
        tables=tables,
        verify=verified,
    )
    if overridden:
        catalog.append_event(
            "rollback_forced",
            release_id=release.release_id,
            actor=requested_by,
            tables=release.changed,
            details={"reason": release.reason, "problems": overridden},
        )
    return PublishedChange(release, release.parent_id, release.changed)


def production_facts(
    catalog: ReleaseCatalog, change: PublishedChange
) -> dict[str, dict[str, dict[str, object]]]:
    """Table -> day -> what production now serves there and why: the metadata of each production
    materialization (a partition the change removed from production says so)."""
    release = change.release
    manifests: dict[str, BatchManifest] = {}
    facts: dict[str, dict[str, dict[str, object]]] = defaultdict(dict)
    for table, days in change.changed.items():
        now_served = catalog.served(release, table, days=days)
        for day in days:
            common: dict[str, object] = {
                "kind": release.kind,
                "release_id": release.release_id,
                "previous_release_id": change.previous_release_id,
                "requested_by": release.actor,
                "reason": release.reason,
            }
            if release.kind == "promotion":
                common |= {
                    "requester": release.requester,
                    "approvers": ", ".join(a.display_name or a.user_id for a in release.approvers),
                    "approver_ids": ", ".join(a.user_id for a in release.approvers),
                    "approved_at": release.approved_at.isoformat() if release.approved_at else None,
                    "forced": release.forced,
                    "overrides": ", ".join(release.overrides) or None,
                }
            else:
                common["rolled_back_to"] = release.rolled_back_to
            served = now_served.get(day)
            if served is None:
                facts[table][day] = common | {"removed_from_production": True}
                continue
            if served.batch_id not in manifests:
                manifests[served.batch_id] = catalog.get_batch(served.batch_id)
            record = manifests[served.batch_id].partition(table, day)
            facts[table][day] = common | {
                "batch_id": served.batch_id,
                "dagster/row_count": served.row_count,
                "content_hash": served.content_hash,
                "code_version": record.code_version if record else None,
            }
            code = release.code_versions.get(table)
            if release.kind == "promotion" and code is not None:
                facts[table][day]["deployed_code_version"] = code.deployed
    return dict(facts)
