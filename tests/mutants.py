"""Mutation testing of the safety promises: small deliberate bugs in every module that carries one, one bug at
a time, each run against the fastest tests that guard that module; the outcome goes to a committed report.

A mutant that no test notices is a promise nothing checks. The package and the tests are copied to a
temporary folder and only the copy is mutated (never the working tree, which others may be editing); pytest
runs the copied tests with the copied package first on PYTHONPATH, and a canary mutant proves that the
tests really import the copy.

    python tests/mutants.py                                   # every module (make mutants)
    python tests/mutants.py --modules resources/lifecycle.py  # one module, by path or by name (lifecycle)
    python tests/mutants.py --list                            # the mutants, without running anything
    python tests/mutants.py --modules lifecycle --only 3,7    # some mutants of one module, no report

What is mutated and how: tests/mutation_sites.py. Each run of a module replaces its entry in
tests/mutants/report.json and tests/mutants/REPORT.md and keeps the other modules' entries (see
tests/mutation_report.py); reviewed equivalent mutants, with why, are in tests/mutants/equivalent.json.
Tests that already fail without any mutant (someone's work in progress) are left out of the mutant runs
and named in the report. A mutant whose tests run out of time is tried once more with twice the time; if
they run out again it counts as killed by the timeout, and the report names it. Exit status: 0 when every
mutant of the modules run was killed or is a known equivalent, 1 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import forked_pytest
from coverage import CoverageData
from mutation_progress import Progress
from mutation_report import (
    ERROR,
    KILLED,
    SURVIVED,
    TIMEOUT,
    Equivalents,
    Outcome,
    equivalence,
    load_equivalents,
    module_entry,
    read_report,
    rechecked_entry,
    stale_equivalents,
    unexplained,
    write_report,
)
from mutation_sites import Mutant, Scope, body_lines, mutants, mutated_source

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "backfills"
CANARY = "mutants canary: the tests imported the mutated copy"


@dataclass(frozen=True)
class Tier:
    """One pytest run: its arguments, and the Spark its tests use: none; the shared Spark Connect server
    (through conftest's `spark` fixture); or a local JVM of their own (they read the SparkContext)."""

    args: tuple[str, ...]
    spark: Literal["none", "connect", "local"] = "none"


def _options(run: Tier) -> tuple[str, ...]:
    """The tier's pytest options without what selects its tests (paths and `-k`): for running chosen tests."""
    args = list(run.args)
    options: list[str] = []
    while args:
        arg = args.pop(0)
        if arg == "-k":
            args.pop(0)
        elif arg.startswith("-"):
            options.append(arg)
    return tuple(options)


def tier(*args: str) -> Tier:
    return Tier(args)


def spark_tier(*args: str) -> Tier:
    return Tier(args, "connect")


@dataclass(frozen=True)
class Target:
    name: str  # the short name for --modules
    scope: Scope
    # Cheapest first: the next tier runs only while the mutant survives the earlier ones.
    tiers: tuple[Tier, ...]
    timeout: float  # seconds per mutant, all tiers together, at the least (3x the baseline when longer)
    # The staged lakes the tests copy (conftest's built_once) are built by the first run, without any mutant,
    # and reused by every mutant's runs: only for modules that build none of them (a mutant can then only
    # be missed, never killed, by a template it did not build).
    reuse_templates: bool = False

    @property
    def path(self) -> str:
        return self.scope.path


# Pure tests run without conftest (no Dagster, Spark or moto import: about 3 s a run instead of 15).
PURE = "--noconftest"
# tests/test_promotion_safety.py writes its batches without the quality gate so that it stays fast.
PROMOTION_TESTS = spark_tier("tests/test_promotion_safety.py")
# The life cycle's stories stage, promote and roll back through the catalog, without conftest.
LIFECYCLE = tier(PURE, "tests/test_lifecycle.py")
CATALOG_LOCAL = tier("tests/test_catalog.py", "tests/test_release_tree.py", "-k", "not s3")
CATALOG_S3 = tier("tests/test_catalog.py", "tests/test_release_tree.py", "-k", "s3")

# What a module's run costs: per mutant, a pytest start plus the covering tests until the first failure;
# per survivor, every tier in full. The report records each module's minutes.
TARGETS = (
    Target(
        "policy",
        Scope(
            "orchestration/approval_policy.py",
            # Wording only: the sentences of the summary and of ignored votes, names and times in them.
            skip=(
                "_summary",
                "_superseded_reason",
                "_who",
                "_name",
                "_names",
                "_count",
                "_kind",
                "_time",
                "_clip",
            ),
        ),
        (
            tier(PURE, "tests/test_approval_policy.py", "tests/test_approval_rules_hold.py"),
            PROMOTION_TESTS,
        ),
        300,
    ),
    Target(
        "decision_grammar",
        Scope("orchestration/decision_grammar.py", skip=("_clip",)),  # _clip words the thread notice
        (tier(PURE, "tests/test_decision_grammar.py", "tests/test_approval_policy.py"),),
        30,  # a mutant of the trimming loops never ends: the tests themselves take 4 s
    ),
    Target(
        "contributors",
        Scope("orchestration/contributors.py"),
        (
            tier(PURE, "tests/test_approval_policy.py"),
            spark_tier("tests/test_approvals.py", "-k", "rerun or display_name"),
        ),
        300,
    ),
    Target(
        "promotion",
        Scope("orchestration/promotion.py"),
        # The file checks' tests count Spark jobs in the local SparkContext: a JVM of their own. Rollbacks
        # and drills verify what they restore with promotion's checks.
        (
            PROMOTION_TESTS,
            Tier(("tests/test_file_verification.py",), "local"),
            spark_tier("tests/test_rollback_verification.py"),
            spark_tier("tests/test_drills.py", "-k", "not job and not commands"),
            # Production does not move while a canary is open: promote and roll back refuse.
            spark_tier("tests/test_canary.py", "-k", "rolled_back_canary_leaves_production"),
            # A daily fix without its downstream is refused, naming what it would leave stale.
            spark_tier("tests/test_stale_downstream.py", "-k", "refused_naming_the_stale"),
        ),
        420,
        reuse_templates=True,  # the templates stage and approve; promotion runs in the tests
    ),
    Target(
        "catalog",
        Scope(
            "resources/catalog.py",
            (
                # publish, rollback and the swap of CURRENT
                "ReleaseCatalog._read_current",
                "ReleaseCatalog.served",
                "ReleaseCatalog._indexes",
                "ReleaseCatalog._release",
                "ReleaseCatalog.stage_promotion",
                "ReleaseCatalog._select_tables",
                "ReleaseCatalog.stage_rollback",
                "ReleaseCatalog.commit",
                "ReleaseCatalog._follow_rollback",
                "ReleaseCatalog._serves",
                # the staging records: what a run records into its batch, and the states it may move to
                "_with_run",
                "_check_state",
                "_released",
                "ReleaseCatalog._update_batch",
                "ReleaseCatalog._changed",
                "ReleaseCatalog.record_partitions",
                "ReleaseCatalog._check_records",
                "ReleaseCatalog.record_checks",
                "ReleaseCatalog.mark_complete",
            ),
        ),
        (LIFECYCLE, CATALOG_LOCAL, CATALOG_S3, PROMOTION_TESTS),
        420,
    ),
    Target("cas", Scope("resources/cas.py"), (LIFECYCLE, CATALOG_LOCAL, CATALOG_S3), 240),
    Target(
        "release_tree",
        Scope("resources/release_tree.py"),
        (
            # The two other tests of the module take conftest's `store` (a local folder and S3).
            tier(PURE, "tests/test_release_tree.py", "-k", "not long_history and not full_snapshot"),
            LIFECYCLE,
            CATALOG_LOCAL,
            CATALOG_S3,
        ),
        240,
    ),
    Target(
        "lifecycle",
        Scope("resources/lifecycle.py", constants=("TRANSITIONS", "_WRITABLE")),
        (LIFECYCLE, CATALOG_LOCAL),
        180,
    ),
    Target(
        "served_facts",
        Scope("resources/served_facts.py"),
        (
            tier("tests/test_catalog.py", "-k", "not s3 and (code_versions or stale or release)"),
            spark_tier("tests/test_stale_downstream.py"),
        ),
        300,
    ),
    Target(
        "stale_downstream",
        Scope("orchestration/stale_downstream.py", skip=("_partitions",)),  # wording only
        (spark_tier("tests/test_stale_downstream.py"),),
        600,
    ),
    Target(
        "staging",
        Scope(
            "assets/staging.py",
            ("StagedRun.upstream", "_open_batch", "_records", "stage_partitions"),
        ),
        (
            spark_tier("tests/test_staging.py"),
            # Only a local session shows what Spark keeps cached after a run.
            Tier(("tests/test_staging.py", "-k", "nothing_cached"), "local"),
        ),
        600,
    ),
    Target(
        "canary_pointer",
        Scope("resources/canary.py"),
        (spark_tier("tests/test_canary.py"),),
        900,
        reuse_templates=True,
    ),
    Target(
        "canary_slice",
        Scope("resources/canary_slice.py"),
        (
            spark_tier("tests/test_canary.py", "-k", "slice_is_the_same or slice_through_an_unknown"),
            tier("tests/test_online_store.py", "-k", "canary_slice and sqlite"),
            spark_tier("tests/test_training_set.py"),
        ),
        300,
        reuse_templates=True,
    ),
    Target(
        "canary",
        Scope("orchestration/canary.py"),
        (
            spark_tier("tests/test_canary.py"),
            # Spark Connect has no job tracker: a local session tells whether opening a canary read rows.
            Tier(("tests/test_canary.py", "-k", "healthy_canary"), "local"),
        ),
        900,
        reuse_templates=True,
    ),
    Target(
        "canary_health",
        # Wording only: the verdict's sentences and the numbers in them.
        Scope(
            "orchestration/canary_health.py",
            skip=("_rate", "_number", "ColumnHealthResult.describe", "CanaryHealth.describe"),
        ),
        (spark_tier("tests/test_canary.py"),),
        900,
        reuse_templates=True,
    ),
    Target(
        "online_store",
        Scope("serving/online_store.py"),
        (
            tier("tests/test_online_store.py", "-k", "not redis"),
            tier("tests/test_online_store.py", "-k", "redis"),
        ),
        300,
    ),
    Target(
        "online_sync",
        Scope("serving/online_sync.py"),
        (spark_tier("tests/test_online_sync.py"),),
        600,
        reuse_templates=True,
    ),
    Target(
        "online_canary",
        Scope("serving/online_canary.py"),
        (spark_tier("tests/test_canary.py"),),
        900,
        reuse_templates=True,
    ),
    Target(
        "training",
        Scope(
            "serving/training.py",
            (
                "_usable_windows",
                "_newest_usable",
                "_TableLookup.days_to_read",
                "_TableLookup.join",
                "_training_set",
            ),
        ),
        (spark_tier("tests/test_training_set.py"),),
        600,
    ),
    Target(
        "drills",
        Scope("orchestration/drills.py"),
        (spark_tier("tests/test_drills.py"),),
        600,
        reuse_templates=True,
    ),
    Target(
        "deliveries", Scope("assets/deliveries.py"), (spark_tier("tests/test_event_attribution.py"),), 600
    ),
)


def _select(names: list[str]) -> list[Target]:
    """The targets named by path or short name, in TARGETS order; every target when none is named."""
    wanted = [name.strip() for item in names for name in item.split(",") if name.strip()]
    known = {target.name: target for target in TARGETS} | {target.path: target for target in TARGETS}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise SystemExit(
            f"no mutation target named {', '.join(unknown)}; the targets are: "
            + ", ".join(f"{target.path} ({target.name})" for target in TARGETS)
        )
    chosen = {known[name].name for name in wanted}
    return [target for target in TARGETS if not chosen or target.name in chosen]


def _package_parts() -> list[str]:
    """What the package is made of (pyproject: package-dir backfills = "."): its top-level modules and the
    folders of its subpackages; the rest of the repository is not."""
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    folders = [name.split(".", 1)[1] for name in packages if "." in name]
    return sorted(path.name for path in REPO.glob("*.py")) + folders


def copy_package(root: Path) -> Path:
    """The package's files as `root/backfills` and the tests as `root/tests`, without caches: the snapshot
    the mutants go into (the working tree may change while this runs; the snapshot does not)."""
    package = root / PACKAGE
    package.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in _package_parts():
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, package / part, ignore=ignore)
        else:
            shutil.copy2(source, package / part)
    shutil.copytree(REPO / "tests", root / "tests", ignore=ignore)
    return package


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def source_state() -> tuple[str, bool]:
    """The commit the snapshot is taken from, and whether the package or the tests differ from it (the
    report itself aside)."""
    changed = _git("status", "--porcelain", "--", *_package_parts(), "tests", ":(exclude)tests/mutants")
    return _git("rev-parse", "HEAD"), bool(changed)


