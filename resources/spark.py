"""The Spark session every feature computation uses: local mode by default, Spark Connect when configured."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource
from py4j.protocol import Py4JError
from pydantic import Field
from pyspark.sql import SparkSession

from backfills.resources.settings import Settings

LOG_CONFIG = Path(__file__).with_name("log4j2.properties")


def failure_summary(error: BaseException, limit: int = 200) -> str:
    """What an error says went wrong, in one line of at most `limit` characters. A local Spark session's
    Py4J error only names the JVM call on its first line ("An error occurred while calling o42.parquet."):
    its innermost Java cause says what failed. PySpark's own and Spark Connect's errors say it first."""
    text = str(error)
    java = getattr(error, "java_exception", None)
    if java is not None:
        try:
            while java.getCause() is not None:
                java = java.getCause()
            text = java.toString()
        except Py4JError:  # the JVM is gone: the error's own words are all there is
            pass
    return (text.strip().splitlines() or [""])[0][:limit]


def spark_conf(*, driver_memory: str, shuffle_partitions: int, bind_address: str) -> dict[str, str]:
    """Settings for a local session on a small machine; UTC so event days never shift with the host zone."""
    return {
        # pandera sets SPARK_LOCAL_IP on import, so the bind address is given explicitly.
        "spark.driver.bindAddress": bind_address,
        "spark.driver.host": bind_address,
        "spark.driver.memory": driver_memory,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        "spark.default.parallelism": str(shuffle_partitions),
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.sql.parquet.compression.codec": "snappy",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={LOG_CONFIG}",
    }


def build_session(
    *,
    master: str,
    remote: str | None,
    driver_memory: str,
    shuffle_partitions: int,
    bind_address: str,
) -> SparkSession:
    """Return this process's Spark session, creating it on first use (one JVM per process at most)."""
    if remote:
        session = SparkSession.builder.remote(remote).getOrCreate()
        session.conf.set("spark.sql.session.timeZone", "UTC")
        session.conf.set("spark.sql.shuffle.partitions", str(shuffle_partitions))
        return session
    builder = SparkSession.builder.master(master).appName("governed-backfills")
    for key, value in spark_conf(
        driver_memory=driver_memory, shuffle_partitions=shuffle_partitions, bind_address=bind_address
    ).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session


class SparkResource(ConfigurableResource):
    """Spark for feature steps: `local[2]` by default, or a Spark Connect server (`sc://host:15002`)."""

    master: str = Field(default="local[2]", description="Spark master for a local session.")
    spark_remote: str | None = Field(
        default=None, description="Spark Connect URL; when set, no local JVM is started."
    )
    driver_memory: str = Field(default="3g", description="Driver memory of a local session.")
    shuffle_partitions: int = Field(default=4, description="Shuffle partitions (a few per core).")
    bind_address: str = Field(default="127.0.0.1", description="Address the local driver binds to.")

    @classmethod
    def from_settings(cls, settings: Settings) -> SparkResource:
        return cls(
            master=settings.spark_master,
            spark_remote=settings.spark_remote,
            driver_memory=settings.spark_driver_memory,
            shuffle_partitions=settings.spark_shuffle_partitions,
            bind_address=settings.spark_bind_address,
        )

    def session(self) -> SparkSession:
        return build_session(
            master=self.master,
            remote=self.spark_remote,
            driver_memory=self.driver_memory,
            shuffle_partitions=self.shuffle_partitions,
            bind_address=self.bind_address,
        )
