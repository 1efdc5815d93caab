"""Rollback drills: a drill rolls a shadow pointer back to the target, reads through it what readers would
read and restores the online rows into shadow tables; one that passes leaves production and the online store
as they were; one that finds a file deleted or changed (even keeping its size), or a release and a manifest
that disagree, fails, names the partitions, is told in the approvals channel and recorded for auditors (the
audit trail, an observation in Dagster, `backfills drills`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import Lake, make_lake
from dagster import AssetKey, DagsterInstance
from slack_api import FakeSlack
from tampering import change_one_byte
from test_approvals import CHANNEL

from backfills.assets.registry import dependency_order
from backfills.errors import CurrentChangedError, InvalidRequestError, ReleaseNotFoundError
from backfills.orchestration.cli import main
from backfills.orchestration.definitions import build_definitions
from backfills.orchestration.drills import (
    DRILL_POINTER,
    DRILL_POINTER_KEY,
    deep_rows,
    past_drills,
    run_drill,
)
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import Release
from backfills.serving.online_store import open_online_store
from backfills.serving.online_sync import sync_release

DAILY, WEEKLY = "customer_daily_txn", "customer_txn_7d"


@pytest.fixture
def lake(staged_template: Path, tmp_path: Path) -> Lake:
    """Production with two releases: `jan` (every table, Jan 1..4), then `fix` (customer_daily_txn 3..6)."""
    root = tmp_path / "lake"
    shutil.copytree(staged_template, root)
    lake = make_lake(root)
    lake.catalog.promote("jan", actor="operator", reason="drill tests")
    lake.catalog.promote("fix", actor="operator", reason="drill tests")
    return lake


def _jan_file(lake: Lake, day: str) -> Path:
    record = lake.catalog.get_batch("jan").tables[DAILY][day]
    return lake.root / record.files[0]


def _forget_checksums(lake: Lake, day: str) -> None:
    """The daily table's record of `day` as earlier versions wrote it: no file checksums."""

    def without_checksums(manifest):
        manifest.tables[DAILY][day].file_checks = {}
        return manifest

    lake.catalog.update_batch("jan", without_checksums)


def _production(lake: Lake) -> dict[str, bytes]:
    """CURRENT, every production release, the release tree and every batch manifest (its state), as bytes."""
    kept = ("catalog/audit/", "catalog/drills/")  # what a drill adds: its record and its shadow release
    return {key: lake.store.get(key) for key in lake.store.list("catalog") if not key.startswith(kept)}


def _online(online, keys: list[str]) -> dict[str, tuple]:
    return {
        spec.name: (online.current(spec.name), online.versions(spec.name), online.get(spec.name, keys))
        for spec in dependency_order()
    }