class Workspace:
    """The snapshot under `root` that the mutants go into, and the Spark Connect server that the test runs
    needing Spark share (each would start a JVM of its own otherwise), started on first use."""

    def __init__(self, root: Path, *, spark_connect: bool, forked: bool = False) -> None:
        self.root = root
        self._spark_connect = spark_connect
        self.forked = forked  # the runner preloaded the heavy libraries: fork the mutants' test runs
        self.templates: Path | None = None  # see Target.reuse_templates
        self._spark_remote: str | None = None

    def environment(self, run: Tier | None = None) -> dict[str, str]:
        env = dict(os.environ, PYTHONPATH=str(self.root), PYTHONDONTWRITEBYTECODE="1")
        for name in ("BACKFILLS_TEST_SPARK_REMOTE", "BACKFILLS_SPARK_REMOTE", "BACKFILLS_TEST_TEMPLATES"):
            env.pop(name, None)
        if self.templates is not None:
            env["BACKFILLS_TEST_TEMPLATES"] = str(self.templates)
        if run is not None and run.spark == "connect" and self._spark_connect:
            # The tests' own session, and the sessions the commands they run build from the settings.
            url = self._spark_url()
            env |= {"BACKFILLS_TEST_SPARK_REMOTE": url, "BACKFILLS_SPARK_REMOTE": url}
        return env

    def _spark_url(self) -> str:
        if self._spark_remote is None:
            command = ("start", "--port", "0", "--driver-memory", "1g")
            started = self._connect_server(*command)
            if started.returncode != 0:
                raise SystemExit(
                    f"could not start a Spark Connect server for the tests: {started.stderr.strip()}"
                )
            self._spark_remote = started.stdout.strip().splitlines()[-1]
        return self._spark_remote

    def close(self) -> None:
        """Stop the Spark Connect server, also one whose start was interrupted."""
        if self._spark_connect:
            self._connect_server("stop")

    def _connect_server(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                f"{PACKAGE}.resources.connect_server",
                *command,
                "--state-dir",
                str(self.root / "spark"),
            ],
            cwd=REPO,
            env=self.environment(),
            capture_output=True,
            text=True,
        )

    def check_isolation(self) -> None:
        """`import backfills` must resolve to the copy, whatever the editable install's finder says."""
        found = subprocess.run(
            [sys.executable, "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"],
            cwd=REPO,
            env=self.environment(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if not Path(found).resolve().is_relative_to(self.root.resolve()):
            raise SystemExit(
                f"`import {PACKAGE}` resolves to {found}, not to the copy under {self.root}: stopping"
            )

    def pytest(
        self, run: Tier, timeout: float, extra: tuple[str, ...], *, fork: bool = True
    ) -> tuple[int | None, str]:
        """One pytest run of the copied tests, under the project's pytest settings: (exit code, output);
        the exit code is None when it ran out of time. Forked from this process when it preloaded the heavy
        libraries (see forked_pytest) and `fork` allows, a new interpreter otherwise."""
        config = ("-c", str(REPO / "pyproject.toml"), "--rootdir", str(self.root))
        args = [*config, "-q", "-p", "no:cacheprovider", *extra, *run.args]
        if fork and self.forked:
            env = self.environment(run)
            return forked_pytest.run(
                args, cwd=str(self.root), env=env, first_on_path=str(self.root), timeout=timeout
            )
        command = [sys.executable, "-m", "pytest", *args]
        # A session of its own, so that a timeout ends pytest and everything it started at once.
        process = subprocess.Popen(
            command,
            cwd=self.root,
            env=self.environment(run),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = process.communicate(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return None, ""
        except BaseException:  # interrupted: leave no test run behind
            os.killpg(process.pid, signal.SIGKILL)
            raise
        return process.returncode, output


def _deselected(failing: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(item for node in failing for item in ("--deselect", node))


# Per tier, the tests (pytest node IDs) that run a function's body in the run without any mutant.
Focus = tuple[tuple[str, ...], ...]


def run_tests(
    target: Target,
    workspace: Workspace,
    timeout: float,
    failing: tuple[str, ...] = (),
    focus: Focus = (),
) -> tuple[str, float, str, int | None]:
    """Run the target's tests, tier by tier, stopping at the first failure, against the copy (leaving out
    the tests that fail without any mutant): (killed | error | timeout | survived, seconds, the end of the
    output of the last tier run, the tier that decided).

    With a focus, the tests that run the mutated function go first, each tier's with its options: most
    mutants fail one of them within seconds. Only a mutant they all pass runs every tier in full, so a test
    that reaches the function where coverage cannot see (another process) still gets its chance."""
    started = time.monotonic()
    tail = ""
    focused = [
        (number, Tier((*_options(run), *tests), run.spark))
        for number, (run, tests) in enumerate(zip(target.tiers, focus, strict=False))
        if tests
    ]
    for number, run in [*focused, *enumerate(target.tiers)]:
        left = timeout - (time.monotonic() - started)
        code, output = workspace.pytest(run, left, ("-x", *_deselected(failing)))
        if code is None:
            return TIMEOUT, time.monotonic() - started, tail, number
        tail = "\n".join(output.strip().splitlines()[-15:])
        if code == 1:
            return KILLED, time.monotonic() - started, tail, number
        if code != 0:
            # Collection or import error, interrupted, no tests: killed, but say so.
            return ERROR, time.monotonic() - started, tail, number
    return SURVIVED, time.monotonic() - started, tail, None


_FAILED = re.compile(r"^(?:FAILED|ERROR) (tests/\S+?::.+?)(?: - .*)?$")


def baseline_failures(
    target: Target, workspace: Workspace, timeout: float, module: Path
) -> tuple[list[float], tuple[str, ...], list[Path]]:
    """Every tier in full, without mutants, measuring which test runs which line of `module`: (seconds per
    tier, the tests that fail already, the coverage data file of each tier). The failing tests are someone's
    work in progress: they cannot tell a mutant apart, so the mutant runs leave them out (and say so)."""
    seconds: list[float] = []
    failing: list[str] = []
    data_files: list[Path] = []
    for number, run in enumerate(target.tiers):
        data_file = workspace.root / "coverage" / f"{target.name}-{number}"
        data_file.parent.mkdir(exist_ok=True)
        config = data_file.with_suffix(".rc")
        config.write_text(f"[run]\ndata_file = {data_file}\ninclude = {module}\n")
        data_files.append(data_file)
        measure = ("--cov", f"--cov-config={config}", "--cov-context=test", "--cov-report=")
        started = time.monotonic()
        code, output = workspace.pytest(run, timeout, measure, fork=False)  # coverage wants its own start
        seconds.append(time.monotonic() - started)
        failed = [match.group(1) for line in output.splitlines() if (match := _FAILED.match(line))]
        if code is None or code not in (0, 1) or (code == 1 and not failed):
            print(output[-3000:])
            raise SystemExit(f"[{target.name}] the tests cannot run without any mutant: fix them first")
        failing.extend(failed)
    return seconds, tuple(dict.fromkeys(failing)), data_files


def covering_tests(data_files: list[Path], module: Path, source: str) -> dict[str, Focus]:
    """Function -> per tier, the tests that ran its body (the module's text as the tiers ran it)."""
    functions = body_lines(source)
    focus: dict[str, list[tuple[str, ...]]] = {name: [] for name in functions}
    for data_file in data_files:
        data = CoverageData(basename=str(data_file))
        data.read()
        by_line: dict[int, list[str]] = {}
        for measured in data.measured_files():
            if Path(measured).resolve() == module.resolve():
                by_line = data.contexts_by_lineno(measured)
        for name, lines in functions.items():
            # pytest-cov names a context `node ID|setup`, `|run` or `|teardown`; "" is the import
            tests = {context.rpartition("|")[0] for line in lines for context in by_line.get(line, ())}
            focus[name].append(tuple(sorted(tests - {""})))
    return {name: tuple(per_tier) for name, per_tier in focus.items()}


def _sites(target: Target, source: str) -> dict[tuple[int, str], tuple[int, Mutant]]:
    """The module's mutants by the (line, change) a report entry names them with, each with its number
    (as --list gives it)."""
    return {(m.line, m.description): (n, m) for n, m in enumerate(mutants(target.scope, source), 1)}


def reclassify(targets: list[Target], equivalents: Equivalents) -> int:
    """Move the report's survivors that equivalent.json now explains to its equivalents (a reviewed reason
    changes no test outcome, so this needs no run). The report names a survivor by line and change; its
    function comes from the module's text at the commit the entry ran on. Exit status as for a run."""
    report = read_report()
    entries: dict[str, dict[str, Any]] = {}
    left = 0
    for target in targets:
        entry = report["modules"].get(target.path)
        if entry is None:
            continue
        sites = _sites(target, _git("show", f"{entry['commit']}:{target.path}"))
        survived = []
        for item in entry["survived"]:
            found = sites.get((item["line"], item["change"]))
            why = equivalents.get((target.path, found[1].function if found else "", item["change"]))
            if why is None:
                survived.append(item)
            else:
                entry["equivalent"].append(item | {"why": why})
                print(f"equivalent now: {target.path}:{item['line']} {item['change']}")
        entries[target.path] = entry | {"survived": survived}
        left += len(survived)
    if entries:
        write_report(entries, commit=report["commit"])
    return 1 if left else 0


def survivor_numbers(target: Target, entry: dict[str, Any] | None) -> set[int]:
    """The numbers (as --list gives them) of the mutants the module's entry names as survivors. Only
    when the module is the code the entry ran on: a survivor of other code says nothing about this one."""
    if entry is None:
        raise SystemExit(f"{target.path} has no entry in the report yet: run it in full first")
    unchanged = subprocess.run(["git", "diff", "--quiet", entry["commit"], "--", target.path], cwd=REPO)
    if entry.get("dirty") or unchanged.returncode != 0:
        raise SystemExit(
            f"{target.path} changed since its entry ran on {entry['commit'][:10]}: run it in full instead"
        )
    wanted = {(item["line"], item["change"]) for item in entry["survived"]}
    sites = _sites(target, (REPO / target.path).read_text())
    numbers = {sites[site][0] for site in wanted if site in sites}
    if len(numbers) != len(wanted):
        raise SystemExit(f"{target.path}: some survivors of its entry are no longer mutants: run it in full")
    return numbers


def _numbers(text: str | None) -> set[int] | None:
    return None if text is None else {int(number) for number in text.split(",") if number.strip()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--modules",
        action="append",
        default=[],
        help="modules to run, by path (resources/lifecycle.py) or name (lifecycle), comma-separated; "
        "default: all",
    )
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", help="only these mutants of one module (numbers from --list); no report")
    parser.add_argument("--timeout", type=float, help="seconds per mutant (default: the module's)")
    parser.add_argument(
        "--reclassify",
        action="store_true",
        help="apply tests/mutants/equivalent.json to the survivors already in the report, running nothing",
    )
    parser.add_argument(
        "--recheck",
        action="store_true",
        help="run only the survivors in the modules' entries again (the modules must be unchanged since), "
        "after tests were added for them",
    )
    parser.add_argument(
        "--no-spark-connect", action="store_true", help="let each run start its own local Spark instead"
    )
    parser.add_argument(
        "--no-fork",
        action="store_true",
        help="start a new interpreter for every test run instead of forking one that preloaded the "
        "heavy libraries (about 12 s more per run)",
    )
    args = parser.parse_args(argv)
    # Stopped from outside (kill, or Ctrl-C in a shell that ignores SIGINT for background jobs): unwind, so
    # that no test run, Spark Connect server or mutated copy is left behind.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    targets = _select(args.modules)
    only = _numbers(args.only)
    if only is not None and len(targets) != 1:
        raise SystemExit("--only picks mutants of one module: name it with --modules")
    if args.list:
        count = 0
        for target in targets:
            for number, mutant in enumerate(mutants(target.scope, (REPO / target.path).read_text()), 1):
                where = f"{target.name} {number}"
                print(f"{where:<20} {mutant.where:<40} {mutant.function:<32} {mutant.description}")
                count += 1
        print(f"{count} mutants")
        return 0

    equivalents = load_equivalents()
    if args.reclassify:
        return reclassify(targets, equivalents)
    report = read_report()
    rechecks = (
        {target.name: survivor_numbers(target, report["modules"].get(target.path)) for target in targets}
        if args.recheck
        else {}
    )
    if args.recheck:
        targets = [target for target in targets if rechecks[target.name]]
    commit, dirty = source_state()
    survivors: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="mutants-") as workdir:
        if not args.no_fork:
            forked_pytest.preload(PACKAGE)
        workspace = Workspace(Path(workdir), spark_connect=not args.no_spark_connect, forked=not args.no_fork)
        # One snapshot of the package: the working tree may change while this runs, the copy does not.
        package = copy_package(workspace.root)
        workspace.check_isolation()
        print(f"mutating a copy of {commit[:10]}{' with uncommitted changes' if dirty else ''} in {package}")
        try:
            for target in targets:
                started = time.monotonic()
                picked = rechecks.get(target.name, only)
                full = only is None and not args.recheck
                progress = Progress(target.name, (package / target.path).read_text()) if full else None
                outcomes, left_out = run_target(
                    target, package / target.path, workspace, args, picked, progress, commit
                )
                survivors.extend(unexplained(outcomes, equivalents))
                print(summary(target, outcomes, equivalents, time.monotonic() - started), flush=True)
                if args.recheck:
                    entry = rechecked_entry(
                        report["modules"][target.path], outcomes, equivalents, commit=commit, dirty=dirty
                    )
                    write_report({target.path: entry}, commit=commit)
                elif only is None:
                    for function, change in stale_equivalents(target.path, outcomes, equivalents):
                        print(
                            f"  stale reason in equivalent.json (no such survivor now): {function}: {change}"
                        )
                    entry = module_entry(
                        outcomes,
                        equivalents,
                        commit=commit,
                        dirty=dirty,
                        minutes=(time.monotonic() - started) / 60,
                        tests=[list(run.args) for run in target.tiers],
                        left_out=list(left_out),
                    )
                    if progress is not None and (earlier := progress.commits()) != [commit]:
                        entry["ran_on"] = earlier  # resumed: outcomes from runs on these commits
                    write_report({target.path: entry}, commit=commit)
                    if progress is not None:
                        progress.finish()
        finally:
            workspace.close()
    return 1 if survivors else 0


def run_target(
    target: Target,
    path: Path,
    workspace: Workspace,
    args: argparse.Namespace,
    only: set[int] | None,
    progress: Progress | None,
    commit: str,
) -> tuple[list[Outcome], tuple[str, ...]]:
    """Every mutant of the target (or the chosen ones), written into the copy at `path`, against its tests,
    except those whose outcome `progress` knows from an earlier run of the same module text: the outcomes,
    and the tests left out because they fail without any mutant."""
    original = path.read_text()
    selected = [
        (number, mutant)
        for number, mutant in enumerate(mutants(target.scope, original), 1)
        if only is None or number in only
    ]
    # Every mutant is written with ast.unparse, so the baseline is the unparsed original: the tests must pass
    # on it, and must fail on a copy whose module cannot even be imported (the canary).
    baseline = ast.unparse(ast.parse(original))
    path.write_text(baseline)
    limit = args.timeout or target.timeout
    workspace.templates = workspace.root / "templates" / target.name if target.reuse_templates else None
    if workspace.templates is not None:
        workspace.templates.mkdir(parents=True, exist_ok=True)
    seconds, failing, data_files = baseline_failures(target, workspace, limit * 2, path)
    focus = covering_tests(data_files, path, baseline)
    # Under load the tests may run slower than the target's timeout assumes: never less than 3x the baseline.
    timeout = max(limit, 3 * sum(seconds))
    state = f"{len(failing)} tests fail" if failing else "the tests pass"
    tiers = ", ".join(f"{value:.0f}s" for value in seconds)
    print(f"[{target.name}] baseline, without any mutant: {state} (tiers: {tiers}); {len(selected)} mutants")
    if progress is not None and (earlier := sum(progress.known(n, m) is not None for n, m in selected)):
        print(f"[{target.name}] resuming: {earlier} outcomes known from earlier runs of this module text")
    for node in failing:
        print(f"[{target.name}] left out, it fails without any mutant: {node}", flush=True)
    if failing:
        # Without any mutant, the tests left must still pass: proves the failures were only those.
        status, _, tail, _ = run_tests(target, workspace, timeout, failing)
        if status != SURVIVED:
            print(tail)
            raise SystemExit(f"[{target.name}] the tests fail without any mutant: fix them first")
    path.write_text(f"{baseline}\nraise ImportError({CANARY!r})\n")
    status, elapsed, tail, _ = run_tests(target, workspace, timeout, failing)
    if status == SURVIVED or CANARY not in tail:
        print(tail)
        raise SystemExit(f"[{target.name}] the canary survived: the tests do not import the copy")
    print(f"[{target.name}] canary: {status} in {elapsed:.0f}s, so the tests import the copy", flush=True)
    outcomes: list[Outcome] = []
    try:
        for count, (number, mutant) in enumerate(selected, 1):
            known = progress.known(number, mutant) if progress is not None else None
            if known is not None:
                outcomes.append(known)
                continue
            path.write_text(mutated_source(mutant, original))
            covering = focus.get(mutant.function, ())
            outcome = _run_mutant(target, mutant, workspace, timeout, failing, covering)
            outcomes.append(outcome)
            if progress is not None:
                progress.record(number, outcome, commit=commit)
            decided = "" if outcome.tier is None else f" (tier {outcome.tier + 1})"
            decided += f" [{sum(map(len, covering))} covering tests first]"
            counter = f"[{target.name} {count}/{len(selected)}]"
            print(
                f"{counter} {outcome.status:<8} {outcome.seconds:4.0f}s{decided}"
                f"  {mutant.where}  {mutant.function}: {mutant.description}",
                flush=True,
            )
    finally:
        path.write_text(original)
    return outcomes, failing


def _run_mutant(
    target: Target,
    mutant: Mutant,
    workspace: Workspace,
    timeout: float,
    failing: tuple[str, ...],
    focus: Focus,
) -> Outcome:
    """One mutant; when its tests run out of time, once more with twice the time, so that a machine busy
    with other work does not pass for a mutant that hangs the tests."""
    status, seconds, _, decided = run_tests(target, workspace, timeout, failing, focus)
    if status == TIMEOUT:
        status, seconds, _, decided = run_tests(target, workspace, 2 * timeout, failing, focus)
    return Outcome(mutant, status, seconds, decided)


def summary(target: Target, outcomes: list[Outcome], equivalents: Equivalents, seconds: float) -> str:
    """What a run of one module found, for the console."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    by_tier = [
        sum(o.tier == number and o.status != SURVIVED for o in outcomes)
        for number in range(len(target.tiers))
    ]
    lines = [
        f"[{target.name}] {len(outcomes)} mutants of {target.path} in {seconds / 60:.1f} min: "
        + ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
        + f"; killed per tier: {by_tier}"
    ]
    for outcome in outcomes:
        mutant = outcome.mutant
        where = f"{mutant.where}  {mutant.function}: {mutant.description}"
        if outcome.status == SURVIVED:
            why = equivalence(outcome, equivalents)
            lines.append(f"  equivalent {where} -- {why}" if why else f"  SURVIVED   {where}")
        elif outcome.status in (TIMEOUT, ERROR):
            lines.append(f"  {outcome.status:<10} {where}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
