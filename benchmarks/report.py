"""What the benchmark measured (`Results`) and REPORT.md made from it: the goals first, then each figure with
the load it was taken under, then what limits the figures."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from figures import Samples, ratio_cell
from floor import FloorRun
from governed import GovernedRun
from memory import MemorySample
from promotion import PHASES, PromotionScale

RATIO_GOAL = 1.5
PROMOTION_RUN_GOAL_SECONDS = 5.0
APPROVAL_MARGIN_SECONDS = 10.0  # approval to production: at most one sensor tick plus this
MEMORY_GOAL_GB = 8.0
DAEMON_TICK_SECONDS = 30


@dataclass
class Results:
    """Everything measured, in the order it was measured."""

    generation_seconds: float = 0.0
    landed_rows: int = 0
    floors: list[FloorRun] = field(default_factory=list)
    governed: dict[str, list[GovernedRun]] = field(default_factory=dict)
    promotion: list[PromotionScale] | None = None
    promotion_source: str | None = None
    errors: list[str] = field(default_factory=list)
    order: list[list[str]] = field(default_factory=list)

    def succeeded(self, key: str) -> list[GovernedRun]:
        return [run for run in self.governed.get(key, []) if run.ok]


# Figures derived from the runs


def _samples(runs: Iterable[GovernedRun], value: Callable[[GovernedRun], float | None]) -> Samples | None:
    picked = [(value(run), run.load) for run in runs]
    kept = [(number, load) for number, load in picked if number is not None]
    if not kept:
        return None
    return Samples([number for number, _ in kept], [load for _, load in kept])


def _per_run(runs: Iterable[GovernedRun], value: Callable[..., float | None]) -> Samples | None:
    """One sample per Dagster run over every repetition (e.g. each run's duration)."""
    numbers = [number for run in runs for item in run.runs if (number := value(item)) is not None]
    return Samples(numbers) if numbers else None


def extrapolated(run: GovernedRun, days: int) -> float:
    """Launch to finished for `days` days, from a backfill of fewer: the span from the first run's start
    to the last run's end scaled linearly, plus the launch and finish latencies as measured (fixed)."""
    factor = days / run.setup.days
    return (
        (run.first_started - run.launched)
        + (run.last_ended - run.first_started) * factor
        + (run.backfill_ended - run.last_ended)
    )


def _gb(item: MemorySample | None) -> float | None:
    return None if item is None else item.total_kib * 1024 / 1e9


def _cell(samples: Samples | None, digits: int = 1) -> str:
    return "-" if samples is None else samples.cell(digits)


def _floor_samples(results: Results) -> Samples | None:
    if not results.floors:
        return None
    return Samples([run.seconds for run in results.floors], [run.load for run in results.floors])


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


# Sections


def _header(
    args: argparse.Namespace, started: datetime, total_seconds: float, commit: str, results: Results
) -> list[str]:
    default_scale = (args.days, args.rows_per_day, args.customers) == (365, 100_000, 20_000)
    scale = f"{args.days} days x {args.rows_per_day:,} transactions per day, {args.customers:,} customers" + (
        "" if default_scale else " (**a reduced scale**, not the default 365 x 100,000 x 20,000)"
    )
    return [
        "# Benchmark report",
        "",
        f"Written by `{args.command}` on {started:%Y-%m-%d %H:%M} UTC from commit {commit}, in "
        f"{total_seconds / 60:.0f} minutes.",
        "",
        f"**Scale: {scale}.** Each figure is the median of {args.repetitions} repetition"
        f"{'s' if args.repetitions > 1 else ''} with the smallest and largest in brackets (promotion and "
        f"rollback: {args.promotion_repetitions}), next to the 1-minute load average seen while it was "
        "taken (2 cores: above 2, the figure shared the machine with other work). How to read it: "
        "benchmarks/README.md.",
        "",
    ]


def _goals(args: argparse.Namespace, results: Results) -> list[str]:
    floor = _floor_samples(results)
    rows = []
    for key, name in (("a", "JVM per run"), ("b", "shared Spark Connect")):
        wall = _samples(results.succeeded(key), lambda run: run.seconds)
        if floor is None or wall is None:
            rows.append(f"| 1. governed backfill / floor, {name} ({key}) | not measured | - | - |")
            continue
        ratio = wall.median / floor.median
        limits = _limits_of(results, key, floor)
        rows.append(
            f"| 1. governed backfill / floor, `multi_run(31)`, {name} ({key}) | "
            f"{ratio_cell(wall, floor)} ({wall.median:.0f} s / {floor.median:.0f} s) | "
            f"<= {RATIO_GOAL}x: {_verdict(ratio <= RATIO_GOAL)} | {limits} |"
        )
    c_runs = results.succeeded("c")
    if floor is not None and c_runs:
        estimate = Samples([extrapolated(run, args.days) for run in c_runs], [run.load for run in c_runs])
        rows.append(
            f"| 1. one partition per run / floor (c), extrapolated from {args.per_partition_days} days | "
            f"{estimate.median / floor.median:.0f}x (~{estimate.median:.0f} s) | no goal: what the backfill "
            f"policy buys | {len(c_runs[0].runs)} runs for {args.per_partition_days} days, each starting a "
            "run worker and a Spark JVM |"
        )
    a_wall = _samples(results.succeeded("a"), lambda run: run.seconds)
    b_wall = _samples(results.succeeded("b"), lambda run: run.seconds)
    if a_wall and b_wall:
        rows.append(
            f"| 2. shared Spark Connect / JVM per run (b / a) | {ratio_cell(b_wall, a_wall)} | no goal of "
            "its own (the floor ratio above) | the server's start is paid once, outside the backfill |"
        )
    for scale_rows in _promotion_goals(results):
        rows.append(scale_rows)
    rows.extend(_approval_goals(args, results))
    rows.extend(_memory_goals(args, results))
    return [
        "## Goals",
        "",
        "| goal | measured | verdict | what limits it |",
        "|---|---|---|---|",
        *rows,
        "",
    ]


def _limits_of(results: Results, key: str, floor: Samples) -> str:
    runs = results.succeeded(key)
    to_first = _samples(runs, lambda run: run.first_created - run.launched)
    to_end = _samples(runs, lambda run: run.backfill_ended - run.last_ended)
    phase = _samples(runs, lambda run: run.last_ended - run.first_created)
    worker = _per_run(runs, lambda item: item.worker_start)
    if not (to_first and to_end and phase):
        return "-"
    parts = [
        f"daemon ticks: {to_first.median:.0f} s to the first run + {to_end.median:.0f} s after the last",
        f"runs alone {phase.median / floor.median:.2f}x the floor",
    ]
    if worker:
        parts.append(
            f"{statistics.median(len(run.runs) for run in runs):.0f} runs, worker start "
            f"{worker.median:.1f} s each"
        )
    if key == "a":
        parts.append("a Spark JVM start in every run")
    parts.append("checks, manifests and file checksums the floor does not compute")
    return "; ".join(parts)


def _promotion_goals(results: Results) -> list[str]:
    if not results.promotion or len(results.promotion) < 2:
        return ["| 3. publish, rollback and verification of real batches | not measured | - | - |"]
    small, large = results.promotion[0], results.promotion[-1]
    rows = []
    for phase, what in (
        ("publish", "publish (release + CAS of CURRENT)"),
        ("rollback", "rollback"),
        ("verify", "verification of the staged files (size + checksum)"),
    ):
        low, high = small.seconds[phase], large.seconds[phase]
        rows.append(
            f"| 3. {what} at {small.partitions} and {large.partitions} partitions | "
            f"{low.median:.3f} s and {high.median:.3f} s; {high.median / low.median:.2f}x | no goal here: "
            "the catalog's goals are measured at 100 tables x 3,650 days by catalog_scale.py "
            "(results.json) | "
            + (
                "one checksum read per staged file: grows with files, never with rows |"
                if phase == "verify"
                else "a release writes its changed table indexes and reads every table's index once |"
            )
        )
    low, high = small.seconds["deep_verify"], large.seconds["deep_verify"]
    rows.append(
        f"| 3. `--deep-verify` (every staged file re-read with Spark) | {low.median:.1f} s and "
        f"{high.median:.1f} s; {high.median / low.median:.1f}x | off by default; grows with data by design "
        "| reading and hashing every row |"
    )
    return rows


def _promotion_run(run: GovernedRun) -> float | None:
    promotion = run.approval.promotion if run.approval else None
    if promotion is None or promotion.started is None or promotion.ended is None:
        return None
    return promotion.ended - promotion.started


def _approval_to_production(run: GovernedRun) -> float | None:
    if run.approval is None or run.approval.promotion.ended is None:
        return None
    return run.approval.promotion.ended - run.approval.approved


def _approval_goals(args: argparse.Namespace, results: Results) -> list[str]:
    rows = []
    for key in ("a", "b", "c"):
        runs = [run for run in results.succeeded(key) if run.approval is not None]
        if not runs:
            continue
        interval = runs[0].setup.sensor_interval
        partitions = sum(len(days) for days in runs[0].hashes.values())
        promotion = _samples(runs, _promotion_run)
        if promotion is not None:
            rows.append(
                f"| 4. promotion run, start to end ({key}, {partitions} partitions) | {_cell(promotion)} s | "
                f"<= {PROMOTION_RUN_GOAL_SECONDS:.0f} s: "
                f"{_verdict(promotion.median <= PROMOTION_RUN_GOAL_SECONDS)} | the run's Spark session"
                + (" (a JVM of its own)" if not runs[0].setup.shared_server else " (Connect client)")
                + ", the approval re-judged, one checksum per staged file, the release written |"
            )
        promoted = _samples(runs, _approval_to_production)
        if promoted is not None:
            bound = interval + APPROVAL_MARGIN_SECONDS
            rows.append(
                f"| 4. approval -> production ({key}, sensor every {interval} s) | {_cell(promoted)} s | "
                f"<= one tick + {APPROVAL_MARGIN_SECONDS:.0f} s ({bound:.0f} s): "
                f"{_verdict(promoted.median <= bound)} | waiting for the sensor's tick (<= {interval} s), "
                "the run queue, the promotion run's worker start and the run itself |"
            )
    return rows


def _memory_goals(args: argparse.Namespace, results: Results) -> list[str]:
    rows = []
    for key in ("a", "b"):
        runs = results.succeeded(key)
        peaks = [(gb, run) for run in runs if (gb := _gb(run.backfill_peak)) is not None]
        if not peaks:
            continue
        highest, run = max(peaks, key=lambda item: item[0])
        rows.append(
            f"| peak resident memory of every process, {args.days}-day backfill ({key}) | {highest:.1f} GB "
            f"(largest of {len(peaks)}) | < {MEMORY_GOAL_GB:.0f} GB: {_verdict(highest < MEMORY_GOAL_GB)} | "
            f"at the peak: {run.backfill_peak.describe() if run.backfill_peak else '-'} (GiB) |"
        )
    return rows


def _machine(facts: dict[str, str]) -> list[str]:
    return [
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in facts.items()],
        "",
    ]