def test_a_drill_rolls_a_shadow_pointer_back_and_leaves_production_and_the_online_store_alone(
    lake: Lake, spark, tmp_path: Path
):
    current = lake.catalog.current_release()
    jan = lake.catalog.get_release(current.parent_id)
    keys = sorted(
        set(pq.read_table(_jan_file(lake, "2025-01-04"), columns=["customer_id"])["customer_id"].to_pylist())
    )
    seen = []

    def through_the_shadow(table: str, records: dict) -> list[str]:
        seen.append(lake.catalog.current_release(DRILL_POINTER))  # while the drill reads
        return []

    with open_online_store(f"sqlite:///{tmp_path / 'online.db'}") as online:
        sync_release(lambda: spark, lake.catalog, online)
        production, online_before = _production(lake), _online(online, keys)
        result = run_drill(
            lake.catalog, online=online, session=lambda: spark, actor="auditor", deep_check=through_the_shadow
        )
        assert _online(online, keys) == online_before  # the live tables: same versions, same rows
        assert all(online.versions(f"drill--{spec.name}") == [] for spec in dependency_order())
    assert result.passed and result.problems == [] and result.target_release_id == jan.release_id
    assert _production(lake) == production and lake.catalog.current_release_id() == current.release_id
    assert not lake.store.exists(DRILL_POINTER_KEY)  # the shadow pointer is back

    # The shadow pointer pointed at a rollback release serving what the target serves, kept apart.
    assert len(seen) == 4 and {release.release_id for release in seen} == {result.shadow_release_id}
    shadow = seen[0]
    assert (shadow.kind, shadow.parent_id, shadow.rolled_back_to) == (
        "rollback",
        current.release_id,
        jan.release_id,
    )
    assert lake.catalog.snapshot(shadow) == lake.catalog.snapshot(jan)
    assert shadow.release_id not in {release.release_id for release in lake.catalog.list_releases()}

    expected = sum(len(lake.catalog.served(jan, table)) for table in jan.served_tables())
    assert result.partitions_checked == expected == 16  # 4 tables x Jan 1..4
    files = sum(
        len(entry.files)
        for table in jan.served_tables()
        for entry in lake.catalog.served(jan, table).values()
    )
    assert result.files_checked == files >= expected and result.seconds_to_restore > 0
    # Every table's newest partition was restored into its shadow and read back equal; a rollback would
    # reload the daily table (production's newest day moved on) and switch the others back without reloading.
    assert sorted(result.online_restored) == sorted(spec.name for spec in dependency_order())
    assert all(count > 0 for count in result.online_restored.values())
    assert result.online == {spec.name: "kept" for spec in dependency_order()} | {DAILY: "reload"}
    [recorded] = past_drills(lake.catalog)
    assert recorded["drill_id"] == result.drill_id and recorded["passed"] and recorded["actor"] == "auditor"
    assert recorded["shadow_release_id"] == shadow.release_id


def _plant(lake: Lake, damage: str) -> str:
    """Damage what a rollback to `jan` would restore; the problem a drill must name."""
    if damage == "content hash":

        def recorded_otherwise(manifest):
            manifest.tables[WEEKLY]["2025-01-02"].content_hash = "0" * 64
            return manifest

        lake.catalog.update_batch("jan", recorded_otherwise)
        return f"{WEEKLY} 2025-01-02 (the release records another content hash than its batch's manifest)"
    if damage == "other files":  # the manifest names intact copies, not the files the release serves
        staged = lake.catalog.get_batch("jan").tables[WEEKLY]["2025-01-02"]
        copies = {key: key.replace(".parquet", "-copy.parquet") for key in staged.files}
        for key, copy in copies.items():
            lake.store.put(copy, lake.store.get(key))

        def renamed(manifest):
            record = manifest.tables[WEEKLY]["2025-01-02"]
            record.file_checks = {copies[key]: record.file_checks[key] for key in record.files}
            record.files = [copies[key] for key in record.files]
            return manifest

        lake.catalog.update_batch("jan", renamed)
        return f"{WEEKLY} 2025-01-02 (the release points at other files than its batch's manifest)"
    if damage == "unlisted":  # the batch's manifest lost the partition the release serves from it

        def unlisted(manifest):
            del manifest.tables[WEEKLY]["2025-01-02"]
            return manifest

        lake.catalog.update_batch("jan", unlisted)
        return f"{WEEKLY} 2025-01-02 (its batch's manifest no longer lists the partition)"
    path = _jan_file(lake, "2025-01-02")
    key = path.relative_to(lake.root).as_posix()
    if damage == "missing, staged without checksums":  # an older record: only presence can be checked
        _forget_checksums(lake, "2025-01-02")
    if damage == "one byte":
        change_one_byte(path)
        return f"{DAILY} 2025-01-02 ({key} changed: its checksum is not the one recorded at staging)"
    path.unlink()
    return f"{DAILY} 2025-01-02 ({key} is missing)"


@pytest.mark.parametrize(
    "damage",
    ["content hash", "other files", "unlisted", "one byte", "missing", "missing, staged without checksums"],
)
def test_a_drill_fails_naming_the_partition_a_rollback_would_not_restore_as_recorded(lake: Lake, damage: str):
    before = lake.catalog.current_release_id()
    expected = _plant(lake, damage)
    result = run_drill(lake.catalog)
    assert not result.passed and result.problems == [expected] and result.problem_count == 1
    assert lake.catalog.current_release_id() == before
    assert not past_drills(lake.catalog)[-1]["passed"]


