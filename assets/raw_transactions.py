"""The raw landing zone of card transactions: one folder of Parquet files per file day."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from backfills.assets.deliveries import deliveries_of, mark_redeliveries
from backfills.assets.generator import LANDING_PREFIX
from backfills.errors import InvalidInputError
from backfills.resources.catalog_models import UpstreamSource
from backfills.resources.storage import ObjectStore
from backfills.specs import LANDED_DATE, RAW_SCHEMA_DDL, RAW_TRANSACTIONS, DateRange


@dataclass(frozen=True)
class LandingRead:
    """The landing files one run reads, by file day: its own days and the late files after them (`checked`
    against the raw contract), and the files of the days before it (`earlier`), read only to recognise
    re-delivered events."""

    checked: dict[str, list[str]]
    earlier: dict[str, list[str]]

    @property
    def keys(self) -> list[str]:
        files = self.earlier | self.checked
        return [key for day in sorted(files) for key in files[day]]

    @property
    def checked_keys(self) -> list[str]:
        return [key for day in sorted(self.checked) for key in self.checked[day]]

    def lineage(self, day: date, *, before: int, after: int) -> UpstreamSource:
        """The landing files a partition's rows depend on: `before` days before it to `after` days after."""
        files = self.earlier | self.checked
        days = [(day + timedelta(days=offset)).isoformat() for offset in range(-before, after + 1)]
        return UpstreamSource(
            table=RAW_TRANSACTIONS,
            source="landing",
            source_id=None,
            partitions=[d for d in days if d in files],
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
    return {day: sorted(keys) for day, keys in found.items()}


def landing_read(
    store: ObjectStore, dates: DateRange, *, lateness_days: int, redelivery_days: int
) -> LandingRead:
    """Files holding the events of `dates` (those days' files plus the late files after them), and the files
    of the `redelivery_days` days before, which tell whether an event was delivered already.

    Every day of `dates` must have landed (else its features would silently miss events); a late or earlier
    file that has not landed is read when it exists, and its absence is visible in the lineage.
    """
    files = landing_files(store, dates.widened(before=redelivery_days, after=lateness_days))
    missing = [day.isoformat() for day in dates.days() if day.isoformat() not in files]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InvalidInputError(
            f"{RAW_TRANSACTIONS} has no landing file for {shown} under {store.root}/{LANDING_PREFIX}; "
            f"load those days (or run `backfills generate`) before backfilling them"
        )
    first = dates.start.isoformat()
    return LandingRead(
        checked={day: keys for day, keys in files.items() if day >= first},
        earlier={day: keys for day, keys in files.items() if day < first},
    )


def read_landed(spark: SparkSession, store: ObjectStore, keys: list[str]) -> DataFrame:
    """Raw rows of the given landing files, each with the day of the file it came from (`landed_date`)."""
    landed = F.to_date(F.regexp_extract(F.col("_metadata.file_path"), r"date=(\d{4}-\d{2}-\d{2})", 1))
    return (
        spark.read.schema(RAW_SCHEMA_DDL)
        .parquet(*[store.data_uri(key) for key in keys])
        .withColumn(LANDED_DATE, landed)
    )


def marked_landing(
    spark: SparkSession, store: ObjectStore, landing: LandingRead, *, redelivery_days: int
) -> DataFrame:
    """Every row of the run's landing files, marked re-delivered or not (see assets/deliveries.py)."""
    return mark_redeliveries(read_landed(spark, store, landing.keys), redelivery_days=redelivery_days)


def landed_deliveries(
    spark: SparkSession,
    store: ObjectStore,
    landing: LandingRead,
    dates: DateRange,
    *,
    lateness_days: int,
    redelivery_days: int,
) -> DataFrame:
    """Every landed copy of the events of `dates`, marked re-delivered or not (see assets/deliveries.py)."""
    marked = marked_landing(spark, store, landing, redelivery_days=redelivery_days)
    return deliveries_of(marked, dates, lateness_days=lateness_days)
