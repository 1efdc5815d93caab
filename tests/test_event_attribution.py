"""A transaction counts exactly once, whatever the run layout (I3).

The landing zone holds hostile copies: events re-delivered a day later, the previous day's last events
delivered again with their time moved across midnight, copies with another amount and status, and exact
copies inside one file; several of them on the first days, where a backfill may start; copies landing
farther apart than the re-delivery window; and, the day before the first partition, a file whose events are
stamped the next day. Every layout of runs
(one day per run, ranges of 2, 3 and all days, backfills starting on each of the first three days, and
random layouts) must stage the same rows and the same verdicts, and the rows must match the documented rule
worked out here in plain Python from the landing files.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import Lake, make_lake
from hypothesis import given, settings
from hypothesis import strategies as st

from backfills.assets.deliveries import counted_events
from backfills.assets.generator import Fault, landing_key, write_landing_zone
from backfills.assets.raw_transactions import landed_deliveries, landing_read
from backfills.assets.registry import feature_spec
from backfills.checks.duplicates import DUPLICATE_EVENTS_CHECK
from backfills.resources.feature_store import partition_facts
from backfills.specs import RAW_TRANSACTIONS, DateRange

DAILY = "customer_daily_txn"
FIRST, LAST = date(2025, 1, 1), date(2025, 1, 6)
JAN = {n: date(2025, 1, n) for n in range(1, 8)}
# The day before the first partition has a file too: runs from the first day read it only to see what was
# delivered before, and no run of these days checks it against the raw contract.
EVE = date(2024, 12, 31)
LANDED = [EVE, *JAN.values()]
FAULTS = [
    Fault("cross_midnight_copies", JAN[2]),
    Fault("conflicting_copies", JAN[2]),
    Fault("cross_midnight_copies", JAN[3]),
    Fault("redelivered_events", JAN[3]),
    Fault("conflicting_copies", JAN[4]),
    Fault("duplicate_txn_ids", JAN[5]),
    Fault("redelivered_events", JAN[6]),
]
# The documented rule's parameters for the daily table: a day's events may arrive a day late, and a copy
# within 2 files after an earlier delivery is a re-delivery.
LATENESS, REDELIVERY = 1, 2


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    # One landing day more than the last partition: its late events arrive in the next day's file.
    write_landing_zone(
        make_lake(root).store, start=FIRST, days=7, customers=40, rows_per_day=300, seed=3, faults=FAULTS
    )
    _land_again(root, JAN[2], JAN[5])
    _land_early(root, EVE, JAN[1])
    return root


def _land_again(root: Path, first: date, again: date) -> None:
    """Copies farther apart than the re-delivery window: a few rows of `first`'s file land again in
    `again`'s file, their events moved to that day. By the rule each copy is a transaction of its own."""
    rows = pq.read_table(root / landing_key(first)).slice(0, 3)
    moved = pc.add(rows["event_ts"], pa.scalar(again - first, pa.duration("us")))
    copies = rows.set_column(rows.schema.get_field_index("event_ts"), rows.schema.field("event_ts"), moved)
    target = root / landing_key(again)
    pq.write_table(pa.concat_tables([pq.read_table(target), copies]), target)


def _land_early(root: Path, day: date, stamped: date) -> None:
    """A file for `day` whose events are stamped `stamped`, the day after (a producer's clock running
    ahead), under transaction IDs of their own. By the rule they never count: an event counts from its own
    day's file or a later one."""
    landed = pq.read_table(root / landing_key(stamped))
    on_the_day = pc.equal(pc.cast(landed["event_ts"], pa.date32()), pa.scalar(stamped, pa.date32()))
    rows = landed.filter(on_the_day).slice(0, 3)
    ids = pa.array([f"early-{number}" for number in range(rows.num_rows)])
    target = root / landing_key(day)
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        rows.set_column(rows.schema.get_field_index("txn_id"), rows.schema.field("txn_id"), ids), target
    )


def _fresh_lake(landing: Path, tmp_path: Path, name: str) -> Lake:
    lake = make_lake(tmp_path / name)
    for day in LANDED:
        target = lake.root / landing_key(day)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((landing / landing_key(day)).read_bytes())
    return lake


