"""Canary releases: an approved batch serves a stable slice of entities first, in every reader alike (offline
reads, training sets, the online store), widens without a new approval, completes into production in one
switch or is rolled back, by an operator or by itself when its slice's model decisions degrade; every step
recorded with who or what made it.

Production is `base`: customer_daily_txn from Jan 9 and every table on Feb 7..8 (full 30-day windows, so the
reference model's velocity ratios are ordinary). Two approved batches recompute customer_risk_profile on
Feb 7..8: `again` from the same inputs (the same rows: a healthy canary), and `bad` from landing files of
Feb 7..8 whose statuses were mostly flipped to declined, through all four tables (its gate's model-impact
and diff thresholds set loose, so the canary is the last line of defence).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import Lake, built_once, make_lake, spark_jobs
from dagster import AssetKey, DagsterInstance, build_sensor_context
from pyspark.sql import functions as F
from slack_api import FakeSlack
from tampering import change_one_byte, rewrite_rows

from backfills.assets import registry
from backfills.assets.reader import FeatureReader
from backfills.assets.registry import FEATURES, dependency_order, feature_spec
from backfills.assets.transformations import customer_risk_profile
from backfills.errors import (
    BatchNotApprovedError,
    CanaryConflictError,
    CanaryNotOpenError,
    CanaryUnhealthyError,
    CodeVersionChangedError,
    CurrentChangedError,
    IllegalTransitionError,
    InvalidRequestError,
    StagedContentChangedError,
)
from backfills.orchestration.approval_channels import LocalChannel
from backfills.orchestration.approval_flow import ApprovalFlow
from backfills.orchestration.approval_message import Links
from backfills.orchestration.approval_policy import ApprovalRules
from backfills.orchestration.audit import audit_trail
from backfills.orchestration.canary import HEALTH_GUARD, expose, promote_to_canary
from backfills.orchestration.canary_health import canary_health
from backfills.orchestration.cli import main
from backfills.orchestration.definitions import build_definitions
from backfills.orchestration.promotion import promote, roll_back
from backfills.orchestration.sensors import APPROVAL_SENSOR, CANARY_HEALTH_SENSOR
from backfills.resources import canary as canary_channel
from backfills.resources.approvals_store import ApprovalStore
from backfills.resources.canary_slice import in_slice, slice_column
from backfills.resources.catalog import PRODUCTION, ReleaseCatalog
from backfills.resources.catalog_models import VoteRecord
from backfills.resources.lifecycle import BatchState
from backfills.resources.settings import load_settings
from backfills.serving.online_canary import sync_canary
from backfills.serving.online_rows import stored_form
from backfills.serving.online_store import open_online_store
from backfills.serving.online_sync import loaded, sync_release
from backfills.specs import CanaryHealthPolicy, ColumnHealth, DiffPolicy, ModelImpactPolicy

PROFILE, SEVEN_DAY, DAILY = "customer_risk_profile", "customer_txn_7d", "customer_daily_txn"
TABLES = [spec.name for spec in dependency_order()]
ALICE, BOB, CHANNEL = "U0ALICE", "U0BOB", "C0APPROVALS"
FIRST_DAY, DAY_1, DAY_2 = date(2025, 1, 9), date(2025, 2, 7), date(2025, 2, 8)
DAYS = [DAY_1.isoformat(), DAY_2.isoformat()]
RULES = ApprovalRules(approvers=frozenset({BOB}))
LOOSE = {
    "diff_policy": DiffPolicy(changed_fraction_warn=1.0, psi_warn=100.0, psi_block=100.0),
    "model_impact": ModelImpactPolicy(warn_flip_rate=1.0, block_flip_rate=1.0),
}


def _approve(lake: Lake, batch_id: str) -> None:
    """Bob approves the batch through the local approval channel (`backfills approve`)."""
    flow = ApprovalFlow(lake.catalog, LocalChannel(lambda _: None), RULES, Links("http://dagster.test"))
    flow.process(batch_id, lambda manifest: None)
    approvals = ApprovalStore(lake.store)
    vote = VoteRecord(user_id=BOB, display_name="bob", decision="approve", at=datetime.now(UTC), source="cli")
    approvals.update(
        batch_id,
        approvals.latest(batch_id).request_id,
        lambda request: request.model_copy(update={"cli_votes": [*request.cli_votes, vote]}),
    )
    flow.process(batch_id, lambda manifest: None)
    assert approvals.latest(batch_id).status == "approved"


def _flip_statuses(lake: Lake, day: date) -> None:
    """Four in five of the day's landed transactions declined: a corrupted delivery."""
    [path] = (lake.root / "raw" / "transactions" / f"date={day.isoformat()}").glob("*.parquet")
    table = pq.read_table(path)
    flipped = [
        status if index % 5 == 0 else "declined" for index, status in enumerate(table["status"].to_pylist())
    ]
    column = table.schema.get_field_index("status")
    pq.write_table(table.set_column(column, table.schema.field(column), pc.cast(flipped, "string")), path)


@pytest.fixture(scope="module")
def canary_template(tmp_path_factory, generated_landing_zone: Path, spark) -> Path:
    return built_once(
        "canary", tmp_path_factory, lambda root: _canary_lake(root, generated_landing_zone, spark)
    )


def _canary_lake(root: Path, generated_landing_zone: Path, spark) -> None:
    shutil.copytree(generated_landing_zone / "raw", root / "raw")
    lake = make_lake(root)
    lake.stage(spark, DAILY, FIRST_DAY, DAY_2, "base", requester=ALICE)
    for spec in dependency_order()[1:]:
        lake.stage(spark, spec, DAY_1, DAY_2, "base", requester=ALICE)
    lake.catalog.mark_complete("base", lake.catalog.get_batch("base").partitions_by_table())
    _approve(lake, "base")
    promote(lake.catalog, RULES, spark, "base", requested_by="ops")
    lake.stage(spark, PROFILE, DAY_1, DAY_2, "again", requester=ALICE)
    lake.catalog.mark_complete("again", {PROFILE: DAYS})
    for day in (DAY_1, DAY_2):
        _flip_statuses(lake, day)
    for spec in dependency_order():
        lake.stage(spark, dataclasses.replace(spec, **LOOSE), DAY_1, DAY_2, "bad", requester=ALICE)
    lake.catalog.mark_complete("bad", {spec.name: DAYS for spec in dependency_order()})
    for batch in ("again", "bad"):
        _approve(lake, batch)


@pytest.fixture
def lake(canary_template: Path, tmp_path: Path) -> Lake:
    root = tmp_path / "lake"
    shutil.copytree(canary_template, root)
    return make_lake(root)


def _by_key(frame) -> dict[tuple[str, str], dict]:
    return {
        (row["customer_id"], str(row["feature_date"])): json.loads(stored_form(row.asDict()))
        for row in frame.collect()
    }


