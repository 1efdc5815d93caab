"""A rollback restores what was approved, not whatever is on disk: the files of every partition it puts back
are verified as promotion verifies a batch (size and checksum against the batch's records); a changed file
refuses it, naming the partition, unless forced with a reason, which the release and the audit trail record.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Lake
from tampering import change_one_byte
from test_drills import _jan_file, lake  # noqa: F401  (production `fix` on top of `jan`)

from backfills.errors import RestoredContentChangedError
from backfills.orchestration.audit import audit_trail
from backfills.orchestration.cli import main
from backfills.orchestration.promotion import roll_back

DAILY = "customer_daily_txn"


def test_a_rollback_onto_a_file_changed_since_staging_is_refused_naming_the_partition(lake: Lake) -> None:
    before = lake.catalog.current_release_id()
    releases = lake.catalog.list_releases()
    path = _jan_file(lake, "2025-01-03")
    key = path.relative_to(lake.root).as_posix()
    change_one_byte(path)  # same size: only the checksum can tell
    with pytest.raises(RestoredContentChangedError) as refused:
        roll_back(lake.catalog, to="previous", reason="fix looks wrong", requested_by="ops")
    message = str(refused.value)
    assert f"{DAILY} 2025-01-03 ({key} changed: its checksum is not the one recorded at staging)" in message
    assert "2025-01-04" not in message and "Nothing was changed" in message
    assert lake.catalog.current_release_id() == before  # production untouched
    assert lake.catalog.list_releases() == releases  # and no release written
    assert lake.catalog.get_batch("fix").state != "rolled_back"


def test_a_forced_rollback_onto_a_changed_file_goes_through_and_is_recorded_as_forced(
    lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKFILLS_STORAGE_ROOT", str(lake.root))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("BACKFILLS_ONLINE_STORE", "none")
    (tmp_path / "dagster_home").mkdir()
    jan = lake.catalog.get_release(lake.catalog.current_release().parent_id)
    change_one_byte(_jan_file(lake, "2025-01-04"))
    rollback = ["rollback", "--to", "previous", "--reason", "Jan 4 restaged next", "--as", "carol"]
    assert main(rollback) == 2
    error = capsys.readouterr().err
    assert "RestoredContentChangedError" in error and f"{DAILY} 2025-01-04" in error
    assert main([*rollback, "--force"]) == 0
    assert f"rolled back to {jan.release_id}" in capsys.readouterr().out

    current = lake.catalog.current_release()
    assert current.rolled_back_to == jan.release_id and current.forced
    assert current.reason == "Jan 4 restaged next"
    [rolled_back] = [e for e in lake.catalog.events() if e.kind == "rolled_back"]
    assert rolled_back.details["forced"] is True and rolled_back.release_id == current.release_id
    [forced] = [e for e in lake.catalog.events() if e.kind == "rollback_forced"]
    assert forced.actor == "carol" and forced.details["reason"] == current.reason
    assert [problem.split(" (")[0] for problem in forced.details["problems"]] == [f"{DAILY} 2025-01-04"]
    trail = [entry.what for entry in audit_trail(lake.catalog, DAILY, "2025-01-04")]
    assert any("FORCED over files changed since staging" in what for what in trail)
    assert any(what.startswith("rollback forced over 1 file problems") for what in trail)
