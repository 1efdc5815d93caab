"""What a launched backfill can compute, decided once before any of its partitions is computed.

Dagster widens a launch from the Materialize dialog to every downstream partition whose window includes a
selected day (a 30-day window adds 29 days). Some of those read upstream partitions that are neither in the
batch nor served by production: they cannot be computed. The plan sorts every targeted partition into

- computable: each upstream partition its window reads is computed in this batch, or served by the
  production release (and not targeted by the batch), or lies before the first partition;
- planned out: blast radius (its window includes a day this batch recomputes) that cannot be computed.
  The batch does not compute it, and the approval request says which partitions and why;
- refused: a partition the launch asked for whose inputs nobody provides (no upstream day of its window is
  in the batch). Then the whole launch is refused with what to select instead: a batch that cannot do what
  was asked is not started.

An upstream partition the batch targets but plans out is not available downstream either: production's
copy of it is the one the batch replaces, so reading it would mix old and new values.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from backfills.specs import FeatureSpec, day_ranges


@dataclass(frozen=True)
class PlannedPartitions:
    """The outcome of planning: per table, the days planned out with why, and a refusal when the launch
    asked for partitions that cannot be computed."""

    computable: dict[str, list[str]]
    planned_out: dict[str, dict[str, str]]  # table -> day -> why
    planned_out_summary: dict[str, str]  # table -> why, over all its planned-out days
    refusal: str | None


def _window(day: date, lookback: int) -> list[date]:
    return [day - timedelta(days=n) for n in range(lookback, -1, -1)]


@dataclass
class _Gap:
    """Upstream days one targeted partition cannot read, by table; `recomputes` when its window holds a day
    this batch targets upstream (the partition is blast radius)."""

    missing: dict[str, list[str]]
    recomputes: bool


def _gap(spec: FeatureSpec, day: date, *, targets, computed, served, earliest: date) -> _Gap:
    missing: dict[str, list[str]] = {}
    recomputes = False
    for item in spec.feature_inputs:
        for upstream_day in _window(day, item.lookback_days):
            if upstream_day < earliest:
                continue
            key = upstream_day.isoformat()
            targeted = key in targets.get(item.table, ())
            recomputes = recomputes or targeted
            available = key in computed.get(item.table, ()) or (
                not targeted and key in served.get(item.table, ())
            )
            if not available:
                missing.setdefault(item.table, []).append(key)
    return _Gap(missing, recomputes)


def _needs(missing: Mapping[str, Sequence[str]], production: str) -> str:
    parts = [f"{table} {day_ranges(days)}" for table, days in sorted(missing.items())]
    return f"needs {'; '.join(parts)}, which this batch does not compute and {production} does not serve"


def _refusal(refused: Mapping[str, Mapping[str, _Gap]], production: str) -> str:
    lines = []
    for table, gaps in refused.items():
        missing: dict[str, set[str]] = {}
        for gap in gaps.values():
            for upstream, days in gap.missing.items():
                missing.setdefault(upstream, set()).update(days)
        instead = "; ".join(
            f"add {upstream} from {min(days)} to the selection" for upstream, days in sorted(missing.items())
        )
        lines.append(
            f"{table} {day_ranges(sorted(gaps))} cannot be computed: it "
            f"{_needs({u: sorted(d) for u, d in missing.items()}, production)}. Select instead: {instead} "
            "(or promote a batch with those partitions first)"
        )
    return "This launch is refused before computing anything. " + " ".join(lines)


def plan_launch(
    specs: Sequence[FeatureSpec],
    targets: Mapping[str, Collection[str]],
    *,
    served: Mapping[str, Collection[str]],
    earliest: date,
    production: str,
) -> PlannedPartitions:
    """Plan the targeted partitions (`targets`: table -> ISO days) of `specs` (in dependency order), given
    the days production serves per table (`served`) and the first partition (`earliest`). `production`
    names the release in messages ("current release R", or "production (nothing promoted yet)")."""
    computed: dict[str, set[str]] = {}
    planned_out: dict[str, dict[str, str]] = {}
    missing_by_table: dict[str, dict[str, set[str]]] = {}
    refused: dict[str, dict[str, _Gap]] = {}
    for spec in specs:
        days = sorted(targets.get(spec.name, ()))
        if not days:
            continue
        computed[spec.name] = set()
        for key in days:
            gap = _gap(
                spec,
                date.fromisoformat(key),
                targets=targets,
                computed=computed,
                served=served,
                earliest=earliest,
            )
            if not gap.missing:
                computed[spec.name].add(key)
            elif gap.recomputes:
                planned_out.setdefault(spec.name, {})[key] = _needs(gap.missing, production)
                for upstream, missing in gap.missing.items():
                    missing_by_table.setdefault(spec.name, {}).setdefault(upstream, set()).update(missing)
            else:
                refused.setdefault(spec.name, {})[key] = gap
    refusal = _refusal(refused, production) if refused else None
    if refusal is None and not any(computed.values()):
        reasons = "; ".join(
            f"{table} {day_ranges(sorted(days))} {next(iter(days.values()))}"
            for table, days in planned_out.items()
        )
        refusal = (
            "This launch is refused before computing anything: none of its partitions can be computed "
            f"({reasons})."
        )
    return PlannedPartitions(
        computable={table: sorted(days) for table, days in computed.items()},
        planned_out=planned_out,
        planned_out_summary={
            table: _needs({upstream: sorted(days) for upstream, days in missing.items()}, production)
            for table, missing in missing_by_table.items()
        },
        refusal=refusal,
    )
