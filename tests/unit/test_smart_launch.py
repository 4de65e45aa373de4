"""R23 (server side): SMART discovery, and a launch token's patient/ scopes limiting the FHIR
API to the launch patient and to the resource types the scopes name."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from sqlalchemy import select

from solent.app import Archive, build_archive
from solent.index import schema as t
from solent.protocols.http import create_app
from solent.services.smart import LaunchInvalid, allows, launch_of
from solent.settings import load_settings
from tests.unit.security_fixtures import demo_template, study_of
from tests.unit.test_security_auth import idp

__all__ = ["demo_template", "idp"]

ISSUER = "https://idp.example.nhs.uk/realms/solent"
BOB_ID = "https://solent-pacs.nhs.example/Id/ZZB/patient-id|B7730444"


@pytest.fixture
def smart(
    demo_template: Path, tmp_path: Path, idp: tuple[str, rsa.RSAPrivateKey]
) -> Iterator[tuple[Archive, TestClient, rsa.RSAPrivateKey]]:
    jwks_url, key = idp
    data = tmp_path / "var"
    shutil.copytree(demo_template, data)
    settings = load_settings(
        environ={},
        data_dir=data,
        oidc_issuer=ISSUER,
        oidc_audience="solent-pacs",
        oidc_jwks_url=jwks_url,
        oidc_authorization_endpoint=f"{ISSUER}/auth",
        oidc_token_endpoint=f"{ISSUER}/token",
    )
    archive = build_archive(settings)
    with TestClient(create_app(archive), raise_server_exceptions=False) as client:
        yield archive, client, key
    archive.close()


def _pk(archive: Archive, issuer: str, local_id: str) -> int:
    p = t.patient.c
    with archive.index.read() as conn:
        return int(
            conn.execute(
                select(p.pk).where(p.issuer == issuer, p.local_id == local_id)
            ).scalar_one()
        )


def _bearer(key: rsa.RSAPrivateKey, **claims: Any) -> dict[str, str]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": "solent-pacs",
        "sub": "f:77",
        "preferred_username": "dr.launch",
        "trust": "ZZB",
        "roles": ["clinician"],
        "iat": now,
        "exp": now + 300,
    }
    token = jwt.encode({**base, **claims}, key, "RS256", headers={"kid": "k1"})
    return {"Authorization": f"Bearer {token}"}


def test_smart_configuration_is_public_and_names_the_issuer(
    smart: tuple[Archive, TestClient, rsa.RSAPrivateKey],
) -> None:
    _archive, client, _key = smart
    r = client.get("/fhir/.well-known/smart-configuration")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["issuer"] == ISSUER and doc["authorization_endpoint"] == f"{ISSUER}/auth"
    assert doc["token_endpoint"] == f"{ISSUER}/token" and doc["jwks_uri"].endswith("/certs")
    assert {"launch-ehr", "context-ehr-patient", "permission-v2"} <= set(doc["capabilities"])
    assert "patient/ImagingStudy.rs" in doc["scopes_supported"]
    assert doc["code_challenge_methods_supported"] == ["S256"]


def test_a_launch_token_reads_the_launch_patients_imaging_studies_only(
    smart: tuple[Archive, TestClient, rsa.RSAPrivateKey],
) -> None:
    archive, client, key = smart
    bob, alice_zzb = _pk(archive, "ZZB", "B7730444"), _pk(archive, "ZZB", "B7730021")
    scope = "launch openid fhirUser patient/ImagingStudy.rs"
    launched = _bearer(key, scope=scope, patient=str(bob))
    plain = _bearer(key)  # the same user without a launch: both patients are theirs

    r = client.get(f"/fhir/ImagingStudy?patient=Patient/{bob}", headers=launched)
    assert r.status_code == 200, r.text
    assert [e["resource"]["subject"]["reference"] for e in r.json()["entry"]] == [f"Patient/{bob}"]
    alice_study = study_of(archive, "ZZB", "B7730021")
    found = client.get(f"/fhir/ImagingStudy?identifier=urn:oid:{alice_study}", headers=plain).json()
    alice_id = found["entry"][0]["resource"]["id"]
    assert client.get(f"/fhir/ImagingStudy/{alice_id}", headers=plain).status_code == 200
    # Another patient the user may see, but not the launch patient: as if it did not exist.
    assert client.get(f"/fhir/ImagingStudy/{alice_id}", headers=launched).status_code == 404
    r = client.get(f"/fhir/ImagingStudy?patient=Patient/{alice_zzb}", headers=launched)
    assert r.status_code == 200 and r.json().get("entry", []) == []
    # The launch also limits the rest of the API, not only FHIR.
    listed = client.get("/api/studies", headers=launched).json()
    assert {s["local_id"] for s in listed} == {"B7730444"}

    # Resource types the scopes do not name: a readable 403 OperationOutcome, audited.
    r = client.get(f"/fhir/Patient/{bob}", headers=launched)
    assert r.status_code == 403
    assert "patient/Patient.r" in r.json()["issue"][0]["diagnostics"]
    r = client.get(f"/fhir/DiagnosticReport?patient=Patient/{bob}", headers=launched)
    assert r.status_code == 403
    # The IHE surfaces too: PIXm, MHD's DocumentReference and Binary, the ITI-104 feed.
    for path in (
        f"/fhir/Patient/$ihe-pix?sourceIdentifier={BOB_ID}",
        f"/fhir/DocumentReference?patient=Patient/{bob}",
        f"/fhir/Binary/{bob}",
    ):
        r = client.get(path, headers={**launched, "Accept": "application/fhir+json"})
        assert r.status_code == 403, path
    mhd = _bearer(
        key, scope="launch patient/DocumentReference.rs patient/Binary.read", patient=str(bob)
    )
    docs = client.get(f"/fhir/DocumentReference?patient=Patient/{bob}", headers=mhd)
    assert docs.status_code == 200 and docs.json()["entry"]
    r = client.put(
        f"/fhir/Patient?identifier={BOB_ID}",
        headers=mhd,
        json={"resourceType": "Patient"},
    )
    assert r.status_code == 403  # "read" scopes never write
    refused = archive.audit.search(action="permission-denied", actor_name="dr.launch")
    assert refused and "smart_scopes" in (refused[-1]["detail"] or "")


def test_a_launch_token_without_its_patient_or_with_a_scope_not_understood_is_refused(
    smart: tuple[Archive, TestClient, rsa.RSAPrivateKey],
) -> None:
    _archive, client, key = smart
    r = client.get("/fhir/metadata", headers=_bearer(key, scope="launch patient/ImagingStudy.rs"))
    assert r.status_code == 401 and "launch patient" in r.text
    r = client.get("/fhir/metadata", headers=_bearer(key, scope="patient/Foo", patient="1"))
    assert r.status_code == 401 and "not a SMART patient scope" in r.text


@pytest.mark.parametrize(
    ("scope", "interaction", "allowed"),
    [
        ("patient/Patient.read", "r", True),
        ("patient/Patient.read", "s", True),
        ("patient/Patient.read", "u", False),  # v1 read never writes (it used to allow all)
        ("patient/Patient.write", "u", True),
        ("patient/Patient.write", "r", False),
        ("patient/Patient.rs", "u", False),
        ("patient/Patient.cu", "u", True),
        ("patient/*.*", "u", True),
        ("patient/ImagingStudy.read", "r", True),
    ],
)
def test_smart_scope_names_only_its_interactions(
    scope: str, interaction: str, allowed: bool
) -> None:
    launch = launch_of({"scope": scope, "patient": "7"})
    assert launch is not None
    kind = scope.split("/")[1].split(".")[0]
    assert allows(launch, "Patient" if kind == "*" else kind, interaction) is allowed


@pytest.mark.parametrize("patient", ["²", "٣", str(2**63), "0", "-1", True, 7.5, None, ""])
def test_a_launch_patient_that_is_no_database_key_is_refused(patient: object) -> None:
    """'²' passed str.isdigit() and then failed int() (a 500 rather than a 401); an id past
    2**63-1 was taken and reached PostgreSQL on each read of the launch patient."""
    with pytest.raises(LaunchInvalid):
        launch_of({"scope": "launch patient/ImagingStudy.rs", "patient": patient})
    assert launch_of({"scope": "patient/*.rs", "patient": 7}) is not None