def _runs(start: date, end: date, lengths: list[int]) -> list[DateRange]:
    """Consecutive runs of the given lengths (the last one repeats) covering start..end."""
    runs, day, index = [], start, 0
    while day <= end:
        length = lengths[min(index, len(lengths) - 1)]
        last = min(end, day + timedelta(days=length - 1))
        runs.append(DateRange(day, last))
        day, index = last + timedelta(days=1), index + 1
    return runs


# The rule worked out in plain Python from the landing files, independently of the Spark code.


def _landed_rows(root: Path) -> list[dict]:
    rows = []
    for day in LANDED:
        for row in pq.read_table(root / landing_key(day)).to_pylist():
            rows.append(row | {"landed": day})
    return rows


def _content(row: dict) -> tuple:
    return (
        row["event_ts"],
        row["customer_id"],
        row["amount"],
        row["currency"],
        row["merchant_category"],
        row["status"],
    )


def _by_hand(root: Path) -> tuple[Counter, set[str]]:
    """(customer, day) -> transactions counted, and the txn_ids with a copy unlike the one before it."""
    copies: dict[str, list[dict]] = defaultdict(list)
    for row in _landed_rows(root):
        copies[row["txn_id"]].append(row)
    counted: Counter = Counter()
    conflicting: set[str] = set()
    for txn_id, rows in copies.items():
        rows.sort(key=lambda row: (row["landed"], *_content(row)))
        previous = None
        for row in rows:
            day = row["event_ts"].date()
            redelivered = previous is not None and (row["landed"] - previous["landed"]).days <= REDELIVERY
            if redelivered and _content(row) != _content(previous) and FIRST <= day <= LAST:
                conflicting.add(txn_id)
            if not redelivered and FIRST <= day <= LAST and 0 <= (row["landed"] - day).days <= LATENESS:
                counted[(row["customer_id"], day.isoformat())] += 1
            previous = row
    return counted, conflicting


def _hashes(lake: Lake, batch: str) -> dict[str, str]:
    return {day: r.content_hash for day, r in lake.catalog.get_batch(batch).tables[DAILY].items()}


def _verdicts(lake: Lake, batch: str) -> dict[str, str]:
    """Each check's worst verdict over the batch."""
    order = {"passed": 0, "warned": 1, "failed": 2}
    worst: dict[str, str] = {}
    for record in lake.catalog.get_batch(batch).checks:
        if order[record.verdict] >= order[worst.get(record.check, "passed")]:
            worst[record.check] = record.verdict
    return worst


def _conflicts(lake: Lake, batch: str) -> set[str]:
    records = [r for r in lake.catalog.get_batch(batch).checks if r.check == DUPLICATE_EVENTS_CHECK]
    return {conflict["txn_id"] for record in records for conflict in record.figures["conflicts"]}


def test_the_generated_copies_are_what_the_faults_say(landing: Path) -> None:
    """The hostile data really holds each kind of copy (else the layout tests prove nothing)."""
    rows = _landed_rows(landing)
    by_txn: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_txn[row["txn_id"]].append(row)
    repeated = {txn: copies for txn, copies in by_txn.items() if len(copies) > 1}
    across_midnight = [
        copies for copies in repeated.values() if len({copy["event_ts"].date() for copy in copies}) > 1
    ]
    other_amounts = [copies for copies in repeated.values() if len({copy["amount"] for copy in copies}) > 1]
    next_day = [copies for copies in repeated.values() if len({copy["landed"] for copy in copies}) > 1]
    same_file = [copies for copies in repeated.values() if len({copy["landed"] for copy in copies}) == 1]
    beyond_window = [
        copies
        for copies in repeated.values()
        if (max(c["landed"] for c in copies) - min(c["landed"] for c in copies)).days > REDELIVERY
    ]
    assert len(across_midnight) >= 6 and len(other_amounts) >= 6 and next_day and same_file and beyond_window
    assert [row for row in rows if row["event_ts"].date() > row["landed"]]  # stamped after their file's day
    # A cross-midnight copy lands in the next day's file, on that day: without the earlier file it would
    # look like a transaction of its own.
    copy = max(across_midnight[0], key=lambda row: row["landed"])
    assert copy["event_ts"].date() == copy["landed"]


@dataclass(frozen=True)
class RunResult:
    """What one run computes for the daily table: transactions per (customer, day) and content hashes."""

    counts: dict[tuple[str, str], int]
    hashes: dict[str, str]


