"""Suites that need a tool of the machine (PostgreSQL, Redis, Chromium) skip through `skip_suite` when it is
missing, saying what is missing and how to get it; the run then ends with one line per such suite, so a
newcomer's green run says what it did not test. Where every tool is installed (.ci/run sets
BACKFILLS_REQUIRE_ALL_SUITES=1), such a skip is a broken install: it fails, with the same message.

A pytest plugin (tests/conftest.py loads it): the skips travel as test reports, so the summary also
collects them from pytest-xdist workers. It holds no assertions, and conftest imports it before loading it
as a plugin: PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import NoReturn

import pytest

REQUIRE_ALL_SUITES = "BACKFILLS_REQUIRE_ALL_SUITES"
# Marks the skip reasons the summary collects (a skip that is a test's own choice has no such mark).
MISSING = "missing on this machine: "


def skip_suite(reason: str) -> NoReturn:
    """Skip the tests that need a tool this machine lacks (`reason` says which and how to get it), or fail
    them where every suite must run."""
    message = f"{MISSING}{reason}"
    if os.environ.get(REQUIRE_ALL_SUITES) == "1":
        pytest.fail(f"{message} ({REQUIRE_ALL_SUITES}=1: every suite must run here)", pytrace=False)
    pytest.skip(message)


def skipped_suites(reports: list[pytest.TestReport]) -> dict[str, tuple[int, list[str]]]:
    """Per test module that skipped for a missing tool: how many of its tests did not run, and why."""
    found: dict[str, tuple[int, list[str]]] = {}
    for report in reports:
        if not isinstance(report.longrepr, tuple):
            continue
        reason = report.longrepr[2].removeprefix("Skipped: ")
        if not reason.startswith(MISSING):
            continue
        module = report.nodeid.split("::", 1)[0]
        count, reasons = found.get(module, (0, []))
        why = reason.removeprefix(MISSING)
        found[module] = (count + 1, reasons if why in reasons else [*reasons, why])
    return found


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Generator[None]:
    """After every other summary (so just above the final counts): one line per suite that did not run."""
    try:
        return (yield)
    finally:
        suites = skipped_suites(terminalreporter.stats.get("skipped", []))
        for module, (count, reasons) in sorted(suites.items()):
            tests = "1 test" if count == 1 else f"{count} tests"
            line = f"SKIPPED SUITE {module} ({tests}): {'; '.join(reasons)}"
            terminalreporter.write_line(line, yellow=True)
