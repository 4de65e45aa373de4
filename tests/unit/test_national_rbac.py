"""R33: access by national RBAC role (R-code), activities (B-codes, with those they include)
and the organisation (ODS code) selected at login, for CIS2-like OIDC tokens and local users."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from solent.app import Archive, build_archive
from solent.domain.national_role import NationalRole, job_role_of
from solent.errors import ConfigurationError
from solent.protocols.http import create_app
from solent.services.national_rbac import load_policy, parse_policy
from solent.settings import load_settings
from tests.unit.security_fixtures import PASSWORD, add_user, demo_template, study_of
from tests.unit.test_security_auth import idp

__all__ = ["demo_template", "idp"]

ISSUER = (
    "https://cis2.example.nhs.uk/openam/oauth2/realms/root/realms/NHSIdentity/realms/Healthcare"
)
AUDIENCE = "solent-pacs"
EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "national-rbac-policy.toml"

#: The test's own policy: B0380 includes B0264; R8000's baseline is B0264; R8003 has none.
POLICY = """
[activities.B0264]
permissions = ["read"]
[activities.B0380]
permissions = ["store", "break-glass"]
roles = ["clinician"]
includes = ["B0264"]
[activities.B0018]
permissions = ["audit"]
[job_roles.R8000]
activities = ["B0264"]
[job_roles.R8003]
activities = []
"""


def _doc(text: str) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(text)


# -- the policy ------------------------------------------------------------------------------


def test_included_activities_apply_transitively_and_a_cycle_ends() -> None:
    policy = parse_policy(
        _doc(
            """
            [activities.B0001]
            permissions = ["read"]
            includes = ["B0002"]
            [activities.B0002]
            permissions = ["store"]
            includes = ["B0003"]
            [activities.B0003]
            roles = ["radiologist"]
            includes = ["B0001"]
            [activities.B0009]
            permissions = ["audit"]
            """
        )
    )
    found = policy.resolve(NationalRole("ZZA", "R8000", frozenset({"B0001"})))
    assert found.activities == {"B0001", "B0002", "B0003"}
    # radiologist brings read, store and break-glass; B0009 is not included, so no audit.
    assert found.permissions == {"read", "store", "break-glass"}
    assert found.roles == {"radiologist"}
    assert job_role_of("S8000:G8000:R8000") == "R8000" and job_role_of("S8000") is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[activities.B0001]\npermissions = ["admin"]', "cannot be granted"),
        ('[activities.B0001]\nroles = ["pacs_admin"]', "cannot be granted"),
        ('[activities.B0001]\nincludes = ["B0002"]', "does not define"),
        ('[job_roles.R8000]\nactivities = ["B0002"]', "does not define"),
        ('[activities.X1]\npermissions = ["read"]', "B-code"),
        ('[activities.B0001]\npermission = ["read"]', "unknown key"),
    ],
)
def test_a_policy_that_would_grant_administration_or_names_nothing_is_refused(
    text: str, words: str
) -> None:
    with pytest.raises(ConfigurationError, match=words):
        parse_policy(_doc(text), "policy.toml")


def test_the_documented_example_policy_loads() -> None:
    policy = load_policy(EXAMPLE)
    found = policy.resolve(NationalRole("ZZA", "R8003", frozenset({"B0401"})))
    assert {"B0401", "B0380", "B0264"} <= found.activities


# -- over HTTP ---------------------------------------------------------------------------------


@pytest.fixture
def national(
    demo_template: Path, tmp_path: Path, idp: tuple[str, rsa.RSAPrivateKey]
) -> Iterator[tuple[Archive, TestClient, rsa.RSAPrivateKey]]:
    """The demo archive (Erin at ZZA only, Bob at ZZB only) with the policy and a CIS2-like
    issuer configured."""
    jwks_url, key = idp
    data = tmp_path / "var"
    shutil.copytree(demo_template, data)
    policy = tmp_path / "rbac.toml"
    policy.write_text(POLICY)
    settings = load_settings(
        environ={},
        data_dir=data,
        rbac_policy=policy,
        oidc_issuer=ISSUER,
        oidc_audience=AUDIENCE,
        oidc_jwks_url=jwks_url,
    )
    archive = build_archive(settings)
    with TestClient(create_app(archive), raise_server_exceptions=False) as client:
        yield archive, client, key
    archive.close()


def _cis2(key: rsa.RSAPrivateKey, roles: list[dict[str, Any]], **extra: Any) -> dict[str, str]:
    """A signed token shaped like CIS2's (scopes nationalrbacaccess and selectedrole)."""
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "555000111222",
        "preferred_username": "dr.national",
        "nhsid_nrbac_roles": roles,
        "iat": now,
        "exp": now + 300,
        **extra,
    }
    token = jwt.encode(claims, key, "RS256", headers={"kid": "k1"})
    return {"Authorization": f"Bearer {token}"}