def _scale(args: argparse.Namespace, results: Results) -> list[str]:
    orders = "; ".join(f"{number + 1}: {', '.join(order)}" for number, order in enumerate(results.order))
    return [
        "## Scale and setup",
        "",
        "| | |",
        "|---|---|",
        f"| feature days | {args.days} from 2025-01-01, every one of the 4 feature tables |",
        f"| landing zone | {args.days + 1} daily files (the last holds late events), {args.rows_per_day:,} "
        f"rows per day, {results.landed_rows:,} rows, {args.customers:,} customers; generated in "
        f"{results.generation_seconds:.0f} s (not part of any figure) |",
        f"| Spark, everywhere | `{args.master}`, driver memory {args.driver_memory}, "
        f"{args.shuffle_partitions} shuffle partitions (the floor's JVM, each run's JVM, the Connect "
        "server) |",
        "| Dagster | webserver + daemon of dagster "
        "(tests/dagster_services.py), run queue of orchestration/dagster.yaml: at most 2 runs at a time, "
        "dequeued every second; steps run in the run's process |",
        f"| (c) one partition per run | {args.per_partition_days} days, extrapolated to {args.days} |",
        f"| approval sensor | every {args.sensor_interval} s in (a) and (b), every "
        f"{args.short_sensor_interval} s in (c); Slack is the tests' local Web API server |",
        f"| order of the configurations per repetition | {orders or '-'} |",
        "",
    ]


