"""Pure: a `Diagnosis` as lines for a terminal, or as a JSON-ready dict.

Every text in a `Check` is already escaped by `udskit.doctor.diagnose.show`, so the
lines hold no control characters and the JSON is strict UTF-8.
"""

from __future__ import annotations

from typing import Any

from udskit.doctor.facts import Diagnosis, Verdict

__all__ = ["diagnosis_lines", "diagnosis_to_json"]

_WIDTH = max(len(v.value) for v in Verdict)


def diagnosis_lines(diagnosis: Diagnosis, *, verbose: bool = False) -> list[str]:
    """One line per check (`verdict  name  what was found`), a `fix:` line under each
    problem, and a closing line. Skipped checks are left out unless `verbose`."""
    name_width = max(len(c.name) for c in diagnosis.checks)
    lines = [f"udskit doctor {diagnosis.address}"]
    for check in diagnosis.checks:
        if check.verdict is Verdict.SKIPPED and not verbose:
            continue
        head = f"  {check.verdict.value:<{_WIDTH}}  {check.name:<{name_width}}  "
        lines.append(head + check.found)
        if check.fix and check.verdict in (Verdict.PROBLEM, Verdict.NOTE):
            lines.append(" " * len(head) + "fix: " + check.fix)
    if diagnosis.connected:
        lines.append(f"{diagnosis.address} works.")
    else:
        problems = diagnosis.problems
        first = next((c for c in problems if c.name != "connect"), None)
        cause = f" first problem: {first.name}" if first is not None else ""
        lines.append(f"{diagnosis.address} does not work;{cause}".rstrip(";") + ".")
    return lines


def diagnosis_to_json(diagnosis: Diagnosis) -> dict[str, Any]:
    return {
        "address": diagnosis.address,
        "works": diagnosis.connected,
        "checks": [
            {"name": c.name, "verdict": c.verdict.value, "found": c.found, "fix": c.fix}
            for c in diagnosis.checks
        ],
    }
