"""The hazard log (R45): every control's evidence names a test that exists in the tree, every
hazard has a control this software verifies, and R45's identity hazards are explicit entries.

Test node ids are checked by reading the test files with ast (no collection), so renaming or
deleting a test that evidences a control fails this test in CI.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from solent.errors import ConfigurationError
from solent.safety.configuration import RULES
from solent.safety.hazards import (
    LIKELIHOODS,
    R45_TOPICS,
    SEVERITIES,
    Hazard,
    hazard_log,
    limitations,
    parse_hazard_log,
    risk,
)
from solent.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


def _tests_in(path: Path) -> set[str]:
    """The node ids pytest would give the test functions of one file (without parameters)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test"
        ):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and (
                    item.name.startswith("test")
                ):
                    names.add(f"{node.name}::{item.name}")
    return names


def missing_evidence(log: tuple[Hazard, ...], root: Path) -> list[str]:
    """Evidence node ids that name no test under root, as 'control: node id'."""
    found: dict[str, set[str]] = {}
    missing = []
    for hazard in log:
        for control in hazard.controls:
            for node_id in control.evidence:
                file, _, name = node_id.partition("::")
                path = root / file
                if not (file.startswith("tests/") and path.is_file() and name):
                    missing.append(f"{control.id}: {node_id}")
                    continue
                if file not in found:
                    found[file] = _tests_in(path)
                if name not in found[file]:
                    missing.append(f"{control.id}: {node_id}")
    return missing


def test_every_evidence_names_a_test_that_exists() -> None:
    missing = missing_evidence(hazard_log(), ROOT)
    assert not missing, "hazard log evidence naming no test (renamed or removed?):\n" + "\n".join(
        missing
    )


def test_a_renamed_test_fails_the_evidence_check(tmp_path: Path) -> None:
    log = hazard_log()
    node_id = log[0].controls[0].evidence[0]
    file, _, name = node_id.partition("::")
    for h in log:
        for c in h.controls:
            for e in c.evidence:
                target = tmp_path / e.partition("::")[0]
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / e.partition("::")[0], target)
    assert missing_evidence(log, tmp_path) == []
    renamed = tmp_path / file
    renamed.write_text(
        renamed.read_text(encoding="utf-8").replace(f"def {name}(", f"def {name}_renamed("),
        encoding="utf-8",
    )
    assert missing_evidence(log, tmp_path) == [f"{log[0].controls[0].id}: {node_id}"]


def test_every_hazard_has_a_control_this_software_verifies() -> None:
    for h in hazard_log():
        verified = [c for c in h.controls if c.kind == "design" and c.evidence]
        assert verified, f"{h.id} has no design control with evidence"
        assert h.causes and h.effect and h.harm


def test_the_identity_hazards_r45_names_are_explicit_entries() -> None:
    topics = {h.r45 for h in hazard_log() if h.r45}
    assert topics == set(R45_TOPICS)


def test_ids_are_unique_and_controls_are_numbered_under_their_hazard() -> None:
    log = hazard_log()
    assert len({h.id for h in log}) == len(log)
    controls = [c.id for h in log for c in h.controls]
    assert len(set(controls)) == len(controls)


def test_risk_is_dcb0129s_matrix_and_controls_never_raise_it() -> None:
    assert risk("minor", "very-low") == 1
    assert risk("catastrophic", "very-high") == 5
    assert risk("major", "medium") == 3
    assert risk("considerable", "low") == 2
    assert risk("catastrophic", "very-low") == 3
    for i, sev in enumerate(SEVERITIES):
        for j, like in enumerate(LIKELIHOODS):
            if i + 1 < len(SEVERITIES):
                assert risk(SEVERITIES[i + 1], like) >= risk(sev, like)
            if j + 1 < len(LIKELIHOODS):
                assert risk(sev, LIKELIHOODS[j + 1]) >= risk(sev, like)
    for h in hazard_log():
        assert h.residual.risk <= h.initial.risk, h.id
        assert h.residual.risk <= 3, f"{h.id}: residual risk above undesirable"


def test_settings_and_hazards_named_anywhere_exist() -> None:
    fields = {ENV_PREFIX + n.upper() for n in Settings.model_fields}
    ids = {h.id for h in hazard_log()}
    for h in hazard_log():
        assert set(h.settings) <= fields, h.id
    for rule in RULES:
        assert set(rule.settings) <= fields, rule.settings
        assert rule.hazards and set(rule.hazards) <= ids, rule.settings
    for lim in limitations():
        assert set(lim.hazards) <= ids, lim.id
        for doc in lim.docs.split(", "):
            assert (ROOT / doc).is_file(), f"{lim.id}: {doc}"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"initial": {"severity": "huge", "likelihood": "low"}}, "severity 'huge'"),
        ({"residual": {"severity": "minor", "likelihood": "often"}}, "likelihood 'often'"),
        ({"r45": "misfiled"}, "r45 'misfiled'"),
        ({"control": [{"id": "HAZ-002.C1", "kind": "design", "description": "x"}]}, "HAZ-001.C"),
        (
            {
                "control": [
                    {
                        "id": "HAZ-001.C1",
                        "kind": "deployment",
                        "description": "x",
                        "evidence": ["tests/unit/test_x.py::test_y"],
                    }
                ]
            },
            "trust's own",
        ),
        ({"harm": ""}, "missing harm"),
    ],
)
def test_a_malformed_entry_is_refused_naming_it(change: dict[str, object], message: str) -> None:
    entry: dict[str, object] = {
        "id": "HAZ-001",
        "title": "t",
        "causes": ["c"],
        "effect": "e",
        "harm": "h",
        "initial": {"severity": "major", "likelihood": "low"},
        "residual": {"severity": "major", "likelihood": "very-low"},
        "control": [{"id": "HAZ-001.C1", "kind": "design", "description": "d"}],
    }
    parse_hazard_log({"hazard": [entry]})
    with pytest.raises(ConfigurationError, match=message):
        parse_hazard_log({"hazard": [{**entry, **change}]})
