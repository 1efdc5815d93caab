"""A run of the governed flow that dies by SIGKILL (with its Spark JVM) at one named point, for the
crash-point matrix in test_crash_points.py. Not a test module: the matrix starts it as a process of its own.

    python crash_child.py POINT STORAGE_ROOT [SLACK_URL SLACK_TOKEN]
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


def main(point: str, root: str, *slack: str) -> None:
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
    raise SystemExit(f"{point}: the flow finished without reaching its crash point")


if __name__ == "__main__":
    main(*sys.argv[1:])
