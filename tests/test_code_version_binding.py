"""Approved means this data from this code (I8): a batch approved under one transformation is not promoted
after another one was deployed, unless forced with a reason, and the release says which code was deployed."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import Lake
from dagster import AssetKey, DagsterInstance
from slack_api import FakeSlack
from test_approvals import BOB, CHANNEL
from test_promotion_jobs import _defs, _tick, lake, slack  # noqa: F401

from backfills.assets import registry
from backfills.assets.transformations import rolling_window
from backfills.orchestration.audit import audit_trail
from backfills.resources.approvals_store import ApprovalStore
from backfills.resources.catalog_models import BatchManifest
from backfills.specs import DateRange, Inputs

WEEKLY = "customer_txn_7d"


def weekly_v2(inputs: Inputs, dates: DateRange):
    """A new deployment of the 7-day transformation (a logic change: another code version)."""
    return rolling_window(inputs["customer_daily_txn"], dates, 7).where("txn_count_7d >= 0")


@pytest.fixture
def deploy_new_weekly_code(monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """Deploy other code for customer_txn_7d; returns its (staged, deployed) code versions."""
    staged = registry.feature_spec(WEEKLY)
    deployed = dataclasses.replace(staged, transform=weekly_v2)
    assert deployed.code_version != staged.code_version
    monkeypatch.setitem(registry.FEATURES_BY_NAME, WEEKLY, deployed)
    return staged.code_version, deployed.code_version


def _approved_promotion(defs, instance: DagsterInstance, slack: FakeSlack):
    """Approve `jan` in Slack; the promotion run the sensor asks for (not run yet) and the request message."""
    _tick(defs, instance)
    message = next(m for m in slack.messages(CHANNEL) if m.get("metadata") and "jan" in m["text"])
    slack.react(CHANNEL, message["ts"], BOB, "white_check_mark")
    [request] = [r for r in _tick(defs, instance).run_requests if r.tags["backfills/batch_id"] == "jan"]
    return request, message


def _run(defs, instance: DagsterInstance, run_config: dict, tags: dict):
    job = defs.resolve_job_def("promote_batch")
    return job.execute_in_process(run_config=run_config, instance=instance, tags=tags, raise_on_error=False)


def test_other_code_deployed_after_approval_refuses_promotion_and_says_so_in_the_thread(
    lake: Lake, slack: FakeSlack, dagster_instance: DagsterInstance, deploy_new_weekly_code
) -> None:
    staged, deployed = deploy_new_weekly_code
    defs = _defs(lake, slack)
    request, message = _approved_promotion(defs, dagster_instance, slack)
    assert f"{WEEKLY} `{staged}`" in message["text"]  # approvers saw which code staged the batch

    result = _run(defs, dagster_instance, request.run_config, request.tags)
    assert not result.success
    assert lake.catalog.current_release() is None  # production untouched
    [refused] = [e for e in lake.catalog.events(batch_id="jan") if e.kind == "promotion_refused"]
    error = refused.details["error"]
    assert error.startswith("CodeVersionChangedError: batch jan cannot be promoted")
    assert f"{WEEKLY} was staged by code version {staged} but {deployed} is deployed" in error
    assert "customer_daily_txn" not in error  # the tables whose code did not change are not named
    thread = [reply["text"] for reply in slack.thread(CHANNEL, message["ts"])]
    assert any("Promotion failed" in text and deployed in text and staged in text for text in thread)
    assert lake.catalog.get_batch("jan").state == "approved"  # still promotable once the code matches


def test_forcing_needs_a_reason(
    lake: Lake, slack: FakeSlack, dagster_instance: DagsterInstance, deploy_new_weekly_code
) -> None:
    defs = _defs(lake, slack)
    request, _ = _approved_promotion(defs, dagster_instance, slack)
    config = {"ops": {"promote_op": {"config": {"batch_id": "jan", "force": True}}}}
    assert not _run(defs, dagster_instance, config, request.tags).success
    assert lake.catalog.current_release() is None
    [refused] = [e for e in lake.catalog.events(batch_id="jan") if e.kind == "promotion_refused"]
    assert "needs a reason" in refused.details["error"]


def test_a_forced_promotion_records_the_staged_and_deployed_code_everywhere(
    lake: Lake, slack: FakeSlack, dagster_instance: DagsterInstance, deploy_new_weekly_code
) -> None:
    staged, deployed = deploy_new_weekly_code
    defs = _defs(lake, slack)
    request, _ = _approved_promotion(defs, dagster_instance, slack)
    reason = "7d filter is a no-op on valid rows; approved by risk lead"
    config = {"ops": {"promote_op": {"config": {"batch_id": "jan", "force": True, "reason": reason}}}}
    result = _run(defs, dagster_instance, config, request.tags)
    assert result.success

    release = lake.catalog.current_release()
    assert release.forced and release.reason == reason
    assert release.code_versions[WEEKLY].staged == [staged]
    assert release.code_versions[WEEKLY].deployed == deployed
    daily = registry.feature_spec("customer_daily_txn").code_version
    assert release.code_versions["customer_daily_txn"].model_dump() == {"staged": [daily], "deployed": daily}
    [promoted] = [e for e in lake.catalog.events(batch_id="jan") if e.kind == "promoted"]
    assert promoted.details["code_versions"][WEEKLY] == {"staged": [staged], "deployed": deployed}
    events = dagster_instance.fetch_materializations(AssetKey(["production", WEEKLY]), limit=10).records
    assert {e.asset_materialization.metadata["code_version"].value for e in events} == {staged}
    assert {e.asset_materialization.metadata["deployed_code_version"].value for e in events} == {deployed}
    [entry] = [e for e in audit_trail(lake.catalog, WEEKLY) if e.event == "promoted"]
    assert (
        f"FORCED: {reason}" in entry.what
        and f"{WEEKLY} staged by {staged}, deployed {deployed}" in entry.what
    )
    # The promotion run is noted on the approval request.
    assert ApprovalStore(lake.store).latest("jan").promotion_run_id == result.run_id


def test_the_same_rows_from_other_code_are_other_content_to_approve(lake: Lake) -> None:
    """The fingerprint an approval is bound to covers the code versions, not only the content hashes."""
    batch = lake.catalog.get_batch("jan")
    record = batch.tables[WEEKLY]["2025-01-02"]
    recoded = batch.model_copy(deep=True)
    recoded.tables[WEEKLY]["2025-01-02"] = record.model_copy(update={"code_version": "0123456789abcdef"})
    assert recoded.tables[WEEKLY]["2025-01-02"].content_hash == record.content_hash
    assert BatchManifest.fingerprint(recoded) != batch.fingerprint()
    assert recoded.code_versions()[WEEKLY] == sorted({record.code_version, "0123456789abcdef"})