def _role(prid: str, org: str, r_code: str, *activities: str) -> dict[str, Any]:
    return {
        "person_orgid": "1" + prid,
        "person_roleid": prid,
        "org_code": org,
        "role_name": '"Clinical":"Clinical Provision":"Example"',
        "role_code": f"S8000:G8000:{r_code}",
        "activity_codes": list(activities),
    }


TWO_ORGS = [_role("900001", "ZZA", "R8000"), _role("900002", "ZZB", "R8000")]


def test_a_cis2_session_acts_for_the_selected_organisation_only(
    national: tuple[Archive, TestClient, rsa.RSAPrivateKey],
) -> None:
    archive, client, key = national
    erin_zza = study_of(archive, "ZZA", "A100002")  # a patient known at ZZA only
    bob_zzb = study_of(archive, "ZZB", "B7730444")  # a patient known at ZZB only
    as_zzb = _cis2(key, TWO_ORGS, selected_roleid="900002")

    me = client.get("/api/auth/me", headers=as_zzb).json()
    assert me["trust"] == "ZZB" and me["trusts"] == ["ZZB"]
    assert me["permissions"] == ["read"]  # R8000's baseline B0264
    assert me["national_role"] == {
        "org": "ZZB",
        "job_role": "R8000",
        "person_role_id": "900002",
        "activities": ["B0264"],
    }
    assert client.get(f"/api/studies/{bob_zzb}", headers=as_zzb).status_code == 200
    assert client.get(f"/api/studies/{erin_zza}", headers=as_zzb).status_code == 404
    listed = {s["study_uid"] for s in client.get("/api/studies", headers=as_zzb).json()}
    assert bob_zzb in listed and erin_zza not in listed

    # The same person, the ZZA role selected: the other way round.
    as_zza = _cis2(key, TWO_ORGS, selected_roleid="900001")
    assert client.get(f"/api/studies/{erin_zza}", headers=as_zza).status_code == 200
    assert client.get(f"/api/studies/{bob_zzb}", headers=as_zza).status_code == 404

    # The audit record names the role and the organisation in force.
    views = archive.audit.search(patient_issuer="ZZB", patient_id="B7730444", action="view")
    assert [(v["actor_name"], v["actor_trust"], v["actor_roles"]) for v in views] == [
        ("dr.national", "ZZB", "R8000")
    ]


def test_a_role_not_held_or_not_selected_is_refused(
    national: tuple[Archive, TestClient, rsa.RSAPrivateKey],
) -> None:
    _archive, client, key = national
    r = client.get("/api/auth/me", headers=_cis2(key, TWO_ORGS, selected_roleid="900777"))
    assert r.status_code == 401 and "not one of the token's national roles" in r.text
    r = client.get("/api/auth/me", headers=_cis2(key, TWO_ORGS))
    assert r.status_code == 401 and "ZZA, ZZB and selects none" in r.text
    unknown_org = [_role("900003", "XYZ99", "R8000")]
    r = client.get("/api/auth/me", headers=_cis2(key, unknown_org))
    assert r.status_code == 401 and "XYZ99 is not a trust" in r.text


