"""Repeated measurements of one quantity, with the load average the machine had while each was taken."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field


def load_now() -> float:
    """The 1-minute load average: on 2 cores, anything above 2 means the figure shared the machine."""
    return os.getloadavg()[0]


@dataclass
class Samples:
    """Repeated measurements of one quantity; `loads` holds the 1-minute load (before, after) of each."""

    values: list[float]
    loads: list[tuple[float, float]] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def cell(self, digits: int = 2) -> str:
        """'median (min–max)' for a report table."""
        return f"{self.median:.{digits}f} ({min(self.values):.{digits}f}–{max(self.values):.{digits}f})"

    def load_cell(self) -> str:
        """The range of the 1-minute load average over the samples."""
        if not self.loads:
            return "-"
        seen = [value for pair in self.loads for value in pair]
        return f"{min(seen):.1f}–{max(seen):.1f}"


def ratio_cell(numerator: Samples, denominator: Samples, digits: int = 2) -> str:
    """Ratio of the medians, with the range of the per-repetition ratios (paired by position) beside it."""
    paired = [a / b for a, b in zip(numerator.values, denominator.values, strict=False) if b > 0]
    median = numerator.median / denominator.median
    if len(paired) < 2:
        return f"{median:.{digits}f}x"
    return f"{median:.{digits}f}x ({min(paired):.{digits}f}–{max(paired):.{digits}f})"
