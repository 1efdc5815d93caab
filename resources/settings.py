"""Settings from environment variables, read in this one place (documented in the README)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from backfills.errors import ConfigurationError

PROJECT_DIR = Path(__file__).resolve().parent.parent


def _default_storage_root() -> str:
    # In a source checkout the data live beside the code; an installed package uses the working directory.
    base = PROJECT_DIR if (PROJECT_DIR / "pyproject.toml").is_file() else Path.cwd()
    return str(base / ".data")


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a whole number") from None
    if value < 1:
        raise ConfigurationError(f"{name}={raw!r} must be at least 1")
    return value


def _date(name: str, default: str) -> str:
    raw = os.environ.get(name) or default
    try:
        date.fromisoformat(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a date (YYYY-MM-DD)") from None
    return raw


@dataclass(frozen=True)
class Settings:
    storage_root: str
    partitions_start: str
    max_partitions_per_run: int
    spark_master: str
    spark_remote: str | None
    spark_driver_memory: str
    spark_shuffle_partitions: int
    spark_bind_address: str


def load_settings() -> Settings:
    """Read every setting from the environment, with the embedded defaults."""
    return Settings(
        storage_root=os.environ.get("BACKFILLS_STORAGE_ROOT") or _default_storage_root(),
        partitions_start=_date("BACKFILLS_PARTITIONS_START", "2025-01-01"),
        max_partitions_per_run=_int("BACKFILLS_MAX_PARTITIONS_PER_RUN", 31),
        spark_master=os.environ.get("BACKFILLS_SPARK_MASTER") or "local[2]",
        spark_remote=os.environ.get("BACKFILLS_SPARK_REMOTE") or None,
        spark_driver_memory=os.environ.get("BACKFILLS_SPARK_DRIVER_MEMORY") or "3g",
        spark_shuffle_partitions=_int("BACKFILLS_SPARK_SHUFFLE_PARTITIONS", 4),
        spark_bind_address=os.environ.get("BACKFILLS_SPARK_BIND_ADDRESS") or "127.0.0.1",
    )
