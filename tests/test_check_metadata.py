"""What the quality gate's result on one partition carries in Dagster: each check's verdict; for a check that
failed or warned, its numbers as plottable entries (under its name) with the threshold beside the observed
value, the offending rows as a markdown table (keys first, at most ten), and its whole evidence; and the
partition's own figures."""

from __future__ import annotations

import dataclasses

from dagster import AssetKey, JsonMetadataValue, MarkdownMetadataValue

from backfills.assets.check_results import GATE_CHECK, MAX_ROWS, gate_evaluation, gate_metadata
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


PASSED = CheckOutcome(
    name="non_empty_partitions", passed=True, blocking=True, summary="96 rows", figures={"rows": 96}
)


def test_observed_values_sit_next_to_their_threshold_as_numbers_under_the_check_name():
    metadata = gate_metadata("b1", "2025-01-03", [PASSED, _range_failure(3)], KEYS)
    assert metadata["value_ranges/amount_sum_usd/unexpected_count"] == 3
    assert metadata["value_ranges/amount_sum_usd/unexpected_percent"] == 12.5
    assert metadata["value_ranges/amount_sum_usd/threshold/min"] == 0.0
    assert metadata["value_ranges/amount_sum_usd/threshold/mostly"] == 1.0
    assert "value_ranges/amount_sum_usd/threshold/max" not in metadata  # no upper bound: nothing to plot
    assert metadata["value_ranges/gx_statistics/evaluated_expectations"] == 4
    assert metadata["partition"] == "2025-01-03" and metadata["batch_id"] == "b1"
    assert isinstance(metadata["evidence"], JsonMetadataValue)
    assert set(metadata["evidence"].value) == {"value_ranges"}  # the evidence of what failed, not of all
    assert "non_empty_partitions/rows" not in metadata  # a passing check's numbers are in the step's evidence
    assert (metadata["checks_passed"], metadata["checks_failed"], metadata["checks_warned"]) == (1, 1, 0)
    verdicts = metadata["checks"].md_str.splitlines()
    assert verdicts[2:] == [
        "| non_empty_partitions | passed | 96 rows |",
        "| value_ranges | failed | 1 of 4 expectations failed |",
    ]


def test_a_partition_fails_the_gate_when_one_check_fails_and_warns_when_checks_only_warn():
    failed = gate_evaluation(
        AssetKey("t"), batch_id="b1", day="2025-01-03", outcomes=[PASSED, _range_failure(1)], keys=KEYS
    )
    assert (failed.check_name, failed.passed, failed.severity.value) == (GATE_CHECK, False, "ERROR")
    assert (
        failed.description == "failed: value_ranges (1 of 4 expectations failed)"
        and failed.partition == "2025-01-03"
    )
    warning = CheckOutcome(name="diff_vs_production", passed=False, blocking=False, summary="40% changed")
    warned = gate_evaluation(
        AssetKey("t"), batch_id="b1", day="2025-01-03", outcomes=[PASSED, warning], keys=KEYS
    )
    assert (warned.passed, warned.severity.value) == (False, "WARN")
    assert warned.description == "warned: diff_vs_production (40% changed)"
    clean = gate_evaluation(
        AssetKey("t"), batch_id="b1", day="2025-01-03", outcomes=[PASSED], keys=KEYS, facts={"rows": 96}
    )
    assert (clean.passed, clean.severity.value, clean.description) == (True, "ERROR", "all 1 checks passed")
    assert clean.metadata["rows"].value == 96 and "evidence" not in clean.metadata


def test_offending_rows_are_a_markdown_table_keys_first_and_at_most_ten():
    markdown = gate_metadata("b1", "2025-01-03", [_range_failure(12)], KEYS)["offending_rows"]
    assert isinstance(markdown, MarkdownMetadataValue)
    lines = markdown.md_str.splitlines()
    assert lines[0] == "| customer_id | feature_date | amount_sum_usd |"
    assert lines[2] == "| c000 | 2025-01-03 | -5.0 |"
    assert len([line for line in lines if line.startswith("| c0")]) == MAX_ROWS
    assert lines[-1] == "2 more in the evidence"


def test_a_passing_check_adds_no_numbers_or_rows_and_a_warning_adds_its_numbers():
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
    metadata = gate_metadata("b1", "2025-01-03", [passed], KEYS)
    assert metadata["checks_passed"] == 1 and "offending_rows" not in metadata and "evidence" not in metadata
    warned = dataclasses.replace(passed, passed=False, blocking=False)
    metadata = gate_metadata("b1", "2025-01-03", [warned], KEYS)
    assert [metadata[f"diff_vs_production/{n}"] for n in ("changed", "added", "removed")] == [3, 0, 1]
    assert "offending_rows" not in metadata and "diff_vs_production/policy/a" not in metadata


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
    metadata = gate_metadata("b1", "2025-01-13", [broken], KEYS)
    assert metadata["raw_input_contract/amount/min/count"] == 36
    assert metadata["raw_input_contract/amount/finite/count"] == 2
    assert (
        metadata["raw_input_contract/rows"] == 720 and "raw_input_contract/status/dtype/count" not in metadata
    )
    lines = metadata["offending_rows"].md_str.splitlines()
    assert lines[0] == "| customer_id | amount | txn_id |" and lines[2] == "| c007 | -12.5 | t1 |"