class Runs:
    """Runs of the daily table on the staging code path's inputs (landing files, first deliveries, the
    transformation, content hashes), each window computed once: a run's result depends on its window only."""

    def __init__(self, spark, lake: Lake) -> None:
        self.spark, self.lake, self.done = spark, lake, {}

    def run(self, dates: DateRange) -> RunResult:
        if dates not in self.done:
            spec = feature_spec(DAILY)
            [raw] = spec.inputs
            days = dict(lateness_days=raw.lateness_days, redelivery_days=raw.redelivery_days)
            read = landing_read(self.lake.store, dates, **days)
            deliveries = landed_deliveries(self.spark, self.lake.store, read, dates, **days)
            rows = spec.transform({RAW_TRANSACTIONS: counted_events(deliveries)}, dates)
            rows = rows.select(*spec.column_names).cache()
            facts = partition_facts(rows, date_column=spec.date_column, schema_ddl=spec.schema_ddl)
            counts = rows.select("customer_id", "feature_date", "txn_count").collect()
            rows.unpersist()
            self.done[dates] = RunResult(
                counts={(r["customer_id"], r["feature_date"].isoformat()): r["txn_count"] for r in counts},
                hashes={day: fact.content_hash for day, fact in facts.items()},
            )
        return self.done[dates]

    def layout(self, runs: list[DateRange]) -> RunResult:
        results = [self.run(dates) for dates in runs]
        return RunResult(
            counts={key: n for result in results for key, n in result.counts.items()},
            hashes={day: h for result in results for day, h in result.hashes.items()},
        )


@pytest.fixture(scope="module")
def runs(landing: Path, spark, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(spark, _fresh_lake(landing, tmp_path_factory.mktemp("runs"), "lake"))


LAYOUTS = [(start, per_run) for start in (JAN[1], JAN[2], JAN[3]) for per_run in (1, 2, 3, 31)]


def test_every_run_layout_counts_each_transaction_once_as_the_rule_says(landing: Path, runs: Runs) -> None:
    expected, _ = _by_hand(landing)
    common = []
    for start, per_run in LAYOUTS:
        result = runs.layout(_runs(start, LAST, [per_run]))
        wanted = {key: n for key, n in expected.items() if key[1] >= start.isoformat()}
        assert result.counts == wanted, (start, per_run)
        common.append({day: h for day, h in result.hashes.items() if day >= JAN[3].isoformat()})
    # The same rows give the same content hashes on the days every layout covers.
    assert all(hashes == common[0] for hashes in common) and len(common[0]) == 4


def test_batches_staged_in_different_layouts_have_the_same_hashes_and_verdicts(
    landing: Path, tmp_path: Path, spark
) -> None:
    _, conflicting = _by_hand(landing)
    assert conflicting  # the rule sees conflicting copies on these days
    results = {}
    # One day per run from the first day, one range from the second, runs of two from the third.
    for start, per_run in ((JAN[1], 1), (JAN[2], 31), (JAN[3], 2)):
        batch = f"from-{start.day}-per-{per_run}"
        lake = _fresh_lake(landing, tmp_path, batch)
        for dates in _runs(start, LAST, [per_run]):
            lake.stage(spark, DAILY, dates.start, dates.end, batch)
        assert lake.catalog.get_batch(batch).state == "checked"
        hashes = {day: h for day, h in _hashes(lake, batch).items() if day >= JAN[3].isoformat()}
        results[batch] = (hashes, _verdicts(lake, batch))
        # Every conflict on the batch's days is named, with both versions.
        named = _conflicts(lake, batch)
        assert named and named <= conflicting
    [reference, *others] = results.values()
    assert all(other == reference for other in others), results
    assert reference[1][DUPLICATE_EVENTS_CHECK] == "warned"
    assert reference[1]["cross_table_consistency"] == "passed"


@settings(max_examples=8, deadline=None)
@given(
    start=st.sampled_from([JAN[1], JAN[2], JAN[3]]),
    lengths=st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=4),
)
def test_any_random_layout_counts_the_same_transactions(runs: Runs, start: date, lengths: list[int]) -> None:
    reference = runs.layout([DateRange(FIRST, LAST)]).hashes
    hashes = runs.layout(_runs(start, LAST, lengths)).hashes
    assert hashes == {day: value for day, value in reference.items() if day >= start.isoformat()}