def _health(spark, lake: Lake):
    return lambda canary: canary_health(spark, lake.catalog, canary)


# The slice


def test_the_slice_is_the_same_in_spark_and_python_and_only_grows(spark) -> None:
    generator = random.Random(5)
    keys = [f"c{n:05d}" for n in range(3000)] + ["ü-ñ-日本", "", "0042"]
    keys += ["".join(generator.choices("abcdef0123456789", k=12)) for _ in range(500)]
    frame = spark.createDataFrame(pd.DataFrame({"customer_id": keys}))
    slices = {}
    for percent in (1, 10, 33.33, 50, 100):
        in_spark = {
            row["customer_id"] for row in frame.where(slice_column(F.col("customer_id"), percent)).collect()
        }
        in_python = {key for key in keys if in_slice(key, percent)}
        assert in_spark == in_python == {key for key in keys if _in_documented_slice(key, percent)}
        assert abs(len(in_python) / len(keys) - percent / 100) < 0.03
        slices[percent] = in_python
    assert slices[1] <= slices[10] <= slices[33.33] <= slices[50] <= slices[100] == set(keys)
    assert {in_slice(key, 0.01) for key in keys} == {True, False}  # one bucket: the smallest canary
    for percent in (0, -5, 100.01, 150):
        with pytest.raises(InvalidRequestError, match="more than 0 and at most 100"):
            in_slice("c1", percent)
    with pytest.raises(InvalidRequestError, match="more than two decimals"):
        in_slice("c1", 12.345)


def _in_documented_slice(key: str, percent: float) -> bool:
    """The README's rule, worked out here: the first 8 hex digits of the key's SHA-256 as an integer, mod
    10,000, below percent x 100."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10_000 < round(percent * 100)


def test_reading_the_slice_through_an_unknown_channel_or_a_pinned_release_is_refused(
    spark, tmp_path: Path
) -> None:
    reader = FeatureReader(spark, make_lake(tmp_path / "empty").store)
    with pytest.raises(InvalidRequestError, match="channel 'beta' is not one of production, canary"):
        reader.read(DAILY, DAY_1, DAY_2, channel="beta")
    with pytest.raises(InvalidRequestError, match="release r-x pins one release: pass one of them"):
        reader.read(DAILY, DAY_1, DAY_2, release="r-x", channel="canary")
    with pytest.raises(InvalidRequestError, match="release r-x pins one release"):
        reader.training_set(
            pd.DataFrame({"customer_id": ["c1"], "event_ts": ["2025-02-09"]}),
            [],
            release="r-x",
            channel="canary",
        )


# Readers


def test_every_reader_gives_the_slice_the_canary_and_the_rest_production(
    lake: Lake, spark, tmp_path: Path
) -> None:
    reader = FeatureReader(spark, lake.store)
    production_before = _by_key(reader.read(DAILY, FIRST_DAY, DAY_2))
    canary = promote_to_canary(lake.catalog, RULES, spark, "bad", 25, requested_by="ops")
    assert lake.catalog.get_batch("bad").state == BatchState.CANARY
    assert lake.catalog.current_release_id() == canary.base_release_id  # production did not move
    assert _by_key(reader.read(DAILY, FIRST_DAY, DAY_2)) == production_before
    exposed = _by_key(reader.read(DAILY, FIRST_DAY, DAY_2, release=canary.release_id))

    def expected(percent: float) -> dict:
        return {
            (key, day): exposed[(key, day)] if in_slice(key, percent) else row
            for (key, day), row in production_before.items()
        } | {(key, day): row for (key, day), row in exposed.items() if in_slice(key, percent)}

    through_canary = _by_key(reader.read(DAILY, FIRST_DAY, DAY_2, channel="canary"))
    assert through_canary == expected(25) != production_before
    changed = {key for (key, day), row in through_canary.items() if row != production_before.get((key, day))}
    assert changed and all(in_slice(key, 25) for key in changed)

    # Training sets: production unless asked; the slice's entity rows get the canary's features.
    customers = sorted({key for key, _ in production_before})
    entities = pd.DataFrame({"customer_id": customers, "event_ts": ["2025-02-09T00:00:00Z"] * len(customers)})
    features = ["customer_txn_7d.declined_count_7d"]
    plain = reader.training_set(entities, features)
    mixed = reader.training_set(entities, features, channel="canary")
    pinned = reader.training_set(entities, features, release=canary.release_id)
    for index, key in enumerate(customers):
        source = pinned if in_slice(key, 25) else plain
        assert mixed.frame[features[0]][index] == source.frame[features[0]][index] or (
            pd.isna(mixed.frame[features[0]][index]) and pd.isna(source.frame[features[0]][index])
        )
    assert "channel" not in plain.lineage
    assert mixed.lineage["canary"]["release_id"] == canary.release_id
    assert mixed.lineage["canary"]["rows_in_slice"] == sum(in_slice(key, 25) for key in customers)

    # The online store: the slice's keys read the canary's newest partition, the others production's.
    with open_online_store(f"sqlite:///{tmp_path / 'online.db'}") as online:
        sync_release(lambda: spark, lake.catalog, online)
        told: list[str] = []
        routes = sync_canary(lambda: spark, lake.catalog, online, progress=told.append)
        synced = {item.table: item.action for item in routes}
        assert synced[DAILY] == "loaded" and synced[SEVEN_DAY] == "loaded"
        version = online.canary_route(DAILY).version
        assert f"{DAILY}: canary version {version} loaded, 25% of keys read it" in told
        assert len(told) == len(routes)
        # Its parity figures are kept, and the audit trail says which route each table got.
        parity = loaded(lake.catalog, DAILY, version)
        assert parity.release_id == canary.release_id and parity.keys_written > 0
        [audit] = [e for e in lake.catalog.events() if e.kind == "online_canary_synced"]
        assert (audit.batch_id, audit.release_id) == ("bad", canary.release_id)
        assert audit.details["tables"][DAILY] == {"action": "loaded", "version": version}
        newest = {(k, d): row for (k, d), row in through_canary.items() if d == DAY_2.isoformat()}
        online_rows = online.get(DAILY, customers, channel="canary")
        assert {key: row for key, row in online_rows.items() if row} == {
            k: row for (k, _), row in newest.items()
        }
        assert online.get(DAILY, customers) == {
            key: production_before.get((key, DAY_2.isoformat())) for key in customers
        }

        # Widening only adds entities, the same ones in every reader; narrowing is refused.
        expose(lake.catalog, RULES, spark, "bad", 50, requested_by="ops", health=None)
        assert _by_key(reader.read(DAILY, FIRST_DAY, DAY_2, channel="canary")) == expected(50)
        told.clear()
        assert {
            item.table: item.action
            for item in sync_canary(lambda: spark, lake.catalog, online, progress=told.append)
        }[DAILY] == "routed"
        assert f"{DAILY}: 50% of keys read canary version {version}" in told
        wider = online.get(DAILY, customers, channel="canary")
        assert all(wider[key] == online_rows[key] for key in customers if in_slice(key, 25))
        assert online.canary_route(DAILY).percent == 50
    with pytest.raises(InvalidRequestError, match="can only widen .* never narrow to 10%"):
        expose(lake.catalog, RULES, spark, "bad", 10, requested_by="ops", health=None)
    assert canary_channel.open_canary(lake.catalog).percent == 50


class _CrashBeforeTheBatchMoves(ReleaseCatalog):
    """Dies (raises) before the batch moves: after the canary pointer was written (opening, completion)."""

    def move_batch(self, batch_id: str, to: BatchState):
        raise ConnectionError("the machine died here")


def test_an_opening_retried_after_a_crash_finishes_it_and_a_second_canary_is_refused_first(
    lake: Lake, spark
) -> None:
    with pytest.raises(ConnectionError):
        promote_to_canary(_CrashBeforeTheBatchMoves(lake.store), RULES, spark, "bad", 25, requested_by="ops")
    assert lake.catalog.get_batch("bad").state == BatchState.APPROVED
    with pytest.raises(InvalidRequestError, match="percent"):  # a retry is still checked
        promote_to_canary(lake.catalog, RULES, spark, "bad", 150, requested_by="ops")
    retried = promote_to_canary(lake.catalog, RULES, spark, "bad", 25, requested_by="ops")
    assert retried == canary_channel.open_canary(lake.catalog) and retried.batch_id == "bad"
    assert lake.catalog.get_batch("bad").state == BatchState.CANARY
    # Without a reason given, the canary's release says why by the approval's decision.
    release = lake.catalog.get_release(retried.release_id)
    assert release.reason == ApprovalStore(lake.store).latest("bad").decision_summary is not None

    catalog_before = {key: lake.store.get(key) for key in lake.store.list("catalog")}
    with pytest.raises(CanaryConflictError, match="cannot open a canary of batch again"):
        promote_to_canary(lake.catalog, RULES, spark, "again", 10, requested_by="ops")
    assert {
        key: lake.store.get(key) for key in lake.store.list("catalog")
    } == catalog_before  # nothing staged


def test_the_canary_pointer_opens_a_staged_promotion_of_production_one_canary_at_a_time(lake: Lake) -> None:
    """What promote_to_canary checks first, the pointer checks again on its own (another caller, a race)."""
    pointer = lambda: canary_channel.last_canary(lake.catalog)  # noqa: E731
    again, bad = (lake.catalog.stage_promotion(batch, actor="ops") for batch in ("again", "bad"))
    lake.catalog.commit(again)  # production moves (someone bypassing the jobs) after `bad` was staged on it
    with pytest.raises(CurrentChangedError, match=f"since release {bad.release_id} was staged on"):
        canary_channel.open_release(lake.catalog, bad, 10, actor="ops")
    assert pointer() is None

    bad = lake.catalog.stage_promotion("bad", actor="ops")  # staged again, on production as it is now
    opened = canary_channel.open_release(lake.catalog, bad, 10, actor="ops")
    assert pointer() == opened and lake.catalog.get_batch("bad").state == BatchState.CANARY
    again = lake.catalog.stage_promotion("again", actor="ops")
    with pytest.raises(
        CanaryConflictError, match="cannot open a canary of batch again: the canary of batch bad"
    ):
        canary_channel.open_release(lake.catalog, again, 20, actor="ops")
    assert pointer() == opened and lake.catalog.get_batch("again").state == BatchState.APPROVED

    canary_channel.roll_back(lake.catalog, actor="ops", reason="make room")
    closed = pointer()
    with pytest.raises(IllegalTransitionError, match="batch bad cannot go from rolled_back to canary"):
        canary_channel.open_release(lake.catalog, bad, 10, actor="ops")  # a rolled-back batch is final
    assert pointer() == closed and closed.status == "rolled_back"
    second = canary_channel.open_release(lake.catalog, again, 20, actor="ops")  # a closed canary makes room
    assert pointer() == second and (second.batch_id, second.percent, second.status) == ("again", 20, "open")
    assert lake.catalog.get_batch("again").state == BatchState.CANARY


class _CrashAfterTheSwitch(ReleaseCatalog):
    """Dies (raises) right after CURRENT moved to the canary's release, before the pointer says completed."""

    def commit(self, release, pointer=PRODUCTION):
        super().commit(release, pointer)
        raise ConnectionError("the machine died here")


