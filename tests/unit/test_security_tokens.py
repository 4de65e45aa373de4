"""Tokens (issue 11, part 6): API tokens expire and can be listed and revoked, a session's
refreshes end at an absolute lifetime, and a password change ends the user's sessions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from solent.app import Archive, build_archive
from solent.cli import main
from solent.domain.principal import SYSTEM
from solent.index import schema as t
from solent.protocols.http import create_app
from solent.security import tokens
from solent.settings import load_settings
from tests.unit.security_fixtures import PASSWORD, add_user, cli_env, client, users

__all__ = ["client"]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _login(client: TestClient, name: str, password: str = PASSWORD) -> dict[str, str]:
    r = client.post("/api/auth/token", auth=(name, password))
    assert r.status_code == 200, r.text
    return _bearer(r.json()["access_token"])


def test_api_tokens_expire_by_default(archive: Archive, client: TestClient) -> None:
    svc = users(archive)
    svc.add(SYSTEM, "ris", "ZZA", ("integration",), None)
    issued = svc.issue_api_token(SYSTEM, "ris", "RIS", days=None)
    assert issued.expires_at is not None
    expected = datetime.now(UTC) + timedelta(days=archive.settings.api_token_days)
    assert abs((issued.expires_at - expected).total_seconds()) < 60
    assert client.get("/api/auth/me", headers=_bearer(issued.token)).status_code == 200
    # The day comes: the token is refused.
    archive.index.write(
        lambda conn: conn.execute(
            update(t.api_token).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    )
    users_generation_bump(archive)
    r = client.get("/api/auth/me", headers=_bearer(issued.token))
    assert r.status_code == 401 and "expired" in r.json()["detail"]


def users_generation_bump(archive: Archive) -> None:
    """Drop this process's look-up caches, as any change made through the service does."""
    from solent.index import security as sec

    sec._changed()


def test_tokens_are_listed_and_revoked_over_the_api(archive: Archive, client: TestClient) -> None:
    admin = add_user(archive, "admin-a", "ZZA", "pacs_admin")
    users(archive).add(SYSTEM, "ris", "ZZA", ("integration",), None)
    users(archive).add(SYSTEM, "risb", "ZZB", ("integration",), None)
    r = client.post("/api/tokens", headers=admin, json={"user": "ris", "label": "RIS", "days": 7})
    assert r.status_code == 201, r.text
    token, token_id = r.json()["token"], r.json()["id"]
    other = users(archive).issue_api_token(SYSTEM, "risb", "RIS of ZZB", 7)
    listed = client.get("/api/tokens", headers=admin).json()
    assert [(x["id"], x["user"], x["revoked"]) for x in listed] == [(token_id, "ris", False)]
    assert all(token not in json.dumps(x) for x in listed)
    assert client.get("/api/auth/me", headers=_bearer(token)).status_code == 200
    # Another trust's token: as if it did not exist.
    assert client.post(f"/api/tokens/{other.id}/revoke", headers=admin).status_code == 404
    assert client.post("/api/tokens", headers=admin, json={"user": "risb"}).status_code == 404
    r = client.post(f"/api/tokens/{token_id}/revoke", headers=admin)
    assert r.status_code == 200 and r.json()["revoked"] is True
    r = client.get("/api/auth/me", headers=_bearer(token))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert client.get("/api/auth/me", headers=_bearer(other.token)).status_code == 200
    audited = [json.loads(r["detail"]) for r in archive.audit.search(action="user-admin")]
    assert {"api_token_revoked": token_id, "user": "ris"} in audited


