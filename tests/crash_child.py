"""A run of the governed flow that dies by SIGKILL (with its Spark JVM) at one named point, for the
crash-point matrix in test_crash_points.py. Not a test module: the matrix starts it as a process of its own.

    python crash_child.py POINT STORAGE_ROOT [SLACK_URL SLACK_TOKEN]
    python crash_child.py mid_online_write - STORE_URL KEY_PREFIX     (the online store only)
    python crash_child.py mid_online_sync STORAGE_ROOT STORE_URL KEY_PREFIX
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path

DAILY = "customer_daily_txn"
BATCH = "crashed"
FIRST, LAST = date(2025, 1, 1), date(2025, 1, 4)
CHANNEL = "C0APPROVALS"
APPROVER = "U0BOB"


def die() -> None:
    """Kill this process and everything it started (the Spark JVM), as a machine failure would."""
    os.killpg(0, signal.SIGKILL)


def die_when_called(owner: object, name: str) -> None:
    def dead(*args: object, **kwargs: object) -> None:
        die()

    setattr(owner, name, dead)


def die_once_writing(folder: Path) -> None:
    """Die as soon as the first file appears in `folder`: Spark is writing partitions."""

    def watch() -> None:
        while not (folder.exists() and any(path.is_file() for path in folder.rglob("*"))):
            time.sleep(0.005)
        die()

    threading.Thread(target=watch, daemon=True).start()


def die_after_rows_of(store_class: type, table: str) -> None:
    """Die once the first chunk of `table`'s rows is written: its version half written, its lease held."""
    write = store_class._write_rows

    def written_then_dead(self, name: str, version: str, chunk: list, owner: str) -> int:
        count = write(self, name, version, chunk, owner)
        if name == table:
            die()
        return count

    store_class._write_rows = written_then_dead


def _online_store(url: str, key_prefix: str):
    """The test's online store: an SQLite file, or its key prefix on the test's Redis server."""
    from backfills.serving import online_store
    from backfills.serving.online_redis import RedisOnlineStore

    online_store.WRITE_CHUNK_ROWS = 10  # several chunks for a few dozen entities: a write can stop halfway
    if url.startswith("redis"):
        return RedisOnlineStore(url, key_prefix=key_prefix)
    return online_store.open_online_store(url)


def write_online(url: str, key_prefix: str) -> None:
    """Write version v2 of customer_txn_7d (100 customers), as a sync would."""
    store = _online_store(url, key_prefix)
    die_after_rows_of(type(store), "customer_txn_7d")
    rows = ({"customer_id": f"C{index:06d}", "txn_count_7d": index} for index in range(100))
    store.write_version(
        "customer_txn_7d",
        "v2",
        rows,
        key_column="customer_id",
        release_id="r2",
        partition="2025-03-02",
        content_hash="sha256:v2",
    )


def sync_online(root: str, url: str, key_prefix: str) -> None:
    """Sync the online store to the current release; dies writing customer_risk_profile, the second table."""
    from backfills.resources.catalog import ReleaseCatalog
    from backfills.resources.storage import LocalObjectStore
    from backfills.serving.online_sync import sync_release

    store = _online_store(url, key_prefix)
    die_after_rows_of(type(store), "customer_risk_profile")
    sync_release(_spark, ReleaseCatalog(LocalObjectStore(root)), store)


def _spark():
    from backfills.resources.spark import build_session

    return build_session(
        master="local[1]", remote=None, driver_memory="1g", shuffle_partitions=2, bind_address="127.0.0.1"
    )


def stage(root: str) -> None:
    from backfills.assets.registry import feature_spec
    from backfills.assets.staging import stage_partitions
    from backfills.assets.transformations import DateRange
    from backfills.resources.catalog import ReleaseCatalog
    from backfills.resources.storage import LocalObjectStore

    store = LocalObjectStore(root)
    stage_partitions(
        feature_spec(DAILY),
        DateRange(FIRST, LAST),
        batch_id=BATCH,
        run_id="doomed",
        requester="U0ALICE",
        earliest=FIRST,
        spark=_spark(),
        store=store,
        catalog=ReleaseCatalog(store),
    )


def promote(root: str) -> None:
    from backfills.orchestration import promotion
    from backfills.orchestration.approval_policy import ApprovalRules
    from backfills.resources.catalog import ReleaseCatalog
    from backfills.resources.storage import LocalObjectStore

    catalog = ReleaseCatalog(LocalObjectStore(root))
    rules = ApprovalRules(approvers=frozenset({APPROVER}))
    promotion.promote(catalog, rules, _spark(), BATCH, requested_by="approval_sensor")


def ask_for_approval(root: str, slack_url: str, token: str) -> None:
    from backfills.orchestration.approval_channels import SlackChannel
    from backfills.orchestration.approval_flow import ApprovalFlow
    from backfills.orchestration.approval_message import Links
    from backfills.orchestration.approval_policy import ApprovalRules
    from backfills.resources.catalog import ReleaseCatalog
    from backfills.resources.slack import SlackClient
    from backfills.resources.storage import LocalObjectStore

    flow = ApprovalFlow(
        ReleaseCatalog(LocalObjectStore(root)),
        SlackChannel(SlackClient(token, base_url=slack_url, timeout=5), CHANNEL),
        ApprovalRules(approvers=frozenset({APPROVER})),
        Links("http://dagster.test"),
        now=lambda: datetime.now(UTC),
    )
    flow.process(BATCH, lambda manifest: None)


def main(point: str, root: str, *more: str) -> None:
    if point == "mid_online_write":
        write_online(*more)  # the online store alone: nothing else to import
    elif point == "mid_online_sync":
        sync_online(root, *more)
    else:
        flow(point, root, *more)
    raise SystemExit(f"{point}: the flow finished without reaching its crash point")


def flow(point: str, root: str, *slack: str) -> None:
    from backfills.assets import staging
    from backfills.checks.diff_check import DiffVsProduction
    from backfills.resources.catalog import ReleaseCatalog

    if point == "mid_partition_write":
        die_once_writing(Path(root) / "staging" / DAILY / BATCH)
        stage(root)
    elif point == "after_files_before_manifest":
        die_when_called(ReleaseCatalog, "record_partitions")
        stage(root)
    elif point == "after_manifest_before_checks":
        die_when_called(staging, "run_gate")
        stage(root)
    elif point == "mid_checks":
        die_when_called(DiffVsProduction, "judge")  # the pass and cross-table check are done, not the diff
        stage(root)
    elif point == "after_release_before_swap":
        die_when_called(ReleaseCatalog, "commit")
        promote(root)
    elif point == "mid_slack_post":
        ask_for_approval(root, *slack)  # the Slack server kills this process while it posts
    else:
        raise SystemExit(f"unknown crash point {point}")


if __name__ == "__main__":
    main(*sys.argv[1:])
