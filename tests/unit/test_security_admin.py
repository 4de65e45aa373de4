"""Administration cannot grant itself patient access (issue 11, part 4).

A trust administrator manages its own trust's users only and gives only its own trust; no
account holds pacs_admin with a clinical or auditor role; every grant is audited.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from solent.app import Archive
from solent.cli import main
from solent.domain.principal import SYSTEM
from tests.unit.security_fixtures import PASSWORD, add_user, cli_env, client, users

__all__ = ["client"]


def _grants(archive: Archive, user: str) -> list[dict[str, object]]:
    rows = archive.audit.search(action="user-admin", limit=1000)
    return [
        {**json.loads(r["detail"]), "by": r["actor_name"]}
        for r in rows
        if json.loads(r["detail"] or "{}").get("user") == user
    ]


def test_trust_admin_cannot_create_users_of_another_trust(
    archive: Archive, client: TestClient
) -> None:
    admin = add_user(archive, "admin-a", "ZZA", "pacs_admin")
    body = {"name": "drzb", "trust": "ZZB", "roles": ["clinician"], "password": PASSWORD}
    r = client.post("/api/users", headers=admin, json=body)
    assert r.status_code == 403 and "cannot give trust ZZB" in r.json()["detail"]
    # Nor slip the other trust in as a further trust.
    body = {**body, "trust": "ZZA", "other_trusts": ["ZZB"]}
    assert client.post("/api/users", headers=admin, json=body).status_code == 403
    assert users(archive).get("drzb") is None
    refused = archive.audit.search(action="permission-denied", actor_name="admin-a")
    assert len(refused) == 2 and "cannot give trust ZZB" in refused[0]["detail"]
    # Its own trust works, and the grant is audited: who, whom, what.
    body = {**body, "other_trusts": []}
    assert client.post("/api/users", headers=admin, json=body).status_code == 201
    [grant] = _grants(archive, "drzb")
    assert grant["by"] == "admin-a"
    assert grant["roles_added"] == ["clinician"] and grant["trusts_added"] == ["ZZA"]


def test_admin_with_clinical_or_auditor_role_is_refused(
    archive: Archive, client: TestClient
) -> None:
    admin = add_user(archive, "admin-a", "ZZA", "pacs_admin")
    for roles in (
        ["pacs_admin", "clinician"],
        ["pacs_admin", "auditor"],
        ["integration", "pacs_admin"],
    ):
        body = {"name": "mixed", "trust": "ZZA", "roles": roles, "password": PASSWORD}
        r = client.post("/api/users", headers=admin, json=body)
        assert r.status_code == 400, roles
        assert "pacs_admin cannot be combined" in r.json()["detail"]
    assert users(archive).get("mixed") is None
    # ... and on a role change of an existing account.
    add_user(archive, "drza", "ZZA", "clinician")
    r = client.put(
        "/api/users/drza/roles", headers=admin, json={"roles": ["clinician", "pacs_admin"]}
    )
    assert r.status_code == 400 and "pacs_admin cannot be combined" in r.json()["detail"]
    row = users(archive).get("drza")
    assert row is not None and row.roles == ("clinician",)


def test_admin_cannot_make_itself_a_clinician(archive: Archive, client: TestClient) -> None:
    admin = add_user(archive, "admin-a", "ZZA", "pacs_admin")
    r = client.put("/api/users/admin-a/roles", headers=admin, json={"roles": ["clinician"]})
    assert r.status_code == 403
    row = users(archive).get("admin-a")
    assert row is not None and row.roles == ("pacs_admin",)


def test_users_of_another_trust_look_like_no_user(archive: Archive, client: TestClient) -> None:
    admin = add_user(archive, "admin-a", "ZZA", "pacs_admin")
    add_user(archive, "drzb", "ZZB", "clinician")
    add_user(archive, "drza", "ZZA", "clinician")
    names = {u["name"] for u in client.get("/api/users", headers=admin).json()}
    assert names == {"admin-a", "drza"}
    missing = client.post("/api/users/nobody/disable", headers=admin)
    for method, path, body in (
        ("get", "/api/users/drzb", None),
        ("post", "/api/users/drzb/disable", None),
        ("post", "/api/users/drzb/password", {"password": "a new password 1"}),
        ("put", "/api/users/drzb/roles", {"roles": ["radiologist"]}),
        ("put", "/api/users/drzb/trusts", {"trust": "ZZA"}),
    ):
        r = client.request(method, path, headers=admin, json=body)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["detail"] == missing.json()["detail"].replace("nobody", "drzb")
    row = users(archive).get("drzb")
    assert row is not None and not row.disabled and row.trust == "ZZB"
    assert row.roles == ("clinician",)


def test_trust_admin_manages_its_own_users(archive: Archive, client: TestClient) -> None:
    admin = add_user(archive, "admin-a", "ZZA", "pacs_admin")
    drza = add_user(archive, "drza", "ZZA", "clinician")
    r = client.put("/api/users/drza/roles", headers=admin, json={"roles": ["radiologist"]})
    assert r.status_code == 200 and r.json()["roles"] == ["radiologist"]
    assert client.post("/api/users/drza/disable", headers=admin).status_code == 200
    assert client.get("/api/auth/me", headers=drza).status_code == 401
    assert client.post("/api/users/drza/enable", headers=admin).status_code == 200
    assert client.get("/api/auth/me", headers=drza).status_code == 200
    grants = _grants(archive, "drza")
    assert {"roles_added": ["radiologist"], "roles_removed": ["clinician"]}.items() <= {
        k: v for g in grants for k, v in g.items()
    }.items()
    assert [g.get("disabled") for g in grants if "disabled" in g] == [True, False]


def test_regional_admin_manages_every_trust_and_is_made_by_the_cli(
    archive: Archive, client: TestClient, settings_env: None
) -> None:
    assert main(["user", "add", "region", "--role", "pacs_admin", "--password", PASSWORD]) == 0
    token = client.post("/api/auth/token", auth=("region", PASSWORD)).json()["access_token"]
    region = {"Authorization": f"Bearer {token}"}
    body = {"name": "adminb", "trust": "ZZB", "roles": ["pacs_admin"], "password": PASSWORD}
    assert client.post("/api/users", headers=region, json=body).status_code == 201
    r = client.put("/api/users/adminb/trusts", headers=region, json={"trust": "ZZA"})
    assert r.status_code == 200 and r.json()["trust"] == "ZZA"
    [*_, moved] = _grants(archive, "adminb")
    assert moved["trusts_added"] == ["ZZA"] and moved["trusts_removed"] == ["ZZB"]
    # A trustless account is an administrator only, and only the CLI makes one.
    assert main(["user", "add", "odd", "--role", "clinician", "--password", PASSWORD]) == 2
    adminb = add_user(archive, "adminb2", "ZZB", "pacs_admin")
    assert client.get("/api/users/region", headers=adminb).status_code == 404
    assert (
        client.post(
            "/api/users/region/password", headers=adminb, json={"password": "x" * 20}
        ).status_code
        == 404
    )


def test_empty_trust_code_is_refused_not_a_server_error(
    archive: Archive, client: TestClient
) -> None:
    """An empty trust slipped past the administrator's scope check into the database (500)."""
    admin = add_user(archive, "admin-a", "ZZA", "pacs_admin")
    add_user(archive, "drza", "ZZA", "clinician")
    body = {"name": "blank", "trust": "", "roles": ["clinician"], "password": PASSWORD}
    for sent in (body, {**body, "trust": "ZZA", "other_trusts": [""]}):
        r = client.post("/api/users", headers=admin, json=sent)
        assert r.status_code == 400 and "trust code cannot be empty" in r.json()["detail"]
    assert users(archive).get("blank") is None
    r = client.put("/api/users/drza/trusts", headers=admin, json={"trust": ""})
    assert r.status_code == 400 and "trust code cannot be empty" in r.json()["detail"]
    row = users(archive).get("drza")
    assert row is not None and row.trust == "ZZA"


def test_cli_refuses_admin_with_clinical_role(
    archive: Archive, settings_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "user",
            "add",
            "mixed",
            "--trust",
            "ZZA",
            "--role",
            "pacs_admin,radiologist",
            "--password",
            PASSWORD,
        ]
    )
    assert code == 2 and "pacs_admin cannot be combined with radiologist" in capsys.readouterr().err
    users(archive).add(SYSTEM, "drza", "ZZA", ("clinician",), PASSWORD)
    assert main(["user", "roles", "drza", "--role", "clinician,pacs_admin"]) == 2
    assert main(["user", "roles", "drza", "--role", "radiologist"]) == 0
    assert main(["user", "trusts", "drza", "--trust", "ZZA", "--also-trust", "ZZB"]) == 0
    row = users(archive).get("drza")
    assert row is not None and row.roles == ("radiologist",) and row.trusts == {"ZZA", "ZZB"}
    cli_grants = [g for g in _grants(archive, "drza") if str(g["by"]).startswith("cli:")]
    assert any(g.get("trusts_added") == ["ZZB"] for g in cli_grants)


@pytest.fixture
def settings_env(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the CLI at the test archive's data directory."""
    cli_env(monkeypatch, Path(archive.settings.data_dir))
