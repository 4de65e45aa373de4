"""The audit chain and the access rule on PostgreSQL: concurrent appends stay one unbroken
chain, and the legitimate-relationship SQL gives the same answers as on SQLite."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from solent.app import build_archive
from solent.demo import load_demo
from solent.domain.principal import Principal, PrincipalKind
from solent.services.audit import AuditAction
from solent.settings import load_settings

pytestmark = pytest.mark.interop


def test_concurrent_audit_appends_and_access_rule(fresh_postgres_url: str, tmp_path: Path) -> None:
    settings = load_settings(environ={}, data_dir=tmp_path / "var", database_url=fresh_postgres_url)
    archive = build_archive(settings)
    try:
        errors: list[BaseException] = []

        def writer(n: int) -> None:
            who = Principal(PrincipalKind.USER, f"user{n}", "ZZA", frozenset({"clinician"}))
            try:
                for i in range(25):
                    archive.audit.record(who, AuditAction.QUERY, detail={"i": i})
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        report = archive.audit.verify()
        assert report.intact, report.problems
        assert report.records == 100

        load_demo(archive)
        clinician = Principal(PrincipalKind.USER, "drza", "ZZA", frozenset({"clinician"}))
        studies = archive.query.list_studies(clinician, limit=1000)
        seen = {(r["issuer"], r["local_id"]) for r in studies}
        assert ("ZZB", "B7730021") in seen and ("ZZB", "B7730444") not in seen
        assert not any(issuer in ("ZZC", "ZZD") for issuer, _ in seen)
        assert archive.audit.verify().intact
    finally:
        archive.close()
