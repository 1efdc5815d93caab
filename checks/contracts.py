"""Table contracts, declared with pandera and enforced at write time, and raw schema drift caught from
Parquet footers before any Spark job reads the data."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import pandera.pyspark as pa
import pyarrow.parquet as pq
from pandera.api.pyspark.types import PysparkDataframeColumnObject
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import from_arrow_schema

from backfills.checks.samples import SampleRow
from backfills.checks.staged_pass import Measure, PassFigures, run_pass
from backfills.errors import ContractViolationError, SchemaDriftError
from backfills.resources.storage import ObjectStore
from backfills.specs import LANDED_DATE, RAW_SCHEMA_DDL, RAW_TRANSACTIONS, USD_RATES, FeatureSpec

# Raw amounts are in the currency's own units, so the ceiling must leave room for yen: the generator's
# largest yen ticket is about 4.2M over 12M rows, and 100k USD (the feature bound on one ticket) is 15M JPY.
# 1e8 units still catches the absurd values (1e9) a broken upstream writes.
MAX_RAW_AMOUNT = 100_000_000
RAW_STATUSES = ("approved", "declined")
EVENT_DAY_CHECK = "event_day_within_lateness"
FINITE_CHECK = "finite"
_FLOATING = (T.FloatType, T.DoubleType)


_LANDING_DAY = re.compile(r"date=(\d{4}-\d{2}-\d{2})")


def feature_contract(spec: FeatureSpec) -> pa.DataFrameSchema:
    """The contract of a feature table: exactly its columns with their Spark types, nullability and bounds,
    one row per entity key and date. Needs an active Spark session (Spark parses the DDL types)."""
    columns = {}
    for column in spec.columns:
        kind = T.DataType.fromDDL(column.type)
        columns[column.name] = pa.Column(
            kind,
            nullable=column.nullable,
            checks=[*_finite(column.name, kind), *_bounds(column.min_value, column.max_value)],
            description=column.description,
        )
    return pa.DataFrameSchema(
        columns, strict=True, unique=[*spec.entity_keys, spec.date_column], name=spec.name
    )


def raw_contract(lateness_days: int) -> pa.DataFrameSchema:
    """The contract of raw transactions as read, with `landed_date` (the file's day) added: identifiers
    present, amounts within sane bounds, known currencies and statuses, and each event on its file's day or
    up to `lateness_days` before it. Needs an active Spark session."""
    checks = {
        "amount": [pa.Check.in_range(0, MAX_RAW_AMOUNT)],
        "currency": [pa.Check.isin(sorted(USD_RATES))],
        "status": [pa.Check.isin(list(RAW_STATUSES))],
        "event_ts": [
            pa.Check(
                _rows_satisfy,
                name=EVENT_DAY_CHECK,
                error=(
                    f"must fall on its file's day ({LANDED_DATE}) or up to {lateness_days} "
                    f"day{'s' if lateness_days != 1 else ''} before it"
                ),
                condition=(
                    f"to_date(event_ts) BETWEEN date_sub({LANDED_DATE}, {lateness_days}) AND {LANDED_DATE}"
                ),
            )
        ],
    }
    # A null passes a range or set check (pandera skips nulls), and a null amount, currency or status would
    # silently drop out of the sums and counts, so only merchant_category may be missing.
    raw = cast(T.StructType, T.DataType.fromDDL(RAW_SCHEMA_DDL))
    columns = {
        field.name: pa.Column(
            field.dataType,
            nullable=field.name == "merchant_category",
            checks=[*_finite(field.name, field.dataType), *checks.get(field.name, [])],
        )
        for field in raw.fields
    }
    columns[LANDED_DATE] = pa.Column(T.DateType(), nullable=False)
    return pa.DataFrameSchema(columns, strict=True, name=RAW_TRANSACTIONS)


def _finite(name: str, kind: T.DataType) -> list[pa.Check]:
    """NaN and infinities are their own rule of every floating column: a bound would misname them (Spark
    orders NaN above every number) and the sums and averages they enter would be meaningless."""
    if not isinstance(kind, _FLOATING):
        return []
    return [
        pa.Check(
            _rows_satisfy,
            name=FINITE_CHECK,
            error="must be a finite number (not NaN, inf or -inf)",
            condition=f"NOT (isnan(`{name}`) OR abs(`{name}`) = double('inf'))",
        )
    ]


def _bounds(low: float | None, high: float | None) -> list[pa.Check]:
    if low is not None and high is not None:
        return [pa.Check.in_range(low, high)]
    if low is not None:
        return [pa.Check.ge(low)]
    if high is not None:
        return [pa.Check.le(high)]
    return []


def _rows_satisfy(data: PysparkDataframeColumnObject, condition: str) -> bool:
    """Pandera's own evaluation of a SQL rule (`contract.validate`); enforce_contract counts it instead."""
    return data.dataframe.filter(~F.expr(condition)).limit(1).count() == 0


@dataclass(frozen=True)
class Violation:
    """One broken rule: its column, a stable check name, the rule in words, how many rows break it
    (None for a rule on the columns themselves) and a few offending rows as JSON-friendly dicts."""

    column: str
    check: str
    rule: str
    count: int | None
    sample: tuple[SampleRow, ...] = ()

    def describe(self) -> str:
        text = f"{self.column} {self.rule}"
        if self.count is not None:
            text += f" ({self.count} row{'s' if self.count != 1 else ''})"
        if self.sample:
            rows = (" ".join(f"{key}={_shown(value)}" for key, value in row.items()) for row in self.sample)
            text += ", e.g. " + ", ".join(rows)
        return text


@dataclass(frozen=True)
class ContractReport:
    """The verdict of a contract on one write: rows checked (None when the columns already failed) and every
    violation. `as_dict()` is what metadata and manifests store."""

    table: str
    partitions: str
    rows: int | None
    violations: tuple[Violation, ...]

    @property
    def passed(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, object]:
        """The report as plain JSON values (lists, not tuples), as a manifest read back would hold it."""
        violations = [{**dataclasses.asdict(item), "sample": list(item.sample)} for item in self.violations]
        return {**dataclasses.asdict(self), "violations": violations}

    def message(self) -> str:
        broken = "; ".join(violation.describe() for violation in self.violations)
        return (
            f"{self.table} {self.partitions} breaks its contract: {broken}. Nothing of it was staged: "
            f"fix the input data or the transformation and rerun"
        )


@dataclass(frozen=True)
class _RowRule:
    column: str
    check: str
    rule: str
    breaks: Column  # true on a row that breaks the rule; null (a null value) counts as not broken
    shown: tuple[str, ...]  # the columns a sample row shows besides its keys


def enforce_contract(
    df: DataFrame,
    contract: pa.DataFrameSchema,
    *,
    table: str,
    partitions: str,
    key_columns: Sequence[str],
    sample_size: int = 5,
) -> ContractReport:
    """Check `df` against `contract` before it is written; raise ContractViolationError naming every broken
    rule, its row count and up to `sample_size` offending rows (their `key_columns` and the value).

    Costs one Spark query over `df`: every row rule, its sample and key uniqueness in one aggregation
    (checks/staged_pass.py). The samples come from that aggregation, never from a filtered read: Parquet
    filter pushdown skips row groups by min/max statistics, which ignore NaN, so a filter would find no NaN
    row that the count saw.
    """
    # pandera's pyspark backend (0.35) runs one Spark job per rule (`filter(...).limit(1).count()`, each one
    # recomputing `df`; 22 jobs and ~5x our time on 100k raw rows), answers only pass or fail, and raises an
    # AssertionError on a decimal column of another type. So the contract is pandera's declaration, and its
    # rules are checked here: columns and types from the schema, row rules counted in one aggregation.
    check_columns(df, contract, table=table, partitions=partitions)
    unique = list(contract.unique or [])
    figures = run_pass(
        df,
        keys=unique or key_columns,
        date_column=None,
        schema_ddl=None,
        measures=contract_measures(contract),
        sample_size=sample_size,
        unique_keys=bool(unique),
    )
    return enforce_on_pass(contract, figures, table=table, partitions=partitions)


def check_columns(df: DataFrame, contract: pa.DataFrameSchema, *, table: str, partitions: str) -> None:
    """Raise ContractViolationError for missing, extra or mistyped columns (from the schema: no Spark job)."""
    schema_violations = _column_violations(df, contract)
    if schema_violations:
        _raise(ContractReport(table, partitions, None, schema_violations))


def contract_measures(contract: pa.DataFrameSchema) -> list[Measure]:
    """The contract's row rules as measures of the one pass over a run's rows (checks/staged_pass.py)."""
    return [
        Measure(f"contract:{index}", rule.breaks, rule.shown)
        for index, rule in enumerate(_row_rules(contract))
    ]


def enforce_on_pass(
    contract: pa.DataFrameSchema, figures: PassFigures, *, table: str, partitions: str
) -> ContractReport:
    """The contract's verdict from a pass that counted `contract_measures` and grouped rows by the contract's
    unique columns (call `check_columns` first); raises ContractViolationError like `enforce_contract`."""
    violations = []
    for index, rule in enumerate(_row_rules(contract)):
        count = figures.total(f"contract:{index}")
        if count:
            sample = tuple(figures.sample(f"contract:{index}"))
            violations.append(Violation(rule.column, rule.check, rule.rule, count, sample))
    duplicated = sum(day.duplicate_rows for day in figures.days.values())
    if contract.unique and duplicated:
        unique = list(contract.unique)
        sample = tuple({**row, "rows": row["rows"]} for row in figures.duplicate_sample())
        violations.append(
            Violation(", ".join(unique), "unique", "must be unique together", duplicated, sample)
        )
    report = ContractReport(table, partitions, figures.rows, tuple(violations))
    if violations:
        _raise(report)
    return report


def _raise(report: ContractReport) -> None:
    raise ContractViolationError(report.message(), report=report.as_dict())


def _column_violations(df: DataFrame, contract: pa.DataFrameSchema) -> tuple[Violation, ...]:
    """Missing, extra and mistyped columns, from the frame's schema alone (no Spark job)."""
    found = {field.name: field.dataType for field in df.schema.fields}
    violations = []
    for name, column in contract.columns.items():
        expected = column.dtype.type
        if name not in found:
            violations.append(
                Violation(name, "present", f"is missing (expected {expected.simpleString()})", None)
            )
        elif found[name] != expected:
            rule = f"must have type {expected.simpleString()} (found {found[name].simpleString()})"
            violations.append(Violation(name, "dtype", rule, None))
    if contract.strict:
        violations.extend(
            Violation(name, "strict", "is not a column of the contract", None)
            for name in found
            if name not in contract.columns
        )
    return tuple(violations)


def _row_rules(contract: pa.DataFrameSchema) -> list[_RowRule]:
    """Each row-level rule of the contract as a Spark condition that flags the rows breaking it."""
    rules = []
    for name, column in contract.columns.items():
        if not column.nullable:
            rules.append(_RowRule(name, "not_null", "must not be null", F.col(name).isNull(), (name,)))
        floating = isinstance(column.dtype.type, _FLOATING)
        for check in column.checks:
            rules.extend(_check_rules(name, check, list(contract.columns), floating=floating))
    return rules


def _check_rules(name: str, check: pa.Check, columns: list[str], *, floating: bool) -> list[_RowRule]:
    stats = check.statistics
    # NaN and infinities break the finite rule only, not a bound as well.
    value = F.when(~F.isnan(name) & (F.abs(name) != float("inf")), F.col(name)) if floating else F.col(name)
    rules = []
    # A range becomes two rules, so the message says which bound was crossed.
    if check.name in ("in_range", "greater_than_or_equal_to"):
        low, inclusive = stats["min_value"], stats.get("include_min", True)
        rule = f"must be {'>=' if inclusive else '>'} {_number(low)}"
        rules.append(_RowRule(name, "min", rule, value < low if inclusive else value <= low, (name,)))
    if check.name in ("in_range", "less_than_or_equal_to"):
        high, inclusive = stats["max_value"], stats.get("include_max", True)
        rule = f"must be {'<=' if inclusive else '<'} {_number(high)}"
        rules.append(_RowRule(name, "max", rule, value > high if inclusive else value >= high, (name,)))
    if check.name == "isin":
        allowed = sorted(stats["allowed_values"])
        rule = f"must be one of {', '.join(map(str, allowed))}"
        rules.append(_RowRule(name, "isin", rule, ~value.isin(allowed), (name,)))
    if "condition" in stats:
        # A sample row also shows the other columns the condition reads (the file day next to the event time).
        condition = stats["condition"]
        read = [
            other for other in columns if other != name and re.search(rf"\b{re.escape(other)}\b", condition)
        ]
        rules.append(_RowRule(name, check.name, check.error, ~F.expr(condition), (name, *read)))
    if not rules:
        raise TypeError(
            f"contract check {check.name!r} on {name} has no Spark translation in enforce_contract"
        )
    return rules


def _shown(value: object) -> str:
    return "null" if value is None else str(value)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def check_landing_schema(spark: SparkSession, store: ObjectStore, keys: Sequence[str]) -> None:
    """Raise SchemaDriftError if any landing file lacks a raw column or has another type for it.

    Reads only Parquet footers, so drift is reported before any Spark job reads the data (a job reading
    with RAW_SCHEMA_DDL would turn a missing column into nulls and fail on a changed type without naming
    the file).
    """
    expected = cast(T.StructType, T.DataType.fromDDL(RAW_SCHEMA_DDL))
    problems = []
    for key in keys:
        found = {field.name: field.dataType for field in _file_schema(spark, store.data_uri(key)).fields}
        match = _LANDING_DAY.search(key)
        where = f"file day {match.group(1)} ({key})" if match else key
        for field in expected.fields:
            wanted = field.dataType.simpleString()
            if field.name not in found:
                problems.append(f"{where} has no column {field.name} (expected {wanted})")
            elif found[field.name] != field.dataType:
                got = found[field.name].simpleString()
                problems.append(f"{where} has {field.name} as {got} (expected {wanted})")
    if problems:
        raise SchemaDriftError(
            f"{RAW_TRANSACTIONS} landing files do not match the raw schema, so nothing was staged: "
            f"{'; '.join(problems)}. Replace those files (or change RAW_SCHEMA_DDL with the transformations "
            f"that read it) and rerun"
        )


def _file_schema(spark: SparkSession, uri: str) -> T.StructType:
    if "://" not in uri:
        # A local footer read by pyarrow takes well under a millisecond; Spark would run one job per file
        # (about 0.25 s each), which adds seconds to every run of a month of files.
        return from_arrow_schema(pq.read_schema(uri))
    return spark.read.parquet(uri).schema