def test_a_completion_that_crashed_after_the_switch_is_still_an_open_canary_to_finish(
    lake: Lake, spark
) -> None:
    canary = promote_to_canary(lake.catalog, RULES, spark, "again", 10, requested_by="ops")
    with pytest.raises(ConnectionError):
        expose(_CrashAfterTheSwitch(lake.store), RULES, spark, "again", 100, requested_by="ops", health=None)
    assert lake.catalog.current_release_id() == canary.release_id
    assert canary_channel.open_canary(lake.catalog).release_id == canary.release_id
    # Production moved to the canary's own release, not under it: a step in between is no conflict.
    widened = expose(lake.catalog, RULES, spark, "again", 50, requested_by="ops", health=None)
    assert widened.canary.percent == 50
    done = expose(lake.catalog, RULES, spark, "again", 100, requested_by="ops", health=None)
    assert done.canary.status == "completed" and done.published.release.release_id == canary.release_id
    assert lake.catalog.get_batch("again").state == BatchState.PROMOTED


def test_a_canary_is_rolled_back_only_with_a_reason(lake: Lake, spark) -> None:
    opened = promote_to_canary(lake.catalog, RULES, spark, "again", 10, requested_by="ops")
    for reason in ("", "   "):
        with pytest.raises(InvalidRequestError, match="rolling a canary back needs a reason"):
            canary_channel.roll_back(lake.catalog, actor="ops", reason=reason)
    assert canary_channel.open_canary(lake.catalog) == opened
    assert lake.catalog.get_batch("again").state == BatchState.CANARY


