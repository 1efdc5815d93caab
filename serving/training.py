"""Point-in-time-correct training sets from a pinned release.

Each entity row (the entity key, an event time in UTC, and any other columns, such as labels, carried
through) gets, per table of the requested features, the row of the newest partition usable at its event
time. The partition of day D holds what was known when D ended, so it is usable from D+1 00:00:00 UTC (an
event at exactly midnight sees the day that just ended; one at 23:59:59.999 does not see its own day), for
the table's `serving.ttl_days` days: D + 1 <= event day <= D + ttl_days. Which row an entity gets is the
table's `serving.missing_row` (specs.py): "null" (the default, for window aggregates) takes the entity's
row in the newest usable partition the release serves, and an entity without a row there gets nulls, never
an older row; "carry_forward" takes the entity's newest row among the usable partitions. Rows without a
value are counted per table in the lineage.

The output is in input order and, for the same entities and release, byte for byte the same Parquet file;
its lineage (release, per table the partitions read with their content hashes, batches and code versions,
the TTLs, a hash of the entities) is in the file's key-value metadata and in a JSON file beside it.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession

from backfills.assets.registry import feature_spec
from backfills.errors import InvalidRequestError
from backfills.resources.canary import open_canary
from backfills.resources.canary_slice import Channel, check_channel, in_slice
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.catalog_models import Canary, ReleasedPartition
from backfills.resources.feature_store import PartitionFiles, read_partitions
from backfills.resources.storage import ObjectStore
from backfills.specs import FeatureSpec

EVENT_TIME = "event_ts"
LINEAGE_METADATA_KEY = b"backfills.lineage"
LINEAGE_SUFFIX = ".lineage.json"
_ROW, _AS_OF, _PARTITION, _FOUND = "__row", "__as_of", "__partition", "__found"
# Spark column types as pandas dtypes that hold a missing value without changing type (an int stays an int).
_NULLABLE_DTYPES = {
    "bigint": "Int64",
    "int": "Int32",
    "double": "Float64",
    "float": "Float32",
    "boolean": "boolean",
    "string": "string",
}


def arrow_type(ddl: str) -> pa.DataType:
    """The Parquet (Arrow) type of a feature column's Spark type, so the file keeps the table's types."""
    simple = {
        "bigint": pa.int64(),
        "int": pa.int32(),
        "double": pa.float64(),
        "float": pa.float32(),
        "boolean": pa.bool_(),
        "string": pa.string(),
        "date": pa.date32(),
    }
    kind = ddl.strip().lower()
    decimal = re.fullmatch(r"decimal\((\d+),\s*(\d+)\)", kind)
    if decimal:
        return pa.decimal128(int(decimal[1]), int(decimal[2]))
    if kind not in simple:
        raise InvalidRequestError(f"a training set cannot hold a feature column of Spark type {ddl!r}")
    return simple[kind]


@dataclass(frozen=True)
class TrainingSet:
    """The entity rows with their features (input order), the features' types, and where every value came
    from."""

    frame: pd.DataFrame
    lineage: dict[str, Any]
    feature_types: dict[str, pa.DataType]

    def write(self, path: str | Path) -> tuple[Path, Path]:
        """Write the rows as Parquet with the lineage in its key-value metadata, and the lineage beside it
        (`NAME.lineage.json`); return both paths. The same training set gives the same bytes."""
        out = Path(path)
        table = pa.Table.from_pandas(self.frame, preserve_index=False)
        for name, kind in self.feature_types.items():
            position = table.schema.get_field_index(name)
            table = table.set_column(position, pa.field(name, kind), table.column(name).cast(kind))
        lineage = json.dumps(self.lineage, sort_keys=True, separators=(",", ":")).encode()
        metadata = {**(table.schema.metadata or {}), LINEAGE_METADATA_KEY: lineage}
        table = table.replace_schema_metadata(metadata)
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out)
        sidecar = out.with_name(out.stem + LINEAGE_SUFFIX)
        sidecar.write_text(json.dumps(self.lineage, sort_keys=True, indent=2) + "\n")
        return out, sidecar


def parse_features(names: Sequence[str]) -> dict[str, list[str]]:
    """`table.column` names as columns per table, in the order given; a clear error for anything else."""
    if not names:
        raise InvalidRequestError("no features asked for: name at least one as TABLE.COLUMN")
    by_table: dict[str, list[str]] = {}
    for name in names:
        table, dot, column = name.partition(".")
        if not dot or not table or not column:
            raise InvalidRequestError(
                f"feature {name!r} is not TABLE.COLUMN (for example customer_txn_7d.amount_sum_usd_7d)"
            )
        spec = feature_spec(table)
        values = [item for item in spec.column_names if item not in (*spec.entity_keys, spec.date_column)]
        if column not in values:
            raise InvalidRequestError(
                f"feature {name!r}: {table} has no feature column {column!r}; its feature columns: "
                f"{', '.join(values)}"
            )
        if column in by_table.get(table, []):
            raise InvalidRequestError(f"feature {name!r} is asked for twice")
        by_table.setdefault(table, []).append(column)
    return by_table


def _entity_key(tables: Sequence[str]) -> str:
    keys = {table: feature_spec(table).entity_keys for table in tables}
    distinct = set(keys.values())
    if len(distinct) != 1 or len(next(iter(distinct))) != 1:
        shown = "; ".join(f"{table}: {', '.join(key)}" for table, key in keys.items())
        raise InvalidRequestError(f"the tables of one training set share one entity key; these have {shown}")
    return next(iter(distinct))[0]


def _row_numbers(mask: pd.Series) -> str:
    rows = [str(number + 1) for number in mask[mask].index[:5]]
    more = ", …" if int(mask.sum()) > len(rows) else ""
    return ", ".join(rows) + more


def entity_rows(entities: pd.DataFrame | DataFrame, key: str) -> pd.DataFrame:
    """The entities as pandas rows in input order, the event time parsed as UTC (a time without a zone is
    UTC); a clear error naming the rows (1-based) that cannot be used."""
    frame = entities.copy() if isinstance(entities, pd.DataFrame) else entities.toPandas()
    frame = frame.reset_index(drop=True)
    missing = [column for column in (key, EVENT_TIME) if column not in frame.columns]
    if missing:
        raise InvalidRequestError(
            f"the entities have no {' or '.join(missing)} column (their columns: "
            f"{', '.join(map(str, frame.columns))}): each row needs the entity key {key} and the event time "
            f"{EVENT_TIME} (UTC)"
        )
    no_key = frame[key].isna()
    if no_key.any():
        raise InvalidRequestError(f"entity rows {_row_numbers(no_key)} have no {key}")
    not_text = ~frame[key].map(lambda value: isinstance(value, str))
    if not_text.any():
        raise InvalidRequestError(
            f"entity rows {_row_numbers(not_text)} have a {key} that is not a string (e.g. "
            f"{frame[key][not_text].iloc[0]!r}): entity keys are strings, read them as text"
        )
    given = frame[EVENT_TIME]
    textual = given.dtype == object or isinstance(given.dtype, pd.StringDtype)
    times = pd.to_datetime(given, utc=True, errors="coerce", format="ISO8601" if textual else None)
    bad_time = times.isna()
    if bad_time.any():
        example = frame[EVENT_TIME][bad_time].iloc[0]
        raise InvalidRequestError(
            f"entity rows {_row_numbers(bad_time)} have no usable {EVENT_TIME} (e.g. {example!r}): give a "
            "timestamp, UTC unless it says its zone"
        )
    frame[EVENT_TIME] = times.astype("datetime64[ns, UTC]")
    return frame


def entities_hash(frame: pd.DataFrame) -> str:
    """A hash of the entity rows (names, types, values, order): the same input gives the same hash."""
    digest = hashlib.sha256(json.dumps([[str(c), str(t)] for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _usable_windows(as_of: set[date], ttl_days: int) -> tuple[date, date]:
    return min(as_of) - timedelta(days=ttl_days - 1), max(as_of)


def _newest_usable(served: list[date], as_of: date, ttl_days: int) -> date | None:
    """The newest served day D with as_of - (ttl_days - 1) <= D <= as_of, if any."""
    position = bisect.bisect_right(served, as_of)
    if position == 0:
        return None
    newest = served[position - 1]
    return newest if newest >= as_of - timedelta(days=ttl_days - 1) else None


class _TableLookup:
    """One table's part of a training set: which partitions are usable, their rows, and the lineage."""

    def __init__(self, spec: FeatureSpec, columns: list[str], served: dict[str, ReleasedPartition]) -> None:
        self.spec = spec
        self.columns = columns
        self.served = served
        self.served_days = sorted(date.fromisoformat(day) for day in served)

    def days_to_read(self, as_of: set[date]) -> list[date]:
        ttl = self.spec.serving.ttl_days
        if self.spec.serving.missing_row == "null":
            chosen = {_newest_usable(self.served_days, day, ttl) for day in as_of}
            return sorted(day for day in chosen if day is not None)
        wanted = {day - timedelta(days=back) for day in as_of for back in range(ttl)}
        return [day for day in self.served_days if day in wanted]

    def join(self, left: pd.DataFrame, rows: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
        """`left` (entity rows with their as-of day) with this table's columns; counts of rows without a
        value: no usable partition at all, or no row of the entity in what was usable."""
        spec, ttl = self.spec, self.spec.serving.ttl_days
        key = spec.entity_keys[0]
        rows = rows.rename(columns={spec.date_column: _PARTITION}).assign(**{_FOUND: True})
        newest = left[_AS_OF].map(lambda day: _newest_usable(self.served_days, day, ttl))
        if spec.serving.missing_row == "null":
            joined = left.assign(**{_PARTITION: newest}).merge(rows, on=[key, _PARTITION], how="left")
        else:
            joined = pd.merge_asof(
                left.assign(**{_AS_OF: pd.to_datetime(left[_AS_OF])}).sort_values(_AS_OF, kind="stable"),
                rows.assign(**{_PARTITION: pd.to_datetime(rows[_PARTITION])}).sort_values(_PARTITION),
                left_on=_AS_OF,
                right_on=_PARTITION,
                by=key,
                direction="backward",
                tolerance=pd.Timedelta(days=ttl - 1),
            )
        joined = joined.sort_values(_ROW, kind="stable").reset_index(drop=True)
        no_partition = int(newest.isna().sum())
        without = int(joined[_FOUND].isna().sum())
        return joined, {"no_partition": no_partition, "no_row": without - no_partition}


def build_training_set(
    spark: SparkSession,
    store: ObjectStore,
    entities: pd.DataFrame | DataFrame,
    features: Sequence[str],
    release: str | None = None,
    *,
    channel: Channel = "production",
) -> TrainingSet:
    """The training set of `entities` with `features` (`table.column`) as of `release` (default: the
    current one, pinned by ID in the lineage). See the module's docstring for the semantics. Production
    only, unless `channel="canary"` asks for the open canary: then the entity rows of its slice get their
    features from the canary release (the lineage says which rows and which releases)."""
    if check_channel(channel, release) == "canary":
        canary = open_canary(ReleaseCatalog(store))
        if canary is not None:
            return _with_canary(spark, store, entities, features, canary)
    return _training_set(spark, store, entities, features, release)


def _with_canary(
    spark: SparkSession,
    store: ObjectStore,
    entities: pd.DataFrame | DataFrame,
    features: Sequence[str],
    canary: Canary,
) -> TrainingSet:
    production = _training_set(spark, store, entities, features, None)
    exposed = _training_set(spark, store, entities, features, canary.release_id)
    key = production.lineage["entities"]["entity_key"]
    mask = production.frame[key].map(lambda value: in_slice(value, canary.percent)).astype(bool)
    frame = production.frame.copy()
    for name in production.feature_types:
        frame[name] = frame[name].where(~mask, exposed.frame[name])
    lineage = production.lineage | {
        "channel": "canary",
        "canary": {
            "release_id": canary.release_id,
            "base_release_id": canary.base_release_id,
            "batch_id": canary.batch_id,
            "percent": canary.percent,
            "slice_rule": canary.slice_rule,
            "rows_in_slice": int(mask.sum()),
            "tables": exposed.lineage["tables"],
        },
    }
    return TrainingSet(frame=frame, lineage=lineage, feature_types=production.feature_types)


def _training_set(
    spark: SparkSession,
    store: ObjectStore,
    entities: pd.DataFrame | DataFrame,
    features: Sequence[str],
    release: str | None,
) -> TrainingSet:
    catalog = ReleaseCatalog(store)
    wanted = parse_features(features)
    key = _entity_key(list(wanted))
    pinned = catalog.get_release(release) if release else catalog.current_release()
    if pinned is None:
        raise InvalidRequestError(
            f"nothing has been promoted under {store.root} yet: a training set reads a release; promote a "
            "batch first"
        )
    frame = entity_rows(entities, key)
    hashed = entities_hash(frame)
    # The newest day a row can use: the day before its event's day (UTC).
    as_of_days = (frame[EVENT_TIME].dt.floor("D") - pd.Timedelta(days=1)).dt.date
    left = pd.DataFrame({_ROW: range(len(frame)), key: frame[key], _AS_OF: as_of_days})
    as_of = set(as_of_days)
    output = frame
    tables: dict[str, Any] = {}
    types: dict[str, pa.DataType] = {}
    for table, columns in wanted.items():
        spec = feature_spec(table)
        collisions = [f"{table}.{column}" for column in columns if f"{table}.{column}" in frame.columns]
        if collisions:
            raise InvalidRequestError(f"the entities already have a column named {', '.join(collisions)}")
        first, last = _usable_windows(as_of, spec.serving.ttl_days) if as_of else (None, None)
        served = catalog.served(pinned, table, start=first.isoformat(), end=last.isoformat()) if first else {}
        lookup = _TableLookup(spec, columns, served)
        days = lookup.days_to_read(as_of)
        read = {day.isoformat(): served[day.isoformat()] for day in days}
        rows = _read_rows(spark, store, spec, columns, read, keys=sorted(set(frame[key])))
        joined, counts = lookup.join(left, rows)
        for column in columns:
            kind = _column_type(spec, column)
            name = f"{table}.{column}"
            if kind in _NULLABLE_DTYPES:
                output[name] = joined[column].astype(_NULLABLE_DTYPES[kind]).array
            else:  # decimals and dates: Python values, None where missing
                output[name] = joined[column].astype(object).where(joined[column].notna(), None).array
            types[name] = arrow_type(kind)
        tables[table] = _table_lineage(catalog, spec, columns, days, served, counts)
    lineage = {
        "release_id": pinned.release_id,
        "features": list(features),
        "entities": {"rows": len(frame), "sha256": hashed, "entity_key": key, "event_time": EVENT_TIME},
        "point_in_time": "partition D is usable from D+1 00:00 UTC for ttl_days days",
        "tables": tables,
    }
    return TrainingSet(frame=output, lineage=lineage, feature_types=types)


def _column_type(spec: FeatureSpec, column: str) -> str:
    return next(item.type for item in spec.columns if item.name == column).lower()


def _read_rows(
    spark: SparkSession,
    store: ObjectStore,
    spec: FeatureSpec,
    columns: list[str],
    partitions: dict[str, ReleasedPartition],
    *,
    keys: list[str],
) -> pd.DataFrame:
    """The rows of `keys` in those partitions (only those reach the driver)."""
    wanted = [*spec.entity_keys, spec.date_column, *columns]
    parts = [PartitionFiles(entry.base, tuple(entry.files)) for _, entry in sorted(partitions.items())]
    if not parts or not keys:
        return pd.DataFrame({name: pd.Series(dtype="object") for name in wanted})
    of_keys = spark.createDataFrame(pd.DataFrame({spec.entity_keys[0]: keys}))
    rows = (
        read_partitions(spark, store, parts, schema_ddl=spec.schema_ddl, columns=wanted)
        .join(of_keys, on=spec.entity_keys[0], how="left_semi")
        .toPandas()
    )
    rows[spec.date_column] = pd.to_datetime(rows[spec.date_column]).dt.date
    return rows


def _table_lineage(
    catalog: ReleaseCatalog,
    spec: FeatureSpec,
    columns: list[str],
    days: list[date],
    served: dict[str, ReleasedPartition],
    counts: dict[str, int],
) -> dict[str, Any]:
    read = {day.isoformat(): served[day.isoformat()] for day in days}
    code_versions = set()
    for batch_id in sorted({entry.batch_id for entry in read.values()}):
        staged = catalog.get_batch(batch_id).tables.get(spec.name, {})
        code_versions.update(staged[day].code_version for day in read if day in staged)
    return {
        "columns": columns,
        "ttl_days": spec.serving.ttl_days,
        "missing_row": spec.serving.missing_row,
        "partitions": {
            day: {"content_hash": entry.content_hash, "batch_id": entry.batch_id}
            for day, entry in read.items()
        },
        "code_versions": sorted(code_versions),
        "rows_without_value": counts,
    }
