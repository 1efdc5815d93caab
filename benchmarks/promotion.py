"""Promotion and rollback time for a batch of N partitions and one of 10N: the atomic publish (catalog JSON
only), rollback, the verification of the staged files (size and checksum, no Spark), the deep verification
(`--deep-verify`: every staged file re-read to recompute its content hash) and the full governed promotion.

Both batches are copies of part of a batch a governed backfill staged: real files, real hashes, checks and
an approval through the local channel, each in a fresh catalog whose production already serves as many
partitions (the baseline), so a promotion replaces a release of its own size.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from figures import Samples, load_now
from pyspark.sql import SparkSession

from backfills.orchestration.approval_channels import LocalChannel
from backfills.orchestration.approval_flow import ApprovalFlow
from backfills.orchestration.approval_message import Links
from backfills.orchestration.approval_policy import ApprovalRules
from backfills.orchestration.promotion import promote, roll_back, verify_content
from backfills.resources.approvals_store import ApprovalStore
from backfills.resources.catalog import BATCHES_PREFIX, RELEASES_PREFIX, ReleaseCatalog
from backfills.resources.catalog_models import BatchManifest, VoteRecord
from backfills.resources.storage import LocalObjectStore

APPROVER = "U0BOB"
OPERATOR = "benchmark"
COPY_RUN = "benchmark-copy"
PHASES = ("publish", "rollback", "verify", "deep_verify", "promote")


@dataclass
class PromotionScale:
    """The timings at one batch size."""

    name: str
    days: int
    partitions: int
    manifest_kib: float
    release_kib: float
    seconds: dict[str, Samples]


def _copy_batch(source: BatchManifest, catalog: ReleaseCatalog, batch_id: str, days: set[str]) -> None:
    """A complete, checked batch holding `days` of every table of `source` (same files, same hashes)."""
    records = [
        record.model_copy(update={"batch_id": batch_id})
        for table, partitions in sorted(source.tables.items())
        for day, record in sorted(partitions.items())
        if day in days
    ]
    catalog.record_partitions(batch_id, records, run_id=COPY_RUN, requester=source.requester)
    for table, partitions in sorted(source.tables.items()):
        covered = days.intersection(partitions)
        checks = [
            check.model_copy(update={"partitions": sorted(covered.intersection(check.partitions))})
            for check in source.checks
            if check.table == table and covered.intersection(check.partitions)
        ]
        catalog.record_checks(
            batch_id,
            checks,
            table=table,
            partitions=sorted(covered),
            run_id=COPY_RUN,
            requester=source.requester,
        )
    catalog.mark_complete(
        batch_id,
        {table: sorted(days.intersection(partitions)) for table, partitions in source.tables.items()},
    )


def _approve(catalog: ReleaseCatalog, rules: ApprovalRules, batch_id: str) -> None:
    """Request and approve the batch through the local channel, as `backfills approve` does."""
    flow = ApprovalFlow(catalog, LocalChannel(say=lambda _text: None), rules, Links("http://127.0.0.1:3000"))
    flow.process(batch_id, lambda _batch: None)  # the batch is complete already: no completion probe
    approvals = ApprovalStore(catalog.store)
    request = approvals.latest(batch_id)
    vote = VoteRecord(user_id=APPROVER, decision="approve", at=datetime.now(UTC), source="cli")
    approvals.update(
        batch_id, request.request_id, lambda current: current.model_copy(update={"cli_votes": [vote]})
    )
    flow.process(batch_id, lambda _batch: None)
    status = approvals.latest(batch_id).status
    if status != "approved":
        raise RuntimeError(f"benchmark batch {batch_id} was not approved ({status})")


def _timed(samples: Samples, action: Callable[[], object]) -> None:
    load_before = load_now()
    began = time.perf_counter()
    action()
    samples.values.append(time.perf_counter() - began)
    samples.loads.append((load_before, load_now()))


def _publish(catalog: ReleaseCatalog, batch_id: str) -> None:
    """The atomic switch alone: write the release, compare-and-swap CURRENT (what `catalog.promote` does)."""
    catalog.commit(catalog.stage_promotion(batch_id, actor=OPERATOR, reason="benchmark publish"))


def _roll_back(catalog: ReleaseCatalog) -> None:
    roll_back(catalog, to="previous", reason="benchmark rollback", requested_by=OPERATOR)


def _verify(spark: SparkSession, catalog: ReleaseCatalog, batch_id: str, *, deep: bool = False) -> None:
    verify_content(spark, catalog.store, catalog.get_batch(batch_id), deep=deep)


def _kib(path: Path) -> float:
    return os.path.getsize(path) / 1024


def bench_promotion(
    source_root: Path,
    batch_id: str,
    work: Path,
    *,
    repetitions: int,
    spark: SparkSession,
) -> list[PromotionScale]:
    """Time publish, rollback, both verifications and the full promotion at 1x and 10x, interleaved."""
    source = ReleaseCatalog(LocalObjectStore(source_root)).get_batch(batch_id)
    all_days = sorted({day for partitions in source.tables.values() for day in partitions})
    small = max(1, len(all_days) // 10)
    sizes = {"1x": all_days[:small], "10x": all_days[: min(len(all_days), 10 * small)]}
    rules = ApprovalRules(approvers=frozenset({APPROVER}))
    catalogs: dict[str, ReleaseCatalog] = {}
    scales: dict[str, PromotionScale] = {}
    for name, days in sizes.items():
        root = work / f"promotion-{name}"
        root.mkdir(parents=True)
        # The staged files are shared, read only; each size has a catalog of its own.
        (root / "staging").symlink_to(source_root / "staging", target_is_directory=True)
        catalog = ReleaseCatalog(LocalObjectStore(root))
        _copy_batch(source, catalog, "baseline", set(days))
        catalog.promote("baseline", actor=OPERATOR, reason="production before the benchmark")
        for repetition in range(repetitions):
            _copy_batch(source, catalog, f"candidate-{repetition}", set(days))
            _approve(catalog, rules, f"candidate-{repetition}")
        # Spark's first reads pay class loading and JIT: keep them out of the figures.
        verify_content(spark, catalog.store, catalog.get_batch("baseline"), deep=True)
        catalogs[name] = catalog
        baseline = catalog.get_release(catalog.current_release_id() or "")
        scales[name] = PromotionScale(
            name=name,
            days=len(days),
            partitions=catalog.get_batch("baseline").partition_count(),
            manifest_kib=_kib(root / BATCHES_PREFIX / "candidate-0.json"),
            release_kib=_kib(root / RELEASES_PREFIX / f"{baseline.release_id}.json"),
            seconds={phase: Samples([]) for phase in PHASES},
        )

    for repetition in range(repetitions):
        # Alternate which size goes first, so neither always runs on a warmer JVM or page cache.
        order = list(sizes) if repetition % 2 == 0 else list(reversed(sizes))
        for name in order:
            catalog, seconds, candidate = catalogs[name], scales[name].seconds, f"candidate-{repetition}"
            _timed(seconds["publish"], partial(_publish, catalog, candidate))
            _timed(seconds["rollback"], partial(_roll_back, catalog))
            _timed(seconds["verify"], partial(_verify, spark, catalog, candidate))
            _timed(seconds["deep_verify"], partial(_verify, spark, catalog, candidate, deep=True))
            _timed(
                seconds["promote"], partial(promote, catalog, rules, spark, candidate, requested_by=OPERATOR)
            )
            _timed(seconds["rollback"], partial(_roll_back, catalog))
            print(
                f"  promotion repetition {repetition + 1} {name}: "
                + ", ".join(f"{phase} {samples.values[-1]:.3f} s" for phase, samples in seconds.items()),
                flush=True,
            )
    return [scales[name] for name in sizes]
