"""Training sets: each entity row gets the features usable at its event time, from a pinned release.

The data: 12 landing days of a small population (many customers have no transaction on a given day); the
daily table staged for Jan 1..10 and the 7-day table for Jan 7..10, promoted (release 1); then Jan 4..6
landed again with other rows, restaged and promoted (release 2). Which partition each event must see is
worked out by hand in each test (the partition of day D is usable from D+1 00:00 UTC, for the table's TTL);
the values expected are that partition's rows as the release serves them (`FeatureReader.read`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import Lake, make_lake

from backfills.assets.generator import write_landing_zone
from backfills.assets.reader import FeatureReader
from backfills.assets.registry import FEATURES_BY_NAME
from backfills.errors import InvalidRequestError, UnknownTableError
from backfills.orchestration.cli import main
from backfills.serving.training import LINEAGE_METADATA_KEY
from backfills.specs import Serving

DAILY = "customer_daily_txn"
WEEKLY = "customer_txn_7d"
COLUMNS = ["txn_count", "approved_count", "amount_sum_usd", "amount_max_usd"]
FEATURES = [f"{DAILY}.{column}" for column in COLUMNS]


@dataclass
class Production:
    lake: Lake
    reader: FeatureReader
    first: str  # release 1: Jan 1..10
    second: str  # release 2: Jan 4..6 restaged from other landing rows, current

    def row(self, day: str, customer: str, release: str | None = None) -> dict | None:
        """The release's row of `customer` on `day` (None if the customer has none that day)."""
        rows = self.reader.read(DAILY, day, day, release=release).where(f"customer_id = '{customer}'")
        found = [row.asDict() for row in rows.collect()]
        return {column: found[0][column] for column in COLUMNS} if found else None

    def customers(self, day: str, release: str | None = None) -> set[str]:
        rows = self.reader.read(DAILY, day, day, release=release).select("customer_id").collect()
        return {row["customer_id"] for row in rows}


def _promote(lake: Lake, batch: str) -> str:
    """Publish the batch as the catalog does (the approval flow is not what these tests are about: the
    second batch's diff against the first may well block it)."""
    lake.catalog.mark_complete(batch, lake.catalog.get_batch(batch).partitions_by_table())
    return lake.catalog.promote(batch, actor="trainer", reason="training set tests").release_id


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory, spark) -> Production:
    lake = make_lake(tmp_path_factory.mktemp("training") / "lake")
    write_landing_zone(lake.store, start=date(2025, 1, 1), days=12, customers=30, rows_per_day=40, seed=5)
    lake.stage(spark, DAILY, date(2025, 1, 1), date(2025, 1, 10), "b1")
    lake.stage(spark, WEEKLY, date(2025, 1, 7), date(2025, 1, 10), "b1")  # the first full 7-day windows
    first = _promote(lake, "b1")
    write_landing_zone(lake.store, start=date(2025, 1, 4), days=3, customers=30, rows_per_day=70, seed=9)
    lake.stage(spark, DAILY, date(2025, 1, 4), date(2025, 1, 6), "b2")
    second = _promote(lake, "b2")
    return Production(lake, FeatureReader(spark, lake.store), first, second)


def _entities(*events: tuple[str, str], **carried: list) -> pd.DataFrame:
    return pd.DataFrame(
        {"customer_id": [key for key, _ in events], "event_ts": [ts for _, ts in events], **carried}
    )


def _values(frame: pd.DataFrame, position: int) -> dict | None:
    values = {column: frame[f"{DAILY}.{column}"].iloc[position] for column in COLUMNS}
    if all(pd.isna(value) for value in values.values()):
        return None
    return {column: (None if pd.isna(value) else value) for column, value in values.items()}


def _present_on(production: Production, *days: str) -> str:
    common = set.intersection(*(production.customers(day) for day in days))
    assert common, f"no customer has rows on all of {days}"
    return sorted(common)[0]


