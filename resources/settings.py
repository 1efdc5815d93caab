"""Settings from environment variables, read in this one place (documented in the README)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from backfills.errors import ConfigurationError

# BACKFILLS_MAX_ROWS_PER_RUN by default: a 365-day backfill of 100k events a day (and of its downstream
# tables) runs each table in one run, within the memory goal (peak < 8 GB for every process together).
DEFAULT_MAX_ROWS_PER_RUN = 50_000_000

PROJECT_DIR = Path(__file__).resolve().parent.parent


def _default_storage_root() -> str:
    # In a source checkout the data live beside the code; an installed package uses the working directory.
    base = PROJECT_DIR if (PROJECT_DIR / "pyproject.toml").is_file() else Path.cwd()
    return str(base / ".data")


def _positive(name: str, default: float, parse: type[int] | type[float]) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse(raw)
    except ValueError:
        kind = "a whole number" if parse is int else "a number"
        raise ConfigurationError(f"{name}={raw!r} is not {kind}") from None
    if value <= 0:
        raise ConfigurationError(f"{name}={raw!r} must be greater than 0")
    return value


def _int(name: str, default: int) -> int:
    return int(_positive(name, default, int))


def _float(name: str, default: float) -> float:
    return _positive(name, default, float)


def _date(name: str, default: str) -> str:
    raw = os.environ.get(name) or default
    try:
        date.fromisoformat(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a date (YYYY-MM-DD)") from None
    return raw


def _partitions_end() -> str | None:
    if not os.environ.get("BACKFILLS_PARTITIONS_END"):
        return None
    end = _date("BACKFILLS_PARTITIONS_END", "")
    start = _date("BACKFILLS_PARTITIONS_START", "2025-01-01")
    if end < start:
        raise ConfigurationError(
            f"BACKFILLS_PARTITIONS_END={end} is before BACKFILLS_PARTITIONS_START={start}: the last "
            "partition must be on or after the first"
        )
    return end


def _flag(name: str) -> bool:
    raw = (os.environ.get(name) or "false").strip().lower()
    if raw not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigurationError(f"{name}={raw!r} must be true or false")
    return raw in ("true", "1", "yes")


def _ids(name: str) -> frozenset[str]:
    return frozenset(part.strip() for part in (os.environ.get(name) or "").split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    storage_root: str
    partitions_start: str
    # BACKFILLS_MAX_PARTITIONS_PER_RUN: a fixed number of days per run for every table; None (the default):
    # each table's runs are as long as `max_rows_per_run` allows (assets/run_layout.py).
    max_partitions_per_run: int | None
    spark_master: str
    spark_remote: str | None
    spark_driver_memory: str
    spark_shuffle_partitions: int
    spark_bind_address: str
    # Approvals: Slack when both the token and the channel are set, else the local CLI channel.
    slack_bot_token: str | None = field(default=None, repr=False)  # a secret: never printed
    slack_channel: str | None = None
    slack_api_url: str | None = None  # another Web API base URL (a proxy, or the tests' local server)
    approvers: frozenset[str] = frozenset()
    approver_group: str | None = None  # a Slack user group ID whose members may approve
    approval_quorum: int = 1
    approval_expiry_hours: float = 72.0
    rollback_requires_approval: bool = False
    dagster_url: str = "http://127.0.0.1:3000"
    sensor_interval_seconds: int = 30
    # The last daily partition (the last landed day); None: up to yesterday, growing every day.
    partitions_end: str | None = None
    # BACKFILLS_ONLINE_STORE; by default a SQLite file under a local storage root, none under s3://.
    online_store_url: str | None = None
    # BACKFILLS_CANARY_PERCENT: the approval sensor publishes approved batches to a canary of this share of
    # the entities first (None: straight to production).
    canary_percent: float | None = None
    canary_health_interval_seconds: int = 600
    # BACKFILLS_MAX_ROWS_PER_RUN: the most rows one run may read.
    max_rows_per_run: int = DEFAULT_MAX_ROWS_PER_RUN

    @property
    def uses_slack(self) -> bool:
        return self.slack_bot_token is not None


def _slack() -> tuple[str | None, str | None]:
    token = os.environ.get("SLACK_BOT_TOKEN") or None
    channel = os.environ.get("BACKFILLS_SLACK_CHANNEL") or None
    if bool(token) != bool(channel):
        missing = "BACKFILLS_SLACK_CHANNEL" if token else "SLACK_BOT_TOKEN"
        present = "SLACK_BOT_TOKEN" if token else "BACKFILLS_SLACK_CHANNEL"
        raise ConfigurationError(
            f"{present} is set but {missing} is not: set both to take approvals in Slack, or neither to use "
            "the local channel (`backfills approve`)"
        )
    return token, channel


def _online_store(storage_root: str) -> str | None:
    """BACKFILLS_ONLINE_STORE (`none` turns the online store off), else the embedded SQLite file under a
    local storage root (`online/online.db`); an s3:// root has no default (off until it is set)."""
    url = os.environ.get("BACKFILLS_ONLINE_STORE") or None
    if url is not None and url.strip().lower() == "none":
        return None
    if url or storage_root.startswith(("s3://", "s3a://")):
        return url
    return f"sqlite:///{Path(storage_root).absolute() / 'online' / 'online.db'}"


