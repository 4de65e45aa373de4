"""No account reads patient data as an administrator (issue 11): an account or an OpenID
Connect claim set holding ``pacs_admin`` together with a clinical or auditor role keeps the
administrator's permissions only, wherever the roles come from (an account made before the
rule, or an identity provider), and the refusal says why."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from solent.app import Archive, build_archive
from solent.domain.principal import SYSTEM, Principal, PrincipalKind
from solent.index import security as sec
from solent.protocols.http import create_app
from solent.services.access import NOT_WITH_ADMIN, Permission, permissions_of
from solent.settings import load_settings
from tests.unit.security_fixtures import add_user, demo, demo_client, demo_template, study_of
from tests.unit.test_security_auth import idp

__all__ = ["demo", "demo_client", "demo_template", "idp"]


def _user(*roles: str) -> Principal:
    return Principal(PrincipalKind.USER, "u", "ZZA", frozenset(roles))


@pytest.mark.parametrize("other", sorted(NOT_WITH_ADMIN))
def test_admin_with_a_clinical_or_audit_role_keeps_admin_only(other: str) -> None:
    assert permissions_of(_user("pacs_admin", other)) == {Permission.ADMIN}
    assert permissions_of(_user(other)) - {Permission.ADMIN}  # alone, the role still counts
    assert Permission.ADMIN in permissions_of(_user("pacs_admin"))


def test_a_legacy_mixed_account_reads_no_patient_data(
    demo: Archive, demo_client: TestClient
) -> None:
    """An account made before the rule (written straight to the index, as an old release
    did) with pacs_admin + clinician + auditor: patient reads and the audit trail refused
    with the reason, administration still works; a clinician of the same trust reads."""
    sec.add_user(demo.index, "legacy", "ZZA", ("pacs_admin", "clinician", "auditor"), None)
    h = {"Authorization": "Bearer " + demo.services.users.issue("legacy", SYSTEM).token}
    uid = study_of(demo, "ZZA", "A100001")
    c = demo_client
    for path in (f"/api/studies/{uid}", "/api/studies", "/api/audit", "/fhir/Patient?_id=1"):
        r = c.get(path, headers=h)
        assert r.status_code == 403, (path, r.text)
        assert "holds pacs_admin together with auditor, clinician" in r.text, r.text
        assert uid not in r.text
    body = {"reason": "emergency", "explanation": "x", "study_uid": uid}
    assert c.post("/api/break-glass", json=body, headers=h).status_code == 403
    assert c.get("/api/users", headers=h).status_code == 200
    clinician = add_user(demo, "drza", "ZZA", "clinician")
    assert c.get(f"/api/studies/{uid}", headers=clinician).status_code == 200


def test_oidc_claims_with_admin_and_clinical_roles_read_no_patient_data(
    tmp_path: Any, idp: tuple[str, rsa.RSAPrivateKey]
) -> None:
    jwks_url, key = idp
    issuer = "https://idp.example.nhs.uk/realms/solent"
    settings = load_settings(
        environ={},
        data_dir=tmp_path / "var",
        oidc_issuer=issuer,
        oidc_audience="solent-pacs",
        oidc_jwks_url=jwks_url,
    )
    archive = build_archive(settings)
    archive.index.add_trust("ZZA", "Trust A")
    now = int(time.time())

    def bearer(*roles: str) -> dict[str, str]:
        claims = {
            "iss": issuer,
            "aud": "solent-pacs",
            "sub": "f:1234",
            "preferred_username": "dr.oidc",
            "trust": "ZZA",
            "roles": list(roles),
            "iat": now,
            "exp": now + 300,
        }
        token = jwt.encode(claims, key, "RS256", headers={"kid": "k1"})
        return {"Authorization": "Bearer " + token}

    try:
        with TestClient(create_app(archive)) as client:
            mixed = bearer("pacs_admin", "radiologist")
            r = client.get("/api/studies", headers=mixed)
            assert r.status_code == 403
            assert "holds pacs_admin together with radiologist" in r.text
            assert client.get("/api/studies", headers=bearer("radiologist")).status_code == 200
            audit = bearer("pacs_admin", "auditor")
            assert client.get("/api/audit", headers=audit).status_code == 403
            assert client.get("/api/audit", headers=bearer("auditor")).status_code == 200
    finally:
        archive.close()