def test_a_completion_retried_after_a_crash_finishes_its_bookkeeping_once(lake: Lake, spark) -> None:
    canary = promote_to_canary(lake.catalog, RULES, spark, "again", 10, requested_by="ops")
    with pytest.raises(ConnectionError):
        expose(
            _CrashBeforeTheBatchMoves(lake.store), RULES, spark, "again", 100, requested_by="ops", health=None
        )
    assert lake.catalog.current_release_id() == canary.release_id  # production switched, then the crash
    assert lake.catalog.get_batch("again").state == BatchState.CANARY
    assert ApprovalStore(lake.store).latest("again").status == "approved"

    retried = expose(lake.catalog, RULES, spark, "again", 100, requested_by="ops", health=None, run_id="r-2")
    assert retried.published.release.release_id == canary.release_id and retried.canary.status == "completed"
    assert lake.catalog.get_batch("again").state == BatchState.PROMOTED
    request = ApprovalStore(lake.store).latest("again")
    assert (request.status, request.release_id, request.promotion_run_id) == (
        "promoted",
        canary.release_id,
        "r-2",
    )
    completions = [e for e in lake.catalog.events(batch_id="again") if e.kind == "canary_completed"]
    assert len(completions) == 1 and [s.action for s in retried.canary.steps] == ["opened", "completed"]


def test_a_canary_rolled_back_while_its_online_routes_are_set_leaves_no_route(
    lake: Lake, spark, tmp_path: Path
) -> None:
    """The pointer is read again once the routes are set: a rollback meanwhile (a health check's) is
    followed at once, and every key reads production again."""
    promote_to_canary(lake.catalog, RULES, spark, "bad", 25, requested_by="ops")
    rolled_back = []

    def session():  # the health check rolls the canary back while the sync loads its rows
        if not rolled_back:
            rolled_back.append(canary_channel.roll_back(lake.catalog, actor="health", reason="degraded"))
        return spark

    with open_online_store(f"sqlite:///{tmp_path / 'online.db'}") as online:
        sync_release(lambda: spark, lake.catalog, online)
        told: list[str] = []
        routes = sync_canary(session, lake.catalog, online, progress=told.append)
        assert rolled_back and all(online.canary_route(spec.name) is None for spec in dependency_order())
        actions = {item.table: item.action for item in routes}
        assert actions[DAILY] == actions[SEVEN_DAY] == "unrouted"  # routed first, then unrouted again
        assert set(actions.values()) <= {"unrouted", "untouched"}
        assert f"{DAILY}: every key reads the current version" in told
        reader = FeatureReader(spark, lake.store)
        customers = sorted({key for key, _ in _by_key(reader.read(DAILY, FIRST_DAY, DAY_2))})
        assert online.get(DAILY, customers, channel="canary") == online.get(DAILY, customers)
        told.clear()
        assert {item.action for item in sync_canary(session, lake.catalog, online, progress=told.append)} == {
            "untouched"
        }
        assert told == [f"{spec.name}: no canary route, nothing to do" for spec in FEATURES]
    audit, _ = [e for e in lake.catalog.events() if e.kind == "online_canary_synced"]
    assert audit.release_id is None and audit.details["tables"][DAILY]["action"] == "unrouted"


# Completion, rollback, health


def test_a_healthy_canary_widens_and_completes_into_production_in_one_switch(lake: Lake, spark) -> None:
    base, jobs = lake.catalog.current_release_id(), spark_jobs(spark)
    canary = promote_to_canary(lake.catalog, RULES, spark, "again", 10, requested_by="alice-ops")
    assert spark_jobs(spark) == jobs  # its files verified by sizes and checksums: no rows read
    widened = expose(
        lake.catalog, RULES, spark, "again", 40, requested_by="bob-ops", health=_health(spark, lake)
    )
    assert widened.health.healthy and widened.published is None
    [model] = widened.health.models
    assert model.decline_rate_gap == 0 and model.score_mean_gap == 0  # the same rows as production
    [column] = widened.health.columns  # the profile's own check (registry): the same rows, no shift
    assert (column.column, column.mean_shift, column.null_rate_gap, column.breaches) == (
        "decline_rate_7d",
        0,
        0,
        [],
    )
    assert lake.catalog.current_release_id() == base

    done = expose(
        lake.catalog, RULES, spark, "again", 100, requested_by="carol-ops", health=_health(spark, lake)
    )
    current = lake.catalog.current_release()
    assert current.release_id == canary.release_id == done.published.release.release_id
    assert current.parent_id == base and current.approvers[0].user_id == BOB
    assert lake.catalog.get_batch("again").state == BatchState.PROMOTED
    assert ApprovalStore(lake.store).latest("again").status == "promoted"
    last = canary_channel.last_canary(lake.catalog)
    assert last.status == "completed" and [(s.action, s.percent, s.actor) for s in last.steps] == [
        ("opened", 10, "alice-ops"),
        ("widened", 40, "bob-ops"),
        ("completed", 100, "carol-ops"),
    ]
    events = [(e.kind, e.actor) for e in lake.catalog.events(batch_id="again") if e.kind.startswith("canary")]
    assert events == [
        ("canary_opened", "alice-ops"),
        ("canary_health", "bob-ops"),
        ("canary_widened", "bob-ops"),
        ("canary_health", "carol-ops"),
        ("canary_completed", "carol-ops"),
    ]
    assert canary_channel.open_canary(lake.catalog) is None


def test_a_rolled_back_canary_leaves_production_as_it_was(lake: Lake, spark) -> None:
    reader = FeatureReader(spark, lake.store)
    before = lake.catalog.current_release_id()
    production = _by_key(reader.read(PROFILE, DAY_1, DAY_2))
    promote_to_canary(lake.catalog, RULES, spark, "bad", 30, requested_by="ops")
    with pytest.raises(CanaryConflictError, match="the canary of batch bad .* is open"):
        promote(lake.catalog, RULES, spark, "again", requested_by="ops")
    with pytest.raises(CanaryConflictError, match="cannot roll production back"):
        roll_back(lake.catalog, to="previous", reason="oops", requested_by="ops")
    with pytest.raises(CanaryConflictError, match="cannot open a canary of batch again"):
        promote_to_canary(lake.catalog, RULES, spark, "again", 10, requested_by="ops")

    canary_channel.roll_back(lake.catalog, actor="carol", reason="the numbers look odd")
    assert lake.catalog.current_release_id() == before
    assert _by_key(reader.read(PROFILE, DAY_1, DAY_2, channel="canary")) == production
    assert lake.catalog.get_batch("bad").state == BatchState.ROLLED_BACK
    [event] = [e for e in lake.catalog.events(batch_id="bad") if e.kind == "canary_rolled_back"]
    assert event.actor == "carol" and event.details["reason"] == "the numbers look odd"
    with pytest.raises(BatchNotApprovedError, match="bad is rolled_back"):
        promote_to_canary(lake.catalog, RULES, spark, "bad", 10, requested_by="ops")
    with pytest.raises(CanaryNotOpenError, match="no canary is open"):
        canary_channel.roll_back(lake.catalog, actor="carol", reason="again")
    promote(lake.catalog, RULES, spark, "again", requested_by="ops")  # production may move again


