"""The local setup (`make dev`): the real webserver and daemon on the default SQLite instance.

The end-to-end story (tests/test_end_to_end.py) runs on PostgreSQL, as a shared deployment does. This
keeps the instance that `make dev` creates covered (orchestration/dagster.yaml: SQLite under DAGSTER_HOME,
the same run queue): both processes start on it, and a run launched through GraphQL goes through the
daemon's run queue to a run worker. A rollback is the cheapest such run: no Spark, no backfill daemon tick,
so its two releases are catalog records only (placeholder feature files).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_lake
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.runs import SqliteRunStorage
from dagster_services import DagsterServices
from test_catalog import stage

from backfills.orchestration.jobs import ROLLBACK_JOB

pytestmark = pytest.mark.end_to_end

DAYS = ["2025-01-01", "2025-01-02"]


def test_a_rollback_launched_in_the_ui_runs_through_the_daemon_on_the_default_sqlite_instance(
    tmp_path: Path,
):
    lake = make_lake(tmp_path / "storage")
    releases = []
    for batch in ("first", "second"):
        stage(lake.catalog, batch, {"customer_daily_txn": DAYS})
        releases.append(lake.catalog.promote(batch, actor="setup", reason="production before the test"))
    lake.lay_paper_files("first")  # what the rollback restores must be there

    # A catalog on paper (placeholder files): the online store, which would load rows, is off.
    with DagsterServices(
        tmp_path / "dagster_home", lake.root, env={"BACKFILLS_ONLINE_STORE": "none"}
    ) as services:
        instance = services.instance
        assert isinstance(instance.run_storage, SqliteRunStorage)
        assert isinstance(instance.event_log_storage, SqliteEventLogStorage)
        run_id = services.client.launch_run(
            ROLLBACK_JOB,
            {
                "ops": {
                    "rollback_op": {
                        "config": {
                            "to_release": "previous",
                            "reason": "local instance test",
                            "requested_by": "ops",
                        }
                    }
                }
            },
        )
        run = services.client.wait_for_run(run_id, timeout=300)
        assert run.status == "SUCCESS", services.run_failures(run_id)
        lifecycle = [event.event_type for event in services.run_timeline(run_id)]
        # Queued by the webserver, then launched by the daemon's run queue (RUN_STARTING), then done.
        assert {"RUN_ENQUEUED", "RUN_STARTING", "RUN_SUCCESS"} <= set(lifecycle), lifecycle
    assert not services.leftover_processes(), f"still running after stop: {services.leftover_processes()}"

    current = lake.catalog.current_release()
    assert current.kind == "rollback" and current.rolled_back_to == releases[0].release_id
    assert (tmp_path / "dagster_home" / "history" / "runs.db").is_file()