def test_a_drill_names_the_partitions_whose_files_were_deleted_or_modified(lake: Lake):
    _jan_file(lake, "2025-01-02").unlink()
    with _jan_file(lake, "2025-01-03").open("ab") as modified:
        modified.write(b"tampered")
    result = run_drill(lake.catalog)
    assert not result.passed and result.problem_count == 2
    assert any(f"{DAILY} 2025-01-02" in problem and "missing" in problem for problem in result.problems)
    assert any(f"{DAILY} 2025-01-03" in problem and "bytes" in problem for problem in result.problems)
    assert not past_drills(lake.catalog)[-1]["passed"]


@pytest.mark.parametrize("damaged", [5, 6])
def test_a_drill_names_its_first_five_problems_and_says_when_there_are_more(lake: Lake, damaged: int):
    jan = lake.catalog.get_batch("jan")
    partitions = [(DAILY, f"2025-01-0{day}") for day in range(1, 5)] + [
        (WEEKLY, "2025-01-01"),
        (WEEKLY, "2025-01-02"),
    ]
    for table, day in partitions[:damaged]:
        (lake.root / jan.tables[table][day].files[0]).unlink()
    result = run_drill(lake.catalog)
    text = result.describe()
    assert result.problem_count == len(result.problems) == damaged
    assert text.endswith(": " + "; ".join(result.problems[:5]) + (" …" if damaged > 5 else ""))


class _FaultyRollback(ReleaseCatalog):
    """A rollback with the bugs a drill is there to catch: it leaves the daily table as production serves it
    now (Jan 3..6 of `fix`), and loses the weekly table."""

    def rollback(self, to: str, **kwargs) -> Release:
        def lose_weekly(release: Release) -> Release:
            return release.model_copy(
                update={
                    "table_indexes": {t: i for t, i in release.table_indexes.items() if t != WEEKLY},
                    "partition_counts": {t: n for t, n in release.partition_counts.items() if t != WEEKLY},
                }
            )

        others = [spec.name for spec in dependency_order() if spec.name != DAILY]
        return super().rollback(to, tables=others, verify=lose_weekly, **kwargs)


def test_a_drill_fails_when_the_rollback_would_serve_other_partitions_than_its_target(lake: Lake):
    jan = lake.catalog.get_release(lake.catalog.current_release().parent_id)
    result = run_drill(_FaultyRollback(lake.store))
    differs = f"(the rollback would serve other content than release {jan.release_id} records)"
    assert not result.passed and result.problems == [
        *(f"{DAILY} 2025-01-0{day} {differs}" for day in (3, 4, 5, 6)),  # changed, and only now served
        *(f"{WEEKLY} 2025-01-0{day} {differs}" for day in (1, 2, 3, 4)),  # lost with its table
    ]


def test_a_drill_needs_a_release_to_roll_back_to_and_takes_one_by_its_id(
    staged_template: Path, tmp_path: Path
):
    shutil.copytree(staged_template, tmp_path / "lake")
    lake = make_lake(tmp_path / "lake")
    with pytest.raises(ReleaseNotFoundError, match="nothing has been promoted"):
        run_drill(lake.catalog)
    first = lake.catalog.promote("jan", actor="operator", reason="drill tests")
    with pytest.raises(ReleaseNotFoundError, match=f"{first.release_id} is the first one"):
        run_drill(lake.catalog)
    lake.catalog.promote("fix", actor="operator", reason="drill tests")
    lake.catalog.promote("jan", actor="operator", reason="drill tests")  # jan again over fix
    result = run_drill(lake.catalog, to=first.release_id)
    assert result.passed and result.target_release_id == first.release_id
    assert lake.catalog.snapshot(lake.catalog.get_release(result.shadow_release_id)) == lake.catalog.snapshot(
        first
    )