def test_tokens_are_listed_and_revoked_by_the_cli(
    archive: Archive,
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli_env(monkeypatch, archive.settings.data_dir)
    users(archive).add(SYSTEM, "ris", "ZZA", ("integration",), None)
    assert main(["token", "create", "--api", "--user", "ris", "--label", "RIS"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert client.get("/api/auth/me", headers=_bearer(token)).status_code == 200
    assert main(["token", "list", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["user"] == "ris" and row["label"] == "RIS" and not row["revoked"]
    assert main(["token", "revoke", str(row["id"])]) == 0
    capsys.readouterr()
    users_generation_bump(archive)  # the CLI ran as if in another process
    assert client.get("/api/auth/me", headers=_bearer(token)).status_code == 401
    assert main(["token", "revoke", "9999"]) != 0
    assert "does not exist" in capsys.readouterr().err


def test_password_change_ends_sessions_and_tokens(archive: Archive, client: TestClient) -> None:
    add_user(archive, "drza", "ZZA", "clinician")
    old = _login(client, "drza")
    api = users(archive).issue_api_token(SYSTEM, "drza", "script", 7)
    assert client.get("/api/auth/me", headers=_bearer(api.token)).status_code == 200
    new_password = "a brand new password"
    r = client.post(
        "/api/auth/password",
        headers=old,
        json={"current_password": PASSWORD, "new_password": new_password},
    )
    assert r.status_code == 200, r.text
    r = client.get("/api/auth/me", headers=old)
    assert r.status_code == 401 and "session has ended" in r.json()["detail"]
    assert client.get("/api/auth/me", headers=_bearer(api.token)).status_code == 401
    assert client.post("/api/auth/token", headers=old).status_code == 401  # no refresh either
    assert client.post("/api/auth/token", auth=("drza", PASSWORD)).status_code == 401
    assert (
        client.get("/api/auth/me", headers=_login(client, "drza", new_password)).status_code == 200
    )


def test_admin_password_reset_ends_sessions(archive: Archive, client: TestClient) -> None:
    admin = add_user(archive, "admin-a", "ZZA", "pacs_admin")
    drza = add_user(archive, "drza", "ZZA", "clinician")
    r = client.post("/api/users/drza/password", headers=admin, json={"password": "reset by admin!"})
    assert r.status_code == 200
    assert client.get("/api/auth/me", headers=drza).status_code == 401
    fresh = _login(client, "drza", "reset by admin!")
    assert client.post("/api/auth/logout", headers=fresh).status_code == 200
    assert client.get("/api/auth/me", headers=fresh).status_code == 401


def test_refresh_is_bounded_by_the_session_lifetime(tmp_path: Path) -> None:
    archive = build_archive(
        load_settings(environ={}, data_dir=tmp_path / "var", session_max_hours=1)
    )
    archive.index.add_trust("ZZA", "Trust A")
    try:
        svc = users(archive)
        svc.add(SYSTEM, "drza", "ZZA", ("clinician",), PASSWORD)
        with TestClient(create_app(archive), raise_server_exceptions=False) as c:
            started = datetime.now(UTC) - timedelta(minutes=50)
            recent = svc.issue("drza", SYSTEM, auth_time=started)
            r = c.post("/api/auth/token", headers=_bearer(recent.token))
            assert r.status_code == 200, r.text
            expires = datetime.fromisoformat(r.json()["expires_at"])
            # 60-minute tokens, but the session ends 60 minutes after the password was checked.
            assert expires <= started + timedelta(hours=1, seconds=1)
            refreshed = _bearer(r.json()["access_token"])
            assert c.get("/api/auth/me", headers=refreshed).status_code == 200
            # A session begun more than session_max_hours ago cannot be refreshed, although
            # its last token is still valid for a few minutes.
            begun = datetime.now(UTC) - timedelta(minutes=61)
            token, _ = tokens.issue_local(
                svc.key,
                "drza",
                timedelta(minutes=5),
                {"sep": 0, "auth_time": int(begun.timestamp())},
            )
            assert c.get("/api/auth/me", headers=_bearer(token)).status_code == 200
            r = c.post("/api/auth/token", headers=_bearer(token))
            assert r.status_code == 401 and "absolute lifetime" in r.json()["detail"]
            # An API token is not a session: it cannot be turned into bearer tokens.
            api = svc.issue_api_token(SYSTEM, "drza", "x", 1)
            assert c.post("/api/auth/token", headers=_bearer(api.token)).status_code == 401
    finally:
        archive.close()
