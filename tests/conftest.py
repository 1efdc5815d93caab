"""Shared test fixtures, one section per kind of resource a test needs."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import boto3
import pytest
from dagster import DagsterInstance
from moto.server import ThreadedMotoServer
from postgres_server import PostgresServer, PostgresUnavailable, find_postgres
from pyspark.sql import SparkSession
from redis_server import RedisServer, RedisUnavailable, find_redis_server
from skipped_suites import skip_suite

from backfills.assets.generator import write_landing_zone
from backfills.assets.registry import dependency_order, feature_spec
from backfills.assets.staging import StagedRun, stage_partitions
from backfills.resources.catalog import ReleaseCatalog
from backfills.resources.settings import Settings
from backfills.resources.spark import build_session
from backfills.resources.storage import LocalObjectStore, ObjectStore, S3ObjectStore
from backfills.specs import DateRange, FeatureSpec

# The operator's flow through the real Dagster services (session fixtures shared by the end-to-end and
# browser modules); the closing lines on suites skipped for a missing tool (tests/skipped_suites.py); pytest's
# own `pytester`, which tests that plugin with a small inner run.
pytest_plugins = ["operator_flow", "skipped_suites", "pytester"]

# `make test` runs the suite on two pytest-xdist workers (`-n 2`), scheduled by module (see below).
SLOW_MARKS = {"end_to_end", "crash", "spark_connect"}  # modules that start real services or processes
# The modules that run dagster-webserver and dagster-daemon; the browser and end-to-end modules also
# share the operator's flow (tests/operator_flow.py).
DAGSTER_SERVICE_MODULES = {
    "test_browser_ui",
    "test_end_to_end",
    "test_launch_from_dialog",
    "test_local_instance",
}


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Each module runs whole on one worker (its module and session fixtures are built once there), and
    the modules that run the Dagster services run one after the other on one worker, in file order: the
    operator's flow is built once, and two daemons never compete for the 2 cores while the other worker
    runs the rest. (xdist's own `--dist loadgroup` cannot group modules with pytest 9.2: it rewrites a
    node ID attribute that pytest no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "dagster_services" if Path(module).stem in DAGSTER_SERVICE_MODULES else module

    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow modules first, so that the quick ones fill the other worker's time instead of waiting
    behind them at the end (with `--no-loadscope-reorder`, the workers take modules in this order). The
    order is the same in a run without workers. Among the slow ones, the modules that run the Dagster
    services come first and together: the operator's flow and the shared Spark Connect server stop after
    their last test (tests/operator_flow.py), before the crash and Spark Connect modules start JVMs."""
    slow = {item.path for item in items if SLOW_MARKS & {mark.name for mark in item.iter_markers()}}
    # Stable: file order within each kind.
    items.sort(key=lambda item: (item.path not in slow, item.path.stem not in DAGSTER_SERVICE_MODULES))


# Object stores: a local folder and the S3 API (moto in server mode over HTTP)

S3_TEST_PREFIX = "backfills-test"


