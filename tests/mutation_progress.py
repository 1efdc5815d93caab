"""A module's mutation run, mutant by mutant, so that a run stopped part-way resumes where it stopped.

A large module takes longer than one sitting on 2 cores. Each outcome is written to
tests/mutants/progress/<target>.json as soon as it is known, with a digest of the module's text; the next
full run of the module, while its text is unchanged, runs only the mutants not decided yet. Tests are only
ever added between runs, so a mutant killed before stays killed; a survivor stays one until --recheck runs
it again. The file goes once the module's entry is written to the report.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mutation_report import REPORT_DIR, Outcome
from mutation_sites import Mutant

PROGRESS_DIR = REPORT_DIR / "progress"


class Progress:
    """The outcomes known so far for one target's module text."""

    def __init__(self, target: str, source: str, directory: Path = PROGRESS_DIR) -> None:
        self.path = directory / f"{target}.json"
        self.digest = hashlib.sha256(source.encode()).hexdigest()
        saved = json.loads(self.path.read_text()) if self.path.exists() else {}
        # Another text of the module: its mutants are other mutants, nothing carries over.
        self._outcomes: dict[str, dict[str, Any]] = (
            saved.get("outcomes", {}) if saved.get("module_sha256") == self.digest else {}
        )

    def known(self, number: int, mutant: Mutant) -> Outcome | None:
        """The outcome of mutant `number` in an earlier run of this module text, if it is the same change."""
        saved = self._outcomes.get(str(number))
        if saved is None or (saved["line"], saved["change"]) != (mutant.line, mutant.description):
            return None
        return Outcome(mutant, saved["status"], saved["seconds"], saved["tier"])

    def commits(self) -> list[str]:
        """The commits the known outcomes ran on."""
        return sorted({saved["commit"] for saved in self._outcomes.values()})

    def record(self, number: int, outcome: Outcome, *, commit: str) -> None:
        self._outcomes[str(number)] = {
            "line": outcome.mutant.line,
            "change": outcome.mutant.description,
            "status": outcome.status,
            "seconds": round(outcome.seconds, 1),
            "tier": outcome.tier,
            "commit": commit,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ordered = dict(sorted(self._outcomes.items(), key=lambda item: int(item[0])))
        self.path.write_text(json.dumps({"module_sha256": self.digest, "outcomes": ordered}, indent=1) + "\n")

    def finish(self) -> None:
        """The module's entry is written: the outcomes live there now."""
        self.path.unlink(missing_ok=True)
