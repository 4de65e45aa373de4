"""Security through a real `solent serve`: CLI users and tokens, HTTP refusals, the clinician
scenario with break-glass, and audit records from every interface that exists (HTTP, DIMSE, HL7).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from solent.security import tokens
from solent.security.keys import SigningKey
from tests.conftest import RunningServer, require_tool, start_server

pytestmark = pytest.mark.interop

PASSWORD = "correct horse battery staple"


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[RunningServer]:
    env = {"SOLENT_DEMO_DATA": "true"}
    srv = start_server(tmp_path / "srv", extra_env=env, timeout=180)
    srv.env.update(env)
    yield srv
    srv.stop()


def bearer(srv: RunningServer, name: str, trust: str, *roles: str) -> dict[str, str]:
    args = ["user", "add", name, "--trust", trust, "--password", PASSWORD]
    for role in roles:
        args += ["--role", role]
    srv.cli(*args)
    token = srv.cli("token", "create", "--user", name).stdout.strip().splitlines()[-1]
    return {"Authorization": f"Bearer {token}"}


def study(srv: RunningServer, headers: dict[str, str], issuer: str, pid: str) -> str:
    rows = httpx.get(
        srv.base_url + "/api/studies",
        params={"issuer": issuer, "patient_id": pid},
        headers=headers,
        timeout=30,
    ).json()
    return str(rows[0]["study_uid"])


def test_clinician_break_glass_and_audit_over_http(demo_server: RunningServer) -> None:
    srv = demo_server
    url = srv.base_url
    dr = bearer(srv, "drza", "ZZA", "clinician")
    auditor = bearer(srv, "privacy", "ZZB", "auditor")
    regional = bearer(srv, "regional", "ZZB", "radiologist")  # to find Bob's study UID

    # Unauthenticated, wrong scheme, forged and expired: all refused.
    forged, _ = tokens.issue_local(
        SigningKey("EdDSA", Ed25519PrivateKey.generate(), b""), "drza", timedelta(minutes=5)
    )
    from solent.security.keys import load_signing_key
    from solent.settings import load_settings

    real_key = load_signing_key(load_settings(environ={}, data_dir=srv.data_dir))
    expired, _ = tokens.issue_local(real_key, "drza", timedelta(seconds=-30))
    for headers in (
        {},
        {"Authorization": "Basic ZHJ6YTpwYXNz"},
        {"Authorization": f"Bearer {forged}"},
        {"Authorization": f"Bearer {expired}"},
    ):
        r = httpx.get(url + "/api/studies", headers=headers, timeout=30)
        assert r.status_code == 401, headers
    assert httpx.get(url + "/health", timeout=30).status_code == 200

    # Every path the server documents refuses an anonymous caller.
    spec = httpx.get(url + "/api/openapi.json", headers=dr, timeout=30).json()
    for path, ops in spec["paths"].items():
        for method in ops:
            concrete = path.replace("{", "").replace("}", "")
            r = httpx.request(method.upper(), url + concrete, timeout=30)
            assert r.status_code == 401, (method, path, r.status_code)

    alice_zzb = study(srv, dr, "ZZB", "B7730021")
    bob = study(srv, regional, "ZZB", "B7730444")
    assert httpx.get(f"{url}/api/studies/{alice_zzb}", headers=dr, timeout=30).status_code == 200
    r = httpx.get(f"{url}/api/studies/{bob}", headers=dr, timeout=30)
    assert r.status_code == 403 and "break-glass" in r.json()["detail"]
    r = httpx.post(
        url + "/api/break-glass",
        headers=dr,
        json={"reason": "emergency", "explanation": "collapsed in ZZA ED", "study_uid": bob},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    assert httpx.get(f"{url}/api/studies/{bob}", headers=dr, timeout=30).status_code == 200

    trail = httpx.get(
        url + "/api/audit",
        headers=auditor,
        params={"issuer": "ZZB", "patient_id": "B7730444", "user": "drza"},
        timeout=30,
    ).json()
    assert [x["action"] for x in trail] == ["permission-denied", "break-glass", "view"]
    assert all(x["actor_trust"] == "ZZA" and x["actor_roles"] == "clinician" for x in trail)
    assert all(x["actor_address"] == "127.0.0.1" for x in trail)
    # Failed logins (the four refused requests above) are recorded as well.
    failed = httpx.get(
        url + "/api/audit", headers=auditor, params={"action": "login-failed"}, timeout=30
    ).json()
    assert len(failed) >= 4

    r = srv.cli("audit", "verify", check=False)
    assert r.returncode == 0 and "intact" in r.stdout


def test_password_login_and_disable_over_http(demo_server: RunningServer) -> None:
    srv = demo_server
    bearer(srv, "drza", "ZZA", "clinician")
    r = httpx.post(srv.base_url + "/api/auth/token", auth=("drza", PASSWORD), timeout=30)
    assert r.status_code == 200
    h = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert httpx.get(srv.base_url + "/api/auth/me", headers=h, timeout=30).json()["name"] == "drza"
    listing = srv.cli("user", "list").stdout
    assert "drza" in listing and PASSWORD not in listing
    srv.cli("user", "disable", "drza")
    assert httpx.get(srv.base_url + "/api/auth/me", headers=h, timeout=30).status_code == 401


def test_dimse_store_is_audited_as_the_node(demo_server: RunningServer, corpus_dir: Path) -> None:
    srv = demo_server
    if "dicom" not in srv.ports:
        pytest.skip("this build has no DIMSE listener")
    storescu = require_tool("storescu")
    srv.cli("ae", "add", "MODALITY1", "--host", "127.0.0.1", "--port", "104", "--trust", "ZZB")
    f = corpus_dir / "ts_explicit_vr_le_mr_siemens_trio.dcm"
    r = subprocess.run(
        [
            storescu,
            "-aet",
            "MODALITY1",
            "-aec",
            srv.ports.get("ae_title", "SOLENT"),
            "127.0.0.1",
            str(srv.ports["dicom"]),
            str(f),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    assert r.returncode == 0, r.stderr
    auditor = bearer(srv, "privacy", "ZZB", "auditor")
    rows = httpx.get(
        srv.base_url + "/api/audit",
        headers=auditor,
        params={"user": "MODALITY1", "action": "store"},
        timeout=30,
    ).json()
    assert len(rows) == 1
    assert rows[0]["actor_kind"] == "node" and rows[0]["actor_trust"] == "ZZB"
    assert rows[0]["outcome"] == "success" and rows[0]["patient_id"] and rows[0]["study_uid"]
    assert '"channel":"dimse"' in rows[0]["detail"]


A08 = (
    "MSH|^~\\&|PAS|ZZA|PACS|ZZX|20250320093000||ADT^A08^ADT_A01|ZZA0000098765|P|2.4|||||GBR||EN\r"
    "EVN|A08|20250320093000|||PASCLERK2^CLERK^SAM||ZZA\r"
    "PID|1||A100001^^^ZZA^MR~9990000018^^^NHS^NH||DEMO^ALICE^JANE^^MRS||19580312|F|||"
    "5 NEW ROAD^^NEWTOWN^^XX2 2XX^GBR^H||01632 960123^PRN^PH|||||||||||||||||||NSTS01\r"
    "PV1|1|N\r"
)


def test_hl7_identity_change_is_audited(demo_server: RunningServer) -> None:
    srv = demo_server
    if "hl7" not in srv.ports:
        pytest.skip("this build has no HL7 listener")
    with socket.create_connection(("127.0.0.1", int(srv.ports["hl7"])), timeout=30) as s:
        s.sendall(b"\x0b" + A08.encode() + b"\x1c\r")
        ack = b""
        deadline = time.monotonic() + 30
        while b"\x1c\r" not in ack and time.monotonic() < deadline:
            ack += s.recv(65536)
    assert b"MSA|AA" in ack or b"MSA|CA" in ack, ack
    auditor = bearer(srv, "privacy", "ZZA", "auditor")
    rows = httpx.get(
        srv.base_url + "/api/audit",
        headers=auditor,
        params={"issuer": "ZZA", "patient_id": "A100001", "action": "patient-record"},
        timeout=30,
    ).json()
    assert rows, "the A08 left no patient-record audit record"
