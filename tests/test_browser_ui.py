"""The Dagster UI in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright; no
browser download) against the real webserver, on the operator's flow of tests/operator_flow.py after its
promotion: the asset graph shows raw -> staging -> production; a check shows one result per partition, with
its numbers beside their thresholds; a production partition shows its release, batch, approvers and code
version; the backfill's page shows its runs; the faulty backfill's failed raw input contract shows its
figures and offending rows; each production table shows whether it is fresh or late.

On failure a test saves a screenshot of the page under its pytest temp dir and prints the path. With
BACKFILLS_SCREENSHOTS_DIR set (`make screenshots`), the pages the README shows are saved there.

Runs before tests/test_end_to_end.py (file order): its last test rolls the promotion back.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
from operator_flow import DAYS, FAULTY_FIRST, OperatorBackfill, Promotion, failed
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from skipped_suites import skip_suite

from backfills.assets.check_results import GATE_CHECK
from backfills.assets.factory import production_key, staging_key
from backfills.assets.registry import FEATURES
from backfills.assets.staging import RAW_INPUT_CHECK
from backfills.orchestration.freshness_checks import FRESHNESS_CHECK

pytestmark = pytest.mark.end_to_end

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS_DIR = os.environ.get("BACKFILLS_SCREENSHOTS_DIR")
TIMEOUT_MS = 60_000  # the first page load compiles the UI's bundle in a cold browser
DAY = "2025-01-05"
DAILY_STAGING = staging_key("customer_daily_txn")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if CHROMIUM is None:
        skip_suite(
            "no chromium: the browser test drives Debian's `chromium` (apt-get install chromium; .ci/run "
            "installs it when it runs as root)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Chromium's sandbox needs a user namespace, which root in a container often lacks.
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request: pytest.FixtureRequest, tmp_path: Path):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    # A fresh browser gets Dagster's "Join the Dagster community" dialog at some point: close it whenever
    # it covers what the test acts on.
    page.add_locator_handler(page.get_by_text("Join the Dagster community"), lambda: _skip(page))
    yield page
    if failed(request.node):
        path = tmp_path / "failure.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot of the page when {request.node.name} failed: {path} ({page.url})")
        print(f"text on the page:\n{page.inner_text('body')[:4000]}")
    context.close()


def _keep(page, name: str) -> None:
    """Save what the page shows for the README when BACKFILLS_SCREENSHOTS_DIR is set."""
    if SCREENSHOTS_DIR:
        with suppress(PlaywrightTimeout):  # the community dialog, if it came: not in the pictures
            page.get_by_text("Join the Dagster community").wait_for(timeout=2_000)
            _skip(page)
        Path(SCREENSHOTS_DIR).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS_DIR) / f"{name}.png"))


def _asset_url(outcome: OperatorBackfill, key, **query: str) -> str:
    params = "&".join(f"{name}={value}" for name, value in query.items())
    return f"{outcome.services.url}/assets/{'/'.join(key.path)}" + (f"?{params}" if params else "")


def _skip(page) -> None:
    page.get_by_role("button", name="Skip").first.click()


def _open(page, url: str) -> None:
    """Load a page of the UI and wait until it stops loading."""
    page.goto(url)
    page.wait_for_load_state("networkidle")


def test_the_asset_graph_shows_raw_then_staging_then_production(
    page, operator_backfill: OperatorBackfill, promotion: Promotion
):
    _open(page, _asset_url(operator_backfill, staging_key("customer_daily_txn"), view="lineage"))
    # The staged table's nearest neighbours, each in its group: the landing zone upstream, production's
    # copy downstream (the staged tables are the `features` group).
    for group in ("raw", "features", "production"):
        page.get_by_text(group, exact=True).first.wait_for()
    page.get_by_text("raw_transactions", exact=True).first.wait_for()
    assert page.get_by_text("customer_daily_txn", exact=True).count() >= 2  # staged and production
    _keep(page, "lineage")


def test_each_partition_has_its_gate_result_with_every_check_verdict_and_its_numbers(
    page, operator_backfill: OperatorBackfill, promotion: Promotion
):
    _open(
        page,
        _asset_url(
            operator_backfill, staging_key("customer_daily_txn"), view="checks", checkDetail=GATE_CHECK
        ),
    )
    # The latest result: how many checks passed, and the partition's own numbers (what Plots draws).
    for label in ("checks_passed", "rows", "content_hash"):
        page.get_by_text(label, exact=True).first.wait_for()
    page.get_by_text("Plots", exact=True).first.wait_for()
    _keep(page, "check_result")
    page.get_by_text("Execution history", exact=True).first.click()
    for day in DAYS:  # one passed result per partition of the backfill's range runs
        page.locator("tr", has_text=day).filter(has_text="Passed").first.wait_for()
    _keep(page, "check_history")


def test_a_failed_check_shows_its_offending_rows_and_figures(
    page, operator_backfill: OperatorBackfill, promotion: Promotion
):
    """The faulty backfill's landing day has negative amounts: the raw input contract failed the gate on
    each of its partitions, and the result shows the broken rule's count and the offending rows as a table."""
    _open(
        page,
        _asset_url(
            operator_backfill, staging_key("customer_daily_txn"), view="checks", checkDetail=GATE_CHECK
        ),
    )
    page.get_by_text("Execution history", exact=True).first.click()
    row = page.locator("tr", has_text=FAULTY_FIRST).filter(has_text="Failed").first
    row.wait_for()
    row.get_by_role("button").last.click()  # the result's metadata
    dialog = page.get_by_role("dialog")
    dialog.get_by_text(f"{RAW_INPUT_CHECK}/amount/min/count", exact=True).wait_for()
    # The result's tables: every check's verdict, and the offending rows (a long one opens in its own dialog).
    show = dialog.locator("tr", has_text="offending_rows").get_by_text("[Show Markdown]")
    if show.count():
        show.first.click()
    offending = page.get_by_role("dialog").locator("table").filter(has_not_text="verdict")
    rows = offending.last.locator("tr")
    rows.first.wait_for()
    assert "amount" in rows.first.inner_text()
    assert any(re.search(r"(^|\s)-\d", text) for text in rows.all_inner_texts()[1:])
    _keep(page, "failed_check")


