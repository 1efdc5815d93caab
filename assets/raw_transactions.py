"""The raw landing zone of card transactions: one folder of Parquet files per file day."""

from __future__ import annotations

from collections import defaultdict

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from backfills.assets.generator import LANDING_PREFIX
from backfills.assets.registry import RAW_TRANSACTIONS
from backfills.assets.transformations import DateRange
from backfills.errors import InvalidInputError
from backfills.resources.catalog_models import UpstreamSource
from backfills.resources.storage import ObjectStore

LANDED_DATE = "landed_date"  # the day of the landing file a raw row was read from
RAW_SCHEMA_DDL = (
    "txn_id string, customer_id string, event_ts timestamp, amount double, "
    "currency string, merchant_category string, status string"
)


def landing_files(store: ObjectStore, days: DateRange) -> dict[str, list[str]]:
    """Parquet files of each file day in `days` that has landed."""
    wanted = {day.isoformat() for day in days.days()}
    found: dict[str, list[str]] = defaultdict(list)
    for key in store.list(LANDING_PREFIX):
        folder = key[len(LANDING_PREFIX) + 1 :].split("/", 1)[0]
        day = folder.removeprefix("date=")
        if day in wanted and key.endswith(".parquet"):
            found[day].append(key)
    return dict(found)


def landing_keys(store: ObjectStore, dates: DateRange, *, lateness_days: int) -> list[str]:
    """Files holding the events of `dates`: those days' files plus the late files after them.

    Every day of `dates` must have landed (else its features would silently miss events); a late file
    that has not landed yet is read when it exists and its absence is visible in the lineage.
    """
    files = landing_files(store, dates.widened(after=lateness_days))
    missing = [day.isoformat() for day in dates.days() if day.isoformat() not in files]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InvalidInputError(
            f"{RAW_TRANSACTIONS} has no landing file for {shown} under {store.root}/{LANDING_PREFIX}; "
            f"load those days (or run `backfills generate`) before backfilling them"
        )
    return [key for day in sorted(files) for key in sorted(files[day])]


def read_landed(spark: SparkSession, store: ObjectStore, keys: list[str]) -> DataFrame:
    """Raw rows of the given landing files, each with the day of the file it came from (`landed_date`)."""
    landed = F.to_date(F.regexp_extract(F.col("_metadata.file_path"), r"date=(\d{4}-\d{2}-\d{2})", 1))
    return (
        spark.read.schema(RAW_SCHEMA_DDL)
        .parquet(*[store.data_uri(key) for key in keys])
        .withColumn(LANDED_DATE, landed)
    )


def within_lateness(frame: DataFrame, lateness_days: int) -> DataFrame:
    """Events counted only from the files allowed for their day, so what a partition sees does not depend
    on which other days the run happens to read."""
    delay = F.datediff(F.col(LANDED_DATE), F.to_date("event_ts"))
    return frame.where(delay.between(0, lateness_days)).drop(LANDED_DATE)


def landing_lineage(keys: list[str]) -> UpstreamSource:
    days = sorted({key[len(LANDING_PREFIX) + 1 :].split("/", 1)[0].removeprefix("date=") for key in keys})
    return UpstreamSource(table=RAW_TRANSACTIONS, source="landing", source_id=None, partitions=days)
