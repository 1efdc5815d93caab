"""User stories of the synthetic landing zone: deterministic, realistic, and faulty only where asked."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from backfills.assets.generator import (
    FAULTS,
    RAW_SCHEMA,
    Fault,
    GenerationSummary,
    generate_file,
    landing_key,
    parse_fault,
    write_landing_zone,
)
from backfills.assets.raw_transactions import landing_files
from backfills.errors import ConfigurationError
from backfills.resources.storage import LocalObjectStore
from backfills.specs import DateRange

START = date(2024, 3, 1)
CUSTOMERS = 300
ROWS = 1000
# One fault per day from the second day on, so the first and last days stay clean.
FAULT_DAYS = {name: START + timedelta(days=1 + index) for index, name in enumerate(FAULTS)}
FAULTY_RUN_DAYS = len(FAULTS) + 2


def clean_file(day: date, seed: int = 7) -> pa.Table:
    return generate_file(day, seed=seed, customers=CUSTOMERS, rows_per_day=ROWS)


def read_file(store: LocalObjectStore, day: date) -> pa.Table:
    return pq.read_table(io.BytesIO(store.get(landing_key(day))))


def event_days(table: pa.Table) -> pd.Series:
    return table.column("event_ts").to_pandas().dt.date


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@pytest.fixture(scope="module")
def faulty_zone(tmp_path_factory: pytest.TempPathFactory) -> LocalObjectStore:
    store = LocalObjectStore(tmp_path_factory.mktemp("faulty"))
    write_landing_zone(
        store,
        start=START,
        days=FAULTY_RUN_DAYS,
        customers=CUSTOMERS,
        rows_per_day=ROWS,
        faults=[Fault(name, day) for name, day in FAULT_DAYS.items()],
    )
    return store


@pytest.fixture(scope="module")
def two_weeks() -> pd.DataFrame:
    return pa.concat_tables([clean_file(START + timedelta(days=offset)) for offset in range(14)]).to_pandas()


def test_same_seed_writes_byte_identical_files(tmp_path):
    first, second = LocalObjectStore(tmp_path / "a"), LocalObjectStore(tmp_path / "b")
    for store in (first, second):
        write_landing_zone(store, start=START, days=3, customers=CUSTOMERS, rows_per_day=ROWS, seed=11)

    keys = first.list("raw/transactions")
    assert keys == second.list("raw/transactions")
    assert [first.get(key) for key in keys] == [second.get(key) for key in keys]


def test_different_seed_gives_different_transactions():
    seven, eight = clean_file(START, seed=7), clean_file(START, seed=8)

    assert not seven.equals(eight)
    assert seven.column("customer_id").to_pylist()[:50] != eight.column("customer_id").to_pylist()[:50]


def test_a_days_file_is_the_same_in_a_ten_day_and_a_three_day_run(tmp_path):
    long_run, short_run = LocalObjectStore(tmp_path / "long"), LocalObjectStore(tmp_path / "short")
    settings = {"customers": CUSTOMERS, "rows_per_day": ROWS}
    write_landing_zone(long_run, start=START, days=10, **settings)
    write_landing_zone(short_run, start=START + timedelta(days=7), days=3, **settings)

    for offset in (7, 8, 9):
        key = landing_key(START + timedelta(days=offset))
        assert short_run.get(key) == long_run.get(key)


def test_files_read_back_with_the_raw_schema(tmp_path):
    store = LocalObjectStore(tmp_path)
    write_landing_zone(store, start=START, days=1, customers=CUSTOMERS, rows_per_day=ROWS)

    table = read_file(store, START)

    assert table.schema.equals(RAW_SCHEMA)
    assert RAW_SCHEMA.field("event_ts").type == pa.timestamp("us", tz="UTC")
    assert RAW_SCHEMA.field("amount").type == pa.float64()


def test_clean_file_has_unique_txn_ids_no_nulls_and_is_sorted():
    table = clean_file(START)
    frame = table.to_pandas()

    assert frame["txn_id"].is_unique
    assert table.num_rows > 0 and all(column.null_count == 0 for column in table.columns)
    assert frame.equals(frame.sort_values(["event_ts", "txn_id"], ignore_index=True))
    assert frame["customer_id"].str.fullmatch(r"C\d{6}").all()
    assert set(frame["status"]) == {"approved", "declined"}


def test_txn_ids_stay_unique_across_a_run_with_late_arrivals(two_weeks):
    assert two_weeks["txn_id"].is_unique


def test_top_tenth_of_customers_make_over_a_third_of_transactions(two_weeks):
    per_customer = two_weeks["customer_id"].value_counts()
    top_tenth = per_customer.iloc[: CUSTOMERS // 10].sum()

    assert top_tenth / len(two_weeks) > 1 / 3
    assert per_customer.iloc[0] > 10 * per_customer.median()


def test_declines_are_about_five_percent_and_higher_for_some_customers(two_weeks):
    declined = two_weeks["status"] == "declined"
    by_customer = declined.groupby(two_weeks["customer_id"]).agg(["mean", "size"])
    regulars = by_customer[by_customer["size"] >= 40]

    assert 0.03 < declined.mean() < 0.08
    assert regulars["mean"].max() > 0.15
    assert regulars["mean"].median() < 0.07


def test_currencies_and_categories_are_several_with_uneven_shares(two_weeks):
    currency_shares = two_weeks["currency"].value_counts(normalize=True)
    category_shares = two_weeks["merchant_category"].value_counts(normalize=True)
    median_amount = two_weeks.groupby("currency")["amount"].median()

    assert {"USD", "EUR", "GBP", "JPY"} <= set(currency_shares.index) and len(currency_shares) >= 5
    assert currency_shares["USD"] > 3 * currency_shares["JPY"]
    assert len(category_shares) == 10
    assert {"grocery", "fuel", "travel", "electronics"} <= set(category_shares.index)
    assert category_shares.iloc[0] > 2.5 * category_shares.iloc[-1]
    assert 50 < median_amount["JPY"] / median_amount["USD"] < 300
    assert (two_weeks["amount"] > 0).all()
    jpy = two_weeks.loc[two_weeks["currency"] == "JPY", "amount"]
    assert (jpy == jpy.round()).all()


def test_rows_per_day_vary_by_at_most_about_ten_percent(tmp_path):
    summary = write_landing_zone(
        LocalObjectStore(tmp_path), start=START, days=10, customers=CUSTOMERS, rows_per_day=ROWS
    )
    counts = list(summary.rows_per_day.values())

    assert all(0.85 * ROWS <= count <= 1.15 * ROWS for count in counts)
    assert max(counts) - min(counts) > 0.05 * ROWS


def test_event_times_are_busier_in_the_evening_than_at_night(two_weeks):
    hours = two_weeks["event_ts"].dt.hour

    assert hours.between(17, 20).sum() > 5 * hours.between(1, 4).sum()


def test_about_two_percent_of_a_days_events_arrive_in_the_next_days_file_and_never_later():
    day, next_day = START, START + timedelta(days=1)
    file_of_day, file_of_next_day = clean_file(day), clean_file(next_day)

    late = (event_days(file_of_next_day) == day).sum()
    on_time = (event_days(file_of_day) == day).sum()
    assert 0.005 < late / (late + on_time) < 0.05
    assert set(event_days(file_of_next_day)) == {day, next_day}
    assert set(event_days(file_of_day)) == {day - timedelta(days=1), day}


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_fault_changes_its_own_days_file_and_no_other(tmp_path, name):
    clean, faulty = LocalObjectStore(tmp_path / "clean"), LocalObjectStore(tmp_path / "faulty")
    middle = START + timedelta(days=1)
    settings = {"start": START, "days": 3, "customers": CUSTOMERS, "rows_per_day": ROWS}
    write_landing_zone(clean, **settings)
    write_landing_zone(faulty, **settings, faults=[Fault(name, middle)])

    changed = [key for key in clean.list("raw") if clean.get(key) != faulty.get(key)]
    assert changed == [landing_key(middle)]
    frame = read_file(faulty, middle).to_pandas()
    assert frame.equals(frame.sort_values(["event_ts", "txn_id"], ignore_index=True))


def test_duplicate_txn_ids_repeat_one_percent_of_rows_exactly(faulty_zone):
    day = FAULT_DAYS["duplicate_txn_ids"]
    clean = clean_file(day).to_pandas()
    faulty = read_file(faulty_zone, day).to_pandas()

    copies = faulty["txn_id"].value_counts()
    assert len(faulty) - len(clean) == round(len(clean) / 100)
    assert (copies > 1).sum() == round(len(clean) / 100) and copies.max() == 2
    assert faulty.drop_duplicates(ignore_index=True).equals(clean)


def test_negative_amounts_flip_the_sign_of_36_rows(faulty_zone):
    day = FAULT_DAYS["negative_amounts"]
    clean, faulty = clean_file(day), read_file(faulty_zone, day)

    negative = pc.less(faulty.column("amount"), 0)
    assert pc.sum(negative).as_py() == 36
    assert faulty.filter(negative).column("amount").equals(pc.negate(clean.filter(negative).column("amount")))
    assert faulty.column("txn_id").equals(clean.column("txn_id"))


def test_absurd_amounts_put_1e9_on_5_rows(faulty_zone):
    amounts = read_file(faulty_zone, FAULT_DAYS["absurd_amounts"]).column("amount").to_pandas()

    assert (amounts == 1e9).sum() == 5
    assert amounts[amounts != 1e9].max() < 1e6


def test_oversized_tickets_put_250k_usd_on_3_rows_in_their_currency_under_the_raw_maximum(faulty_zone):
    day = FAULT_DAYS["oversized_tickets"]
    faulty, clean = read_file(faulty_zone, day).to_pandas(), clean_file(day).to_pandas()
    changed = faulty[faulty["amount"] != clean["amount"]]

    assert len(changed) == 3 and faulty["txn_id"].equals(clean["txn_id"])
    units_per_usd = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 150.0, "CAD": 1.36, "AUD": 1.5, "CHF": 0.88}
    expected = changed["currency"].map(units_per_usd) * 250_000
    assert (changed["amount"] - expected).abs().max() < 0.01
    assert changed["amount"].max() < 1e8  # the raw contract's largest amount: the raw gate lets them through


def test_null_customer_ids_blank_24_rows(faulty_zone):
    day = FAULT_DAYS["null_customer_ids"]
    faulty = read_file(faulty_zone, day)

    assert faulty.column("customer_id").null_count == 24
    assert faulty.num_rows == clean_file(day).num_rows


def test_missing_column_drops_currency_only(faulty_zone):
    day = FAULT_DAYS["missing_column"]
    faulty = read_file(faulty_zone, day)

    assert faulty.schema.names == [name for name in RAW_SCHEMA.names if name != "currency"]
    assert faulty.equals(clean_file(day).drop_columns(["currency"]))


def test_wrong_column_type_writes_amount_as_text(faulty_zone):
    day = FAULT_DAYS["wrong_column_type"]
    faulty = read_file(faulty_zone, day)

    assert faulty.schema.field("amount").type == pa.string()
    assert pc.cast(faulty.column("amount"), pa.float64()).equals(clean_file(day).column("amount"))


def test_partial_delivery_loses_a_fifth_of_the_rows_and_nothing_else(faulty_zone):
    day = FAULT_DAYS["partial_delivery"]
    clean = clean_file(day).to_pandas()
    partial = read_file(faulty_zone, day).to_pandas()

    assert len(partial) == len(clean) - int(len(clean) * 0.2)
    kept = clean[clean["txn_id"].isin(partial["txn_id"])].reset_index(drop=True)
    assert partial.equals(kept)  # the rows that did arrive are exactly the complete file's


def test_empty_day_has_the_schema_and_no_rows(faulty_zone):
    faulty = read_file(faulty_zone, FAULT_DAYS["empty_day"])

    assert faulty.num_rows == 0
    assert faulty.schema.equals(RAW_SCHEMA)


def test_out_of_day_timestamps_move_24_rows_days_before_and_after(faulty_zone):
    day = FAULT_DAYS["out_of_day_timestamps"]
    event_ts = read_file(faulty_zone, day).column("event_ts").to_pandas()

    before = event_ts < midnight(day - timedelta(days=1))
    after = event_ts >= midnight(day + timedelta(days=1))
    assert before.sum() == 12 and after.sum() == 12
    assert event_ts[before].max() < midnight(day - timedelta(days=2))
    assert event_ts[after].min() >= midnight(day + timedelta(days=3))


def test_combined_faults_on_one_day_touch_the_same_rows_as_alone():
    alone = generate_file(START, seed=7, customers=CUSTOMERS, rows_per_day=ROWS, faults=["negative_amounts"])
    combined = generate_file(
        START, seed=7, customers=CUSTOMERS, rows_per_day=ROWS, faults=["negative_amounts", "absurd_amounts"]
    )

    negative_ids = alone.filter(pc.less(alone.column("amount"), 0)).column("txn_id")
    assert combined.filter(pc.less(combined.column("amount"), 0)).column("txn_id").equals(negative_ids)
    assert pc.sum(pc.equal(combined.column("amount"), 1e9)).as_py() == 5


def test_row_faults_still_show_up_in_a_tiny_file():
    faulty = generate_file(
        START,
        seed=7,
        customers=CUSTOMERS,
        rows_per_day=30,
        faults=["negative_amounts", "absurd_amounts", "null_customer_ids", "out_of_day_timestamps"],
    )
    days = set(event_days(faulty))

    assert pc.sum(pc.less(faulty.column("amount"), 0)).as_py() >= 1
    assert pc.sum(pc.equal(faulty.column("amount"), 1e9)).as_py() >= 1
    assert faulty.column("customer_id").null_count >= 1
    assert days - {START - timedelta(days=1), START}


def test_parse_fault_reads_name_and_day():
    assert parse_fault("duplicate_txn_ids:2024-03-05") == Fault("duplicate_txn_ids", date(2024, 3, 5))


@pytest.mark.parametrize(
    ("text", "names_the_problem"),
    [
        ("nope:2024-03-05", "unknown fault name 'nope'"),
        ("empty_day:2024-13-01", "fault day '2024-13-01'"),
        ("empty_day", "is not NAME:YYYY-MM-DD"),
    ],
)
def test_parse_fault_errors_name_the_bad_part(text, names_the_problem):
    with pytest.raises(ConfigurationError) as error:
        parse_fault(text)

    message = str(error.value)
    assert names_the_problem in message and "\n" not in message
    if "YYYY-MM-DD date" not in message:
        assert all(name in message for name in FAULTS)


def test_write_landing_zone_writes_exactly_one_file_per_day_and_reports_it(tmp_path):
    store = LocalObjectStore(tmp_path)
    fault = Fault("empty_day", START + timedelta(days=2))

    summary = write_landing_zone(
        store, start=START, days=4, customers=CUSTOMERS, rows_per_day=ROWS, faults=[fault]
    )

    expected = [f"raw/transactions/date=2024-03-0{day}/part-00000.parquet" for day in (1, 2, 3, 4)]
    assert store.list("") == expected
    assert isinstance(summary, GenerationSummary)
    assert summary.root == str(tmp_path.resolve())
    assert (summary.start, summary.end) == (START, date(2024, 3, 4))
    assert list(summary.files) == expected
    assert summary.faults == (fault,)
    assert summary.rows_per_day == {
        START + timedelta(days=offset): read_file(store, START + timedelta(days=offset)).num_rows
        for offset in range(4)
    }
    assert summary.rows_per_day[fault.day] == 0


@pytest.mark.parametrize(
    ("arguments", "names_the_problem"),
    [
        ({"days": 0}, "days must be at least 1, got 0"),
        ({"customers": 0}, "customers must be at least 1, got 0"),
        ({"rows_per_day": -5}, "rows_per_day must be 0 or more, got -5"),
        ({"seed": -1}, "seed must be a non-negative integer, got -1"),
        (
            {"faults": [Fault("empty_day", date(2024, 4, 1))]},
            "fault empty_day:2024-04-01 is outside the generated days 2024-03-01..2024-03-03",
        ),
        ({"faults": [Fault("typo", START)]}, "unknown fault name 'typo'"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, arguments, names_the_problem):
    store = LocalObjectStore(tmp_path)

    with pytest.raises(ConfigurationError, match=names_the_problem):
        write_landing_zone(store, **{"start": START, "days": 3, "rows_per_day": 10, **arguments})

    assert store.list("") == []


def test_generate_file_refuses_unknown_fault_names():
    with pytest.raises(
        ConfigurationError, match=r"unknown fault names \['typo'\]; valid names: duplicate_txn_ids"
    ):
        generate_file(START, seed=7, customers=CUSTOMERS, rows_per_day=ROWS, faults=["typo"])


def test_the_landing_zone_can_live_on_s3_and_is_found_there(store):
    summary = write_landing_zone(store, start=date(2025, 2, 1), days=3, customers=20, rows_per_day=50, seed=3)
    found = landing_files(store, DateRange(date(2025, 2, 1), date(2025, 2, 4)))
    assert sorted(found) == ["2025-02-01", "2025-02-02", "2025-02-03"]
    table = pq.read_table(io.BytesIO(store.get(found["2025-02-02"][0])))
    assert table.num_rows == summary.rows_per_day[date(2025, 2, 2)]
    assert table.schema.equals(RAW_SCHEMA)
