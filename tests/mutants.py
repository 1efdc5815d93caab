"""Mutation testing of the safety promises: small deliberate bugs in the approval policy, promotion and the
publish path of the catalog, one at a time, each run against the fast tests that guard that module.

A mutant that no test notices is a promise nothing checks. The package and the tests are copied to a
temporary folder and only the copy is mutated (never the working tree, which others may be editing); pytest
runs the copied tests with the copied package first on PYTHONPATH, and a canary mutant proves that the
tests really import the copy.

    python tests/mutants.py                  # every target (make mutants)
    python tests/mutants.py --list           # the mutants, without running anything
    python tests/mutants.py --target promotion --timeout 300

Operators: flip a comparison (== and !=, < and >=, in and not in, is and is not), swap `and` and `or`, drop
a `not`, drop an `if ...: raise` guard, return None instead of a value, add or subtract one from an int
constant, flip a bool constant, remove a call statement. Tests that already fail without any mutant
(someone's work in progress) are left out of the mutant runs and listed in the report. Exit status: 0 when
every mutant was killed or is a known equivalent (listed in EQUIVALENT with why), 1 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "backfills"
# What the package is made of (pyproject: package-dir backfills = "."): the rest of the repository is not.
PACKAGE_PARTS = ("__init__.py", "errors.py", "assets", "checks", "resources", "orchestration")
CANARY = "mutants canary: the tests imported the mutated copy"


@dataclass(frozen=True)
class Target:
    name: str
    path: str  # relative to the package root
    functions: tuple[str, ...] | None  # qualified names to mutate; None: every function of the module
    # pytest arguments, cheapest first: the next set runs only while the mutant survives the earlier ones
    tiers: tuple[tuple[str, ...], ...]
    timeout: float  # seconds per mutant, all tiers together
    skip: tuple[str, ...] = ()  # functions left alone (they only word messages)


# The promotion tests run Spark; tests/test_promotion_safety.py writes its batches without the quality gate
# so that they stay fast, and every run shares one Spark Connect server started here.
PROMOTION_TESTS = ("tests/test_promotion_safety.py",)

TARGETS = (
    Target(
        "policy",
        "orchestration/approval_policy.py",
        None,
        # The policy tests need none of conftest's fixtures: without it, no Dagster, Spark or moto import.
        (
            ("--noconftest", "tests/test_approval_policy.py", "tests/test_approval_rules_hold.py"),
            PROMOTION_TESTS,
        ),
        300,
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
    Target("promotion", "orchestration/promotion.py", None, (PROMOTION_TESTS,), 420),
    Target(
        "catalog",
        "resources/catalog.py",
        (
            "ReleaseCatalog.stage_promotion",
            "ReleaseCatalog.stage_rollback",
            "ReleaseCatalog.commit",
            "ReleaseCatalog._read_current",
        ),
        (
            ("tests/test_catalog.py", "-k", "not s3"),  # a local folder first; no S3 server needed
            ("tests/test_catalog.py", "-k", "s3"),
            PROMOTION_TESTS,
        ),
        420,
    ),
)

# Surviving mutants that change no behaviour (equivalent), or only the wording of a refusal that still
# happens, keyed by (file, function, mutation), with why. Reported apart from the survivors; keep the list
# short and each reason checkable.
WORDING_ONLY = "only the wording of the refusal changes: promotion is refused all the same, nothing published"
EQUIVALENT: dict[tuple[str, str, str], str] = {
    (
        "orchestration/approval_policy.py",
        "_vote_order",
        "`vote.permalink or ''` -> `vote.permalink and ''`",
    ): "the permalink only breaks ties between votes equal in time, user, decision and source, and those "
    "carry the same permalink (the request's for Slack votes, none for local ones): the order is the same",
    (
        "orchestration/promotion.py",
        "verify_content",
        "int constant 0 -> 1 in `(str(error).strip().splitlines() or [''])[0]`",
    ): f"which line of the reader's error the refusal quotes; {WORDING_ONLY}",
    (
        "orchestration/promotion.py",
        "verify_content",
        "int constant 0 -> -1 in `(str(error).strip().splitlines() or [''])[0]`",
    ): f"which line of the reader's error the refusal quotes; {WORDING_ONLY}",
    (
        "orchestration/promotion.py",
        "verify_content",
        "int constant 5 -> 6 in `len(problems) > 5`",
    ): f"whether a refusal with exactly 6 problems says 'and 1 more'; {WORDING_ONLY}",
    (
        "orchestration/promotion.py",
        "verify_content",
        "int constant 5 -> 4 in `len(problems) > 5`",
    ): f"whether a refusal with exactly 5 problems says 'and 1 more'; {WORDING_ONLY}",
}

NEGATED_COMPARISON: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.LtE: ast.Gt,
    ast.Gt: ast.LtE,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}


@dataclass(frozen=True)
class Mutant:
    target: Target
    index: int  # position of the mutated site in the module's deterministic site order
    line: int
    function: str
    description: str

    @property
    def where(self) -> str:
        return f"{self.target.path}:{self.line}"


Mutation = Callable[[ast.AST, dict[int, tuple[ast.AST, str, int | None]]], None]


def _short(node: ast.AST, limit: int = 70) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _replace(node: ast.AST, new: ast.AST, parents: dict[int, tuple[ast.AST, str, int | None]]) -> None:
    parent, field, position = parents[id(node)]
    if position is None:
        setattr(parent, field, new)
    else:
        getattr(parent, field)[position] = new


def _parents(tree: ast.AST) -> dict[int, tuple[ast.AST, str, int | None]]:
    found: dict[int, tuple[ast.AST, str, int | None]] = {}
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if isinstance(value, list):
                for position, child in enumerate(value):
                    if isinstance(child, ast.AST):
                        found[id(child)] = (parent, field, position)
            elif isinstance(value, ast.AST):
                found[id(value)] = (parent, field, None)
    return found


def _functions(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef]]:
    def visit(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, ast.FunctionDef]]:
        for node in body:
            if isinstance(node, ast.FunctionDef):
                yield f"{prefix}{node.name}", node
            elif isinstance(node, ast.ClassDef):
                yield from visit(node.body, f"{prefix}{node.name}.")

    yield from visit(tree.body, "")


def _in_fstring(node: ast.AST, parents: dict[int, tuple[ast.AST, str, int | None]]) -> bool:
    # Constants inside f-strings only shape messages (e.g. how many problems a message lists).
    while id(node) in parents:
        node = parents[id(node)][0]
        if isinstance(node, ast.JoinedStr):
            return True
    return False


def _sites(node: ast.AST, parents: dict) -> Iterator[tuple[str, Mutation]]:
    """The mutations of one node: (description, how to apply it to the same node of a fresh parse)."""
    if isinstance(node, ast.Compare):
        for position, op in enumerate(node.ops):
            flipped = NEGATED_COMPARISON.get(type(op))
            if flipped is None:
                continue

            def flip(target: ast.AST, _: dict, position: int = position, flipped: type = flipped) -> None:
                target.ops[position] = flipped()  # type: ignore[attr-defined]

            mutated = copy.deepcopy(node)
            flip(mutated, {})
            yield f"`{_short(node)}` -> `{_short(mutated)}`", flip
    elif isinstance(node, ast.BoolOp):
        other = ast.Or if isinstance(node.op, ast.And) else ast.And

        def swap(target: ast.AST, _: dict, other: type = other) -> None:
            target.op = other()  # type: ignore[attr-defined]

        mutated = copy.deepcopy(node)
        swap(mutated, {})
        yield f"`{_short(node)}` -> `{_short(mutated)}`", swap
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):

        def drop_not(target: ast.AST, parents: dict) -> None:
            _replace(target, target.operand, parents)  # type: ignore[attr-defined]

        yield f"`{_short(node)}` -> `{_short(node.operand)}`", drop_not
    elif isinstance(node, ast.If) and any(isinstance(stmt, ast.Raise) for stmt in node.body):
        if not node.orelse:

            def drop_guard(target: ast.AST, parents: dict) -> None:
                _replace(target, ast.Pass(), parents)

            yield f"drop guard `if {_short(node.test, 60)}: raise ...`", drop_guard
    elif isinstance(node, ast.Return) and node.value is not None:
        if not (isinstance(node.value, ast.Constant) and node.value.value is None):

            def return_none(target: ast.AST, _: dict) -> None:
                target.value = ast.Constant(None)  # type: ignore[attr-defined]

            yield f"`return {_short(node.value, 60)}` -> `return None`", return_none
    elif isinstance(node, ast.Constant) and type(node.value) is int and not _in_fstring(node, parents):
        for step in (1, -1):

            def shift(target: ast.AST, _: dict, step: int = step) -> None:
                target.value += step  # type: ignore[attr-defined]

            yield (
                f"int constant {node.value} -> {node.value + step} in `{_short(parents[id(node)][0], 50)}`",
                shift,
            )
    elif isinstance(node, ast.Constant) and type(node.value) is bool:

        def negate(target: ast.AST, _: dict) -> None:
            target.value = not target.value  # type: ignore[attr-defined]

        yield f"`{node.value}` -> `{not node.value}` in `{_short(parents[id(node)][0], 50)}`", negate
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):

        def remove_call(target: ast.AST, parents: dict) -> None:
            _replace(target, ast.Pass(), parents)

        yield f"remove call `{_short(node.value, 60)}`", remove_call


Site = tuple[str, int, str, Mutation, ast.AST]  # function, line, what, how, the node of this parse


def _enumerate(target: Target, source: str) -> tuple[ast.Module, dict, list[Site]]:
    """The parsed module, its parent links and every mutation site of the target's functions, in a
    deterministic order (the same source always gives the same sites)."""
    tree = ast.parse(source)
    parents = _parents(tree)
    wanted = None if target.functions is None else set(target.functions)
    found: list[Site] = []
    seen: set[str] = set()
    for name, function in _functions(tree):
        if (wanted is not None and name not in wanted) or name in target.skip:
            continue
        seen.add(name)
        body = function.body[1:] if ast.get_docstring(function) else function.body
        nodes = [node for stmt in body for node in ast.walk(stmt)]
        # Default values of parameters are behaviour too (e.g. force=False).
        nodes.extend(node for default in function.args.defaults for node in ast.walk(default))
        nodes.extend(node for default in function.args.kw_defaults if default for node in ast.walk(default))
        for node in nodes:
            for description, mutation in _sites(node, parents):
                found.append((name, getattr(node, "lineno", function.lineno), description, mutation, node))
    if wanted is not None and wanted - seen:
        raise SystemExit(f"{target.path}: no function named {', '.join(sorted(wanted - seen))} to mutate")
    return tree, parents, found


def mutants(target: Target, source: str) -> list[Mutant]:
    _, _, sites = _enumerate(target, source)
    return [
        Mutant(target, index, line, function, description)
        for index, (function, line, description, _, _) in enumerate(sites)
    ]


def mutated_source(mutant: Mutant, source: str) -> str:
    tree, parents, sites = _enumerate(mutant.target, source)
    _, _, description, mutation, node = sites[mutant.index]
    if description != mutant.description:
        raise RuntimeError(f"{mutant.where}: the source changed while mutating ({description!r})")
    mutation(node, parents)
    return ast.unparse(ast.fix_missing_locations(tree))


def copy_package(root: Path) -> Path:
    """The package's files as `root/backfills` and the tests as `root/tests`, without caches: the snapshot
    the mutants go into (the working tree may change while this runs; the snapshot does not)."""
    package = root / PACKAGE
    package.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in PACKAGE_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, package / part, ignore=ignore)
        else:
            shutil.copy2(source, package / part)
    shutil.copytree(REPO / "tests", root / "tests", ignore=ignore)
    return package


@dataclass
class Outcome:
    mutant: Mutant | None
    status: str  # killed, survived, timeout, error
    seconds: float
    detail: str = ""


def _environment(root: Path, spark_remote: str | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    if spark_remote:
        env["BACKFILLS_TEST_SPARK_REMOTE"] = spark_remote
    return env


def _pytest(
    tier: tuple[str, ...], root: Path, timeout: float, spark_remote: str | None, extra: tuple[str, ...]
) -> tuple[int | None, str]:
    """One pytest run of the copied tests, under the project's pytest settings: (exit code, output); the
    exit code is None when it ran out of time."""
    config = ("-c", str(REPO / "pyproject.toml"), "--rootdir", str(root))
    command = [sys.executable, "-m", "pytest", *config, "-q", "-p", "no:cacheprovider", *extra, *tier]
    # A session of its own, so that a timeout ends pytest and everything it started at once.
    process = subprocess.Popen(
        command,
        cwd=root,
        env=_environment(root, spark_remote),
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


def run_tests(
    target: Target, root: Path, timeout: float, spark_remote: str | None, failing: tuple[str, ...] = ()
) -> tuple[str, float, str]:
    """Run the target's tests, tier by tier, stopping at the first failure, against the copy under `root`
    (leaving out the tests that fail without any mutant): (killed | survived | timeout | error, seconds, the
    end of the output of the last tier run)."""
    started = time.monotonic()
    tail = ""
    for tier in target.tiers:
        left = timeout - (time.monotonic() - started)
        code, output = _pytest(tier, root, left, spark_remote, ("-x", *_deselected(failing)))
        if code is None:
            return "timeout", time.monotonic() - started, tail
        tail = "\n".join(output.strip().splitlines()[-15:])
        if code == 1:
            return "killed", time.monotonic() - started, tail
        if code != 0:
            # Collection or import error, interrupted, no tests: killed, but say so.
            return "error", time.monotonic() - started, tail
    return "survived", time.monotonic() - started, tail


_FAILED = re.compile(r"^(?:FAILED|ERROR) (tests/\S+?::.+?)(?: - .*)?$")


def baseline_failures(
    target: Target, root: Path, timeout: float, spark_remote: str | None
) -> tuple[float, tuple[str, ...]]:
    """Every tier in full, without mutants: (seconds, the tests that fail already). Those are someone's
    work in progress: they cannot tell a mutant apart, so the mutant runs leave them out (and say so)."""
    started = time.monotonic()
    failing: list[str] = []
    for tier in target.tiers:
        code, output = _pytest(tier, root, timeout, spark_remote, ())
        failed = [match.group(1) for line in output.splitlines() if (match := _FAILED.match(line))]
        if code is None or code not in (0, 1) or (code == 1 and not failed):
            print(output[-3000:])
            raise SystemExit(f"[{target.name}] the tests cannot run without any mutant: fix them first")
        failing.extend(failed)
    return time.monotonic() - started, tuple(dict.fromkeys(failing))


def start_spark_connect(root: Path) -> str:
    """One Spark Connect server for every run (each would start a JVM of its own otherwise): its URL."""
    started = subprocess.run(
        [
            *_CONNECT_SERVER,
            "start",
            "--port",
            "0",
            "--state-dir",
            str(root / "spark"),
            "--driver-memory",
            "1g",
        ],
        cwd=REPO,
        env=_environment(root, None),
        capture_output=True,
        text=True,
    )
    if started.returncode != 0:
        raise SystemExit(f"could not start a Spark Connect server for the tests: {started.stderr.strip()}")
    return started.stdout.strip().splitlines()[-1]


def stop_spark_connect(root: Path) -> None:
    subprocess.run(
        [*_CONNECT_SERVER, "stop", "--state-dir", str(root / "spark")],
        cwd=REPO,
        env=_environment(root, None),
        capture_output=True,
    )


_CONNECT_SERVER = (sys.executable, "-m", f"{PACKAGE}.resources.connect_server")


def check_isolation(root: Path) -> None:
    """`import backfills` must resolve to the copy, whatever the editable install's finder says."""
    found = subprocess.run(
        [sys.executable, "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"],
        cwd=REPO,
        env=_environment(root, None),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"`import {PACKAGE}` resolves to {found}, not to the copy under {root}: stopping")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", choices=[t.name for t in TARGETS], help="default: all")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, help="seconds per mutant (default: the target's)")
    parser.add_argument("--report", type=Path, help="also write the report to this file")
    parser.add_argument(
        "--no-spark-connect", action="store_true", help="let each run start its own local Spark instead"
    )
    args = parser.parse_args(argv)
    targets = [t for t in TARGETS if not args.target or t.name in args.target]
    if args.list:
        count = 0
        for target in targets:
            for mutant in mutants(target, (REPO / target.path).read_text()):
                print(f"{mutant.where:<42} {mutant.function:<32} {mutant.description}")
                count += 1
        print(f"{count} mutants")
        return 0

    started = time.monotonic()
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="mutants-") as workdir:
        root = Path(workdir)
        # One snapshot of the package: the working tree may change while this runs, the copy does not.
        package = copy_package(root)
        check_isolation(root)
        sources = {target.name: (package / target.path).read_text() for target in targets}
        selected = {target.name: mutants(target, sources[target.name]) for target in targets}
        total = sum(map(len, selected.values()))
        print(f"{total} mutants of {', '.join(t.path for t in targets)}; package copied to {package}")
        spark_remote = None
        try:
            if not args.no_spark_connect:
                spark_remote = start_spark_connect(root)
            for target in targets:
                outcomes.extend(
                    run_target(
                        target, package, root, sources[target.name], selected[target.name], args, spark_remote
                    )
                )
        finally:
            if not args.no_spark_connect:
                stop_spark_connect(root)  # also one whose start was interrupted
    report = render(outcomes, time.monotonic() - started)
    print(report)
    if args.report:
        args.report.write_text(report + "\n")
    return 0 if not [o for o in outcomes if o.status == "survived" and _equivalence(o) is None] else 1


