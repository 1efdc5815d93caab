"""A backfill launched from the Materialize dialog runs each table in one run, whatever its number of days
and whatever the window of the table (issue 27): the default layout by rows (assets/run_layout.py), through
the real webserver and daemon.

Slow by nature (real services): deselect with `-m "not end_to_end"`.
"""

from __future__ import annotations

from collections import Counter
from datetime import date
from pathlib import Path

import pytest
from conftest import make_lake
from dagster_services import REQUESTER, governed_services, iter_days

from backfills.assets.factory import REQUESTER_TAG, staging_key
from backfills.assets.generator import write_landing_zone
from backfills.assets.registry import FEATURES
from backfills.resources.connect_server import ConnectServer

pytestmark = pytest.mark.end_to_end

FIRST_DAY, LAST_DAY = "2025-01-01", "2025-03-03"  # 62 landed days, and the partitions
DAYS = list(iter_days(FIRST_DAY, LAST_DAY))
TABLES = [spec.name for spec in FEATURES]


def test_a_62_day_launch_from_the_dialog_runs_each_table_once(tmp_path: Path, connect_server: ConnectServer):
    storage_root = tmp_path / "storage"
    lake = make_lake(storage_root)
    write_landing_zone(
        lake.store, start=date.fromisoformat(FIRST_DAY), days=len(DAYS), customers=30, rows_per_day=60
    )
    with governed_services(
        tmp_path,
        storage_root,
        partitions_start=FIRST_DAY,
        partitions_end=LAST_DAY,
        connect=connect_server,
        max_partitions_per_run=None,
    ) as (services, _):
        client = services.client
        backfill_id = client.launch_from_dialog(
            [staging_key(table).path for table in TABLES], DAYS, {REQUESTER_TAG: REQUESTER}
        )
        status = client.wait_for_backfill(backfill_id, 900)
        runs = client.runs(backfill_id=backfill_id)

    assert status == "COMPLETED_SUCCESS", [run.describe() for run in runs]
    # One run per table at most (Dagster may put several tables in one run): the 7-day and 30-day windows
    # do not multiply runs, and every run covers all 62 days.
    per_table = Counter(key[-1] for run in runs for key in run.asset_keys)
    assert per_table == dict.fromkeys(TABLES, 1), [run.describe() for run in runs]
    assert all(run.partitions == DAYS for run in runs), [run.describe() for run in runs]
    assert lake.catalog.get_batch(backfill_id).partitions_by_table() == dict.fromkeys(TABLES, DAYS)
