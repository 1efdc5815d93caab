"""The `backfills` command: generate data, run a local backfill, inspect batches and releases, read tables.

Errors print as one line and exit non-zero; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from backfills.errors import (
    BackfillsError,
    ConfigurationError,
    InvalidRequestError,
    NotificationFailedError,
    OnlineSyncFailedError,
)
from backfills.resources.canary_slice import CHANNELS
from backfills.resources.settings import PROJECT_DIR, Settings, load_settings

if TYPE_CHECKING:
    import pandas as pd
    from dagster import DagsterInstance
    from pyspark.sql import SparkSession

    from backfills.orchestration.approval_flow import ApprovalFlow, CompletionProbe
    from backfills.resources.catalog import ReleaseCatalog
    from backfills.specs import DateRange

EXIT_UNEXPECTED = 1
EXIT_ERROR = 2
# The command's work is done, but the approvals channel could not be told (the sensor retries).
EXIT_NOT_NOTIFIED = 3
# Production changed as asked, but the online store was not brought in step (`backfills online sync`).
EXIT_ONLINE_NOT_SYNCED = 4
INSTANCE_CONFIG = Path(__file__).with_name("dagster.yaml")


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _spark(settings: Settings) -> SparkSession:
    # pyspark, dagster and boto3 are imported lazily to keep `--help` and one-line errors fast.
    from backfills.resources.spark import SparkResource

    return SparkResource.from_settings(settings).session()


def _percent(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percent (a number up to 100)") from None


def _channel_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--channel",
        choices=list(CHANNELS),
        default="production",
        help="canary: the entities of the open canary's slice read its release (default: production)",
    )


def _hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hours") from None
    if hours < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative: give 0 or more hours")
    return hours


def _catalog(settings: Settings) -> ReleaseCatalog:
    from backfills.resources.catalog import ReleaseCatalog
    from backfills.resources.storage import open_store

    return ReleaseCatalog(open_store(settings.storage_root))


def cmd_generate(args: argparse.Namespace, settings: Settings) -> None:
    from backfills.assets.generator import parse_fault, write_landing_zone
    from backfills.resources.storage import open_store

    faults = [parse_fault(text) for text in args.fault]
    summary = write_landing_zone(
        open_store(settings.storage_root),
        start=args.start,
        days=args.days,
        customers=args.customers,
        rows_per_day=args.rows_per_day,
        seed=args.seed,
        faults=faults,
    )
    total = sum(summary.rows_per_day.values())
    print(
        f"wrote {len(summary.files)} daily files ({total} transactions) "
        f"for {summary.start}..{summary.end} under {summary.root}/raw/transactions"
    )
    for fault in summary.faults:
        print(f"  injected fault {fault.name} into {fault.day}")


def _instance() -> DagsterInstance:
    """The Dagster instance of DAGSTER_HOME (default `.dagster` in the project), created with our settings."""
    from dagster import DagsterInstance

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(PROJECT_DIR / ".dagster")))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(INSTANCE_CONFIG, home / "dagster.yaml")
    return DagsterInstance.get()


def _flow(settings: Settings) -> ApprovalFlow:
    """The approval flow with the configured channel; the local channel prints to the terminal."""
    from backfills.orchestration.approval_flow import ApprovalFlow
    from backfills.orchestration.definitions import approvals_resource

    approvals = approvals_resource(settings, in_dagster=False)
    return ApprovalFlow(_catalog(settings), approvals.channel(print), approvals.rules(), approvals.links())


def _completion(settings: Settings) -> CompletionProbe:
    from backfills.orchestration.definitions import build_definitions
    from backfills.orchestration.sensors import dagster_completion

    return dagster_completion(_instance(), build_definitions(settings).resolve_asset_graph())


def _ask_for_approval(settings: Settings, batch_id: str) -> None:
    """What the approval sensor would do for the batch now: a notice, or the request (printed locally).

    NotificationFailedError when the approvals channel cannot be told (Slack down, refused): the batch stays
    as it is and the approval sensor posts on a later tick.
    """
    try:
        flow = _flow(settings)
    except ConfigurationError as error:
        print(f"not asking for approval: {error}")
        return
    try:
        flow.process(batch_id, _completion(settings))
    except BackfillsError as error:
        state = _catalog(settings).get_batch(batch_id).state
        raise NotificationFailedError(
            f"batch {batch_id} is staged ({state}), but the approvals channel could not be told: "
            f"{type(error).__name__}: {error}. Nothing is lost: the approval sensor tries again on its next "
            "tick (`make dev` runs it)"
        ) from error


def _backfill_plan(
    settings: Settings, tables: list[str] | None, dates: DateRange, downstream: bool, per_run: int | None
) -> str:
    from backfills.assets.backfill_plan import plan_backfill
    from backfills.orchestration.local_backfill import backfill_layout

    catalog = _catalog(settings)
    ranges, lengths = backfill_layout(
        tables,
        dates,
        catalog,
        downstream=downstream,
        max_rows_per_run=settings.max_rows_per_run,
        max_partitions_per_run=per_run,
    )
    return plan_backfill(ranges, lengths, catalog.store, catalog).describe()


def cmd_backfill(args: argparse.Namespace, settings: Settings) -> None:
    from backfills.orchestration.definitions import build_definitions
    from backfills.orchestration.local_backfill import (
        BackfillRunFailedError,
        new_batch_id,
        run_local_backfill,
    )

    tables = [name.strip() for name in args.tables.split(",")] if args.tables else None
    per_run = args.max_partitions_per_run or settings.max_partitions_per_run
    if args.dry_run:
        from backfills.specs import DateRange

        print(_backfill_plan(settings, tables, DateRange(args.start, args.end), args.downstream, per_run))
        print("dry run: nothing was staged")
        return
    instance = _instance()
    length = (
        f"at most {per_run} partitions per run"
        if per_run
        else f"each table in as few runs as {settings.max_rows_per_run:,} rows read per run allow"
    )
    print(f"local backfill {args.start}..{args.end}, {length} (no daemon needed)")
    batch_id = args.batch_id or new_batch_id()
    try:
        run_local_backfill(
            build_definitions(settings),
            instance,
            start=args.start,
            end=args.end,
            tables=tables,
            max_partitions_per_run=per_run,
            max_rows_per_run=settings.max_rows_per_run,
            batch_id=batch_id,
            requester=args.requester,
            downstream=args.downstream,
            on_run=lambda run: print(f"  run: {run.table} {run.dates.start}..{run.dates.end}", flush=True),
        )
    except BackfillRunFailedError:
        try:
            _ask_for_approval(settings, batch_id)  # says why the batch will not be sent for approval
        except NotificationFailedError as error:
            print(f"warning: {error}", file=sys.stderr)
        raise
    print(f"batch {batch_id} staged")
    _print_batches(_catalog(settings), batch_id, partitions=False)
    _ask_for_approval(settings, batch_id)


def _print_batches(catalog: ReleaseCatalog, batch_id: str | None, *, partitions: bool) -> None:
    from backfills.assets.batch_progress import table_progress
    from backfills.assets.registry import FEATURES_BY_NAME
    from backfills.checks.summary import batch_check_summary
    from backfills.resources.approvals_store import ApprovalStore

    batches = [catalog.get_batch(batch_id)] if batch_id else catalog.list_batches()
    if not batches:
        print("no batches yet: launch a backfill of the staged feature assets")
    for batch in batches:
        print(
            f"batch {batch.batch_id}  state={batch.state}  requester={batch.requester or '-'}  "
            f"runs={len(batch.runs)}  created={batch.created_at:%Y-%m-%d %H:%M:%S}Z"
        )
        summary = batch_check_summary(batch)
        requests = ApprovalStore(catalog.store).for_batch(batch.batch_id)
        if requests:
            request = requests[-1]
            print(f"  approval {request.status}: {request.decision_summary or 'no votes yet'}")
        if batch.plan is not None and batch.plan.refusal:
            print(f"  REFUSED  {batch.plan.refusal}")
        for progress in table_progress(batch, FEATURES_BY_NAME):
            print(f"  {progress.describe()}")
        for reason in summary["blocking_failures"]:
            print(f"  BLOCKED  {reason}")
        for warning in summary["warnings"]:
            print(f"  warning  {warning}")
        for table, entry in summary["tables"].items():
            if entry["partition_count"]:
                print(
                    f"  {table:<24} {entry['partition_count']:>4} partitions  {entry['partitions']}  "
                    f"{entry['rows']:>10} rows"
                )
            else:
                print(f"  {table:<24} nothing staged")
            verdicts = ", ".join(f"{name} {check['verdict']}" for name, check in entry["checks"].items())
            if verdicts:
                print(f"      checks: {verdicts}")
            if "diff" in entry:
                diff = entry["diff"]
                print(
                    f"      vs production: {diff['changed']} changed, {diff['added']} added, "
                    f"{diff['removed']} removed ({diff['changed_fraction']:.1%}) in {diff['compared_days']} "
                    f"days; {diff['new_days']} new days"
                )
            if partitions:
                for day, record in sorted(batch.tables.get(table, {}).items()):
                    print(f"      {day}  {record.row_count:>9} rows  {record.content_hash[:16]}")


def cmd_batches(args: argparse.Namespace, settings: Settings) -> None:
    catalog = _catalog(settings)
    if args.format == "json":
        from backfills.checks.summary import batch_check_summary

        batches = [catalog.get_batch(args.batch)] if args.batch else catalog.list_batches()
        rows = [
            batch.model_dump(mode="json") | {"check_summary": batch_check_summary(batch)} for batch in batches
        ]
        print(json.dumps(rows, indent=2))
        return
    _print_batches(catalog, args.batch, partitions=True)


def cmd_releases(args: argparse.Namespace, settings: Settings) -> None:
    from backfills.resources.canary import last_canary

    catalog = _catalog(settings)
    current = catalog.current_release_id()
    releases = catalog.list_releases()
    published = {release.release_id for release in catalog.release_history()}
    canary = last_canary(catalog)
    # What the listing says of each release beyond its record, in both formats: tools read the JSON.
    listed = {
        release.release_id: {
            "current": release.release_id == current,
            "made_current": release.release_id in published,
            "canary": (
                {"status": canary.status, "percent": canary.percent}
                if canary is not None and canary.release_id == release.release_id
                else None
            ),
            "partitions": release.table_partition_counts(),
        }
        for release in releases
    }
    if args.format == "json":
        rows = [release.model_dump(mode="json") | listed[release.release_id] for release in releases]
        print(json.dumps(rows, indent=2))
        return
    if not releases:
        print("no releases yet: nothing has been promoted to production")
    for release in releases:
        facts = listed[release.release_id]
        marker = "*" if facts["current"] else " "
        status = "" if facts["made_current"] else "  (never made current)"
        if canary is not None and facts["canary"] is not None and canary.status != "completed":
            status = (
                f"  (canary: {canary.percent:g}% of entities)"
                if canary.is_open
                else "  (canary, rolled back)"
            )
        if release.forced:
            status += f"  (forced: {', '.join(release.overrides)})" if release.overrides else "  (forced)"
        stale = sum(len({day for mark in marks for day in mark.days}) for marks in release.stale.values())
        if stale:
            status += f"  ({stale} stale partition{'' if stale == 1 else 's'})"
        tables = ", ".join(f"{table}:{count}" for table, count in facts["partitions"].items())
        print(
            f"{marker} {release.release_id}  {release.kind:<9} parent={release.parent_id or '-'}  "
            f"batch={release.batch_id or '-'}  {release.created_at:%Y-%m-%d %H:%M:%S}Z  [{tables}]{status}"
        )
    if releases:
        print("(* = current)")


def cmd_read(args: argparse.Namespace, settings: Settings) -> None:
    from backfills.assets.reader import FeatureReader
    from backfills.assets.registry import feature_spec
    from backfills.resources.storage import open_store

    feature_spec(args.table)  # an unknown table fails before Spark starts
    reader = FeatureReader(_spark(settings), open_store(settings.storage_root))
    frame = reader.read(args.table, args.start, args.end, release=args.release, channel=args.channel)
    if args.csv:
        frame.toPandas().to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
        return
    summary = frame.groupBy("feature_date").count().orderBy("feature_date").collect()
    release = args.release or _catalog(settings).current_release_id()
    total = sum(row["count"] for row in summary)
    note = _canary_note(settings, args.channel)
    print(
        f"{args.table} {args.start}..{args.end} as of release {release}{note}: "
        f"{total} rows in {len(summary)} partitions"
    )
    frame.orderBy("feature_date", "customer_id").show(5, truncate=False)


def _canary_note(settings: Settings, channel: str) -> str:
    """How the canary channel was read, for a summary line ('' for the production channel)."""
    from backfills.resources.canary import open_canary

    if channel != "canary":
        return ""
    canary = open_canary(_catalog(settings))
    if canary is None:
        return " (canary channel: no canary is open, so production for every entity)"
    return f" (canary channel: {canary.percent:g}% of entities read canary release {canary.release_id})"


def _entities_file(path: Path) -> pd.DataFrame:
    import pandas as pd

    from backfills.errors import InvalidInputError
    from backfills.serving.training import EVENT_TIME

    if not path.is_file():
        raise InvalidRequestError(f"--entities {path}: no such file")
    try:
        if path.suffix.lower() == ".csv":
            # Entity keys stay text (an ID like 00042 keeps its zeros); times are parsed by the training set.
            return pd.read_csv(path, dtype={"customer_id": str, EVENT_TIME: str}, keep_default_na=False)
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
    except (ValueError, OSError) as error:
        raise InvalidInputError(f"--entities {path} cannot be read: {error}") from None
    raise InvalidRequestError(f"--entities {path}: give a .csv or .parquet file")


def cmd_training_set(args: argparse.Namespace, settings: Settings) -> None:
    from backfills.assets.reader import FeatureReader
    from backfills.resources.storage import open_store
    from backfills.serving.training import parse_features

    features = [name.strip() for name in args.features.split(",") if name.strip()]
    parse_features(features)  # a wrong name fails before Spark starts
    entities = _entities_file(Path(args.entities))
    reader = FeatureReader(_spark(settings), open_store(settings.storage_root))
    training = reader.training_set(entities, features, release=args.release, channel=args.channel)
    out, sidecar = training.write(args.out)
    lineage = training.lineage
    print(
        f"wrote {out} ({len(training.frame)} rows as of release {lineage['release_id']}"
        f"{_canary_note(settings, args.channel)}) and {sidecar}"
    )
    for table, facts in lineage["tables"].items():
        counts = facts["rows_without_value"]
        print(
            f"  {table}: {len(facts['partitions'])} partitions read (ttl {facts['ttl_days']}d, missing rows "
            f"{facts['missing_row']}); rows without a value: {counts['no_partition']} with no usable "
            f"partition, {counts['no_row']} with no row of the entity"
        )
    print(training.frame.head(args.show).to_string(index=False))


def _online_store(settings: Settings):
    from backfills.serving.online_store import ONLINE_STORE_VARIABLE, open_online_store

    if not settings.online_store_url:
        raise ConfigurationError(
            f"no online store: set {ONLINE_STORE_VARIABLE} (sqlite:///absolute/path.db or "
            "redis://host:port/db); a local storage root has an embedded one by default, an s3:// root none"
        )
    return open_online_store(settings.online_store_url)


def cmd_online_get(args: argparse.Namespace, settings: Settings) -> None:
    from backfills.assets.registry import feature_spec

    feature_spec(args.table)
    columns = [name.strip() for name in args.columns.split(",")] if args.columns else None
    with _online_store(settings) as store:
        rows = store.get(args.table, args.keys, columns=columns, channel=args.channel)
        current = store.current(args.table)
        route = store.canary_route(args.table) if args.channel == "canary" else None
    if args.format == "json":
        print(
            json.dumps(
                {"table": args.table, "version": current.version if current else None, "rows": rows},
                default=str,
                sort_keys=True,
            )
        )
        return
    print(
        f"{args.table} version {current.version} (release {current.release_id}, "
        f"partition {current.partition})"
        + (f"; the canary slice ({route.percent:g}%) reads version {route.version}" if route else "")
    )
    for key, row in rows.items():
        print(f"  {key}: {json.dumps(row, default=str) if row is not None else 'no row'}")


def cmd_online_status(args: argparse.Namespace, settings: Settings) -> None:
    from backfills.serving.online_sync import online_status

    with _online_store(settings) as store:
        tables = online_status(_catalog(settings), store)
    if args.format == "json":
        print(json.dumps(tables, sort_keys=True))
        return
    states = {
        "in_step": "in step",
        "behind": "BEHIND production",
        "not_served": "not served by production yet",
        "not_in_production": "kept online, production serves none of it",
    }
    for item in tables:
        state = states[item["state"]]
        figures = item["parity"]
        parity = (
            "parity -"
            if figures is None
            else f"parity {'passed' if figures['passed'] else 'FAILED'} ({figures['keys_checked']} keys)"
        )
        print(
            f"{item['table']}: {state}; release {item['release_id'] or '-'}, "
            f"partition {item['partition'] or '-'} "
            f"(production {item['production_partition'] or '-'}), {item['rows']} rows, synced "
            f"{item['synced_at'] or 'never'}, {parity}"
        )


def cmd_online_sync(args: argparse.Namespace, settings: Settings) -> None:
    from backfills.serving.online_canary import sync_canary
    from backfills.serving.online_sync import sync_release

    tables = [name.strip() for name in args.tables.split(",")] if args.tables else None
    catalog = _catalog(settings)
    with _online_store(settings) as store:
        results = sync_release(lambda: _spark(settings), catalog, store, tables=tables, progress=print)
        if tables is None:
            sync_canary(lambda: _spark(settings), catalog, store, progress=print)
    if not results:
        print("nothing has been promoted yet: nothing to sync")


def cmd_freshness(args: argparse.Namespace, settings: Settings) -> None:
    from backfills.serving.freshness import freshness

    last = date.fromisoformat(settings.partitions_end) if settings.partitions_end else None
    store = _online_store(settings) if settings.online_store_url else None
    try:
        tables = freshness(_catalog(settings), last_partition=last, online=store)
    finally:
        if store is not None:
            store.close()
    if args.format == "json":
        print(json.dumps([item.as_dict() for item in tables], sort_keys=True))
        return
    for item in tables:
        print(item.describe())


def cmd_drill(args: argparse.Namespace, settings: Settings) -> None:
    from backfills.orchestration.drills import past_drills

    config: dict[str, object] = {"to_release": args.to, "deep": args.deep}
    if args.as_user:
        config["requested_by"] = args.as_user
    # A failed drill fails the run: the error names what a rollback could not restore.

    def outcome(run_id: str) -> str:
        last = past_drills(_catalog(settings))[-1]
        return (
            f"rollback_drill run {run_id}: drill {last['drill_id']} to release {last['target_release_id']} "
            f"passed: {last['partitions_checked']} partitions and {last['files_checked']} files restorable, "
            f"{last['seconds_to_restore']:.1f}s to restore"
        )

    _run_job(settings, "rollback_drill", "drill_op", config, {}, outcome)


def cmd_drills(args: argparse.Namespace, settings: Settings) -> None:
    from backfills.orchestration.drills import past_drills

    drills = past_drills(_catalog(settings))
    if args.format == "json":
        print(json.dumps(drills, sort_keys=True))
        return
    for drill in drills:
        verdict = "passed" if drill["passed"] else f"FAILED ({drill['problem_count']} problems)"
        print(
            f"{drill['started_at'][:19]}Z  {drill['drill_id']}  to {drill['target_release_id']}  {verdict}  "
            f"{drill['partitions_checked']} partitions  {drill['seconds_to_restore']:.1f}s to restore"
        )
        for problem in drill["problems"][:5]:
            print(f"    {problem}")
    if not drills:
        print("no rollback drill has run yet: `backfills drill`")


def _local_channel_only(settings: Settings, command: str) -> None:
    if settings.uses_slack:
        raise ConfigurationError(
            f"`backfills {command}` is the local approval channel and is disabled when Slack is configured "
            "(SLACK_BOT_TOKEN is set): decide in the request's Slack thread"
        )
    from backfills.orchestration.approval_channels import LOCAL_ONLY

    print(f"[{LOCAL_ONLY}]")


def cmd_vote(args: argparse.Namespace, settings: Settings) -> None:
    from datetime import UTC, datetime

    from backfills.resources.approvals_store import ApprovalStore
    from backfills.resources.catalog_models import VoteRecord

    _local_channel_only(settings, args.command)
    flow = _flow(settings)
    completion = _completion(settings)
    flow.process(args.batch, completion)  # opens the request if the batch is ready and has none yet
    approvals = ApprovalStore(flow.catalog.store)
    request = approvals.latest(args.batch)
    # Until the batch is in production, a rejection still counts after approval: a veto.
    veto = args.command == "reject" and request.status == "approved"
    if request.status != "pending" and not veto:
        raise InvalidRequestError(
            f"batch {args.batch}'s approval request is {request.status}"
            + (f" ({request.decision_summary})" if request.decision_summary else "")
            + ": votes no longer change it"
        )
    vote = VoteRecord(
        user_id=args.as_user,
        display_name=args.as_user,
        decision="approve" if args.command == "approve" else "reject",
        at=datetime.now(UTC),
        source="cli",
    )
    approvals.update(
        args.batch,
        request.request_id,
        lambda current: current.model_copy(update={"cli_votes": [*current.cli_votes, vote]}),
    )
    flow.process(args.batch, completion)
    request = approvals.latest(args.batch)
    if veto:
        mine = [seen for seen in request.votes if (seen.user_id, seen.at) == (vote.user_id, vote.at)]
        judged = mine[0] if mine else None
        if judged is None:
            outcome = f"the rejection came too late: the request is {request.status}"
        else:
            outcome = "vetoed" if judged.counted else f"still approved: {judged.ignored_because}"
        print(f"batch {args.batch}: {outcome}")
        return
    print(f"batch {args.batch}: {request.decision_summary}")
    if request.status == "approved":
        print(f"promote it with: backfills promote {args.batch}")


def _run_job(
    settings: Settings,
    job_name: str,
    op_name: str,
    config: dict[str, object],
    tags: dict[str, str],
    outcome: Callable[[str], str],
) -> None:
    """Run a job in process. When its main op (`op_name`) went through, print `outcome(run_id)` (what it
    changed), even if a step after it failed: that failure is then raised on its own (the online sync:
    OnlineSyncFailedError, saying how to retry it). A failed main op raises RunFailedError."""
    from backfills.errors import RunFailedError
    from backfills.orchestration.definitions import build_definitions
    from backfills.orchestration.local_backfill import QUIET_LOGS, root_cause

    job = build_definitions(settings).resolve_job_def(job_name)
    result = job.execute_in_process(
        run_config={**QUIET_LOGS, "ops": {op_name: {"config": config}}},
        instance=_instance(),
        tags=tags,
        raise_on_error=False,
    )
    failures = {
        event.step_key: root_cause(event.step_failure_data.error)
        for event in result.all_events
        if event.is_step_failure
    }
    if not result.is_node_success(op_name):
        cause = failures.get(op_name) or next(iter(failures.values()), "see its logs")
        raise RunFailedError(f"{job_name} run {result.run_id} failed: {cause}")
    print(outcome(result.run_id))
    if failures:  # the sync step after the main op
        [(step, cause)] = failures.items()
        raise OnlineSyncFailedError(
            f"step {step} of {job_name} run {result.run_id} failed after {op_name} went through: "
            f"{cause.removeprefix(f'{OnlineSyncFailedError.__name__}: ')}"
        )


def cmd_promote(args: argparse.Namespace, settings: Settings) -> None:
    from backfills.assets.factory import BATCH_TAG

    config: dict[str, object] = {"batch_id": args.batch, "force": args.force, "deep_verify": args.deep_verify}
    if args.as_user:
        config["requested_by"] = args.as_user
    if args.reason:
        config["reason"] = args.reason
    if args.canary is not None:
        config["canary_percent"] = args.canary

    def outcome(run_id: str) -> str:
        if args.canary is not None:
            return f"promote_batch run {run_id}: {_canary_status(settings)}"
        current = _catalog(settings).current_release()
        return (
            f"promote_batch run {run_id}: batch {args.batch} is in production, release {current.release_id}"
        )

    _run_job(settings, "promote_batch", "promote_op", config, {BATCH_TAG: args.batch}, outcome)


def _canary_status(settings: Settings) -> str:
    from backfills.resources.canary import last_canary

    canary = last_canary(_catalog(settings))
    if canary is None:
        return "no canary was ever opened"
    where = {
        "open": f"serves {canary.percent:g}% of entities",
        "completed": "completed: its release is production",
        "rolled_back": "rolled back: its slice reads production",
    }[canary.status]
    return (
        f"canary of batch {canary.batch_id} {where} (release {canary.release_id}, base "
        f"{canary.base_release_id or '-'}, slice: {canary.slice_rule})"
    )


def cmd_expose(args: argparse.Namespace, settings: Settings) -> None:
    from backfills.assets.factory import BATCH_TAG

    config: dict[str, object] = {"batch_id": args.batch, "to_percent": args.to, "force": args.force}
    if args.as_user:
        config["requested_by"] = args.as_user
    if args.reason:
        config["reason"] = args.reason
    _run_job(
        settings,
        "expose_canary",
        "expose_op",
        config,
        {BATCH_TAG: args.batch},
        lambda run_id: f"expose_canary run {run_id}: {_canary_status(settings)}",
    )


def cmd_canary(args: argparse.Namespace, settings: Settings) -> None:
    from backfills.resources.canary import last_canary

    canary = last_canary(_catalog(settings))
    if args.format == "json":
        print(json.dumps(canary.model_dump(mode="json") if canary else None, indent=2))
        return
    print(_canary_status(settings))
    for step in canary.steps if canary else []:
        print(
            f"  {step.at:%Y-%m-%d %H:%M:%S}Z  {step.action:<11} {step.percent:>6g}%  by {step.actor or '-'}"
            + (f": {step.reason.splitlines()[0]}" if step.reason else "")
        )


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> None:
    from backfills.resources.canary import open_canary

    canary = open_canary(_catalog(settings))
    if canary is not None and args.to is not None:
        raise InvalidRequestError(
            f"the canary of batch {canary.batch_id} is open: `backfills rollback --reason ...` without --to "
            "removes it (production never served it); roll production back afterwards if you mean to"
        )
    if canary is None and args.to is None:
        raise InvalidRequestError("no canary is open: name the release to roll production back to with --to")
    config: dict[str, object] = {"reason": args.reason, "force": args.force}
    if args.to is not None:
        config["to_release"] = args.to
    if args.tables:
        config["tables"] = [name.strip() for name in args.tables.split(",")]
    if args.as_user:
        config["requested_by"] = args.as_user
    if args.approved_by:
        config["approved_by"] = [name.strip() for name in args.approved_by.split(",")]

    def outcome(run_id: str) -> str:
        if canary is not None:
            return f"rollback_release run {run_id}: {_canary_status(settings)}"
        current = _catalog(settings).current_release()
        return (
            f"rollback_release run {run_id}: release {current.release_id} is current "
            f"(rolled back to {current.rolled_back_to})"
        )

    _run_job(settings, "rollback_release", "rollback_op", config, {}, outcome)


def cmd_audit(args: argparse.Namespace, settings: Settings) -> None:
    from backfills.assets.registry import feature_spec
    from backfills.orchestration.audit import audit_trail, production_now, render, stale_now

    feature_spec(args.table)
    catalog = _catalog(settings)
    day = args.date.isoformat() if args.date else None
    entries = audit_trail(catalog, args.table, day)
    if args.format == "text" and day:
        print(production_now(catalog, args.table, day))
    elif args.format == "text" and (stale := stale_now(catalog, args.table)):
        print(stale)
    print(render(entries, args.format))


def cmd_gc(args: argparse.Namespace, settings: Settings) -> None:
    from datetime import UTC, datetime, timedelta

    from backfills.resources.staging_gc import find_orphans, remove_orphans

    catalog = _catalog(settings)
    orphans = find_orphans(catalog, now=datetime.now(UTC), grace=timedelta(hours=args.older_than))
    if not orphans:
        print("no unreferenced attempt folders under staging/: nothing to remove")
        return
    verb = "removing" if args.apply else "would remove"
    for orphan in orphans:
        action = verb if orphan.removable else "keeping"
        print(
            f"{action:<12} {orphan.prefix}/  {orphan.files} files, {_size(orphan.bytes)}, last written "
            f"{orphan.last_written:%Y-%m-%d %H:%M}Z: {orphan.why}"
        )
    removable = [orphan for orphan in orphans if orphan.removable]
    total = sum(orphan.bytes for orphan in removable)
    if args.apply:
        freed = remove_orphans(catalog, removable)
        print(f"removed {len(removable)} attempt folders, {_size(freed)}")
    else:
        print(f"{len(removable)} attempt folders ({_size(total)}) can be removed: rerun with --apply")


def _size(count: int) -> str:
    size = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backfills", description="Governed feature backfills on Dagster.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="write synthetic card transactions to the landing zone")
    generate.add_argument("--start", type=_day, required=True)
    generate.add_argument("--days", type=int, required=True)
    generate.add_argument("--customers", type=int, default=2000)
    generate.add_argument("--rows-per-day", type=int, default=10_000)
    generate.add_argument("--seed", type=int, default=7)
    generate.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME:DATE",
        help="inject a named fault into a day's file",
    )
    generate.set_defaults(run=cmd_generate)

    backfill = commands.add_parser("backfill", help="stage feature tables for a date range in this process")
    backfill.add_argument("--start", type=_day, required=True)
    backfill.add_argument("--end", type=_day, required=True)
    backfill.add_argument("--tables", help="comma-separated feature tables (default: all)")
    backfill.add_argument("--max-partitions-per-run", type=int)
    backfill.add_argument(
        "--dry-run",
        action="store_true",
        help="only say what the backfill would do: tables, partitions, runs, rows read and its time",
    )
    backfill.add_argument("--batch-id", help="write into this batch (default: a new local-… ID)")
    backfill.add_argument("--requester", help="who asks for this backfill (recorded on the batch)")
    backfill.add_argument(
        "--downstream",
        action="store_true",
        help="also recompute the tables downstream of --tables over their blast radius (window lookbacks)",
    )
    backfill.set_defaults(run=cmd_backfill)

    batches = commands.add_parser(
        "batches", help="staged batches, their state, rows and hashes per partition"
    )
    batches.add_argument("--format", choices=["text", "json"], default="text")
    batches.add_argument("--batch", help="only this batch")
    batches.set_defaults(run=cmd_batches)

    releases = commands.add_parser("releases", help="releases with parent and batch, and which is current")
    releases.add_argument("--format", choices=["text", "json"], default="text")
    releases.set_defaults(run=cmd_releases)

    read = commands.add_parser("read", help="read a feature table as of the current or a past release")
    read.add_argument("table")
    read.add_argument("--start", type=_day, required=True)
    read.add_argument("--end", type=_day, required=True)
    read.add_argument("--release", help="release ID (default: current)")
    read.add_argument("--csv", help="write the rows to this CSV file instead of a summary")
    _channel_argument(read)
    read.set_defaults(run=cmd_read)

    training = commands.add_parser(
        "training-set", help="point-in-time-correct features for entity rows, as of a release, to Parquet"
    )
    training.add_argument(
        "--entities", required=True, metavar="FILE", help=".csv or .parquet with customer_id, event_ts (UTC)"
    )
    training.add_argument(
        "--features",
        required=True,
        help="comma-separated TABLE.COLUMN, e.g. customer_txn_7d.amount_sum_usd_7d",
    )
    training.add_argument("--release", help="release ID (default: current, pinned in the lineage)")
    training.add_argument("--out", required=True, metavar="FILE.parquet", help="the training set to write")
    training.add_argument("--show", type=int, default=5, metavar="N", help="rows to print (default 5)")
    _channel_argument(training)
    training.set_defaults(run=cmd_training_set)

    online = commands.add_parser("online", help="the online store: read rows, its status, sync it by hand")
    online_commands = online.add_subparsers(dest="online_command", required=True)
    get = online_commands.add_parser("get", help="the current online rows of entity keys")
    get.add_argument("table")
    get.add_argument("keys", nargs="+", metavar="KEY")
    get.add_argument("--columns", help="comma-separated columns (default: all)")
    get.add_argument("--format", choices=["text", "json"], default="text")
    _channel_argument(get)
    get.set_defaults(run=cmd_online_get)
    status = online_commands.add_parser(
        "status", help="per table: release, partition, rows, synced at, lag, parity, in step with production"
    )
    status.add_argument("--format", choices=["text", "json"], default="text")
    status.set_defaults(run=cmd_online_status)
    sync = online_commands.add_parser("sync", help="bring the online store in step with the current release")
    sync.add_argument("--tables", help="comma-separated tables (default: all)")
    sync.set_defaults(run=cmd_online_sync)

    fresh = commands.add_parser(
        "freshness", help="per table: how late production and the online store are against the SLA"
    )
    fresh.add_argument("--format", choices=["text", "json"], default="text")
    fresh.set_defaults(run=cmd_freshness)

    drill = commands.add_parser(
        "drill", help="drill a rollback (readers unaffected): is every partition restorable?"
    )
    drill.add_argument(
        "--to", default="previous", metavar="RELEASE", help="a release ID, or 'previous' (default)"
    )
    drill.add_argument("--deep", action="store_true", help="also hash every partition's rows with Spark")
    drill.add_argument("--as", dest="as_user", metavar="USER", help="who runs the drill")
    drill.set_defaults(run=cmd_drill)
    drills = commands.add_parser("drills", help="past rollback drills: passed or failed, what failed, time")
    drills.add_argument("--format", choices=["text", "json"], default="text")
    drills.set_defaults(run=cmd_drills)

    for name, verb in (("approve", "approve"), ("reject", "reject")):
        vote = commands.add_parser(
            name, help=f"{verb} a batch as USER (local approval channel, without Slack)"
        )
        vote.add_argument("batch")
        vote.add_argument("--as", dest="as_user", required=True, metavar="USER", help="who decides")
        vote.set_defaults(run=cmd_vote)

    promote = commands.add_parser("promote", help="run promote_batch for an approved batch")
    promote.add_argument("batch")
    promote.add_argument("--as", dest="as_user", metavar="USER", help="who launches the promotion")
    promote.add_argument("--reason")
    promote.add_argument(
        "--force",
        action="store_true",
        help="publish over newer production data, under other code than staged the batch, or leaving "
        "downstream partitions stale (the last two need --reason; recorded)",
    )
    promote.add_argument(
        "--deep-verify",
        action="store_true",
        help="also recompute the staged partitions' content hashes with Spark (default: sizes and checksums)",
    )
    promote.add_argument(
        "--canary",
        type=_percent,
        metavar="PERCENT",
        help="publish to a canary of this share of the entities first (widen it with `backfills expose`)",
    )
    promote.set_defaults(run=cmd_promote)

    expose = commands.add_parser(
        "expose",
        help="run expose_canary: widen a batch's canary (health judged first); --to 100 completes it",
    )
    expose.add_argument("batch")
    expose.add_argument(
        "--to", required=True, type=_percent, metavar="PERCENT", help="the new share, up to 100"
    )
    expose.add_argument("--as", dest="as_user", metavar="USER", help="who widens it")
    expose.add_argument("--reason", help="why (recorded on the completion step)")
    expose.add_argument(
        "--force",
        action="store_true",
        help="complete under other code than staged the batch (needs --reason; recorded)",
    )
    expose.set_defaults(run=cmd_expose)

    canary = commands.add_parser("canary", help="the last canary: batch, release, share, every step and who")
    canary.add_argument("--format", choices=["text", "json"], default="text")
    canary.set_defaults(run=cmd_canary)

    rollback = commands.add_parser(
        "rollback", help="run rollback_release: remove the open canary, or republish an earlier release"
    )
    rollback.add_argument(
        "--to",
        metavar="RELEASE",
        help="a release ID, or 'previous' (not while a canary is open: that is removed)",
    )
    rollback.add_argument("--reason", required=True)
    rollback.add_argument("--tables", help="comma-separated tables to roll back (default: all)")
    rollback.add_argument("--as", dest="as_user", metavar="USER", help="who asks for the rollback")
    rollback.add_argument("--approved-by", help="comma-separated approvers, when rollback needs approval")
    rollback.add_argument(
        "--force",
        action="store_true",
        help="restore partitions whose files changed since staging (recorded with --reason)",
    )
    rollback.set_defaults(run=cmd_rollback)

    audit = commands.add_parser("audit", help="history of a table or partition: batches, checks, decisions")
    audit.add_argument("table")
    audit.add_argument("--date", type=_day, help="only events touching this partition")
    audit.add_argument("--format", choices=["text", "json", "csv"], default="text")
    audit.set_defaults(run=cmd_audit)

    gc = commands.add_parser(
        "gc", help="find (and with --apply remove) staged attempt folders no batch or release references"
    )
    gc.add_argument(
        "--older-than",
        type=_hours,
        default=24.0,
        metavar="HOURS",
        help="remove a folder of an open batch only after nothing was written in it this long (default 24)",
    )
    gc.add_argument("--apply", action="store_true", help="remove them (default: only list them, a dry run)")
    gc.set_defaults(run=cmd_gc)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace, Settings], None] = args.run
    try:
        if getattr(args, "end", None) and getattr(args, "start", None) and args.end < args.start:
            raise ConfigurationError(f"--end {args.end} is before --start {args.start}")
        run(args, load_settings())
    except BrokenPipeError:
        # The reader of our output went away (`backfills batches | head`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except BackfillsError as error:
        if args.debug:
            raise
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        if isinstance(error, NotificationFailedError):
            return EXIT_NOT_NOTIFIED
        return EXIT_ONLINE_NOT_SYNCED if isinstance(error, OnlineSyncFailedError) else EXIT_ERROR
    except Exception as error:  # a last line of defence: one line, not a traceback
        if args.debug:
            raise
        from backfills.resources.spark import failure_summary  # Spark's import waits for Spark's errors

        print(
            f"error: unexpected {type(error).__name__}: {failure_summary(error, 500)} (rerun with --debug)",
            file=sys.stderr,
        )
        return EXIT_UNEXPECTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
