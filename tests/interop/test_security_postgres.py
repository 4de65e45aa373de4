"""The audit chain and the access rule on PostgreSQL: concurrent appends stay one unbroken
chain, and the legitimate-relationship SQL gives the same answers as on SQLite."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from solent.app import build_archive
from solent.demo import load_demo
from solent.domain.principal import Principal, PrincipalKind
from solent.services.audit import AuditAction, AuditTrail, audit_fields
from solent.settings import load_settings

pytestmark = pytest.mark.interop


def at_once(*jobs: Callable[[], None]) -> None:
    """Run ``jobs`` in threads at the same time; re-raise the first error any of them hit."""
    errors: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:  # pragma: no cover - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]


def test_concurrent_audit_appends_and_access_rule(fresh_postgres_url: str, tmp_path: Path) -> None:
    settings = load_settings(environ={}, data_dir=tmp_path / "var", database_url=fresh_postgres_url)
    archive = build_archive(settings)
    try:

        def writer(n: int) -> None:
            who = Principal(PrincipalKind.USER, f"user{n}", "ZZA", frozenset({"clinician"}))
            for i in range(25):
                archive.audit.record(who, AuditAction.QUERY, detail={"i": i})

        at_once(*(partial(writer, n) for n in range(4)))
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


def test_records_chained_by_the_database_interleave_and_are_verified(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    """Records of reads are chained inside PostgreSQL in one round trip (append_alone);
    records written with a data change, inside its transaction, by the node. Both kinds,
    appended at once from many threads, form one chain that `verify` accepts, and an edited
    record is caught."""
    from sqlalchemy import text

    from solent.domain.attributes import Level
    from solent.domain.matching import parse_query
    from solent.index import audit as chain

    settings = load_settings(environ={}, data_dir=tmp_path / "var", database_url=fresh_postgres_url)
    archive = build_archive(settings)
    try:
        load_demo(archive)
        clinician = Principal(PrincipalKind.USER, "drza", "ZZA", frozenset({"clinician"}))
        query = parse_query(Level.STUDY, {"PatientID": "A100001"}, linked=True)

        def searcher() -> None:
            for _ in range(20):
                found = archive.services.query.find(clinician, query, limit=10, max_results=100)
                assert found.rows

        def ingest() -> None:  # records appended inside a data change's transaction
            for i in range(20):
                fields = audit_fields(clinician, AuditAction.STORE, detail={"i": i})
                archive.index.write(lambda c, f=fields: AuditTrail.append_in(c, f))

        before = archive.audit.verify().records
        at_once(searcher, searcher, searcher, ingest)
        report = archive.audit.verify()
        assert report.intact, report.problems
        assert report.records == before + 80
        with archive.index.read() as conn:
            key = chain.key_of(conn)
            rows = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM audit_log"))]
        by_db = [
            r
            for r in rows
            if r["hash"] == chain.linked_hash(r["prev_hash"], chain.record_mac(key, r))
        ]
        assert len(by_db) == 60 and {r["action"] for r in by_db} == {AuditAction.QUERY.value}
        assert all(r["patient_id"] == "A100001" for r in by_db)
        seq = by_db[0]["seq"]
        archive.index.write(
            lambda c: c.execute(
                text("UPDATE audit_log SET patient_id = 'A999999' WHERE seq = :s"), {"s": seq}
            )
        )
        problems = archive.audit.verify().problems
        assert any(f"record {seq} was changed" in p for p in problems), problems
    finally:
        archive.close()