def test_an_event_sees_only_the_days_that_ended_before_it(production: Production):
    customer = _present_on(production, "2025-01-04", "2025-01-05")
    assert production.row("2025-01-04", customer) != production.row("2025-01-05", customer)
    entities = _entities(
        (customer, "2025-01-06T00:00:00.000Z"),  # Jan 5 ended exactly now: usable
        (customer, "2025-01-05T23:59:59.999Z"),  # Jan 5 has not ended: Jan 4
        (customer, "2025-01-06T23:59:59.999Z"),  # never its own day: Jan 5
        label=[1, 0, 1],
    )
    training = production.reader.training_set(entities, FEATURES)
    frame = training.frame
    assert _values(frame, 0) == production.row("2025-01-05", customer)
    assert _values(frame, 1) == production.row("2025-01-04", customer)
    assert _values(frame, 2) == production.row("2025-01-05", customer)
    assert list(frame["label"]) == [1, 0, 1]  # carried through, in input order
    assert list(frame.columns) == ["customer_id", "event_ts", "label", *FEATURES]
    read = training.lineage["tables"][DAILY]["partitions"]
    assert sorted(read) == ["2025-01-04", "2025-01-05"]


def test_a_partition_expires_after_the_tables_ttl(production: Production, monkeypatch: pytest.MonkeyPatch):
    customer = _present_on(production, "2025-01-10")
    entities = _entities(
        (customer, "2025-01-11T08:00:00Z"),  # Jan 10, the newest served day
        (customer, "2025-01-12T00:00:00Z"),  # Jan 11 is not served; a TTL of 1 day allows nothing older
    )
    frame = production.reader.training_set(entities, FEATURES).frame
    assert _values(frame, 0) == production.row("2025-01-10", customer)
    assert _values(frame, 1) is None
    training = production.reader.training_set(entities, FEATURES)
    assert training.lineage["tables"][DAILY]["rows_without_value"] == {"no_partition": 1, "no_row": 0}

    spec = FEATURES_BY_NAME[DAILY]
    monkeypatch.setitem(FEATURES_BY_NAME, DAILY, replace(spec, serving=Serving(ttl_days=2)))
    longer = production.reader.training_set(entities, FEATURES)
    assert _values(longer.frame, 1) == production.row("2025-01-10", customer)  # one day old: within 2 days
    assert longer.lineage["tables"][DAILY]["ttl_days"] == 2


def test_an_entity_without_a_row_that_day_gets_nulls_never_an_older_row(
    production: Production, monkeypatch: pytest.MonkeyPatch
):
    absent = sorted(production.customers("2025-01-08") - production.customers("2025-01-09"))
    assert absent, "every customer of Jan 8 has a row on Jan 9: the data cannot show an absent entity"
    customer = absent[0]
    entities = _entities((customer, "2025-01-10T12:00:00Z"), ("no-such-customer", "2025-01-10T12:00:00Z"))
    training = production.reader.training_set(entities, FEATURES)
    # The daily count of Jan 9 is "no transactions", not Jan 8's figures.
    assert _values(training.frame, 0) is None and _values(training.frame, 1) is None
    assert training.lineage["tables"][DAILY]["rows_without_value"] == {"no_partition": 0, "no_row": 2}

    # A table declared carry_forward with a 2-day TTL gives the entity's newest row within the TTL.
    spec = FEATURES_BY_NAME[DAILY]
    carried = replace(spec, serving=Serving(ttl_days=2, missing_row="carry_forward"))
    monkeypatch.setitem(FEATURES_BY_NAME, DAILY, carried)
    forward = production.reader.training_set(entities, FEATURES)
    assert _values(forward.frame, 0) == production.row("2025-01-08", customer)
    assert _values(forward.frame, 1) is None


def test_a_carried_forward_row_never_comes_from_beyond_the_ttl(
    production: Production, monkeypatch: pytest.MonkeyPatch
):
    """carry_forward takes the entity's newest row among the usable days only: a row one day too old stays
    out, even when another entity row's window has read that day."""
    days = [date(2025, 1, 1) + timedelta(days=n) for n in range(10)]
    served = {day: production.customers(day.isoformat()) for day in days}
    gone = [
        (day, customer)
        for day, after, later in zip(days, days[1:], days[2:], strict=False)
        for customer in sorted(served[day] - served[after] - served[later])
    ]
    assert gone, "no customer has a row on one day and none on the next two: the data cannot show expiry"
    day, customer = gone[0]
    spec = FEATURES_BY_NAME[DAILY]
    monkeypatch.setitem(
        FEATURES_BY_NAME, DAILY, replace(spec, serving=Serving(ttl_days=2, missing_row="carry_forward"))
    )
    entities = _entities(
        (customer, f"{day + timedelta(days=2)}T00:00:00Z"),  # usable: day and the next, which has no row
        (customer, f"{day + timedelta(days=3)}T00:00:00Z"),  # usable: the two days after it, without rows
    )

    training = production.reader.training_set(entities, FEATURES)

    assert _values(training.frame, 0) == production.row(day.isoformat(), customer)
    assert _values(training.frame, 1) is None
    assert training.lineage["tables"][DAILY]["rows_without_value"] == {"no_partition": 0, "no_row": 1}


