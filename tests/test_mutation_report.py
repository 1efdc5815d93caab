"""The mutation report keeps every module's last run: a run of some modules refreshes theirs and keeps the
others', names every survivor, and gives every equivalent mutant its reviewed reason (tests/mutants.py).

Pure: no Spark, Dagster or mutants run; the outcomes are made up here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from forked_pytest import run as run_forked
from mutation_progress import Progress
from mutation_report import (
    KILLED,
    SURVIVED,
    TIMEOUT,
    Outcome,
    load_equivalents,
    module_entry,
    rechecked_entry,
    stale_equivalents,
    write_report,
)
from mutation_sites import Scope, mutants

MODULE = "resources/example.py"
SOURCE = """
def allowed(state, limit=3):
    if state is None:
        raise ValueError("no state")
    return state in ("open", "checked") and limit > 0
"""


@pytest.fixture
def report(tmp_path: Path) -> dict[str, Path]:
    return {"json_path": tmp_path / "report.json", "markdown_path": tmp_path / "REPORT.md"}


def _outcomes(statuses: dict[int, str]) -> list[Outcome]:
    found = mutants(Scope(MODULE), SOURCE)
    return [Outcome(mutant, statuses.get(number, KILLED), 1.0) for number, mutant in enumerate(found)]


def _entry(outcomes: list[Outcome], equivalents: dict, commit: str = "c" * 40) -> dict:
    return module_entry(outcomes, equivalents, commit=commit, dirty=False, minutes=1.0, tests=[], left_out=[])


def test_every_survivor_is_named_and_every_equivalent_carries_its_reason(tmp_path: Path) -> None:
    outcomes = _outcomes({0: SURVIVED, 1: SURVIVED, 2: TIMEOUT})
    kept, survivor = outcomes[0].mutant, outcomes[1].mutant
    reasons = tmp_path / "equivalent.json"
    why = "the default is never used: every caller passes a limit"
    reasons.write_text(
        json.dumps({MODULE: [{"function": kept.function, "change": kept.description, "why": why}]})
    )

    entry = _entry(outcomes, load_equivalents(reasons))

    assert entry["mutants"] == len(outcomes) and entry["killed"] == len(outcomes) - 2
    assert entry["equivalent"] == [{"line": kept.line, "change": kept.description, "why": why}]
    assert entry["survived"] == [{"line": survivor.line, "change": survivor.description}]
    assert entry["timeout"] == [{"line": outcomes[2].mutant.line, "change": outcomes[2].mutant.description}]


def test_a_run_of_some_modules_keeps_the_entries_of_the_others(report: dict[str, Path]) -> None:
    first = _entry(_outcomes({}), {}, commit="a" * 40)
    write_report({MODULE: first, "resources/other.py": first}, commit="a" * 40, **report)

    again = _entry(_outcomes({0: SURVIVED}), {}, commit="b" * 40)
    written = write_report({MODULE: again}, commit="b" * 40, **report)

    assert json.loads(report["json_path"].read_text()) == written
    assert written["commit"] == "b" * 40
    assert written["modules"]["resources/other.py"] == first
    assert written["modules"][MODULE]["commit"] == "b" * 40
    assert len(written["modules"][MODULE]["survived"]) == 1
    markdown = report["markdown_path"].read_text()
    assert "| resources/other.py |" in markdown and f"- line 3: {again['survived'][0]['change']}" in markdown


def test_survivors_run_again_move_to_killed_and_the_full_run_is_kept(report: dict[str, Path]) -> None:
    outcomes = _outcomes({0: SURVIVED, 1: SURVIVED, 3: SURVIVED})
    full = _entry(outcomes, {}, commit="a" * 40)
    still = outcomes[3].mutant
    again = [
        Outcome(o.mutant, KILLED if o.mutant != still else SURVIVED, 1.0)
        for o in (outcomes[0], outcomes[1], outcomes[3])
    ]

    entry = rechecked_entry(full, again, {}, commit="b" * 40, dirty=False)

    assert entry["mutants"] == len(outcomes) and entry["killed"] == len(outcomes) - 1
    assert entry["survived"] == [{"line": still.line, "change": still.description}]
    assert entry["commit"] == "a" * 40  # the code every mutant ran on
    assert entry["rechecked"] == {"commit": "b" * 40, "dirty": False, "survivors": 3, "killed": 2}
    write_report({MODULE: entry}, commit="b" * 40, **report)
    markdown = report["markdown_path"].read_text()
    assert "survivors rechecked on bbbbbbbbbb" in markdown and "2 of them killed" in markdown


def test_a_reason_that_matches_no_survivor_any_more_is_pointed_out() -> None:
    outcomes = _outcomes({})
    mutant = outcomes[0].mutant
    equivalents = {(MODULE, mutant.function, mutant.description): "no longer true"}

    assert stale_equivalents(MODULE, outcomes, equivalents) == [(mutant.function, mutant.description)]


def test_a_reason_without_a_why_is_refused(tmp_path: Path) -> None:
    reasons = tmp_path / "equivalent.json"
    reasons.write_text(json.dumps({MODULE: [{"function": "allowed", "change": "x", "why": " "}]}))

    with pytest.raises(SystemExit, match="needs a function, a change and a one-line why"):
        load_equivalents(reasons)


def test_a_stopped_run_resumes_with_the_outcomes_of_the_same_module_text(tmp_path: Path) -> None:
    found = mutants(Scope(MODULE), SOURCE)
    first = Progress("example", SOURCE, tmp_path)
    first.record(1, Outcome(found[0], KILLED, 2.0, 0), commit="a" * 40)
    first.record(2, Outcome(found[1], SURVIVED, 9.0), commit="a" * 40)

    again = Progress("example", SOURCE, tmp_path)
    assert again.known(1, found[0]) == Outcome(found[0], KILLED, 2.0, 0)
    assert again.known(2, found[1]) == Outcome(found[1], SURVIVED, 9.0)
    assert again.known(3, found[2]) is None  # not run yet
    assert again.known(1, found[2]) is None  # numbered 1 before, but another change: run it
    assert again.commits() == ["a" * 40]

    # One character more in the module: other mutants, nothing carries over.
    assert Progress("example", SOURCE + "\n", tmp_path).known(1, found[0]) is None
    again.finish()
    assert not (tmp_path / "example.json").exists()


def test_a_forked_run_imports_the_package_from_the_path_it_is_given(tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    (copy / "example_pkg").mkdir(parents=True)
    (copy / "example_pkg" / "__init__.py").write_text("ANSWER = 41\n")
    (tmp_path / "test_it.py").write_text(
        "import example_pkg\n\ndef test_answer():\n    assert example_pkg.ANSWER == 42\n"
    )
    args = ["-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "test_it.py"]
    env = {"PATH": "/usr/bin:/bin"}
    code, output = run_forked(args, cwd=str(tmp_path), env=env, first_on_path=str(copy), timeout=60)
    assert code == 1 and "assert 41 == 42" in output  # the copy's value, seen by the test

    (tmp_path / "test_it.py").write_text("import time\n\ndef test_slow():\n    time.sleep(30)\n")
    code, output = run_forked(args, cwd=str(tmp_path), env=env, first_on_path=str(copy), timeout=2)
    assert code is None  # ran out of time, and was stopped