def test_a_degraded_canary_slice_rolls_the_canary_back_by_itself(lake: Lake, spark) -> None:
    reader = FeatureReader(spark, lake.store)
    production = _by_key(reader.read(PROFILE, DAY_1, DAY_2))
    canary = promote_to_canary(lake.catalog, RULES, spark, "bad", 30, requested_by="ops")
    scores_only = dataclasses.replace(  # judged by the mean score alone, with no room at all
        feature_spec(PROFILE), canary_health=CanaryHealthPolicy(max_decline_rate_gap=1, max_score_mean_gap=0)
    )
    [scored] = canary_health(spark, lake.catalog, canary, [scores_only]).models
    assert scored.breaches == [f"the mean score gap {scored.score_mean_gap:+.4f} is beyond 0.0000"]
    with pytest.raises(InvalidRequestError, match="never narrow to 20%"):  # refused before it is judged
        expose(lake.catalog, RULES, spark, "bad", 20, requested_by="ops", health=_health(spark, lake))
    assert canary_channel.open_canary(lake.catalog).percent == 30
    with pytest.raises(CanaryUnhealthyError, match="(?s)UNHEALTHY.*decline rate gap") as error:
        expose(lake.catalog, RULES, spark, "bad", 60, requested_by="ops", health=_health(spark, lake))
    assert "The canary was rolled back" in str(error.value)
    last = canary_channel.last_canary(lake.catalog)
    assert last.status == "rolled_back" and last.percent == 30  # never widened
    assert last.steps[-1].actor == HEALTH_GUARD and "decline rate" in last.steps[-1].reason
    assert lake.catalog.get_batch("bad").state == BatchState.ROLLED_BACK
    [verdict] = [e for e in lake.catalog.events(batch_id="bad") if e.kind == "canary_health"]
    assert verdict.details["healthy"] is False and verdict.actor == "ops"
    [model] = verdict.details["models"]
    assert model["canary"]["decline_rate"] > model["baseline"]["decline_rate"] + 0.05
    [column] = verdict.details["columns"]  # the profile's own check saw it too
    assert column["column"] == "decline_rate_7d" and column["mean_shift"] > 0.25 and column["breaches"]
    assert _by_key(reader.read(PROFILE, DAY_1, DAY_2, channel="canary")) == production


def test_the_health_check_compares_the_slice_readers_see_and_needs_rows_on_both_of_its_sides(
    lake: Lake, spark
) -> None:
    """The sides are cut by the table's first entity key, as every reader slices. A slice that holds no entity
    yet has no gap to judge (not a breach, not a crash); one that leaves no entity outside it is judged all
    the same (the control slice is context: the gaps compare the slice with its own production rows)."""
    reader = FeatureReader(spark, lake.store)
    two_keys = dataclasses.replace(feature_spec(PROFILE), entity_keys=("customer_id", "risk_tier"))
    rows = [key for key, _ in _by_key(reader.read(PROFILE, DAY_1, DAY_2))]  # production's, both days
    empty = next(p for p in (0.01, 0.02, 0.05) if not any(in_slice(key, p) for key in rows))
    everyone = next(p for p in (99.99, 99.98, 99.95, 99.9) if all(in_slice(key, p) for key in rows))
    opened = promote_to_canary(lake.catalog, RULES, spark, "again", 30, requested_by="ops")
    verdicts = {}
    for percent in (30, empty, everyone):
        verdict = canary_health(
            spark, lake.catalog, opened.model_copy(update={"percent": percent}), [two_keys]
        )
        [model] = verdict.models
        in_canary = [key for key in rows if in_slice(key, percent)]
        assert model.days == DAYS and model.canary.rows == model.baseline.rows == len(in_canary)
        assert model.control.rows == len(rows) - len(in_canary)
        [column] = verdict.columns
        assert verdict.healthy and column.breaches == model.breaches == []
        if in_canary:  # the slice's figures, as the reference model scores its rows, to 6 places
            [reference] = two_keys.reference_models
            exposed = reader.read(PROFILE, DAY_1, DAY_2, release=opened.release_id).where(
                slice_column(F.col("customer_id"), percent)
            )
            scored = reference.score(exposed)
            declined = F.avg((F.col("decision") == "decline").cast("double"))
            mean, rate, count = scored.agg(F.avg("score"), declined, F.count(F.lit(1))).first()
            assert (model.canary.score_mean, model.canary.decline_rate, model.canary.rows) == (
                round(mean, 6),
                round(rate, 6),
                count,
            )
        verdicts[percent] = (
            model.decline_rate_gap,
            model.score_mean_gap,
            column.mean_shift,
            column.null_rate_gap,
        )
    # `again` recomputed the same rows: every gap is nought where there is something to compare.
    assert verdicts == {30: (0, 0, 0, 0), empty: (None, None, None, None), everyone: (0, 0, 0, 0)}


class _BeforeAnyRelease(ReleaseCatalog):
    """The catalog as it is before anything was promoted: no production release."""

    def current_release(self):
        return None


def test_a_table_the_canary_does_not_change_is_noted_not_judged(lake: Lake, spark) -> None:
    canary = promote_to_canary(
        lake.catalog, RULES, spark, "again", 30, requested_by="ops"
    )  # the profile only
    checked = CanaryHealthPolicy(columns=(ColumnHealth("txn_count"),))
    daily = dataclasses.replace(feature_spec(DAILY), canary_health=checked)
    verdict = canary_health(spark, lake.catalog, canary, [daily])
    assert verdict.models == verdict.columns == [] and verdict.healthy
    nothing = (
        "the canary changes no partition production serves, so its models and health checks have nothing"
    )
    assert verdict.notes == [f"{DAILY}: {nothing} to compare"]
    # The first release of all as a canary: no production yet to compare with.
    verdict = canary_health(spark, _BeforeAnyRelease(lake.store), canary)
    assert verdict.models == verdict.columns == [] and verdict.notes == [f"{PROFILE}: {nothing} to compare"]


def _rewrite_again_profile(lake: Lake, change) -> None:
    """Someone rewrote the staged profile files of batch `again` (its canary's release): `change` takes and
    gives a file's rows."""
    for day in DAYS:
        for key in lake.catalog.get_batch("again").tables[PROFILE][day].files:
            rewrite_rows(lake.root / key, change)


def _slice_mask(rows: pa.Table, percent: float) -> list[bool]:
    return [in_slice(customer, percent) for customer in rows["customer_id"].to_pylist()]


def test_a_canary_whose_slice_lost_its_rows_is_unhealthy(lake: Lake, spark) -> None:
    """Nothing to compare is no pass: the canary release's profile files lost every row of the slice."""
    canary = promote_to_canary(lake.catalog, RULES, spark, "again", 30, requested_by="ops")
    _rewrite_again_profile(lake, lambda rows: rows.filter(pa.array([not x for x in _slice_mask(rows, 30)])))
    verdict = canary_health(spark, lake.catalog, canary)
    [model], [column] = verdict.models, verdict.columns
    assert model.canary.rows == 0 < model.baseline.rows and model.decline_rate_gap is None
    lost = f"the canary slice has no rows on {DAY_1}..{DAY_2}, where production has {model.baseline.rows}"
    assert model.breaches == column.breaches == [lost] and not verdict.healthy
    assert lost in verdict.describe()


