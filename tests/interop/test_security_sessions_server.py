"""Issue 11 through a real `solent serve` (loopback only): login throttling per source address,
a password change made by the CLI (another process) ending a session, API token revocation, and
a database writer's rewritten audit chain caught by `solent audit verify`."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer, start_server

pytestmark = pytest.mark.interop

PASSWORD = "correct horse battery staple"


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[RunningServer]:
    server = start_server(tmp_path / "srv", extra_env={"SOLENT_LOGIN_FAILURES_PER_ADDRESS": "3"})
    server.env["SOLENT_LOGIN_FAILURES_PER_ADDRESS"] = "3"
    try:
        server.cli("trust", "add", "ZZA", "--name", "Trust A")
        server.cli("user", "add", "drza", "--trust", "ZZA", "--role", "clinician",
                   "--password", PASSWORD)  # fmt: skip
        yield server
    finally:
        server.stop()


def _from(address: str, srv: RunningServer) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=srv.base_url, transport=transport, timeout=30)


def test_one_address_is_throttled_while_another_logs_in(srv: RunningServer) -> None:
    with _from("127.0.0.2", srv) as attacker, _from("127.0.0.1", srv) as nurse:
        codes = [
            attacker.post("/api/auth/token", auth=(f"u{i}", "not the password")).status_code
            for i in range(3)
        ]
        assert codes == [401, 401, 401]
        r = attacker.post("/api/auth/token", auth=("drza", PASSWORD))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        r = nurse.post("/api/auth/token", auth=("drza", PASSWORD))
        assert r.status_code == 200, r.text
    found = json.loads(srv.cli("audit", "search", "--user", "drza", "--limit", "1000").stdout)
    throttled = [r for r in found if r["action"] == "login-failed" and "throttled" in r["detail"]]
    assert [r["actor_address"] for r in throttled] == ["127.0.0.2"]


def test_password_set_by_the_cli_ends_the_session(srv: RunningServer) -> None:
    with _from("127.0.0.1", srv) as c:
        token = c.post("/api/auth/token", auth=("drza", PASSWORD)).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        assert c.get("/api/auth/me", headers=headers).status_code == 200
        api = srv.cli("token", "create", "--api", "--user", "drza").stdout.strip().splitlines()[-1]
        api_headers = {"Authorization": f"Bearer {api}"}
        assert c.get("/api/auth/me", headers=api_headers).status_code == 200
        srv.cli("user", "password", "drza", "--password", "another long password")
        time.sleep(2.5)  # the server's look-up cache (2 s) of a change made by another process
        r = c.get("/api/auth/me", headers=headers)
        assert r.status_code == 401 and "session has ended" in r.json()["detail"]
        assert c.get("/api/auth/me", headers=api_headers).status_code == 401
        listed = json.loads(srv.cli("token", "list", "--json").stdout)
        assert [t["revoked"] for t in listed] == [True]


def test_a_rewritten_audit_chain_fails_verify(srv: RunningServer) -> None:
    with _from("127.0.0.1", srv) as c:
        assert c.post("/api/auth/token", auth=("drza", PASSWORD)).status_code == 200
    assert srv.cli("audit", "verify").returncode == 0
    # A database writer without the key: hide the login, recompute every hash (plain SHA-256,
    # the published algorithm) and the head.
    db = sqlite3.connect(srv.data_dir / "solent.db")
    try:
        cols = [
            "at", "action", "outcome", "actor_kind", "actor_name", "actor_trust", "actor_roles",
            "actor_address", "patient_issuer", "patient_id", "nhs_number", "study_uid",
            "purpose", "detail",
        ]  # fmt: skip
        rows = db.execute(f"SELECT seq, {', '.join(cols)} FROM audit_log ORDER BY seq").fetchall()
        prev = "0" * 64
        for seq, *values in rows:
            fields = dict(zip(cols, values, strict=True))
            if fields["action"] == "login":
                fields["actor_name"] = "someone-else"
            payload = json.dumps(
                {"seq": seq, "prev": prev, **fields},
                sort_keys=True,
                separators=(",", ":"),
                ensure_ascii=False,
            )
            digest = hashlib.sha256(payload.encode()).hexdigest()
            db.execute(
                "UPDATE audit_log SET actor_name=?, prev_hash=?, hash=? WHERE seq=?",
                (fields["actor_name"], prev, digest, seq),
            )
            prev = digest
        db.execute("UPDATE audit_head SET hash=?, key_id=NULL", (prev,))
        db.commit()
    finally:
        db.close()
    verify = srv.cli("audit", "verify", check=False)
    assert verify.returncode == 1, verify.stdout
    assert "unkeyed SHA-256" in verify.stdout