def _canary_percent() -> float | None:
    if not os.environ.get("BACKFILLS_CANARY_PERCENT"):
        return None
    percent = _float("BACKFILLS_CANARY_PERCENT", 0.0)
    if percent >= 100:
        raise ConfigurationError(
            f"BACKFILLS_CANARY_PERCENT={percent:g}: a canary is a share of the entities below 100; unset "
            "it to promote straight to production"
        )
    return percent


def load_settings() -> Settings:
    """Read every setting from the environment, with the embedded defaults."""
    token, channel = _slack()
    storage_root = os.environ.get("BACKFILLS_STORAGE_ROOT") or _default_storage_root()
    return Settings(
        storage_root=storage_root,
        partitions_start=_date("BACKFILLS_PARTITIONS_START", "2025-01-01"),
        max_partitions_per_run=(
            _int("BACKFILLS_MAX_PARTITIONS_PER_RUN", 1)
            if os.environ.get("BACKFILLS_MAX_PARTITIONS_PER_RUN")
            else None
        ),
        spark_master=os.environ.get("BACKFILLS_SPARK_MASTER") or "local[2]",
        spark_remote=os.environ.get("BACKFILLS_SPARK_REMOTE") or None,
        spark_driver_memory=os.environ.get("BACKFILLS_SPARK_DRIVER_MEMORY") or "3g",
        spark_shuffle_partitions=_int("BACKFILLS_SPARK_SHUFFLE_PARTITIONS", 4),
        spark_bind_address=os.environ.get("BACKFILLS_SPARK_BIND_ADDRESS") or "127.0.0.1",
        slack_bot_token=token,
        slack_channel=channel,
        slack_api_url=os.environ.get("BACKFILLS_SLACK_API_URL") or None,
        approvers=_ids("BACKFILLS_APPROVERS"),
        approver_group=os.environ.get("BACKFILLS_APPROVER_GROUP") or None,
        approval_quorum=_int("BACKFILLS_APPROVAL_QUORUM", 1),
        approval_expiry_hours=_float("BACKFILLS_APPROVAL_EXPIRY_HOURS", 72.0),
        rollback_requires_approval=_flag("BACKFILLS_ROLLBACK_REQUIRES_APPROVAL"),
        dagster_url=(os.environ.get("BACKFILLS_DAGSTER_URL") or "http://127.0.0.1:3000").rstrip("/"),
        sensor_interval_seconds=_int("BACKFILLS_SENSOR_INTERVAL_SECONDS", 30),
        partitions_end=_partitions_end(),
        online_store_url=_online_store(storage_root),
        canary_percent=_canary_percent(),
        canary_health_interval_seconds=_int("BACKFILLS_CANARY_HEALTH_SECONDS", 600),
        max_rows_per_run=_int("BACKFILLS_MAX_ROWS_PER_RUN", DEFAULT_MAX_ROWS_PER_RUN),
    )