def test_a_drill_names_a_partition_whose_rows_cannot_be_loaded_into_the_online_store(
    lake: Lake, spark, tmp_path: Path
):
    """An older record (no checksums) whose file is still there but no longer parquet: only reading its rows
    finds it out, with the deep check or by loading them as a rollback of the online store would."""
    _forget_checksums(lake, "2025-01-04")
    _jan_file(lake, "2025-01-04").write_bytes(b"not parquet at all")
    assert run_drill(lake.catalog).passed  # its file is there, and no checksum says otherwise
    [unreadable] = run_drill(lake.catalog, deep_check=deep_rows(spark, lake.catalog)).problems
    assert unreadable.startswith(f"{DAILY} 2025-01-04 (its files cannot be read: ")
    with open_online_store(f"sqlite:///{tmp_path / 'online.db'}") as online:
        sync_release(lambda: spark, lake.catalog, online)
        result = run_drill(lake.catalog, online=online, session=lambda: spark)
    [problem] = result.problems
    assert not result.passed and problem.startswith(f"online {DAILY} 2025-01-04 (cannot be restored: ")
    assert DAILY not in result.online_restored and len(result.online_restored) == 3


class _RacingDrill(ReleaseCatalog):
    """Another drill swaps the shadow pointer right after this one did."""

    def rollback(self, to: str, **kwargs) -> Release:
        mine = super().rollback(to, **kwargs)
        self.shadow(kwargs["pointer"])  # the other drill starts
        super().rollback(to, **kwargs)
        return mine


def test_a_drill_stops_when_another_one_moves_the_shadow_pointer(lake: Lake, tmp_path: Path):
    before = _production(lake)
    with pytest.raises(CurrentChangedError, match="run one drill at a time"):
        run_drill(_RacingDrill(lake.store))
    assert not lake.store.exists(DRILL_POINTER_KEY) and _production(lake) == before
    with open_online_store(f"sqlite:///{tmp_path / 'online.db'}") as online:
        with pytest.raises(InvalidRequestError, match="pass a session"):
            run_drill(lake.catalog, online=online)
    assert past_drills(lake.catalog) == []


def test_the_drill_job_records_an_observation_and_tells_the_channel_when_it_fails(
    lake: Lake, dagster_instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
):
    with FakeSlack() as slack:
        slack.add_channel(CHANNEL, "feature-approvals")
        monkeypatch.setenv("SLACK_BOT_TOKEN", slack.token)
        defs = build_definitions(
            lake.settings(slack_bot_token=slack.token, slack_channel=CHANNEL, slack_api_url=slack.base_url)
        )
        job = defs.resolve_job_def("rollback_drill")
        assert job.execute_in_process(instance=dagster_instance).success
        _jan_file(lake, "2025-01-04").unlink()
        failed = job.execute_in_process(instance=dagster_instance, raise_on_error=False)
        messages = [m["text"] for m in slack.messages(CHANNEL)]
    assert not failed.success
    assert len(messages) == 1 and "FAILED" in messages[0] and f"{DAILY} 2025-01-04" in messages[0]
    records = dagster_instance.fetch_observations(AssetKey(["audit", "rollback_drills"]), limit=5).records
    verdicts = [record.asset_observation.metadata["passed"].value for record in records]
    assert verdicts == [False, True]  # newest first
    schedule = defs.resolve_schedule_def("weekly_rollback_drill")
    assert schedule.cron_schedule == "0 4 * * 1" and schedule.default_status.value == "STOPPED"


def test_the_commands_run_a_drill_and_list_past_drills(
    lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("BACKFILLS_STORAGE_ROOT", str(lake.root))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    assert main(["drill", "--as", "auditor"]) == 0
    assert "passed: 16 partitions" in capsys.readouterr().out
    _jan_file(lake, "2025-01-01").unlink()
    assert main(["drill"]) == 2
    assert f"{DAILY} 2025-01-01" in capsys.readouterr().err
    assert main(["drills", "--format", "json"]) == 0
    drills = json.loads(capsys.readouterr().out)
    assert [drill["passed"] for drill in drills] == [True, False]
