"""Audit that survives a database writer (issue 11, part 7): the chain is an HMAC under a key
kept outside the index, so a chain rewritten by someone with database access only is caught."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy import select, update

from solent.app import Archive, build_archive
from solent.cli import main
from solent.domain.principal import SYSTEM
from solent.index import audit as chain
from solent.index import schema as t
from solent.index.sql import Index
from solent.security.audit_key import audit_key_path
from solent.services.audit import AuditAction, AuditTrail
from solent.settings import load_settings
from tests.unit.security_fixtures import cli_env


def _write_some(archive: Archive, n: int = 5) -> None:
    for i in range(n):
        archive.audit.record(SYSTEM, AuditAction.QUERY, detail={"n": i})


def _rewrite_plain(index: Index, change: dict[int, str]) -> None:
    """What a database writer without the key can do: edit rows, then recompute the whole
    chain (and the head) with plain SHA-256, exactly as the code did before the key."""

    def op(conn: object) -> None:
        prev = chain.GENESIS
        rows = conn.execute(select(t.audit_log).order_by(t.audit_log.c.seq)).mappings().all()  # type: ignore[attr-defined]
        for r in rows:
            fields = dict(r)
            if r["seq"] in change:
                fields["detail"] = change[r["seq"]]
            digest = chain.record_hash(int(r["seq"]), prev, fields)
            conn.execute(  # type: ignore[attr-defined]
                update(t.audit_log)
                .where(t.audit_log.c.seq == r["seq"])
                .values(detail=fields["detail"], prev_hash=prev, hash=digest)
            )
            prev = digest
        conn.execute(update(t.audit_head).values(hash=prev, key_id=None))  # type: ignore[attr-defined]

    index.write(op)  # type: ignore[arg-type]


def test_a_rewritten_chain_is_detected(
    archive: Archive, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_some(archive)
    assert archive.audit.verify().intact
    _rewrite_plain(archive.index, {3: '{"n":"nothing to see"}'})
    report = archive.audit.verify()
    assert not report.intact
    assert any("records 1..5 carry unkeyed" in p for p in report.problems), report.problems
    cli_env(monkeypatch, archive.settings.data_dir)
    assert main(["audit", "verify"]) == 1
    assert "NOT intact" in capsys.readouterr().out


def test_a_chain_recomputed_with_another_key_is_detected(archive: Archive) -> None:
    _write_some(archive)
    other = Index(archive.settings.effective_database_url)
    try:
        chain.use_key(other, b"a key the attacker made up, 32b")
        # The attacker's process appends with its key: refused, the trail is sealed with ours.
        with pytest.raises(chain.AuditKeyError):
            AuditTrail(other).record(SYSTEM, AuditAction.QUERY)
    finally:
        other.close()
    assert archive.audit.verify().intact


def test_the_key_lives_outside_the_index(archive: Archive) -> None:
    _write_some(archive, 1)
    path = audit_key_path(archive.settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_bytes().strip()
    assert len(key) >= 32
    with archive.index.engine.connect() as conn:
        dump = "\n".join(
            str(r)
            for table in ("audit_log", "audit_head")
            for r in conn.exec_driver_sql(f"SELECT * FROM {table}")
        )
    assert key.decode() not in dump


def test_a_node_with_another_key_refuses_to_append(tmp_path: Path) -> None:
    data = tmp_path / "var"
    first = build_archive(load_settings(environ={}, data_dir=data))
    _write_some(first, 2)
    first.close()
    audit_key_path(load_settings(environ={}, data_dir=data)).unlink()  # the key file is lost
    # A node with another key does not start (rather than fail every audited request).
    with pytest.raises(chain.AuditKeyError, match="not the key that sealed"):
        build_archive(load_settings(environ={}, data_dir=data))
    # Nor does it append, should it hold an index another way.
    other = Index(load_settings(environ={}, data_dir=data).effective_database_url)
    try:
        chain.use_key(other, b"another key of at least 16 bytes")
        with pytest.raises(chain.AuditKeyError, match="not the key that sealed"):
            AuditTrail(other).record(SYSTEM, AuditAction.QUERY)
        report = chain.verify(other)
        assert not report.intact
        assert any("another audit key" in p for p in report.problems)
    finally:
        other.close()


def test_the_key_can_come_from_settings(tmp_path: Path) -> None:
    s = load_settings(environ={}, data_dir=tmp_path / "var", audit_key="shared by all the nodes!")
    archive = build_archive(s)
    try:
        _write_some(archive, 2)
        assert archive.audit.verify().intact
        assert not audit_key_path(s).exists()
    finally:
        archive.close()


def test_an_unkeyed_trail_from_before_the_upgrade_is_sealed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(environ={}, data_dir=tmp_path / "var")
    settings.data_dir.mkdir(parents=True)
    legacy = Index(settings.effective_database_url)  # as written before revision 0002
    legacy.migrate()
    for i in range(3):
        AuditTrail(legacy).record(SYSTEM, AuditAction.QUERY, detail={"old": i})
    legacy.close()
    archive = build_archive(settings)
    try:
        _write_some(archive, 2)  # new records are keyed, chained onto the old ones
        report = archive.audit.verify()
        assert report.records == 5 and report.unkeyed == 3 and not report.intact
        assert any("solent audit seal" in p for p in report.problems)
        cli_env(monkeypatch, settings.data_dir)
        assert main(["audit", "seal"]) == 0
        assert "5 records chained under the audit key (3 were unkeyed)" in capsys.readouterr().out
        report = archive.audit.verify()
        assert report.intact and report.unkeyed == 0, report.problems
        # A process without the key cannot append to the sealed trail.
        bare = Index(settings.effective_database_url)
        with pytest.raises(chain.AuditKeyError):
            AuditTrail(bare).record(SYSTEM, AuditAction.QUERY)
        bare.close()
        # And from now on a plain rewrite is caught like anywhere else.
        _rewrite_plain(archive.index, {})
        assert not archive.audit.verify().intact
    finally:
        archive.close()


def test_seal_refuses_a_broken_chain(archive: Archive) -> None:
    _write_some(archive, 3)
    archive.index.write(
        lambda conn: conn.execute(
            update(t.audit_log).where(t.audit_log.c.seq == 2).values(detail='{"n":99}')
        )
    )
    before = archive.index.write(
        lambda conn: [r.hash for r in conn.execute(select(t.audit_log.c.hash))]
    )
    report = archive.audit.seal()
    assert not report.intact and any("record 2 was changed" in p for p in report.problems)
    after = archive.index.write(
        lambda conn: [r.hash for r in conn.execute(select(t.audit_log.c.hash))]
    )
    assert after == before


def test_the_keyed_chain_on_postgresql(tmp_path: Path, fresh_postgres_url: str) -> None:
    """Same guarantees on the other index backend (appends lock the head row there)."""
    archive = build_archive(
        load_settings(environ={}, data_dir=tmp_path / "var", database_url=fresh_postgres_url)
    )
    try:
        _write_some(archive, 4)
        assert archive.audit.verify().intact
        assert archive.audit.seal().intact  # sealing an already keyed trail changes nothing
        assert archive.audit.verify().intact
        _rewrite_plain(archive.index, {2: '{"n":"edited"}'})
        report = archive.audit.verify()
        assert not report.intact and report.unkeyed == 4
    finally:
        archive.close()
