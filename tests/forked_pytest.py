"""Pytest runs forked from a process that has already imported the heavy libraries, for mutation testing.

A fresh `python -m pytest` spends about 12 s importing great_expectations, Dagster, pyspark and pandas before
the first test runs; a module's mutants run pytest hundreds of times. The mutation runner imports those
libraries once (never the package under test), then forks a child per run: the child starts with them
loaded and imports the package, mutated, from the copy that its path puts first. Each child is a session of
its own, so that a timeout ends it and everything it started at once.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence

# Third-party only: the package under test must be imported by each child, from the mutated copy.
HEAVY = (
    "great_expectations",
    "dagster",
    "pyspark.sql",
    "pyspark.sql.connect.session",
    "pandas",
    "pyarrow",
    "pandera",
    "boto3",
    "moto.server",
    "slack_sdk",
    "pytest",
)


def preload(package: str) -> None:
    """Import the heavy libraries in this process, so that every forked run starts with them."""
    for name in HEAVY:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    if package in sys.modules:
        raise RuntimeError(f"{package} was imported by the runner: a forked run would test it unmutated")


def run(
    args: Sequence[str], *, cwd: str, env: Mapping[str, str], first_on_path: str, timeout: float
) -> tuple[int | None, str]:
    """pytest.main(args) in a forked child, in `cwd`, with `env` as its environment and `first_on_path`
    first on sys.path (what PYTHONPATH does for a new interpreter): (exit code, output); the exit code is
    None when it ran out of time."""
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as output:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            _child(args, cwd=cwd, env=env, first_on_path=first_on_path, output=output.fileno())
        deadline = time.monotonic() + max(timeout, 1)
        try:
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    _stop(pid)
                    return None, ""
                time.sleep(0.2)
        except BaseException:  # interrupted: leave no test run behind
            _stop(pid)
            raise
        output.seek(0)
        return os.waitstatus_to_exitcode(status), output.read().decode(errors="replace")


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _child(
    args: Sequence[str], *, cwd: str, env: Mapping[str, str], first_on_path: str, output: int
) -> None:  # pragma: no cover - runs in the forked child
    code = 3
    try:
        os.setsid()
        os.dup2(output, 1)
        os.dup2(output, 2)
        # The parent's sys.stdout may not write to its file descriptor (a capturing pytest, say).
        sys.stdout = sys.__stdout__ = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        # A mutant may keep the size of the module and be written within the same second as the last one:
        # a cached bytecode file would then pass for it.
        sys.dont_write_bytecode = True
        sys.path.insert(0, first_on_path)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        import pytest

        code = int(pytest.main(list(args)))
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
