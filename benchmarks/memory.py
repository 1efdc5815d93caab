"""Resident memory of a tree of processes, from /proc: a background sampler of the summed RSS (for the peak of
everything a benchmark started, JVMs included) and the peak resident set (VmHWM) of each process."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path


def proc_field(path: str, field: str) -> str | None:
    """The value of `field:` in a /proc text file (status, meminfo, cpuinfo), or None."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name may contain spaces and parentheses: the parent PID follows the last ')'.
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return parents


def process_tree(roots: Iterable[int]) -> dict[int, int]:
    """The live processes among `roots` and all their descendants, each with its parent."""
    parents = _parents()
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    tree = {root: parents[root] for root in roots if root in parents}
    frontier = list(tree)
    while frontier:
        found = [child for pid in frontier for child in children.get(pid, [])]
        tree.update((child, parents[child]) for child in found)
        frontier = found
    return tree


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _forked_jvm(pid: int, parent: int) -> bool:
    """A JVM's child between fork and exec (Hadoop's local file system runs shell commands): it still maps
    the JVM's pages, so its RSS would count the JVM twice."""
    exe = _exe(pid)
    return exe is not None and exe.endswith("/java") and exe == _exe(parent)


# What a process is, from its command line: the first pattern found names it.
_ROLES = (
    ("SparkConnectServer", "Spark Connect server JVM"),
    ("org.apache.spark", "Spark JVM"),
    ("dagster-webserver", "webserver"),
    ("dagster-daemon", "daemon"),
    ("dagster api grpc", "code server"),
    ("dagster code-server", "code server"),
    ("multiprocessing", "run worker"),
    ("floor.py", "floor script"),
)


def role(pid: int) -> str:
    """What the process is (webserver, run worker, Spark JVM, ...), else its command name."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        command = ""
    for pattern, name in _ROLES:
        if pattern in command:
            return name
    return proc_field(f"/proc/{pid}/status", "Name") or "?"


def _kib(pid: int, field: str) -> int | None:
    value = proc_field(f"/proc/{pid}/status", field)
    return int(value.split()[0]) if value else None


@dataclass(frozen=True)
class MemorySample:
    """The summed resident memory of a process tree at one moment, and its parts by role."""

    at: float  # time.time()
    total_kib: int
    by_name: dict[str, tuple[int, int]]  # role -> (processes, KiB)

    @property
    def total_gib(self) -> float:
        return self.total_kib / 2**20

    def describe(self) -> str:
        parts = sorted(self.by_name.items(), key=lambda item: -item[1][1])
        return ", ".join(
            f"{name}{f' x{count}' if count > 1 else ''} {kib / 2**20:.1f}"
            for name, (count, kib) in parts
            if kib >= 2**20 / 20  # leave out what rounds to 0.0 GiB (shells, tail)
        )


def sample(roots: Iterable[int], *, exclude: Iterable[int] = ()) -> MemorySample:
    skipped = set(exclude)
    total = 0
    by_name: dict[str, tuple[int, int]] = {}
    for pid, parent in process_tree(roots).items():
        if pid in skipped or _forked_jvm(pid, parent):
            continue
        rss = _kib(pid, "VmRSS")
        if rss is None:  # exited meanwhile, or a kernel thread
            continue
        name = role(pid)
        count, kib = by_name.get(name, (0, 0))
        by_name[name] = (count + 1, kib + rss)
        total += rss
    return MemorySample(time.time(), total, by_name)


class MemorySampler:
    """Samples the summed RSS of `roots()` and their descendants every `interval` seconds, in a thread.

    RSS counts pages shared between processes (libraries, the page cache of mapped jars) once per process,
    so the sum somewhat overstates what the tree holds together: an upper bound, which is what a limit needs.
    """

    def __init__(
        self, roots: Callable[[], list[int]], *, interval: float = 0.5, exclude: Iterable[int] = ()
    ) -> None:
        self.roots = roots
        self.interval = interval
        self.exclude = tuple(exclude)
        self.samples: list[MemorySample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(sample(self.roots(), exclude=self.exclude))
            self._stop.wait(self.interval)

    def peak(self, since: float | None = None, until: float | None = None) -> MemorySample | None:
        """The sample with the largest total between `since` and `until` (time.time()), if any."""
        window = [
            item
            for item in self.samples
            if (since is None or item.at >= since) and (until is None or item.at <= until)
        ]
        return max(window, key=lambda item: item.total_kib, default=None)


def peak_resident_sets(root: int | None = None) -> list[tuple[str, float]]:
    """Peak resident set (VmHWM, MiB) of `root` (this process by default) and every process it started."""
    peaks = []
    for pid, parent in process_tree([root or os.getpid()]).items():
        if _forked_jvm(pid, parent):
            continue
        hwm = _kib(pid, "VmHWM")
        name = proc_field(f"/proc/{pid}/status", "Name")
        if hwm:
            peaks.append((f"{name} (pid {pid})", hwm / 1024))
    return peaks