def test_a_training_set_before_anything_was_promoted_says_so(spark, tmp_path: Path):
    reader = FeatureReader(spark, make_lake(tmp_path / "empty").store)
    with pytest.raises(
        InvalidRequestError, match="nothing has been promoted under .* yet: .* promote a batch"
    ):
        reader.training_set(_entities(("C000001", "2025-01-02T00:00:00Z")), FEATURES)


def test_each_release_gives_its_own_answer_and_the_lineage_pins_it(production: Production):
    customer = _present_on(production, "2025-01-05")
    old = production.row("2025-01-05", customer, release=production.first)
    new = production.row("2025-01-05", customer, release=production.second)
    assert old != new, "the second landing of Jan 5 did not change this customer's row"
    entities = _entities((customer, "2025-01-06T09:30:00Z"))

    current = production.reader.training_set(entities, FEATURES)  # release 2 is current
    pinned = production.reader.training_set(entities, FEATURES, release=production.first)  # time travel
    assert _values(current.frame, 0) == new and _values(pinned.frame, 0) == old
    assert current.lineage["release_id"] == production.second
    assert pinned.lineage["release_id"] == production.first

    catalog = production.lake.catalog
    for training, release, batch in ((current, production.second, "b2"), (pinned, production.first, "b1")):
        served = catalog.served(catalog.get_release(release), DAILY, days=["2025-01-05"])["2025-01-05"]
        facts = training.lineage["tables"][DAILY]
        assert facts["partitions"] == {"2025-01-05": {"content_hash": served.content_hash, "batch_id": batch}}
        staged = catalog.get_batch(batch).tables[DAILY]["2025-01-05"]
        assert facts["code_versions"] == [staged.code_version]
        assert facts["ttl_days"] == 1 and facts["missing_row"] == "null"


def test_the_same_entities_and_release_give_the_same_bytes_in_input_order(
    production: Production, tmp_path: Path, spark
):
    customers = sorted(production.customers("2025-01-07"))[:12]
    rng = random.Random(3)
    events = [(key, f"2025-01-{rng.randint(2, 11):02d}T{rng.randint(0, 23):02d}:15:00Z") for key in customers]
    rng.shuffle(events)
    entities = _entities(*events)
    first, sidecar = production.reader.training_set(entities, FEATURES, release=production.second).write(
        tmp_path / "a" / "train.parquet"
    )
    again, _ = production.reader.training_set(entities, FEATURES, release=production.second).write(
        tmp_path / "b" / "train.parquet"
    )
    assert first.read_bytes() == again.read_bytes()
    written = pq.read_table(first)
    assert written.column("customer_id").to_pylist() == [key for key, _ in events]  # input order
    lineage = json.loads(written.schema.metadata[LINEAGE_METADATA_KEY])
    assert lineage == json.loads(sidecar.read_text()) and sidecar.name == "train.lineage.json"
    assert lineage["entities"]["rows"] == len(events)
    assert str(written.schema.field(f"{DAILY}.amount_sum_usd").type) == "decimal128(18, 2)"
    assert str(written.schema.field(f"{DAILY}.txn_count").type) == "int64"

    # The same rows given as a Spark DataFrame: the same training set.
    from_spark = production.reader.training_set(
        spark.createDataFrame(entities.assign(event_ts=pd.to_datetime(entities["event_ts"]))),
        FEATURES,
        release=production.second,
    )
    assert from_spark.lineage["tables"] == lineage["tables"]
    pd.testing.assert_frame_equal(
        from_spark.frame[FEATURES], written.to_pandas()[FEATURES], check_dtype=False
    )

    changed = production.reader.training_set(entities.iloc[1:], FEATURES, release=production.second)
    assert changed.lineage["entities"]["sha256"] != lineage["entities"]["sha256"]


