"""Revision 0002 upgrades an archive that already has users, API tokens and audit records."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import insert, text

from solent.app import build_archive
from solent.domain.principal import SYSTEM
from solent.index import audit as chain
from solent.index import schema as t
from solent.index.migrate import upgrade
from solent.index.sql import Index
from solent.services.audit import AuditAction, audit_fields
from solent.settings import load_settings


def _at_0001_with_data(url: str) -> None:
    index = Index(url)
    upgrade(index, "0001")

    def op(conn: object) -> None:
        for sql in (
            "INSERT INTO trust(code, name, created_at) VALUES ('ZZA', 'A', '2026-11-30')",
            "INSERT INTO app_user(name, trust_code, other_trusts, roles, password_hash, "
            "disabled, created_at) VALUES ('ris', 'ZZA', '', 'integration', NULL, false, "
            "'2026-11-30')",
            "INSERT INTO api_token(token_sha256, user_name, label, created_at, revoked) "
            "VALUES ('ab', 'ris', 'RIS', '2026-11-30', false)",
        ):
            conn.execute(text(sql))  # type: ignore[attr-defined]

    index.write(op)  # type: ignore[arg-type]
    # An audit record as the code before 0002 wrote it: plain SHA-256, no key fingerprint.
    fields = audit_fields(SYSTEM, AuditAction.USER_ADMIN, detail={"before": "0002"})
    digest = chain.record_hash(1, chain.GENESIS, fields)
    index.write(
        lambda conn: (
            conn.execute(
                insert(t.audit_log).values(seq=1, prev_hash=chain.GENESIS, hash=digest, **fields)
            ),
            conn.execute(
                text("INSERT INTO audit_head(id, seq, hash) VALUES (1, 1, :h)"), {"h": digest}
            ),
        )
    )
    index.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrade_keeps_users_tokens_and_the_trail(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    data = tmp_path / "var"
    data.mkdir()
    url = (
        f"sqlite:///{data / 'solent.db'}"
        if backend == "sqlite"
        else str(request.getfixturevalue("fresh_postgres_url"))
    )
    _at_0001_with_data(url)
    archive = build_archive(load_settings(environ={}, data_dir=data, database_url=url))
    try:
        users = archive.services.users
        row = users.get("ris")
        assert row is not None and row.session_epoch == 0 and row.trust == "ZZA"
        [token] = users.list_tokens(SYSTEM)
        assert token.user_name == "ris" and not token.revoked
        users.add(SYSTEM, "root", None, ("pacs_admin",), "a regional admin password")
        root = users.get("root")
        assert root is not None and root.trust is None
        report = archive.audit.verify()
        assert report.unkeyed == 1 and not report.intact  # until `solent audit seal`
        assert archive.audit.seal().intact and archive.audit.verify().intact
    finally:
        archive.close()
