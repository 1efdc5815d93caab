"""The committed record of mutation testing: tests/mutants/report.json for tools, tests/mutants/REPORT.md for
people, and the reviewed reasons why some surviving mutants cannot change behaviour (equivalent.json).

A run of some modules replaces their entries and keeps the others', so a full run may be spread over several
sittings; each entry names the commit it ran on and whether the working tree differed from it. Equivalent
mutants are keyed by module, function and change (not by line), so that their reasons survive edits
elsewhere in the module.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mutation_sites import Mutant

REPORT_DIR = Path(__file__).resolve().parent / "mutants"
REPORT_JSON = REPORT_DIR / "report.json"
REPORT_MD = REPORT_DIR / "REPORT.md"
EQUIVALENT_JSON = REPORT_DIR / "equivalent.json"

# What a test run made of a mutant: a test failed (killed), the tests could not even be collected or
# imported (error, killed as well), nothing finished in time (timeout, killed only by the clock), or every
# test passed (survived).
KILLED, ERROR, TIMEOUT, SURVIVED = "killed", "error", "timeout", "survived"

Equivalents = dict[tuple[str, str, str], str]  # (module, function, change) -> why


@dataclass
class Outcome:
    mutant: Mutant
    status: str
    seconds: float
    tier: int | None = None  # the tier whose tests noticed the mutant (0 = the first)


def load_equivalents(path: Path = EQUIVALENT_JSON) -> Equivalents:
    """The reviewed equivalent mutants: {module: [{"function", "change", "why"}, ...]}."""
    if not path.exists():
        return {}
    found: Equivalents = {}
    for module, entries in json.loads(path.read_text()).items():
        for entry in entries:
            unknown = set(entry) - {"function", "change", "why"}
            if unknown or not entry.get("why", "").strip():
                raise SystemExit(
                    f"{path}: each entry of {module} needs a function, a change and a one-line why "
                    f"(and nothing else): {entry}"
                )
            found[(module, entry["function"], entry["change"])] = entry["why"]
    return found


def equivalence(outcome: Outcome, equivalents: Equivalents) -> str | None:
    mutant = outcome.mutant
    return equivalents.get((mutant.scope.path, mutant.function, mutant.description))


def unexplained(outcomes: Iterable[Outcome], equivalents: Equivalents) -> list[Outcome]:
    return [o for o in outcomes if o.status == SURVIVED and equivalence(o, equivalents) is None]


def stale_equivalents(
    module: str, outcomes: list[Outcome], equivalents: Equivalents
) -> list[tuple[str, str]]:
    """Reasons recorded for the module that match no surviving mutant of this run (the code or the tests
    changed): (function, change) to review and remove."""
    survivors = {(o.mutant.function, o.mutant.description) for o in outcomes if o.status == SURVIVED}
    return sorted(
        (function, change)
        for (path, function, change) in equivalents
        if path == module and (function, change) not in survivors
    )


def module_entry(
    outcomes: list[Outcome],
    equivalents: Equivalents,
    *,
    commit: str,
    dirty: bool,
    minutes: float,
    tests: list[list[str]],
    left_out: list[str],
) -> dict[str, Any]:
    """One module's entry: counts, every survivor, every equivalent with why, every mutant that only the
    clock killed, and where the run came from."""

    def named(outcome: Outcome) -> dict[str, Any]:
        return {"line": outcome.mutant.line, "change": outcome.mutant.description}

    survived = [o for o in outcomes if o.status == SURVIVED]
    return {
        "mutants": len(outcomes),
        "killed": sum(o.status != SURVIVED for o in outcomes),
        "survived": [named(o) for o in unexplained(survived, equivalents)],
        "equivalent": [
            named(o) | {"why": why} for o in survived if (why := equivalence(o, equivalents)) is not None
        ],
        "timeout": [named(o) for o in outcomes if o.status == TIMEOUT],
        "commit": commit,
        "dirty": dirty,
        "minutes": round(minutes, 1),
        "tests": tests,
        "left_out": left_out,
    }


def rechecked_entry(
    entry: Mapping[str, Any], outcomes: list[Outcome], equivalents: Equivalents, *, commit: str, dirty: bool
) -> dict[str, Any]:
    """A module's entry after its survivors ran again, on the same module code, with the tests of `commit`:
    those a test now notices count as killed, the others stay named. The rest of the entry (every mutant
    killed in the full run, on this very code) is kept, with the commit it ran on."""
    again = module_entry(outcomes, equivalents, commit=commit, dirty=dirty, minutes=0, tests=[], left_out=[])
    return dict(entry) | {
        "killed": entry["killed"] + again["killed"],
        "survived": again["survived"],
        "equivalent": [*entry["equivalent"], *again["equivalent"]],
        "timeout": [*entry.get("timeout", []), *again["timeout"]],
        "rechecked": {
            "commit": commit,
            "dirty": dirty,
            "survivors": len(outcomes),
            "killed": again["killed"],
        },
    }


def read_report(path: Path = REPORT_JSON) -> dict[str, Any]:
    if not path.exists():
        return {"commit": None, "modules": {}}
    return json.loads(path.read_text())


def write_report(
    entries: Mapping[str, dict[str, Any]],
    *,
    commit: str,
    json_path: Path = REPORT_JSON,
    markdown_path: Path = REPORT_MD,
) -> dict[str, Any]:
    """Replace the entries of the modules that ran, keep the others, and write both files."""
    report = read_report(json_path)
    modules = dict(report["modules"]) | dict(entries)
    report = {"commit": commit, "modules": dict(sorted(modules.items()))}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    markdown_path.write_text(render_markdown(report))
    return report


def _listed(items: list[dict[str, Any]], *, why: bool = False) -> list[str]:
    return [
        f"- line {item['line']}: {item['change']}" + (f": {item['why']}" if why else "") for item in items
    ]


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report for people: one row per module, then each module's survivors, timeouts and equivalents."""
    lines = [
        "# Mutation testing: what the tests notice",
        "",
        "Written by `make mutants` (tests/mutants.py); `make mutants MODULES=path/of/module.py` reruns one "
        "module and keeps the other entries; `MUTANTS_ARGS=--recheck` reruns only its survivors, when the "
        "module is unchanged since its entry. A mutant is one small deliberate bug; *killed* means a test "
        "failed (or, listed as timeout, the tests never finished); *equivalent* means it cannot change "
        "behaviour, for the reason given (tests/mutants/equivalent.json); *survived* means no test noticed: "
        "a promise nothing checks. The same figures for tools: report.json.",
        "",
        "| module | mutants | killed | of which by timeout | equivalent | survived | minutes | commit |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    modules: Mapping[str, Mapping[str, Any]] = report["modules"]
    for module, entry in modules.items():
        commit = entry["commit"][:10] + (" (uncommitted changes)" if entry.get("dirty") else "")
        if "rechecked" in entry:
            commit += f", survivors rechecked on {entry['rechecked']['commit'][:10]}"
        lines.append(
            f"| {module} | {entry['mutants']} | {entry['killed']} | {len(entry.get('timeout', []))} | "
            f"{len(entry['equivalent'])} | {len(entry['survived'])} | {entry.get('minutes', '')} | {commit} |"
        )
    for module, entry in modules.items():
        lines += ["", f"## {module}", ""]
        tiers = entry.get("tests", [])
        if tiers:
            lines.append(
                "Tests, cheapest first (a tier runs only while the mutant survives the ones before):"
            )
            lines.extend(f"{number}. `{' '.join(tier)}`" for number, tier in enumerate(tiers, 1))
            lines.append("")
        if "rechecked" in entry:
            again = entry["rechecked"]
            lines.append(
                f"The {again['survivors']} survivors of the full run on {entry['commit'][:10]} ran again on "
                f"{again['commit'][:10]}, where the module is unchanged and the tests are newer: "
                f"{again['killed']} of them killed."
            )
            lines.append("")
        if entry.get("left_out"):
            lines.append("Tests left out (they failed without any mutant):")
            lines.extend(f"- `{node}`" for node in entry["left_out"])
            lines.append("")
        sections = (
            ("Survived (no test noticed)", entry["survived"], False),
            ("Killed only by the timeout", entry.get("timeout", []), False),
            ("Equivalent (cannot change behaviour)", entry["equivalent"], True),
        )
        listed = [(title, items, why) for title, items, why in sections if items]
        if not listed:
            lines.append("Every mutant was killed by a failing test.")
        for title, items, why in listed:
            lines += [f"{title}:", "", *_listed(items, why=why), ""]
    return "\n".join(lines).rstrip() + "\n"