def test_nulls_that_appear_in_the_canary_slice_breach_the_null_rate_check(lake: Lake, spark) -> None:
    canary = promote_to_canary(lake.catalog, RULES, spark, "again", 30, requested_by="ops")
    kept: list[float] = []  # the slice's values of decline_rate_7d left
    blanked: list[int] = []  # the rows blanked
    ratios: list[float] = []  # the slice's values of txn_velocity_ratio (untouched)

    def blank_every_third_in_slice(rows: pa.Table) -> pa.Table:
        values, velocity = rows["decline_rate_7d"].to_pylist(), rows["txn_velocity_ratio"].to_pylist()
        for index, exposed in enumerate(_slice_mask(rows, 30)):
            if exposed:
                ratios.append(velocity[index])
            if exposed and index % 3 == 0:
                values[index] = None
                blanked.append(index)
            elif exposed:
                kept.append(values[index])
        column = rows.schema.get_field_index("decline_rate_7d")
        return rows.set_column(column, rows.schema.field(column), pa.array(values, pa.float64()))

    _rewrite_again_profile(lake, blank_every_third_in_slice)
    checks = CanaryHealthPolicy(columns=(ColumnHealth("decline_rate_7d"), ColumnHealth("txn_velocity_ratio")))
    profile = dataclasses.replace(feature_spec(PROFILE), canary_health=checks)
    blanks, velocity = canary_health(spark, lake.catalog, canary, [profile]).columns
    rate = len(blanked) / (len(blanked) + len(kept))
    assert (
        blanks.baseline.null_rate == 0 and blanks.canary.null_rate == round(rate, 6) == blanks.null_rate_gap
    )
    assert blanks.canary.mean == round(sum(kept) / len(kept), 6)
    assert blanks.breaches == [f"the null rate of decline_rate_7d moved +{rate:.2%}, beyond 1.00%"]
    assert velocity.canary.mean == round(sum(ratios) / len(ratios), 6) and velocity.breaches == []


def _profile_judged_by(check: ColumnHealth):
    """The profile with no reference model, judged by one health check of its own."""
    return dataclasses.replace(
        feature_spec(PROFILE), reference_models=(), canary_health=CanaryHealthPolicy(columns=(check,))
    )


def test_a_health_check_a_table_declares_rolls_a_canary_back_on_its_own(lake: Lake, spark) -> None:
    promote_to_canary(lake.catalog, RULES, spark, "bad", 30, requested_by="ops")
    loose = _profile_judged_by(ColumnHealth("decline_rate_7d", max_mean_shift=100, max_null_rate_gap=1))
    widened = expose(
        lake.catalog,
        RULES,
        spark,
        "bad",
        40,
        requested_by="ops",
        health=lambda c: canary_health(spark, lake.catalog, c, [loose]),
    )
    assert widened.health.healthy and widened.health.models == []
    [column] = widened.health.columns
    canary, baseline = column.canary.mean, column.baseline.mean
    assert column.mean_shift == round((canary - baseline) / baseline, 6) > 0.25  # net of the control slice
    strict = _profile_judged_by(ColumnHealth("decline_rate_7d", max_mean_shift=0.25))
    with pytest.raises(
        CanaryUnhealthyError, match="the mean of decline_rate_7d moved \\+[0-9.]+%, beyond 25.00%"
    ):
        expose(
            lake.catalog,
            RULES,
            spark,
            "bad",
            60,
            requested_by="ops",
            health=lambda c: canary_health(spark, lake.catalog, c, [strict]),
        )
    last = canary_channel.last_canary(lake.catalog)
    assert last.status == "rolled_back" and last.percent == 40 and last.steps[-1].actor == HEALTH_GUARD
    assert "decline_rate_7d" in last.steps[-1].reason


def test_a_health_check_on_a_column_the_table_does_not_have_is_refused() -> None:
    with pytest.raises(ValueError, match="customer_risk_profile: canary health checks name decline_rate_9d"):
        _profile_judged_by(ColumnHealth("decline_rate_9d"))


def test_a_canary_is_refused_completion_when_production_moved_under_it(lake: Lake, spark) -> None:
    base = lake.catalog.current_release_id()
    promote_to_canary(lake.catalog, RULES, spark, "again", 10, requested_by="ops")
    moved = lake.catalog.promote("bad", actor="someone-bypassing-the-jobs")
    since = f"production moved from {base} to {moved.release_id} since the canary of batch again"
    with pytest.raises(CurrentChangedError, match=since):
        expose(lake.catalog, RULES, spark, "again", 100, requested_by="ops", health=None)
    with pytest.raises(CurrentChangedError, match=since):
        expose(lake.catalog, RULES, spark, "again", 50, requested_by="ops", health=None)
    assert lake.catalog.current_release_id() == moved.release_id
    assert canary_channel.open_canary(lake.catalog).percent == 10


def profile_v2(inputs, dates):
    """A new deployment of the profile's transformation (the same rows, another code version)."""
    return customer_risk_profile(inputs, dates)


def _refused_completion(lake: Lake, spark, error: type[Exception], match: str, rules=RULES) -> None:
    """Completing the open canary of `again` is refused: production and the canary stay as they were."""
    base, canary = lake.catalog.current_release_id(), canary_channel.open_canary(lake.catalog)
    with pytest.raises(error, match=match) as refused:
        expose(lake.catalog, rules, spark, "again", 100, requested_by="ops", health=None)
    assert f"The canary of batch again stays open at {canary.percent:g}% of entities" in str(refused.value)
    assert lake.catalog.current_release_id() == base
    assert canary_channel.open_canary(lake.catalog) == canary
    assert lake.catalog.get_batch("again").state == BatchState.CANARY


