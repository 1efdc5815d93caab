"""A `backfills` process that runs one command after another, for tests that start commands in several
processes at the same moment (as operators in two terminals would). Not a test module.

It reads one command a line on stdin, JSON `{"env": {...}, "argv": [...]}`: sets those environment
variables, runs `backfills.orchestration.cli.main(argv)` in process and answers one line on stdout, JSON
`{"code": N, "out": "...", "err": "..."}`. Its Spark JVM stays up from one command to the next, so a round
costs what the commands do, not a JVM start; anything else the process prints goes to stderr.

    python command_worker.py
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys


def main() -> None:
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # the JVM's and Dagster's output: not the answers
    from backfills.orchestration.cli import main as backfills

    for line in sys.stdin:
        command = json.loads(line)
        os.environ.update(command["env"])
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = backfills(command["argv"])
        answers.write(json.dumps({"code": code, "out": out.getvalue(), "err": err.getvalue()}) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
