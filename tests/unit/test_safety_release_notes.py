"""RELEASE-NOTES.md (R46): every change of every release says its safety impact, naming hazards
of the hazard log or `none`, and the newest release is this version."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from solent import __version__
from solent.safety.hazards import hazard_log, limitations

NOTES = Path(__file__).resolve().parents[2] / "RELEASE-NOTES.md"
IMPACT = re.compile(r"^Safety impact: (none|HAZ-\d{3}(?:, HAZ-\d{3})*)\.(?: .*)?$")


def problems(text: str, hazards: set[str], limits: set[str]) -> tuple[list[str], list[str]]:
    """(releases in order, what is wrong): each `### entry` needs one valid impact line."""
    releases: list[str] = []
    wrong: list[str] = []
    entry: str | None = None
    impacts = 0

    def close() -> None:
        if entry is not None and impacts != 1:
            wrong.append(f"{entry}: {impacts} 'Safety impact:' lines, expected 1")

    for line in text.splitlines():
        if line.startswith("## "):
            close()
            entry, impacts = None, 0
            releases.append(line[3:].split()[0])
        elif line.startswith("### "):
            close()
            entry, impacts = f"{releases[-1] if releases else '?'} / {line[4:]}", 0
        elif line.startswith("Safety impact:"):
            impacts += 1
            match = IMPACT.match(line)
            if entry is None or match is None:
                wrong.append(f"{entry}: malformed {line!r}")
            elif match.group(1) != "none":
                unknown = set(match.group(1).split(", ")) - hazards
                if unknown:
                    wrong.append(f"{entry}: unknown hazard(s) {', '.join(sorted(unknown))}")
        for lim in re.findall(r"LIM-\d{3}", line):
            if lim not in limits:
                wrong.append(f"{entry}: unknown limitation {lim}")
    close()
    return releases, wrong


def _known() -> tuple[set[str], set[str]]:
    return {h.id for h in hazard_log()}, {x.id for x in limitations()}


def test_every_change_says_its_safety_impact() -> None:
    releases, wrong = problems(NOTES.read_text(encoding="utf-8"), *_known())
    assert not wrong, "\n".join(wrong)
    assert releases and releases[0] == __version__


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ("### A change\n\nText.\n", "0 'Safety impact:' lines"),
        ("### A change\n\nSafety impact: HAZ-999. Why.\n", "unknown hazard(s) HAZ-999"),
        ("### A change\n\nSafety impact: some.\n", "malformed"),
        ("### A change\n\nSafety impact: HAZ-001 HAZ-002.\n", "malformed"),
        ("### A change\n\nSafety impact: none.\nSafety impact: none.\n", "2 'Safety impact:'"),
        ("### A change\n\nSee LIM-999.\nSafety impact: none.\n", "unknown limitation LIM-999"),
    ],
)
def test_an_entry_without_a_valid_impact_is_refused(entry: str, complaint: str) -> None:
    _, wrong = problems(f"# Notes\n\n## 9.9.9\n\n{entry}", *_known())
    assert any(complaint in w for w in wrong), wrong
    _, fine = problems(
        "## 9.9.9\n\n### A change\n\nSafety impact: HAZ-001, HAZ-008. Why.\n", *_known()
    )
    assert fine == []
