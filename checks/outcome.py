"""The verdict of one check with its evidence: what every check returns, whatever library computed it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Verdict = Literal["passed", "warned", "failed"]


@dataclass(frozen=True)
class CheckOutcome:
    """One check's verdict, ready for Dagster check metadata and the batch manifest."""

    name: str
    passed: bool
    blocking: bool  # a failure blocks the batch; otherwise it is a warning
    summary: str
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> Verdict:
        if self.passed:
            return "passed"
        return "failed" if self.blocking else "warned"
