"""The `backfills` command as an operator uses it: generate, backfill, batches, releases, read, errors."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from conftest import Lake
from slack_api import ApiError, FakeSlack
from test_catalog import DAILY, WEEKLY, stage
from test_lifecycle import _checked

from backfills.orchestration.cli import EXIT_NOT_NOTIFIED, _completion, _flow, main
from backfills.resources import canary as canary_channel
from backfills.resources.catalog_models import ApprovalFacts, StaleDownstream
from backfills.resources.settings import load_settings


def _cli(*args: str, root: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BACKFILLS_STORAGE_ROOT=str(root))
    return subprocess.run(
        [sys.executable, "-m", "backfills.orchestration.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.fixture
def operator(lake: Lake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Lake:
    monkeypatch.setenv("BACKFILLS_STORAGE_ROOT", str(lake.root))
    monkeypatch.setenv("BACKFILLS_PARTITIONS_START", "2025-01-01")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return lake


def _stage_daily(lake: Lake, spark, batch: str, end: date) -> None:
    lake.stage(spark, "customer_daily_txn", date(2025, 1, 1), end, batch, requester="alice")


def test_generate_writes_the_landing_zone_and_reports_it(tmp_path: Path) -> None:
    result = _cli(
        "generate",
        "--start",
        "2025-03-01",
        "--days",
        "3",
        "--rows-per-day",
        "200",
        "--fault",
        "empty_day:2025-03-02",
        root=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 3 daily files" in result.stdout and "empty_day into 2025-03-02" in result.stdout
    written = sorted(p.parent.name for p in (tmp_path / "raw" / "transactions").glob("*/*.parquet"))
    assert written == ["date=2025-03-01", "date=2025-03-02", "date=2025-03-03"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "--start", "2025-03-01", "--days", "2", "--fault", "gremlins:2025-03-01"], "gremlins"),
        (
            ["generate", "--start", "2025-03-01", "--days", "2", "--fault", "empty_day:2025-04-01"],
            "2025-04-01",
        ),
        (["batches", "--batch", "nope"], "BatchNotFoundError"),
        (["read", "customer_txn_9d", "--start", "2025-01-01", "--end", "2025-01-02"], "customer_txn_9d"),
        (["read", "customer_txn_7d", "--start", "2025-01-05", "--end", "2025-01-02"], "before --start"),
    ],
)
def test_bad_input_is_one_clear_line_and_a_nonzero_exit(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = _cli(*args, root=tmp_path)
    assert result.returncode == 2
    # The JVM may print its own start-up warning; ours is exactly one line.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.stderr


def test_batches_json_lists_state_rows_and_hashes_per_partition(operator: Lake, spark, capsys) -> None:
    _stage_daily(operator, spark, "b1", date(2025, 1, 3))
    assert main(["batches", "--format", "json"]) == 0
    [batch] = json.loads(capsys.readouterr().out)
    assert (batch["batch_id"], batch["state"], batch["requester"]) == ("b1", "checked", "alice")
    assert {check["check"] for check in batch["checks"]} >= {
        "value_ranges",
        "unique_keys",
        "non_empty_partitions",
    }
    assert all(check["verdict"] == "passed" for check in batch["checks"])
    records = batch["tables"]["customer_daily_txn"]
    manifest = operator.catalog.get_batch("b1").tables["customer_daily_txn"]
    assert {day: (r["row_count"], r["content_hash"]) for day, r in records.items()} == {
        day: (r.row_count, r.content_hash) for day, r in manifest.items()
    }
    assert main(["batches"]) == 0
    text = capsys.readouterr().out
    assert "batch b1  state=checked  requester=alice" in text
    assert manifest["2025-01-02"].content_hash[:16] in text


def test_releases_and_read_as_of_current_and_past_release(
    operator: Lake, spark, capsys, tmp_path: Path
) -> None:
    _stage_daily(operator, spark, "first", date(2025, 1, 2))
    first = operator.catalog.promote("first", actor="alice", reason="initial")
    _stage_daily(operator, spark, "second", date(2025, 1, 3))
    second = operator.catalog.promote("second", actor="alice", reason="extend")

    assert main(["releases", "--format", "json"]) == 0
    releases = {r["release_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert releases[second.release_id]["current"] and not releases[first.release_id]["current"]
    assert releases[second.release_id]["parent_id"] == first.release_id
    assert releases[second.release_id]["batch_id"] == "second"

    assert main(["read", "customer_daily_txn", "--start", "2025-01-01", "--end", "2025-01-03"]) == 0
    rows = sum(
        r.row_count for r in operator.catalog.get_batch("second").tables["customer_daily_txn"].values()
    )
    assert f"as of release {second.release_id}: {rows} rows in 3 partitions" in capsys.readouterr().out

    out = tmp_path / "past.csv"
    args = ["read", "customer_daily_txn", "--start", "2025-01-01", "--end", "2025-01-03"]
    assert main([*args, "--release", first.release_id, "--csv", str(out)]) == 0
    with open(out) as handle:
        past = list(csv.DictReader(handle))
    first_rows = operator.catalog.get_batch("first").tables["customer_daily_txn"]
    assert len(past) == sum(r.row_count for r in first_rows.values())
    assert {row["feature_date"] for row in past} == {"2025-01-01", "2025-01-02"}


_LISTED = re.compile(
    r"^(?P<marker>[* ]) (?P<release_id>\S+)  (?P<kind>\S+)\s+parent=(?P<parent>\S+)  batch=(?P<batch>\S+)  "
    r"(?P<created>\S+ \S+)Z  \[(?P<tables>[^\]]*)\](?P<notes>.*)$"
)


def _text_and_json_listings(capsys) -> tuple[list[re.Match[str]], dict[str, dict]]:
    assert main(["releases"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "(* = current)"
    listed = [_LISTED.match(line) for line in lines[:-1]]
    assert all(listed), lines
    assert main(["releases", "--format", "json"]) == 0
    rows = {row["release_id"]: row for row in json.loads(capsys.readouterr().out)}
    assert sorted(rows) == sorted(line["release_id"] for line in listed)
    return listed, rows


def _assert_json_carries_the_text(line: re.Match[str], row: dict) -> None:
    """Every fact of one text line of `backfills releases`, read from the text, is in its JSON row."""
    assert row["current"] == (line["marker"] == "*")
    assert (row["kind"], row["parent_id"] or "-", row["batch_id"] or "-") == (
        line["kind"],
        line["parent"],
        line["batch"],
    )
    assert row["created_at"].replace("T", " ").startswith(line["created"])
    counts = dict(item.split(":") for item in line["tables"].split(", ")) if line["tables"] else {}
    assert row["partitions"] == {table: int(count) for table, count in counts.items()}
    notes = re.findall(r"  \(([^)]*)\)", line["notes"])
    assert "".join(f"  ({note})" for note in notes) == line["notes"]  # nothing else on the line
    for note in notes:
        if note == "never made current":
            assert row["made_current"] is False
        elif canary := re.fullmatch(r"canary: (\S+)% of entities", note):
            assert row["canary"] == {"status": "open", "percent": float(canary[1])}
        elif note == "canary, rolled back":
            assert row["canary"]["status"] == "rolled_back"
        elif forced := re.fullmatch(r"forced(?:: (.*))?", note):
            assert row["forced"] and row["overrides"] == (forced[1].split(", ") if forced[1] else [])
        elif stale := re.fullmatch(r"(\d+) stale partitions?", note):
            days = {(table, day) for table, marks in row["stale"].items() for m in marks for day in m["days"]}
            assert len(days) == int(stale[1])
        else:
            pytest.fail(f"the text listing says ({note}), and this test does not know where the JSON says it")
    if not any(note == "never made current" or note.startswith("canary") for note in notes):
        assert row["made_current"] is True


def test_releases_as_json_carry_every_fact_the_text_listing_shows(operator: Lake, capsys) -> None:
    catalog = operator.catalog
    stage(catalog, "load", {DAILY: ["2025-01-01", "2025-01-02"], WEEKLY: ["2025-01-02"]})
    catalog.promote("load", actor="ops")
    stage(catalog, "fix", {DAILY: ["2025-01-02"]}, attempt="a2")
    left_stale = {WEEKLY: StaleDownstream(upstream=[DAILY], days=["2025-01-02"])}
    forced = ApprovalFacts(forced=True, overrides=["stale_downstream"], left_stale=left_stale)
    catalog.promote("fix", actor="ops", reason="urgent", approval=forced)
    stage(catalog, "staged-only", {DAILY: ["2025-01-03"]}, attempt="a3")
    catalog.stage_promotion("staged-only", actor="ops")  # never made current
    _checked(catalog, "canary", {WEEKLY: ["2025-01-02"]})
    canary_channel.open_release(catalog, catalog.stage_promotion("canary", actor="ops"), 25, actor="ops")

    listed, rows = _text_and_json_listings(capsys)
    notes = " ".join(line["notes"] for line in listed)
    assert all(
        seen in notes
        for seen in ("never made current", "canary: 25%", "forced: stale_downstream", "1 stale partition")
    )
    for line in listed:
        _assert_json_carries_the_text(line, rows[line["release_id"]])

    canary_channel.roll_back(catalog, actor="ops", reason="the slice looked wrong")
    listed, rows = _text_and_json_listings(capsys)
    assert "canary, rolled back" in " ".join(line["notes"] for line in listed)
    for line in listed:
        _assert_json_carries_the_text(line, rows[line["release_id"]])


def test_read_before_anything_is_promoted_says_so(operator: Lake, spark, capsys) -> None:
    assert main(["read", "customer_daily_txn", "--start", "2025-01-01", "--end", "2025-01-02"]) == 2
    assert "promoted" in capsys.readouterr().err


def test_backfill_command_stages_every_table_into_one_batch(operator: Lake, spark, capsys) -> None:
    args = [
        "backfill",
        "--start",
        "2025-01-01",
        "--end",
        "2025-01-02",
        "--batch-id",
        "cli",
        "--requester",
        "bob",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "batch cli staged" in out and out.count("  run: ") == 4
    manifest = operator.catalog.get_batch("cli")
    assert sorted(manifest.tables) == sorted(
        ["customer_daily_txn", "customer_txn_7d", "customer_txn_30d", "customer_risk_profile"]
    )
    assert manifest.requester == "bob"


def test_local_approval_promotion_rollback_and_audit_from_the_command_line(
    operator: Lake, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("BACKFILLS_APPROVERS", "bob")
    backfill = ["backfill", "--start", "2025-01-01", "--end", "2025-01-02", "--batch-id", "b1"]
    assert main([*backfill, "--requester", "alice"]) == 0
    out = capsys.readouterr().out
    assert "[local approval channel (for local use only" in out and "Approve backfill b1?" in out
    assert "backfills approve b1 --as USER" in out

    assert main(["approve", "b1", "--as", "alice"]) == 0
    assert "alice's approval was ignored because alice requested the batch" in capsys.readouterr().out
    assert main(["promote", "b1"]) == 2
    assert "BatchNotApprovedError" in capsys.readouterr().err
    assert main(["approve", "b1", "--as", "bob"]) == 0
    assert "approved by bob (1 of 1)" in capsys.readouterr().out
    assert main(["promote", "b1", "--as", "ops"]) == 0
    first = operator.catalog.current_release_id()
    assert first is not None and f"release {first}" in capsys.readouterr().out

    assert main([*backfill[:-1], "b2", "--tables", "customer_daily_txn", "--requester", "alice"]) == 0
    assert main(["approve", "b2", "--as", "bob"]) == 0
    assert main(["promote", "b2"]) == 0
    assert main(["rollback", "--to", "previous", "--reason", "b2 was a mistake", "--as", "carol"]) == 0
    assert operator.catalog.current_release().rolled_back_to == first
    capsys.readouterr()

    assert main(["audit", "customer_daily_txn", "--date", "2025-01-02", "--format", "json"]) == 0
    trail = json.loads(capsys.readouterr().out)
    events = [entry["event"] for entry in trail]
    assert [event for event in events if event != "online_synced"][-4:] == [
        "approval_requested",
        "approved",
        "promoted",
        "rolled_back",
    ]
    assert events[-3:] == ["online_synced", "rolled_back", "online_synced"]  # the online store followed
    rollback = trail[-2]
    assert rollback["actor"] == "carol" and "b2 was a mistake" in rollback["what"]
    assert main(["audit", "customer_daily_txn", "--date", "2025-01-02"]) == 0
    assert "production serves customer_daily_txn 2025-01-02 from batch b1" in capsys.readouterr().out


def test_a_staged_batch_whose_request_slack_refuses_exits_3_and_the_sensor_posts_it_later(
    operator: Lake, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    with FakeSlack() as slack:
        slack.add_channel("C0APPROVALS", "feature-approvals")
        slack.add_user("U0BOB", "bob")
        for name, value in {
            "SLACK_BOT_TOKEN": slack.token,
            "BACKFILLS_SLACK_CHANNEL": "C0APPROVALS",
            "BACKFILLS_SLACK_API_URL": slack.base_url,
            "BACKFILLS_APPROVERS": "U0BOB",
        }.items():
            monkeypatch.setenv(name, value)
        slack.inject("chat.postMessage", ApiError("channel_not_found"))
        args = ["backfill", "--start", "2025-01-01", "--end", "2025-01-02", "--tables", "customer_daily_txn"]
        assert main([*args, "--batch-id", "told-later", "--requester", "U0ALICE"]) == EXIT_NOT_NOTIFIED
        captured = capsys.readouterr()
        assert "batch told-later staged" in captured.out
        assert "NotificationFailedError: batch told-later is staged (checked)" in captured.err
        assert "channel_not_found" not in captured.out and "approval sensor tries again" in captured.err
        assert operator.catalog.get_batch("told-later").state == "checked"  # the staging stands
        assert [m for m in slack.messages("C0APPROVALS") if m.get("metadata")] == []

        # The sensor's next pass (the same flow) posts it, once.
        _flow(load_settings()).process("told-later", _completion(load_settings()))
        assert len([m for m in slack.messages("C0APPROVALS") if m.get("metadata")]) == 1