def _backfill_section(args: argparse.Namespace, results: Results) -> list[str]:
    floor = _floor_samples(results)
    lines = [
        "## 1. Governed backfill against the floor",
        "",
        "Wall time from `launchPartitionBackfill` (all four `staging/*` tables, the same days each) to the "
        "backfill finished as the daemon recorded it; the floor from spawning its process to its last table "
        "written (interpreter, JVM start and compute).",
        "",
        "| configuration | wall (s) | / floor | runs | load |",
        "|---|---|---|---|---|",
    ]
    if floor:
        lines.append(
            f"| floor: one PySpark script, own JVM | {floor.cell(1)} | 1 | - | {floor.load_cell()} |"
        )
    for key in ("a", "b", "c"):
        runs = results.succeeded(key)
        wall = _samples(runs, lambda run: run.seconds)
        if wall is None:
            continue
        setup = runs[0].setup
        count = statistics.median(len(run.runs) for run in runs)
        ratio = ratio_cell(wall, floor) if floor and key != "c" else "-"
        lines.append(
            f"| ({key}) {setup.title}{f', {setup.days} days' if key == 'c' else ''} | {wall.cell(1)} "
            f"| {ratio} | {count:.0f} | {wall.load_cell()} |"
        )
        if key == "c":
            estimate = Samples([extrapolated(run, args.days) for run in runs], wall.loads)
            ratio = ratio_cell(estimate, floor) if floor else "-"
            lines.append(
                f"| ({key}) extrapolated to {args.days} days (linear in days) | {estimate.cell(0)} "
                f"| {ratio} | ~{count * args.days / setup.days:.0f} | - |"
            )
    lines += ["", "Where the time went (seconds):", ""]
    lines += [
        "| | (a) | (b) | (c) |",
        "|---|---|---|---|",
    ]
    metrics: list[tuple[str, Callable[[list[GovernedRun]], Samples | None]]] = [
        (
            "services start (webserver, daemon, code location loaded)",
            lambda r: _samples(r, lambda x: x.services_start),
        ),
        ("Spark Connect server start (not in the wall)", lambda r: _samples(r, lambda x: x.server_start)),
        (
            "launch -> first run created (backfill daemon tick)",
            lambda r: _samples(r, lambda x: x.first_created - x.launched),
        ),
        ("launch -> first run started", lambda r: _samples(r, lambda x: x.first_started - x.launched)),
        (
            "first run created -> last run ended",
            lambda r: _samples(r, lambda x: x.last_ended - x.first_created),
        ),
        (
            "last run ended -> backfill finished (daemon tick)",
            lambda r: _samples(r, lambda x: x.backfill_ended - x.last_ended),
        ),
        ("per run: start -> end", lambda r: _per_run(r, lambda item: item.duration)),
        (
            "per run: worker start (STARTING -> STARTED)",
            lambda r: _per_run(r, lambda item: item.worker_start),
        ),
        ("per run: days", lambda r: _per_run(r, lambda item: float(item.days))),
    ]
    for table in ("customer_daily_txn", "customer_txn_7d", "customer_txn_30d", "customer_risk_profile"):
        metrics.append(
            (f"per run: step `{table}`", lambda r, t=table: _per_run(r, lambda item: item.steps.get(t)))
        )
    for label, metric in metrics:
        cells = [_cell(metric(results.succeeded(key))) for key in ("a", "b", "c")]
        if any(cell != "-" for cell in cells):
            lines.append(f"| {label} | {' | '.join(cells)} |")
    if floor:
        session = Samples([run.session_seconds for run in results.floors])
        tables = sorted({name for run in results.floors for name in run.table_seconds})
        lines += [
            "",
            f"The floor: Spark session (JVM) start {session.cell(1)} s; per table "
            + ", ".join(
                f"`{name}` {Samples([run.table_seconds[name] for run in results.floors]).cell(1)} s"
                for name in tables
            )
            + ". It computes every table over the whole range at once and reads its upstream back from the "
            "Parquet it wrote, as a plain script would.",
        ]
    lines += ["", _hash_comparison(results), ""]
    return lines