def test_a_canary_is_not_completed_once_its_approval_no_longer_holds(lake: Lake, spark) -> None:
    promote_to_canary(lake.catalog, RULES, spark, "again", 10, requested_by="ops")
    carol_only = ApprovalRules(approvers=frozenset({"U0CAROL"}))  # the allowlist changed since
    _refused_completion(
        lake, spark, BatchNotApprovedError, "not approved under the current rules", carol_only
    )
    # Bob changes his mind while the canary is open: the approval sensor's next pass reads his rejection.
    approvals = ApprovalStore(lake.store)
    veto = VoteRecord(user_id=BOB, display_name="bob", decision="reject", at=datetime.now(UTC), source="cli")
    approvals.update(
        "again",
        approvals.latest("again").request_id,
        lambda request: request.model_copy(update={"cli_votes": [*request.cli_votes, veto]}),
    )
    told: list[str] = []
    flow = ApprovalFlow(lake.catalog, LocalChannel(told.append), RULES, Links("http://dagster.test"))
    for _ in range(2):  # told once, however many passes read it
        flow.run(lambda manifest: None)
    assert [line for line in told if "Vetoed after approval" in line] == [
        "[local approvals] batch again: Vetoed after approval: rejected by bob; its open canary cannot "
        "complete; roll it back with `backfills rollback --reason ...`."
    ]
    [event] = [e for e in lake.catalog.events(batch_id="again") if e.kind == "vetoed"]
    assert event.actor == BOB
    _refused_completion(lake, spark, BatchNotApprovedError, "rejected by bob")  # a rejection since: a veto


def test_a_canary_is_not_completed_when_a_staged_file_changed_while_it_was_open(lake: Lake, spark) -> None:
    promote_to_canary(lake.catalog, RULES, spark, "again", 10, requested_by="ops")
    [key] = lake.catalog.get_batch("again").tables[PROFILE][DAY_2.isoformat()].files
    change_one_byte(lake.root / key)  # the same size: only its checksum can tell
    _refused_completion(
        lake,
        spark,
        StagedContentChangedError,
        re.escape(f"{PROFILE} {DAY_2} ({key} changed: its checksum is not the one recorded at staging)"),
    )