def run_target(
    target: Target,
    package: Path,
    root: Path,
    original: str,
    selected: list[Mutant],
    args: argparse.Namespace,
    spark_remote: str | None,
) -> list[Outcome]:
    timeout = args.timeout or target.timeout
    path = package / target.path
    # Every mutant is written with ast.unparse, so the baseline is the unparsed original: the tests must pass
    # on it, and must fail on a copy whose module cannot even be imported (the canary).
    baseline = ast.unparse(ast.parse(original))
    path.write_text(baseline)
    seconds, failing = baseline_failures(target, root, timeout * 2, spark_remote)
    state = f"{len(failing)} tests fail" if failing else "the tests pass"
    print(f"[{target.name}] baseline, without any mutant: {state} ({seconds:.0f}s)", flush=True)
    for node in failing:
        print(f"[{target.name}] left out, it fails without any mutant: {node}", flush=True)
    if failing:
        # Without any mutant, the tests left must still pass: proves the failures were only those.
        status, seconds, tail = run_tests(target, root, timeout * 2, spark_remote, failing)
        if status != "survived":
            print(tail)
            raise SystemExit(f"[{target.name}] the tests fail without any mutant: fix them first")
    path.write_text(f"{baseline}\nraise ImportError({CANARY!r})\n")
    status, seconds, tail = run_tests(target, root, timeout, spark_remote, failing)
    if status == "survived" or CANARY not in tail:
        print(tail)
        raise SystemExit(f"[{target.name}] the canary survived: the tests do not import the copy")
    print(f"[{target.name}] canary: {status} in {seconds:.0f}s, so the tests import the copy", flush=True)
    outcomes = [Outcome(None, "left out", 0.0, node) for node in failing]
    try:
        for number, mutant in enumerate(selected, 1):
            path.write_text(mutated_source(mutant, original))
            status, seconds, tail = run_tests(target, root, timeout, spark_remote, failing)
            outcomes.append(Outcome(mutant, status, seconds, tail))
            print(
                f"[{target.name} {number}/{len(selected)}] {status:<8} {seconds:4.0f}s  {mutant.where}  "
                f"{mutant.function}: {mutant.description}",
                flush=True,
            )
    finally:
        path.write_text(original)
    return outcomes


