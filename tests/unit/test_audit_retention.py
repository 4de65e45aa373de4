"""Audit retention (R38): records are kept as long as the archive unless Information Governance
sets a period; then `solent audit purge` removes the older ones, archived first, and the chain
stays provable from a checkpoint sealed under the audit key, so moving that checkpoint or
deleting a record after it is still caught."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest

from solent.app import Archive
from solent.cli import main
from solent.domain.principal import Principal, PrincipalKind
from solent.errors import ConfigurationError
from solent.services.access import AccessDenied
from solent.services.audit import AuditAction
from tests.unit.security_fixtures import cli_env

OPERATOR = Principal(PrincipalKind.SYSTEM, "cli:ig-officer", None)
AUDITOR = Principal(PrincipalKind.USER, "aud", "ZZA", frozenset({"auditor"}))


def test_nothing_is_purged_unless_a_period_is_set(archive: Archive) -> None:
    door = archive.services.audit
    assert door.retention_years == 0  # the default: as long as the archive
    with pytest.raises(ConfigurationError, match="SOLENT_AUDIT_RETENTION_YEARS"):
        door.purge(OPERATOR, lambda rows: None)
    door.retention_years = 2
    with pytest.raises(AccessDenied):
        door.purge(AUDITOR, lambda rows: None)
    assert door.verify(OPERATOR).intact


def test_purge_keeps_the_chain_provable_from_a_sealed_checkpoint(archive: Archive) -> None:
    door = archive.services.audit
    for n in range(6):
        door.record(OPERATOR, AuditAction.QUERY, detail={"n": n})
    before = door.search(OPERATOR, limit=1000)
    cut = before[3]  # records before this one are older than the period
    door.retention_years = 2
    archived: list[dict[str, object]] = []
    at = datetime.fromisoformat(str(cut["at"]))
    report = door.purge(OPERATOR, archived.extend, now=at.replace(year=at.year + 2))
    assert report.purged == int(cut["seq"]) - 1 and not report.problems
    assert [r["seq"] for r in archived] == [r["seq"] for r in before[:3]]
    assert all(r["hash"] and r["prev_hash"] for r in archived)  # checkable offline
    kept = door.search(OPERATOR, limit=1000)
    assert kept[0]["seq"] == cut["seq"]
    purge_record = [r for r in kept if "purged" in str(r["detail"])]
    assert json.loads(str(purge_record[0]["detail"]))["checkpoint_seq"] == int(cut["seq"]) - 1
    report_after = door.verify(OPERATOR)
    assert report_after.intact, report_after.problems

    db = archive.settings.data_dir / "solent.db"
    conn = sqlite3.connect(db)
    with conn:  # someone without the key hides a record by moving the checkpoint past it
        conn.execute(
            "UPDATE audit_head SET base_seq = ?, base_hash = (SELECT hash FROM audit_log "
            "WHERE seq = ?)",
            (cut["seq"], cut["seq"]),
        )
        conn.execute("DELETE FROM audit_log WHERE seq = ?", (cut["seq"],))
    conn.close()
    found = door.verify(OPERATOR)
    assert not found.intact
    (problem,) = found.problems  # the chain after it is whole: only the key proves the move
    assert "checkpoint of purged records" in problem


def test_cli_purge_archives_to_a_new_file(
    archive: Archive,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = archive.settings.data_dir
    cli_env(monkeypatch, data)
    assert main(["audit", "purge", "--no-archive"]) == 2  # no period: refused
    assert "SOLENT_AUDIT_RETENTION_YEARS" in capsys.readouterr().err
    monkeypatch.setenv("SOLENT_AUDIT_RETENTION_YEARS", "6")
    out = tmp_path / "audit-2020.jsonl"
    assert main(["audit", "purge", "--archive", str(out)]) == 0
    assert "0 audit records purged" in capsys.readouterr().out  # nothing is 6 years old yet
    assert out.exists()
    assert main(["audit", "purge", "--archive", str(out)]) == 2  # never overwritten
    capsys.readouterr()
    # A folder that does not exist: the reason, not a traceback (exit 2, nothing purged).
    assert main(["audit", "purge", "--archive", str(tmp_path / "no" / "such.jsonl")]) == 2
    assert "cannot create it: No such file or directory" in capsys.readouterr().err