@pytest.mark.parametrize(
    ("entities", "features", "error", "message"),
    [
        (
            _entities(("c1", "2025-01-05T00:00:00Z")),
            ["customer_daily_txn"],
            InvalidRequestError,
            "TABLE.COLUMN",
        ),
        (_entities(("c1", "2025-01-05T00:00:00Z")), ["nope.txn_count"], UnknownTableError, "known tables"),
        (_entities(("c1", "2025-01-05T00:00:00Z")), [f"{DAILY}.spend"], InvalidRequestError, "txn_count"),
        (pd.DataFrame({"customer_id": ["c1"]}), FEATURES, InvalidRequestError, "no event_ts column"),
        (_entities(("c1", "yesterday")), FEATURES, InvalidRequestError, "rows 1 have no usable event_ts"),
        (_entities(("c1", "2025-01-05"), (None, "2025-01-05")), FEATURES, InvalidRequestError, "rows 2 have"),
        (
            pd.DataFrame({"customer_id": [7], "event_ts": ["2025-01-05"]}),
            FEATURES,
            InvalidRequestError,
            "string",
        ),
        (  # the entities' own column would be overwritten by the feature
            _entities(("c1", "2025-01-05T00:00:00Z"), **{f"{DAILY}.txn_count": [3]}),
            FEATURES,
            InvalidRequestError,
            f"the entities already have a column named {DAILY}.txn_count",
        ),
    ],
)
def test_unusable_input_is_refused_naming_the_problem(
    production: Production, entities: pd.DataFrame, features: list[str], error: type, message: str
):
    with pytest.raises(error, match=message):
        production.reader.training_set(entities, features)


def test_the_command_writes_the_training_set_and_its_lineage(
    production: Production, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    customer = _present_on(production, "2025-01-05")
    path = tmp_path / "entities.csv"
    path.write_text(f"customer_id,event_ts,label\n{customer},2025-01-06T01:00:00+01:00,1\n")
    monkeypatch.setenv("BACKFILLS_STORAGE_ROOT", str(production.lake.root))
    out = tmp_path / "train.parquet"
    code = main(
        ["training-set", "--entities", str(path), "--features", ",".join(FEATURES), "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"release {production.second}" in printed and "train.lineage.json" in printed
    frame = pd.read_parquet(out)
    # 01:00 at +01:00 is midnight UTC: Jan 5 has just ended.
    assert _values(frame, 0) == production.row("2025-01-05", customer)
    assert str(frame["event_ts"].iloc[0]) == "2025-01-06 00:00:00+00:00"


def test_each_table_is_looked_up_on_its_own(production: Production):
    """Two tables in one training set: each gets its own usable partition, and a table that serves nothing
    usable yet gives nulls while the other has values."""
    customer = _present_on(production, "2025-01-06", "2025-01-08")
    weekly = ["txn_count_7d", "amount_sum_usd_7d"]
    features = [f"{DAILY}.txn_count", *(f"{WEEKLY}.{column}" for column in weekly)]
    entities = _entities((customer, "2025-01-09T10:00:00Z"), (customer, "2025-01-07T10:00:00Z"))
    training = production.reader.training_set(entities, features)
    frame = training.frame

    def weekly_row(day: str) -> list:
        rows = production.reader.read(WEEKLY, day, day).where(f"customer_id = '{customer}'").collect()
        return [rows[0][column] for column in weekly]

    assert frame[f"{DAILY}.txn_count"].tolist() == [
        production.row("2025-01-08", customer)["txn_count"],
        production.row("2025-01-06", customer)["txn_count"],
    ]
    assert [frame[f"{WEEKLY}.{column}"].iloc[0] for column in weekly] == weekly_row("2025-01-08")
    assert all(pd.isna(frame[f"{WEEKLY}.{column}"].iloc[1]) for column in weekly)  # Jan 6: not served
    counts = {table: facts["rows_without_value"] for table, facts in training.lineage["tables"].items()}
    assert counts == {DAILY: {"no_partition": 0, "no_row": 0}, WEEKLY: {"no_partition": 1, "no_row": 0}}