@pytest.fixture(scope="session")
def s3_endpoint_url() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 for the whole session, with fake credentials so nothing reaches AWS."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            patch.delenv(name, raising=False)
        # Port 0: the OS picks a free port at bind time, so parallel sessions never collide.
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture(scope="session")
def s3_client(s3_endpoint_url: str) -> object:
    """A boto3 S3 client pointed at the moto server."""
    return boto3.client("s3", endpoint_url=s3_endpoint_url, region_name="us-east-1")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The same tests on both backends: a local folder, and a fresh bucket (with a prefix) on the S3 API."""
    if request.param == "local":
        return LocalObjectStore(tmp_path / "root")
    client = request.getfixturevalue("s3_client")
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    return S3ObjectStore(bucket, S3_TEST_PREFIX, client=client)


# Spark (one local session for the whole run), feature lakes and a real Dagster instance

TEST_PARTITIONS_START = "2025-01-01"


# A Spark Connect server for the tests' sessions and the runs they launch, instead of a local session:
# tests/mutants.py starts one for its many short test runs.
TEST_SPARK_REMOTE = os.environ.get("BACKFILLS_TEST_SPARK_REMOTE") or None


def spark_jobs(spark: SparkSession) -> int | None:
    """The ID of the session's last Spark job (-1 before the first), to tell whether a step ran any; None on
    Spark Connect, whose client has no job tracker (the local runs check it)."""
    if TEST_SPARK_REMOTE:
        return None
    return max(spark.sparkContext.statusTracker().getJobIdsForGroup(None), default=-1)


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """One local session for the run (or one of the server named by BACKFILLS_TEST_SPARK_REMOTE)."""
    session = build_session(
        master="local[2]",
        remote=TEST_SPARK_REMOTE,
        driver_memory="2g",
        shuffle_partitions=2,
        bind_address="127.0.0.1",
    )
    yield session
    session.stop()


@dataclass
class Lake:
    """A storage root with its catalog: what one deployment of the package sees."""

    root: Path
    store: LocalObjectStore
    catalog: ReleaseCatalog

    def stage(
        self,
        spark: SparkSession,
        spec: FeatureSpec | str,
        start: date,
        end: date,
        batch: str,
        *,
        requester=None,
        progress: Callable[[str], None] = lambda _: None,
    ) -> StagedRun:
        """Stage `start..end` of one feature table into `batch`, as one run would (`progress` hears what
        the run's log would)."""
        return stage_partitions(
            feature_spec(spec) if isinstance(spec, str) else spec,
            DateRange(start, end),
            batch_id=batch,
            run_id=f"run-{batch}",
            requester=requester,
            earliest=date.fromisoformat(TEST_PARTITIONS_START),
            spark=spark,
            store=self.store,
            catalog=self.catalog,
            progress=progress,
        )

    def lay_paper_files(self, batch: str) -> None:
        """Write a placeholder at every file a batch recorded by hand names. Such records keep no checksums,
        so a rollback that restores them checks only that their files are there."""
        for records in self.catalog.get_batch(batch).tables.values():
            for record in records.values():
                for key in record.files:
                    self.store.put(key, b"paper")

    def settings(self, **overrides: object) -> Settings:
        base = Settings(
            storage_root=str(self.root),
            partitions_start=TEST_PARTITIONS_START,
            max_partitions_per_run=31,
            spark_master="local[2]",
            spark_remote=TEST_SPARK_REMOTE,
            spark_driver_memory="2g",
            spark_shuffle_partitions=2,
            spark_bind_address="127.0.0.1",
        )
        return replace(base, **overrides)


def make_lake(root: Path) -> Lake:
    store = LocalObjectStore(root)
    return Lake(root=root, store=store, catalog=ReleaseCatalog(store))


# Where tests/mutants.py keeps the templates below between its many test runs of one module: built by the
# first run (on the code without any mutant), then reused. Unset (every other run): built in each run.
TEMPLATES = os.environ.get("BACKFILLS_TEST_TEMPLATES") or None


def built_once(name: str, tmp_path_factory: pytest.TempPathFactory, build: Callable[[Path], None]) -> Path:
    """A folder `build` fills, that tests only read or copy: built in this run, or taken from
    BACKFILLS_TEST_TEMPLATES when an earlier run of the same mutation run built it."""
    if TEMPLATES is None:
        root = tmp_path_factory.mktemp(name) / "lake"
        build(root)
        return root
    kept = Path(TEMPLATES) / name
    if not kept.exists():
        scratch = tmp_path_factory.mktemp(name) / "lake"
        build(scratch)
        partial = kept.with_name(f"{name}.{uuid.uuid4().hex}")
        shutil.copytree(scratch, partial)
        partial.rename(kept)
    return kept


@pytest.fixture(scope="session")
def generated_landing_zone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 days of small synthetic transactions, generated once and copied into each test's lake."""

    def generate(root: Path) -> None:
        write_landing_zone(
            LocalObjectStore(root), start=date(2025, 1, 1), days=40, customers=60, rows_per_day=400, seed=11
        )

    return built_once("landing", tmp_path_factory, generate)


@pytest.fixture(scope="session")
def staged_template(tmp_path_factory: pytest.TempPathFactory, generated_landing_zone: Path, spark) -> Path:
    """A storage root with two complete, checked batches, staged once for the whole run (each test copies
    it): `jan` (every table, Jan 1..4, requested by Alice, U0ALICE) and the later `fix` (customer_daily_txn,
    Jan 3..6, also Alice's). The approval, promotion, drill, freshness and online tests start from it."""
    return built_once(
        "approvals", tmp_path_factory, lambda root: _stage_template(root, generated_landing_zone, spark)
    )


def _stage_template(root: Path, generated_landing_zone: Path, spark: SparkSession) -> None:
    shutil.copytree(generated_landing_zone / "raw", root / "raw")
    lake = make_lake(root)
    jan = {spec.name: [f"2025-01-0{day}" for day in range(1, 5)] for spec in dependency_order()}
    for spec in dependency_order():
        lake.stage(spark, spec, date(2025, 1, 1), date(2025, 1, 4), "jan", requester="U0ALICE")
    lake.catalog.mark_complete("jan", jan)
    lake.stage(spark, "customer_daily_txn", date(2025, 1, 3), date(2025, 1, 6), "fix", requester="U0ALICE")
    lake.catalog.mark_complete("fix", {"customer_daily_txn": [f"2025-01-0{day}" for day in range(3, 7)]})


@pytest.fixture
def lake(tmp_path: Path, generated_landing_zone: Path) -> Lake:
    root = tmp_path / "lake"
    shutil.copytree(generated_landing_zone / "raw", root / "raw")
    return make_lake(root)


@pytest.fixture
def dagster_instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    """A real SQLite-backed Dagster instance in a temporary DAGSTER_HOME."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    with DagsterInstance.local_temp(str(home)) as instance:
        yield instance


# PostgreSQL: the Dagster instance storage of a shared deployment


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL server (Debian's package) on 127.0.0.1 for the session, started on first use, its log
    in the pytest temp dir; tests that need it skip, saying what is missing, where there is none."""
    try:
        installation = find_postgres()
    except PostgresUnavailable as missing:
        skip_suite(str(missing))
    with PostgresServer(tmp_path_factory.mktemp("postgres"), installation) as server:
        yield server


# Redis: the online store's real backend


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server (Debian's package) on 127.0.0.1 for the session; the Redis tests skip without it."""
    try:
        binary = find_redis_server()
    except RedisUnavailable as missing:
        skip_suite(str(missing))
    with RedisServer(tmp_path_factory.mktemp("redis"), binary=binary) as server:
        yield server