def test_an_activity_grants_what_it_includes_and_a_role_without_it_gets_a_readable_403(
    national: tuple[Archive, TestClient, rsa.RSAPrivateKey],
) -> None:
    archive, client, key = national
    bob_zzb = study_of(archive, "ZZB", "B7730444")
    # R8003 has no baseline; B0380 includes B0264 (read).
    both = _cis2(key, [_role("900010", "ZZB", "R8003", "B0380")])
    me = client.get("/api/auth/me", headers=both).json()
    assert me["national_role"]["activities"] == ["B0264", "B0380"]
    assert me["permissions"] == ["break-glass", "read", "store"]
    assert me["roles"] == ["clinician"]
    assert client.get(f"/api/studies/{bob_zzb}", headers=both).status_code == 200

    without = _cis2(key, [_role("900011", "ZZB", "R8003", "B0018")])
    r = client.get(f"/api/studies/{bob_zzb}", headers=without)
    assert r.status_code == 403
    detail = r.json()["detail"]
    assert "national role R8003 at ZZB" in detail and "B0264, B0380" in detail
    refused = archive.audit.search(action="permission-denied")
    assert refused[-1]["actor_trust"] == "ZZB" and refused[-1]["actor_roles"] == "R8003"


def _login(client: TestClient, name: str, org: str | None = None) -> Any:
    basic = base64.b64encode(f"{name}:{PASSWORD}".encode()).decode()
    query = f"?org={org}" if org else ""
    return client.post(f"/api/auth/token{query}", headers={"Authorization": f"Basic {basic}"})