def test_a_production_partition_shows_release_batch_approvers_and_code_version(
    page, operator_backfill: OperatorBackfill, promotion: Promotion
):
    _open(
        page,
        _asset_url(operator_backfill, production_key("customer_txn_7d"), view="partitions", partition=DAY),
    )
    for text in (promotion.release.release_id, operator_backfill.backfill_id, "bob"):
        page.get_by_text(text).first.wait_for()
    _keep(page, "production_partition")


def test_the_backfill_page_shows_its_runs(page, operator_backfill: OperatorBackfill, promotion: Promotion):
    _open(page, f"{operator_backfill.services.url}/runs/b/{operator_backfill.backfill_id}?tab=runs")
    for run in operator_backfill.runs:
        page.get_by_text(run.run_id[:8]).first.wait_for()
    assert re.search("Completed|Success", page.content())
    _keep(page, "backfill_runs")


def test_each_production_table_shows_whether_it_is_fresh_or_late(
    page, operator_backfill: OperatorBackfill, promotion: Promotion
):
    """The freshness sensor judged every production table against its SLA when the daemon started and ran
    their `freshness` checks in a run: each shows that verdict (fresh or late, production and online) as its
    latest execution, with its figures."""
    for spec in FEATURES:
        _open(
            page,
            _asset_url(
                operator_backfill, production_key(spec.name), view="checks", checkDetail=FRESHNESS_CHECK
            ),
        )
        page.get_by_text("production_days_behind", exact=True).first.wait_for()
        page.get_by_text(re.compile(rf"^{spec.name} \(expected .*production (fresh|LATE)")).first.wait_for()
    _keep(page, "freshness")