def _hash_comparison(results: Results) -> str:
    reference = next((run.hashes for run in results.floors if run.hashes), None)
    if reference is None:
        return "The floor's output was not hashed (no floor run)."
    compared, different = 0, []
    for runs in results.governed.values():
        for run in runs:
            for table, days in run.hashes.items():
                for day, value in days.items():
                    compared += 1
                    if reference.get(table, {}).get(day) != value:
                        different.append(f"{run.setup.key} {table} {day}")
    if not compared:
        return "No governed batch to compare the floor's rows with."
    if different:
        return (
            f"**The floor's rows differ from the governed batches'** in {len(different)} of {compared} "
            f"partitions (e.g. {', '.join(different[:3])}): the comparison is not like for like."
        )
    return (
        f"Same computation: the content hash of every partition the floor wrote equals the governed batches' "
        f"({compared} partitions compared over every successful backfill)."
    )


def _connect_section(results: Results) -> list[str]:
    a_runs, b_runs = results.succeeded("a"), results.succeeded("b")
    a_wall = _samples(a_runs, lambda run: run.seconds)
    b_wall = _samples(b_runs, lambda run: run.seconds)
    if not (a_wall and b_wall):
        return []
    server = _samples(b_runs, lambda run: run.server_start)
    a_run = _per_run(a_runs, lambda item: item.duration)
    b_run = _per_run(b_runs, lambda item: item.duration)
    return [
        "## 2. One shared Spark Connect server against a JVM per run",
        "",
        "| | (a) JVM per run | (b) shared Connect server | b / a |",
        "|---|---|---|---|",
        f"| backfill wall (s) | {a_wall.cell(1)} | {b_wall.cell(1)} | {ratio_cell(b_wall, a_wall)} |",
        f"| run start -> end, per run (s) | {_cell(a_run)} | {_cell(b_run)} | "
        f"{(b_run.median / a_run.median) if a_run and b_run else 0:.2f}x |",
        f"| server start, once (s), not in the wall | - | {_cell(server)} | - |",
        f"| load | {a_wall.load_cell()} | {b_wall.load_cell()} | - |",
        "",
    ]


