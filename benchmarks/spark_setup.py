"""The Spark settings every benchmark takes from its command line, and the local session made from them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pyspark.sql import SparkSession

from backfills.resources.spark import build_session


@dataclass(frozen=True)
class SparkSettings:
    master: str
    driver_memory: str
    shuffle_partitions: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SparkSettings:
        return cls(args.master, args.driver_memory, args.shuffle_partitions)

    def session(self) -> SparkSession:
        """A local session with these settings, as a governed run without Spark Connect starts one."""
        return build_session(
            master=self.master,
            remote=None,
            driver_memory=self.driver_memory,
            shuffle_partitions=self.shuffle_partitions,
            bind_address="127.0.0.1",
        )

    def arguments(self) -> list[str]:
        """The same settings as command-line options of a benchmark script."""
        return [
            f"--master={self.master}",
            f"--driver-memory={self.driver_memory}",
            f"--shuffle-partitions={self.shuffle_partitions}",
        ]


def add_spark_options(parser: argparse.ArgumentParser, *, driver_memory: str) -> None:
    parser.add_argument("--master", default="local[2]", help="Spark master (local[2])")
    parser.add_argument(
        "--driver-memory", default=driver_memory, help=f"Spark driver memory, every JVM ({driver_memory})"
    )
    parser.add_argument("--shuffle-partitions", type=int, default=4, help="Spark shuffle partitions (4)")