def test_a_local_user_of_two_trusts_logs_in_for_one_given_national_roles_by_an_admin(
    national: tuple[Archive, TestClient, rsa.RSAPrivateKey],
) -> None:
    archive, client, _key = national
    erin_zza = study_of(archive, "ZZA", "A100002")
    bob_zzb = study_of(archive, "ZZB", "B7730444")
    admin = add_user(archive, "boss", "ZZA", "pacs_admin", other=("ZZB",), password=None)
    add_user(archive, "drab", "ZZA", "clinician", other=("ZZB",))

    r = client.put(
        "/api/users/drab/national-roles",
        headers=admin,
        json={"national_roles": ["ZZA:R8000", "ZZB:R8003:B0380"]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["national_roles"][1] == {
        "org": "ZZB",
        "job_role": "R8003",
        "activities": ["B0380"],
    }
    r = client.put(
        "/api/users/drab/national-roles", headers=admin, json={"national_roles": ["ZZA:R9999"]}
    )
    assert r.status_code == 400 and "R9999 not in the consortium's RBAC policy" in r.text

    # Several organisations: the user must choose one, and one they hold.
    r = _login(client, "drab")
    assert r.status_code == 403 and "choose the organisation" in r.json()["detail"]
    r = _login(client, "drab", "ZZC")
    assert r.status_code == 403 and "not at ZZC" in r.json()["detail"]
    failed = archive.audit.search(actor_name="drab", action="login-failed")
    assert json.loads(failed[-1]["detail"])["why"] == "organisation"

    r = _login(client, "drab", "ZZB")
    assert r.status_code == 200, r.text
    as_zzb = {"Authorization": f"Bearer {r.json()['access_token']}"}
    me = client.get("/api/auth/me", headers=as_zzb).json()
    assert me["trust"] == "ZZB" and me["trusts"] == ["ZZB"]
    assert me["national_role"]["job_role"] == "R8003"
    assert client.get(f"/api/studies/{erin_zza}", headers=as_zzb).status_code == 404
    assert client.get(f"/api/studies/{bob_zzb}", headers=as_zzb).status_code == 200
    # A refreshed token stays with the organisation chosen.
    r = client.post("/api/auth/token", headers=as_zzb)
    refreshed = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert client.get("/api/auth/me", headers=refreshed).json()["trust"] == "ZZB"

    # The ZZB role taken away: the session ends at once (this process) rather than widen.
    r = client.put(
        "/api/users/drab/national-roles", headers=admin, json={"national_roles": ["ZZA:R8000"]}
    )
    assert r.status_code == 200
    r = client.get("/api/auth/me", headers=as_zzb)
    assert r.status_code == 401 and "not at ZZB" in r.text


def test_a_local_user_without_national_roles_may_select_one_of_its_trusts(
    national: tuple[Archive, TestClient, rsa.RSAPrivateKey],
) -> None:
    archive, client, _key = national
    erin_zza = study_of(archive, "ZZA", "A100002")
    everywhere = add_user(archive, "drab", "ZZA", "clinician", other=("ZZB",))  # no org
    assert client.get(f"/api/studies/{erin_zza}", headers=everywhere).status_code == 200
    r = _login(client, "drab", "ZZB")
    as_zzb = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert client.get("/api/auth/me", headers=as_zzb).json()["trusts"] == ["ZZB"]
    assert client.get(f"/api/studies/{erin_zza}", headers=as_zzb).status_code == 404
    assert _login(client, "drab", "ZZD").status_code == 403


def test_the_cli_assigns_national_roles_and_mints_a_token_for_one_organisation(
    national: tuple[Archive, TestClient, rsa.RSAPrivateKey],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from solent.cli import main
    from tests.unit.security_fixtures import cli_env

    archive, client, _key = national
    cli_env(monkeypatch, Path(archive.settings.data_dir))
    monkeypatch.setenv("SOLENT_RBAC_POLICY", str(archive.settings.rbac_policy))
    add_user(archive, "drab", "ZZA", "clinician", other=("ZZB",), password=None)
    assert (
        main(["user", "national-roles", "drab", "--role", "ZZB:R8000", "--role", "ZZD:R8000"]) == 2
    )
    assert "holds no trust ZZD" in capsys.readouterr().err
    assert main(["user", "national-roles", "drab", "--role", "ZZA:R8000,ZZB:R8003:B0380"]) == 2
    assert (
        main(["user", "national-roles", "drab", "--role", "ZZA:R8000", "--role", "ZZB:R8003:B0380"])
        == 0
    )
    assert "ZZB:R8003:B0380" in capsys.readouterr().out
    assert main(["token", "create", "--user", "drab", "--org", "ZZB"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["trust"] == "ZZB" and me["national_role"]["job_role"] == "R8003"
    added = [
        json.loads(r["detail"])
        for r in archive.audit.search(action="user-admin", actor_name=None)
        if "national_roles_added" in (r["detail"] or "")
    ]
    assert added[-1]["national_roles_added"] == ["ZZA:R8000:", "ZZB:R8003:B0380"]


class _Userinfo(BaseHTTPRequestHandler):
    """An issuer's userinfo endpoint: answers for one access token only."""

    token = ""
    answer: dict[str, Any] = {}
    calls = 0

    def do_GET(self) -> None:
        type(self).calls += 1
        ok = self.headers.get("Authorization") == f"Bearer {self.token}"
        body = json.dumps(self.answer if ok else {"error": "invalid_token"}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_national_roles_come_from_userinfo_when_the_access_token_has_none(
    demo_template: Path, tmp_path: Path, idp: tuple[str, rsa.RSAPrivateKey]
) -> None:
    jwks_url, key = idp
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "555000111222", "iat": now, "exp": now + 300}
    token = jwt.encode(claims, key, "RS256", headers={"kid": "k1"})
    handler = type(
        "Userinfo",
        (_Userinfo,),
        {"token": token, "answer": {"sub": "555000111222", "nhsid_nrbac_roles": TWO_ORGS}},
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    data = tmp_path / "var"
    shutil.copytree(demo_template, data)
    (tmp_path / "rbac.toml").write_text(POLICY)
    settings = load_settings(
        environ={},
        data_dir=data,
        rbac_policy=tmp_path / "rbac.toml",
        oidc_issuer=ISSUER,
        oidc_audience=AUDIENCE,
        oidc_jwks_url=jwks_url,
        oidc_userinfo_endpoint=f"http://127.0.0.1:{server.server_address[1]}/userinfo",
    )
    archive = build_archive(settings)
    bearer = {"Authorization": f"Bearer {token}"}
    try:
        with TestClient(create_app(archive), raise_server_exceptions=False) as client:
            # Two roles and none selected in userinfo: refused, saying why.
            r = client.get("/api/auth/me", headers=bearer)
            assert r.status_code == 401 and "selects none" in r.text
            handler.answer = {**handler.answer, "selected_roleid": "900002"}
            archive.services.authenticator._userinfo.clear()  # as a minute later
            for _ in range(3):
                me = client.get("/api/auth/me", headers=bearer).json()
                assert me["trust"] == "ZZB" and me["national_role"]["job_role"] == "R8000"
            assert handler.calls == 2  # the answer is reused for the token
            handler.answer = {**handler.answer, "sub": "someone-else"}
            archive.services.authenticator._userinfo.clear()
            r = client.get("/api/auth/me", headers=bearer)
            assert r.status_code == 401 and "not about this token's subject" in r.text
    finally:
        archive.close()
        server.shutdown()