def _promotion_section(results: Results) -> list[str]:
    if not results.promotion:
        return []
    lines = [
        "## 3. Promotion and rollback at 1x and 10x partitions",
        "",
        f"Copies of the first days of batch `{results.promotion_source}` (its real files and hashes), each "
        "in a fresh catalog whose production already serves a baseline of the same partitions. **publish**: "
        "`ReleaseCatalog.stage_promotion` + `commit` (write the release, compare-and-swap CURRENT, audit "
        "event). **rollback**: `orchestration.promotion.roll_back` to the previous release. **verify**: "
        "`verify_content`, each staged file's size and checksum against the manifest (no Spark). **deep "
        "verify**: `verify_content(deep=True)` (`--deep-verify`), which re-reads every staged file to "
        "recompute its content hash (local Spark session in the harness, warmed up). **full promotion**: "
        "`orchestration.promotion.promote`: approval re-judged, verify, publish, batch sealed. Seconds:",
        "",
        "| batch | partitions | manifest / release JSON | publish | rollback | verify | deep verify "
        "| full promotion | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scale in results.promotion:
        cells = " | ".join(scale.seconds[phase].cell(3) for phase in PHASES)
        loads = Samples(
            [v for phase in PHASES for v in scale.seconds[phase].values],
            [load for phase in PHASES for load in scale.seconds[phase].loads],
        ).load_cell()
        lines.append(
            f"| {scale.name} ({scale.days} days) | {scale.partitions} | {scale.manifest_kib:,.0f} / "
            f"{scale.release_kib:,.0f} KiB | {cells} | {loads} |"
        )
    if len(results.promotion) >= 2:
        small, large = results.promotion[0], results.promotion[-1]
        growth = " | ".join(
            f"{large.seconds[phase].median / small.seconds[phase].median:.2f}x" for phase in PHASES
        )
        lines.append(f"| 10x / 1x | {large.partitions / small.partitions:.1f}x | | {growth} | |")
    lines += [
        "",
        "Rows do not enter the publish or the rollback at all: they read and write catalog JSON only (the "
        "batch manifest, the current and the new release, CURRENT, one audit event), whose size depends on "
        "the number of partitions and never on the rows in them. Only the deep verification reads data.",
        "",
    ]
    return lines


def _approval_section(results: Results) -> list[str]:
    rows = []
    for key in ("a", "b", "c"):
        runs = [run for run in results.succeeded(key) if run.approval is not None]
        if not runs:
            continue
        partitions = sum(len(days) for days in runs[0].hashes.values())

        def since_approval(
            moment: Callable[[GovernedRun], float | None], runs: list[GovernedRun] = runs
        ) -> Samples | None:
            return _samples(
                runs, lambda item: None if (m := moment(item)) is None else m - item.approval.approved
            )

        promotion = _samples(
            runs,
            lambda run: (
                None
                if run.approval.promotion.ended is None or run.approval.promotion.started is None
                else run.approval.promotion.ended - run.approval.promotion.started
            ),
        )
        rollback = _samples(
            runs,
            lambda run: (
                None
                if run.approval.rollback is None or run.approval.rollback.ended is None
                else run.approval.rollback.ended - run.approval.rollback.asked
            ),
        )
        cells = [
            f"({key}) every {runs[0].setup.sensor_interval} s",
            str(partitions),
            _cell(_samples(runs, lambda run: run.approval.requested - run.backfill_ended)),
            _cell(since_approval(lambda run: run.approval.promotion.created)),
            _cell(_samples(runs, lambda run: run.approval.promotion.worker_start)),
            _cell(promotion),
            _cell(since_approval(lambda run: run.approval.promotion.ended)),
            _cell(rollback),
        ]
        rows.append(f"| {' | '.join(cells)} |")
    if not rows:
        return []
    return [
        "## 4. From batch completion to approval request, and from approval to promotion",
        "",
        "The approval sensor posts the request to the local Slack Web API server; the benchmark adds the "
        "approver's reaction as soon as it sees the request, and the sensor launches `promote_batch`. "
        "Seconds:",
        "",
        "| sensor | partitions in the batch | backfill finished -> request posted "
        "| approval -> promotion run created | promotion run: worker start | promotion run: start -> end "
        "| approval -> promotion finished | rollback job: launch -> finished |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Both waits are bounded by the sensor's interval: the request comes at the first tick after the "
        "daemon marks the backfill finished, and the reaction is read at the next tick. The promotion run "
        "then starts a run worker and a Spark session (a JVM of its own without a Connect server), "
        "re-judges the approval, checks every staged file's size and checksum (section 3) and publishes.",
        "",
    ]


def _memory_section(results: Results) -> list[str]:
    rows = []
    if results.floors:
        peaks = [gb for run in results.floors if (gb := _gb(run.peak)) is not None]
        if peaks:
            top = max(results.floors, key=lambda run: _gb(run.peak) or 0)
            rows.append(
                f"| floor | {Samples(peaks).cell(1)} | - | {top.peak.describe() if top.peak else '-'} |"
            )
    for key in ("a", "b", "c"):
        runs = results.succeeded(key)
        during = _samples(runs, lambda run: _gb(run.backfill_peak))
        overall = _samples(runs, lambda run: _gb(run.overall_peak))
        if during is None:
            continue
        top = max(runs, key=lambda run: _gb(run.backfill_peak) or 0)
        rows.append(
            f"| ({key}) {runs[0].setup.title} | {during.cell(1)} | {_cell(overall)} | "
            f"{top.backfill_peak.describe() if top.backfill_peak else '-'} |"
        )
    if not rows:
        return []
    return [
        "## Peak resident memory",
        "",
        "The summed resident set (VmRSS) of every process the benchmark started, sampled every 0.5 s: "
        "webserver, daemon, code servers, run workers, their Spark JVMs, the Connect server (not the "
        "harness itself). RSS counts shared pages once per process, so the sum is an upper bound. GB = "
        "10^9 bytes; the breakdown at the peak is in GiB.",
        "",
        "| configuration | peak during the backfill (GB) | peak incl. approval, promotion, rollback (GB) | "
        "processes at the highest peak |",
        "|---|---|---|---|",
        *rows,
        "",
    ]


def _failures(results: Results) -> list[str]:
    lines = []
    for key, runs in sorted(results.governed.items()):
        for run in runs:
            if not run.ok:
                lines.append(
                    f"- ({key}) backfill {run.batch_id} ended {run.status}: " + "; ".join(run.failures[:3])
                )
    lines += [f"- {error}" for error in results.errors]
    if not lines:
        return []
    return ["## Failures", "", "Not in the figures above:", "", *lines, ""]


def _limits(args: argparse.Namespace, results: Results) -> list[str]:
    floor = _floor_samples(results)
    lines = ["## What limits the figures", ""]
    a_runs, b_runs = results.succeeded("a"), results.succeeded("b")
    ticks = _samples(
        [*a_runs, *b_runs],
        lambda run: (run.first_created - run.launched) + (run.backfill_ended - run.last_ended),
    )
    if ticks:
        lines.append(
            f"- **The backfill daemon's tick.** It looks at backfills every {DAEMON_TICK_SECONDS} s (a "
            f"constant in dagster 1.13): {ticks.median:.0f} s of every backfill (median over (a) and (b)) "
            "pass between the launch and the first run, and between the last run and the backfill marked "
            "finished. A fixed cost: it weighs less the larger the backfill."
        )
    a_first = _per_run(a_runs, lambda item: max(item.steps.values(), default=None) if item.steps else None)
    a_dur, b_dur = _per_run(a_runs, lambda item: item.duration), _per_run(b_runs, lambda item: item.duration)
    worker = _per_run([*a_runs, *b_runs], lambda item: item.worker_start)
    if worker:
        lines.append(
            f"- **A run worker per run.** Each run starts a Python process that loads the code location: "
            f"{worker.median:.1f} s median before its first step, paid by every run (and twice as often per "
            "core when two runs are queued together)."
        )
    if a_dur and b_dur and a_first:
        lines.append(
            f"- **A Spark JVM per run (a).** A run took {a_dur.median:.0f} s median with its own JVM against "
            f"{b_dur.median:.0f} s as a Spark Connect client (b); the JVM start and its JIT warm-up are paid "
            "again in every run and compete for the 2 cores with the other run's work."
        )
    if floor and b_runs:
        phase = _samples(b_runs, lambda run: run.last_ended - run.first_created)
        if phase:
            lines.append(
                "- **The work itself.** Without the daemon's ticks, (b)'s runs take "
                f"{phase.median / floor.median:.2f}x the floor. Beyond the floor's computation, each run "
                "re-reads the upstream window of its days (29 extra days for the 30-day table in every "
                "31-day run), reads back what it wrote for the row counts and content hashes, and runs the "
                "blocking checks (contracts, great-expectations, cross-table coverage, the diff against "
                "production); `benchmarks/checks.py` measures the checks' own cost (CHECKS_REPORT.md)."
            )
    lines.append(
        "- **Two cores, two runs.** The run queue allows 2 runs at a time; the window dependencies order "
        "the tables (the 30-day table waits for 30 days of the daily table), so the two slots are not always "
        "both busy, and when they are they share 2 cores with the daemon and the webserver."
    )
    lines.append(
        "- **The machine was shared.** Other work ran at the same time (see the load columns): every figure, "
        "the floor included, is slower than on an idle machine, and ratios taken in the same repetition are "
        "the comparable figures."
    )
    lines.append("")
    return lines


def render(
    args: argparse.Namespace,
    *,
    started: datetime,
    total_seconds: float,
    facts: dict[str, str],
    commit: str,
    results: Results,
) -> str:
    sections = [
        _header(args, started, total_seconds, commit, results),
        _goals(args, results),
        _machine(facts),
        _scale(args, results),
        _backfill_section(args, results),
        _connect_section(results),
        _promotion_section(results),
        _approval_section(results),
        _memory_section(results),
        _limits(args, results),
        _failures(results),
    ]
    return "\n".join(line for section in sections for line in section)


def _median(samples: Samples | None, digits: int = 2) -> float | None:
    return None if samples is None else round(samples.median, digits)


def _ratio(results: Results, key: str) -> float | None:
    floor = _floor_samples(results)
    wall = _samples(results.succeeded(key), lambda run: run.seconds)
    return None if floor is None or wall is None else round(wall.median / floor.median, 3)


def results_figures(args: argparse.Namespace, results: Results, commit: str) -> dict[str, object]:
    """The machine-readable figures of this run (medians; ratios of medians), for benchmarks/results.json."""
    shared = results.succeeded("b")
    promoted = [run for run in shared if run.approval is not None]
    runs = [run for key in ("a", "b") for run in results.succeeded(key)]
    peaks = [gb for run in runs if (gb := _gb(run.backfill_peak)) is not None]
    return {
        "scale": {
            "days": args.days,
            "rows_per_day": args.rows_per_day,
            "customers": args.customers,
            "repetitions": args.repetitions,
        },
        "floor_seconds": _median(_floor_samples(results), 1),
        "governed_connect_seconds": _median(_samples(shared, lambda run: run.seconds), 1),
        "governed_jvm_seconds": _median(_samples(results.succeeded("a"), lambda run: run.seconds), 1),
        "governed_connect_over_floor": _ratio(results, "b"),
        "governed_jvm_over_floor": _ratio(results, "a"),
        "promotion_run_seconds": _median(_samples(promoted, _promotion_run)),
        "approval_to_production_seconds": _median(_samples(promoted, _approval_to_production)),
        "sensor_interval_seconds": args.sensor_interval,
        "peak_memory_gb": round(max(peaks), 2) if peaks else None,
        "failures": list(results.errors),
        "commit": commit,
    }
