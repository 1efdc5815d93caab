"""A suite that cannot run for want of a tool never passes silently: the run ends naming it and how to get
the tool, and where every suite must run (.ci/run) the missing tool fails the run.

Each story runs a small inner pytest session through the same plugin (tests/skipped_suites.py).
"""

from __future__ import annotations

import pytest
from skipped_suites import MISSING, REQUIRE_ALL_SUITES

MISSING_TOOL = "frobnicator is not installed: apt-get install frobnicator (.ci/run installs it as root)"
SUITE = f"""
import pytest
from skipped_suites import skip_suite


@pytest.fixture(scope="module")
def frobnicator():
    skip_suite({MISSING_TOOL!r})


def test_frobnicates(frobnicator):
    pass


def test_frobnicates_twice(frobnicator):
    pass
"""
OTHERS = """
import pytest


def test_runs_anywhere():
    pass


def test_skipped_by_choice():
    pytest.skip("not on Sundays")
"""


@pytest.fixture
def suites(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.delenv(REQUIRE_ALL_SUITES, raising=False)
    pytester.makepyfile(test_needs_frobnicator=SUITE, test_others=OTHERS)
    return pytester


def test_a_suite_skipped_for_a_missing_tool_is_named_last_with_how_to_get_the_tool(
    suites: pytest.Pytester,
) -> None:
    result = suites.runpytest("-p", "skipped_suites", "-ra")

    result.assert_outcomes(passed=1, skipped=3)
    named = [line for line in result.outlines if line.startswith("SKIPPED SUITE")]
    assert named == [f"SKIPPED SUITE test_needs_frobnicator.py (2 tests): {MISSING_TOOL}"]
    # The last line before the counts, after pytest's own short summary.
    assert result.outlines[-2] == named[0]
    assert "not on Sundays" not in "\n".join(named)


def test_where_every_suite_must_run_a_missing_tool_fails_the_run(
    suites: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REQUIRE_ALL_SUITES, "1")

    result = suites.runpytest("-p", "skipped_suites", "-ra")

    result.assert_outcomes(passed=1, skipped=1, errors=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    failure = f"{MISSING}{MISSING_TOOL} ({REQUIRE_ALL_SUITES}=1: every suite must run here)"
    assert result.outlines.count(failure) == 2  # each test that needs the tool, with the skip's message
    assert not [line for line in result.outlines if line.startswith("SKIPPED SUITE")]