def test_a_canary_is_not_completed_under_code_deployed_since_unless_forced_with_a_reason(
    lake: Lake, spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    staged = feature_spec(PROFILE)
    deployed = dataclasses.replace(staged, transform=profile_v2)
    assert deployed.code_version != staged.code_version
    changed = f"other code is deployed now: {PROFILE} was staged by code version {staged.code_version} but "
    monkeypatch.setitem(registry.FEATURES_BY_NAME, PROFILE, deployed)
    with pytest.raises(CodeVersionChangedError, match=re.escape(changed)):  # opening is a promotion's check
        promote_to_canary(lake.catalog, RULES, spark, "again", 10, requested_by="ops")
    assert canary_channel.open_canary(lake.catalog) is None
    monkeypatch.setitem(registry.FEATURES_BY_NAME, PROFILE, staged)
    promote_to_canary(lake.catalog, RULES, spark, "again", 10, requested_by="ops")
    monkeypatch.setitem(registry.FEATURES_BY_NAME, PROFILE, deployed)  # a deployment while the canary is open
    # Widening needs no new approval, so no code check, up to the last step short of production.
    widened = expose(lake.catalog, RULES, spark, "again", 99.5, requested_by="ops", health=None)
    assert widened.canary.percent == 99.5 and widened.canary.status == "open" and widened.published is None
    assert lake.catalog.current_release_id() != widened.canary.release_id
    _refused_completion(lake, spark, CodeVersionChangedError, re.escape(changed))

    monkeypatch.setenv("BACKFILLS_STORAGE_ROOT", str(lake.root))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("BACKFILLS_APPROVERS", BOB)
    monkeypatch.setenv("BACKFILLS_ONLINE_STORE", "none")
    (tmp_path / "dagster_home").mkdir()
    complete = ["expose", "again", "--to", "100", "--as", "carol-ops"]
    assert main([*complete, "--force"]) == 2
    assert "CodeVersionChangedError" in capsys.readouterr().err and canary_channel.open_canary(lake.catalog)
    reason = "the new profile code only renames a helper; risk lead agreed"
    assert main([*complete, "--force", "--reason", reason]) == 0
    assert "completed: its release is production" in capsys.readouterr().out
    last = canary_channel.last_canary(lake.catalog)
    assert lake.catalog.current_release_id() == last.release_id
    assert (last.steps[-1].action, last.steps[-1].actor, last.steps[-1].reason) == (
        "completed",
        "carol-ops",
        reason,
    )
    [event] = [e for e in lake.catalog.events(batch_id="again") if e.kind == "canary_completed"]
    assert event.details["forced"] is True and event.details["reason"] == reason
    assert event.details["code_versions"][PROFILE] == {
        "staged": [staged.code_version],
        "deployed": deployed.code_version,
    }
    [entry] = [e for e in audit_trail(lake.catalog, PROFILE) if e.event == "canary_completed"]
    assert entry.what.endswith(f"FORCED over other code deployed: {reason}")


def test_canary_steps_that_make_no_sense_are_refused(lake: Lake, spark) -> None:
    with pytest.raises(CanaryNotOpenError, match="no canary was ever opened"):
        expose(lake.catalog, RULES, spark, "again", 50, requested_by="ops", health=None)
    with pytest.raises(InvalidRequestError, match="a canary at 100% is a promotion"):
        promote_to_canary(lake.catalog, RULES, spark, "again", 100, requested_by="ops")
    with pytest.raises(InvalidRequestError, match="more than 0 and at most 100"):
        promote_to_canary(lake.catalog, RULES, spark, "again", 150, requested_by="ops")
    production = lake.catalog.current_release()
    for not_a_promotion in ({"kind": "rollback"}, {"batch_id": None}):
        with pytest.raises(
            InvalidRequestError, match=f"{production.release_id} is not a promotion of a batch"
        ):
            canary_channel.open_release(
                lake.catalog, production.model_copy(update=not_a_promotion), 10, actor="ops"
            )
    assert canary_channel.open_canary(lake.catalog) is None
    promote_to_canary(lake.catalog, RULES, spark, "again", 10, requested_by="ops")
    with pytest.raises(InvalidRequestError, match="more than 0 and at most 100"):
        expose(lake.catalog, RULES, spark, "again", 150, requested_by="ops", health=None)
    assert canary_channel.open_canary(lake.catalog).percent == 10
    with pytest.raises(CanaryConflictError, match="the open canary is of batch again, not bad"):
        expose(lake.catalog, RULES, spark, "bad", 50, requested_by="ops", health=None)
    with pytest.raises(InvalidRequestError, match="never narrow to 10%"):
        expose(lake.catalog, RULES, spark, "again", 10, requested_by="ops", health=None)
    with pytest.raises(InvalidRequestError, match="never narrow to 5%"):  # the pointer refuses it on its own
        canary_channel.widen(lake.catalog, "again", 5, actor="ops")
    assert canary_channel.open_canary(lake.catalog).percent == 10
    with pytest.raises(InvalidRequestError, match="either|one of them"):
        FeatureReader(spark, lake.store).read(PROFILE, DAY_1, DAY_2, release="r-x", channel="canary")


# Through Dagster and the command


def test_the_approval_sensor_publishes_to_a_canary_and_the_jobs_widen_and_complete_it(
    lake: Lake, dagster_instance: DagsterInstance, tmp_path: Path
) -> None:
    settings = lake.settings(
        approvers=frozenset({BOB}),
        canary_percent=20.0,
        online_store_url=f"sqlite:///{tmp_path / 'online.db'}",
    )
    defs = build_definitions(settings)
    sensor = defs.resolve_sensor_def(APPROVAL_SENSOR)
    context = build_sensor_context(instance=dagster_instance, definitions=defs, resources=defs.resources)
    [request] = [
        r for r in sensor.evaluate_tick(context).run_requests if r.tags["backfills/batch_id"] == "again"
    ]
    assert request.run_config["ops"]["promote_op"]["config"]["canary_percent"] == 20.0
    promote_job = defs.resolve_job_def(request.job_name)
    assert promote_job.execute_in_process(
        run_config=request.run_config, instance=dagster_instance, tags=request.tags
    ).success
    canary = canary_channel.open_canary(lake.catalog)
    assert (canary.batch_id, canary.percent, canary.steps[0].actor) == ("again", 20.0, APPROVAL_SENSOR)

    health_sensor = defs.resolve_sensor_def(CANARY_HEALTH_SENSOR)
    [health_request] = health_sensor.evaluate_tick(context).run_requests
    assert health_request.run_key.startswith(f"canary-health:{canary.release_id}:")

    expose_job = defs.resolve_job_def("expose_canary")
    for percent in (50, 100):
        config = {"batch_id": "again", "to_percent": percent, "requested_by": "ops"}
        result = expose_job.execute_in_process(
            run_config={"ops": {"expose_op": {"config": config}}}, instance=dagster_instance
        )
        assert result.success
    assert lake.catalog.current_release_id() == canary.release_id
    production_key = AssetKey(["production", PROFILE])
    materialized = dagster_instance.fetch_materializations(production_key, limit=10).records
    assert {record.asset_materialization.metadata["release_id"].value for record in materialized[:2]} == {
        canary.release_id
    }
    assert health_sensor.evaluate_tick(context).skip_message == "no canary is open"


def test_the_health_job_rolls_a_degraded_canary_back_and_tells_the_channel(
    lake: Lake, spark, dagster_instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The slice reads production again everywhere, the online store too, though the failed run skips
    its sync step."""
    promote_to_canary(lake.catalog, RULES, spark, "bad", 30, requested_by="ops")
    production = {
        key: row
        for (key, day), row in _by_key(FeatureReader(spark, lake.store).read(PROFILE, DAY_2, DAY_2)).items()
    }
    in_the_slice = sorted(key for key in production if in_slice(key, 30))
    online_store_url = f"sqlite:///{tmp_path / 'online.db'}"
    with open_online_store(online_store_url) as online:
        sync_release(lambda: spark, lake.catalog, online)
        sync_canary(lambda: spark, lake.catalog, online)
        assert online.get(PROFILE, in_the_slice, channel="canary") != {
            key: production[key] for key in in_the_slice
        }
    with FakeSlack() as slack:
        slack.add_channel(CHANNEL, "feature-approvals")
        monkeypatch.setenv("SLACK_BOT_TOKEN", slack.token)
        defs = build_definitions(
            lake.settings(
                slack_bot_token=slack.token,
                slack_channel=CHANNEL,
                slack_api_url=slack.base_url,
                online_store_url=online_store_url,
            )
        )
        result = defs.resolve_job_def("canary_health").execute_in_process(
            instance=dagster_instance,
            raise_on_error=False,
            tags={"dagster/sensor_name": CANARY_HEALTH_SENSOR},
        )
        messages = [m["text"] for m in slack.messages(CHANNEL)]
    assert not result.success
    assert len(messages) == 1 and messages[0].startswith("Canary rolled back automatically")
    assert "decline rate gap" in messages[0]
    assert canary_channel.last_canary(lake.catalog).status == "rolled_back"
    [verdict] = [e for e in lake.catalog.events(batch_id="bad") if e.kind == "canary_health"]
    assert verdict.actor == CANARY_HEALTH_SENSOR
    with open_online_store(online_store_url) as online:
        assert [table for table in TABLES if online.canary_route(table) is not None] == []
        assert online.get(PROFILE, in_the_slice, channel="canary") == {
            key: production[key] for key in in_the_slice
        }


def test_the_commands_open_widen_show_and_roll_back_a_canary(
    lake: Lake,
    spark,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("BACKFILLS_STORAGE_ROOT", str(lake.root))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("BACKFILLS_APPROVERS", BOB)
    monkeypatch.setenv("BACKFILLS_ONLINE_STORE", "none")
    (tmp_path / "dagster_home").mkdir()
    assert main(["promote", "again", "--canary", "10", "--as", "alice-ops"]) == 0
    assert "canary of batch again serves 10% of entities" in capsys.readouterr().out
    assert main(["expose", "again", "--to", "30", "--as", "bob-ops"]) == 0
    assert "serves 30% of entities" in capsys.readouterr().out
    assert main(["rollback", "--to", "previous", "--reason", "x"]) == 2
    assert "without --to removes it" in capsys.readouterr().err
    assert main(["rollback", "--reason", "not today", "--as", "carol-ops"]) == 0
    assert "rolled back: its slice reads production" in capsys.readouterr().out
    assert main(["canary", "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(step["action"], step["actor"]) for step in shown["steps"]] == [
        ("opened", "alice-ops"),
        ("widened", "bob-ops"),
        ("rolled_back", "carol-ops"),
    ]
    assert main(["rollback", "--reason", "nothing open"]) == 2
    assert "name the release to roll production back to with --to" in capsys.readouterr().err
    # Production moves on; re-executing the canary's rollback run (the Dagster UI keeps its config) must not
    # roll it back to the release before.
    production = promote(lake.catalog, RULES, spark, "bad", requested_by="ops").release.release_id
    rerun = (
        build_definitions(load_settings())
        .resolve_job_def("rollback_release")
        .execute_in_process(
            run_config={
                "ops": {"rollback_op": {"config": {"reason": "not today", "requested_by": "carol-ops"}}}
            },
            raise_on_error=False,
        )
    )
    assert not rerun.success and lake.catalog.current_release_id() == production
    [failure] = [event for event in rerun.all_events if event.is_step_failure]
    assert "no canary is open, and this rollback names no release" in str(failure.step_failure_data.error)
    assert main(["audit", PROFILE, "--date", DAY_2.isoformat()]) == 0
    trail = capsys.readouterr().out
    for line in (
        "canary opened: 10% of entities read this batch",
        "canary health at 10%: healthy",
        "canary widened from 10% to 30% of entities",
        "canary rolled back at 30% of entities: not today",
    ):
        assert line in trail
    assert feature_spec(PROFILE).canary_health.max_decline_rate_gap == 0.05