def _equivalence(outcome: Outcome) -> str | None:
    mutant = outcome.mutant
    assert mutant is not None
    return EQUIVALENT.get((mutant.target.path, mutant.function, mutant.description))


def render(outcomes: list[Outcome], seconds: float) -> str:
    left_out = [o.detail for o in outcomes if o.mutant is None]
    mutated = [o for o in outcomes if o.mutant is not None]
    counts: dict[str, int] = {}
    for outcome in mutated:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    lines = [
        f"{len(mutated)} mutants in {seconds / 60:.1f} min: "
        + ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    ]
    survivors = [o for o in mutated if o.status == "survived"]
    equivalent = [o for o in survivors if _equivalence(o) is not None]
    unexplained = [o for o in survivors if _equivalence(o) is None]
    if unexplained:
        lines.append("survived (no test noticed):")
        lines.extend(f"  {o.mutant.where}  {o.mutant.function}: {o.mutant.description}" for o in unexplained)
    if equivalent:
        lines.append("survived, accepted (equivalent, or the wording of a message only):")
        lines.extend(
            f"  {o.mutant.where}  {o.mutant.function}: {o.mutant.description} -- {_equivalence(o)}"
            for o in equivalent
        )
    errors = [o for o in mutated if o.status == "error"]
    if errors:
        lines.append("killed by an error rather than a failing test (import or collection):")
        lines.extend(f"  {o.mutant.where}  {o.mutant.function}: {o.mutant.description}" for o in errors)
    if left_out:
        lines.append("tests left out, they fail without any mutant (fix them):")
        lines.extend(f"  {node}" for node in left_out)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
