"""What one check result carries in Dagster: its numbers as plottable entries with the threshold beside the
observed value, the offending rows as a markdown table (keys first, at most ten), and the whole evidence."""

from __future__ import annotations

from dagster import JsonMetadataValue, MarkdownMetadataValue

from backfills.assets.check_results import MAX_ROWS, check_metadata
from backfills.checks.outcome import CheckOutcome

KEYS = ["customer_id", "feature_date"]


def _range_failure(rows: int) -> CheckOutcome:
    sample = [
        {"feature_date": "2025-01-03", "customer_id": f"c{n:03d}", "amount_sum_usd": -5.0 - n}
        for n in range(rows)
    ]
    return CheckOutcome(
        name="value_ranges",
        passed=False,
        blocking=True,
        summary="1 of 4 expectations failed",
        figures={
            "failures": [
                {
                    "column": "amount_sum_usd",
                    "unexpected_count": rows,
                    "unexpected_percent": 12.5,
                    "element_count": 96,
                    "sample": sample,
                    "threshold": {"min": 0.0, "max": None, "mostly": 1.0},
                }
            ],
            "gx_statistics": {"evaluated_expectations": 4, "successful_expectations": 3},
        },
    )


def test_observed_values_sit_next_to_their_threshold_as_numbers():
    metadata = check_metadata("b1", "2025-01-03", _range_failure(3), KEYS)
    assert metadata["amount_sum_usd/unexpected_count"] == 3
    assert metadata["amount_sum_usd/unexpected_percent"] == 12.5
    assert metadata["amount_sum_usd/threshold/min"] == 0.0
    assert metadata["amount_sum_usd/threshold/mostly"] == 1.0
    assert "amount_sum_usd/threshold/max" not in metadata  # no upper bound: nothing to plot
    assert metadata["gx_statistics/evaluated_expectations"] == 4
    assert metadata["partition"] == "2025-01-03" and metadata["batch_id"] == "b1"
    assert isinstance(metadata["evidence"], JsonMetadataValue)


def test_offending_rows_are_a_markdown_table_keys_first_and_at_most_ten():
    markdown = check_metadata("b1", "2025-01-03", _range_failure(12), KEYS)["offending_rows"]
    assert isinstance(markdown, MarkdownMetadataValue)
    lines = markdown.md_str.splitlines()
    assert lines[0] == "| customer_id | feature_date | amount_sum_usd |"
    assert lines[2] == "| c000 | 2025-01-03 | -5.0 |"
    assert len([line for line in lines if line.startswith("| c0")]) == MAX_ROWS
    assert lines[-1] == "2 more in the evidence"


def test_a_passing_result_has_its_figures_and_no_rows_table():
    passed = CheckOutcome(
        name="diff_vs_production",
        passed=True,
        blocking=True,
        summary="3 rows changed",
        figures={
            "changed": 3,
            "added": 0,
            "removed": 1,
            "unchanged": 90,
            "release_id": "r1",
            "policy": {"a": 1},
        },
    )
    metadata = check_metadata("b1", "2025-01-03", passed, KEYS)
    assert (metadata["changed"], metadata["added"], metadata["removed"]) == (3, 0, 1)
    assert "offending_rows" not in metadata and "policy/a" not in metadata


def test_a_broken_contract_shows_each_rule_count_and_its_offending_rows():
    """A contract's report (what a blocked run records) as a failed result: a count per broken rule, even
    for two rules on one column, and the sample rows of every rule in one table."""
    report = {
        "table": "raw_transactions",
        "partitions": "2025-01-13..2025-01-14",
        "rows": 720,
        "violations": [
            {
                "column": "amount",
                "check": "min",
                "rule": "must be >= 0",
                "count": 36,
                "sample": [{"txn_id": "t1", "customer_id": "c007", "amount": -12.5}],
            },
            {"column": "amount", "check": "finite", "rule": "must be finite", "count": 2, "sample": []},
            {"column": "status", "check": "dtype", "rule": "must be string", "count": None, "sample": []},
        ],
    }
    broken = CheckOutcome(
        name="raw_input_contract", passed=False, blocking=True, summary="breaks", figures=report
    )
    metadata = check_metadata("b1", "2025-01-13", broken, KEYS)
    assert metadata["amount/min/count"] == 36 and metadata["amount/finite/count"] == 2
    assert metadata["rows"] == 720 and "status/dtype/count" not in metadata
    lines = metadata["offending_rows"].md_str.splitlines()
    assert lines[0] == "| customer_id | amount | txn_id |" and lines[2] == "| c007 | -12.5 | t1 |"
