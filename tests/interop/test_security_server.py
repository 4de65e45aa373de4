"""Security through a real `solent serve`: CLI users and tokens, HTTP refusals, the clinician
scenario with break-glass, and audit records from every interface that exists (HTTP, DIMSE, HL7).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from solent.security import tokens
from solent.security.keys import SigningKey
from tests.conftest import RunningServer, require_tool, start_server
from tests.unit.security_fixtures import demo_template

__all__ = ["demo_template"]
pytestmark = pytest.mark.interop

PASSWORD = "correct horse battery staple"


@pytest.fixture
def demo_server(demo_template: Path, tmp_path: Path) -> Iterator[RunningServer]:
    """`solent serve` on a copy of the demo data loaded once (test_serve_demo covers the load
    at first start); SOLENT_DEMO_DATA stays on, as for a demo site."""
    env = {"SOLENT_DEMO_DATA": "true"}
    shutil.copytree(demo_template, tmp_path / "srv")
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

    # Every path the server documents refuses an anonymous caller, but the single sign-on
    # settings the sign-in page needs (public, no secret: docs/security.md).
    public = {("get", "/api/auth/oidc")}
    spec = httpx.get(url + "/api/openapi.json", headers=dr, timeout=30).json()
    for path, ops in spec["paths"].items():
        for method in ops:
            concrete = path.replace("{", "").replace("}", "")
            r = httpx.request(method.upper(), url + concrete, timeout=30)
            if (method, path) in public:
                assert r.status_code == 200 and "secret" not in r.text.lower(), r.text
            elif (method, path) == ("get", "/fhir/.well-known/smart-configuration"):
                # SMART discovery is public (R23); without an identity provider: 404.
                assert r.status_code == 404 and "secret" not in r.text.lower(), r.text
            else:
                assert r.status_code == 401, (method, path, r.status_code)

    alice_zzb = study(srv, dr, "ZZB", "B7730021")
    bob = study(srv, regional, "ZZB", "B7730444")
    assert httpx.get(f"{url}/api/studies/{alice_zzb}", headers=dr, timeout=30).status_code == 200
    r = httpx.get(f"{url}/api/studies/{bob}", headers=dr, timeout=30)
    assert r.status_code == 404 and "break-glass" in r.json()["detail"]
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


# -- every interface leaves its audit record (issue 6) ------------------------------------------


def audit_rows(srv: RunningServer, auditor: dict[str, str], **params: str) -> list[dict[str, Any]]:
    r = httpx.get(srv.base_url + "/api/audit", headers=auditor, params=params, timeout=30)
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()
    return rows


def channel(row: dict[str, Any]) -> str:
    return str(json.loads(row["detail"] or "{}").get("channel", ""))


def test_dicomweb_and_fhir_access_is_audited(demo_server: RunningServer, corpus_dir: Path) -> None:
    srv = demo_server
    url = srv.base_url
    dr = bearer(srv, "drza", "ZZA", "clinician")
    auditor = bearer(srv, "privacy", "ZZA", "auditor")

    # QIDO-RS: one QUERY record naming the user, the keys, the count and the patient.
    r = httpx.get(
        url + "/dicomweb/studies", params={"PatientID": "A100001"}, headers=dr, timeout=30
    )
    assert r.status_code == 200 and r.json(), r.text
    (q,) = [x for x in audit_rows(srv, auditor, user="drza", action="query") if channel(x)]
    assert channel(q) == "qido-rs" and q["outcome"] == "success"
    assert (q["patient_issuer"], q["patient_id"]) == ("ZZA", "A100001")
    assert q["actor_trust"] == "ZZA" and q["actor_roles"] == "clinician"
    detail = json.loads(q["detail"])
    assert detail["keys"] == {"PatientID": "A100001"} and detail["matches"] == len(r.json())

    # Rendered images and thumbnails: a VIEW record per study and caller, not one per image.
    cr = next(s for s in r.json() if s["00080061"]["Value"] == ["CR"])
    study_uid = cr["0020000D"]["Value"][0]
    inst = httpx.get(f"{url}/dicomweb/studies/{study_uid}/instances", headers=dr, timeout=30)
    series_uid = inst.json()[0]["0020000E"]["Value"][0]
    sop_uid = inst.json()[0]["00080018"]["Value"][0]
    base = f"{url}/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
    for path in (f"/dicomweb/studies/{study_uid}/thumbnail", "/rendered", "/thumbnail"):
        target = url + path if path.startswith("/dicomweb") else base + path
        got = httpx.get(target, headers={**dr, "Accept": "image/jpeg"}, timeout=60)
        assert got.status_code == 200, (path, got.text)
    views = audit_rows(srv, auditor, user="drza", action="view", study_uid=study_uid)
    assert [channel(v) for v in views] == ["rendered"]
    assert views[0]["patient_id"] == "A100001"
    # WADO-URI JPEG is a view of its own channel.
    wado = httpx.get(
        url + "/dicomweb/wado",
        params={
            "requestType": "WADO",
            "studyUID": study_uid,
            "seriesUID": series_uid,
            "objectUID": sop_uid,
            "contentType": "image/jpeg",
        },
        headers=dr,
        timeout=60,
    )
    assert wado.status_code == 200, wado.text
    views = audit_rows(srv, auditor, user="drza", action="view", study_uid=study_uid)
    assert sorted(channel(v) for v in views) == ["rendered", "wado-uri rendered"]

    # STOW-RS: a STORE record per stored instance, as the user.
    data = (corpus_dir / "ts_explicit_vr_le_mr_siemens_trio.dcm").read_bytes()
    boundary = "solent-audit-test"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    stow = httpx.post(
        url + "/dicomweb/studies",
        content=body,
        headers={
            **dr,
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        },
        timeout=60,
    )
    assert stow.status_code == 200, stow.text
    (stored,) = audit_rows(srv, auditor, user="drza", action="store")
    assert stored["outcome"] == "success" and stored["study_uid"] and stored["patient_id"]

    # FHIR: searches by patient identifier are audited against the patient.
    system = "https://solent-pacs.nhs.example/Id/ZZA/patient-id"
    for resource, key in (("Patient", "identifier"), ("ImagingStudy", "patient.identifier")):
        got = httpx.get(
            f"{url}/fhir/{resource}", params={key: f"{system}|A100001"}, headers=dr, timeout=30
        )
        assert got.status_code == 200, got.text
    fhir = [
        x
        for x in audit_rows(srv, auditor, user="drza", action="query", patient_id="A100001")
        if json.loads(x["detail"]).get("read", "").startswith("fhir ")
    ]
    reads = sorted(json.loads(x["detail"])["read"] for x in fhir)
    assert reads == ["fhir ImagingStudy", "fhir Patient"]
    assert all(x["patient_issuer"] == "ZZA" for x in fhir)


def dcmtk(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


def test_dimse_query_and_retrieve_are_audited_as_the_node(
    demo_server: RunningServer, tmp_path: Path, reserved_port: int
) -> None:
    srv = demo_server
    if "dicom" not in srv.ports:
        pytest.skip("this build has no DIMSE listener")
    findscu, getscu, movescu = (require_tool(t) for t in ("findscu", "getscu", "movescu"))
    port = reserved_port  # held until movescu listens on it (C-MOVE destination)
    srv.cli("ae", "add", "WS1", "--host", "127.0.0.1", "--port", str(port), "--trust", "ZZB")
    auditor = bearer(srv, "privacy", "ZZB", "auditor")
    regional = bearer(srv, "regional", "ZZB", "radiologist")
    alice_zzb = study(srv, regional, "ZZB", "B7730021")
    pacs = ["-aec", srv.ports.get("ae_title", "SOLENT"), "127.0.0.1", str(srv.ports["dicom"])]

    # Study Root C-FIND: one QUERY record as the node, with the patient it names.
    r = dcmtk(findscu, "-S", "-aet", "WS1", *pacs, "-k", "QueryRetrieveLevel=STUDY",
              "-k", "PatientID=B7730021", "-k", "StudyInstanceUID")  # fmt: skip
    assert r.returncode == 0, r.stderr
    (q,) = [x for x in audit_rows(srv, auditor, user="WS1", action="query")]
    assert q["actor_kind"] == "node" and q["actor_trust"] == "ZZB"
    assert channel(q) == "dimse c-find" and q["outcome"] == "success"
    assert (q["patient_issuer"], q["patient_id"]) == ("ZZB", "B7730021")
    assert json.loads(q["detail"])["matches"] >= 1

    # Modality Worklist C-FIND is a query too.
    r = dcmtk(findscu, "-W", "-aet", "WS1", *pacs, "-k", "PatientID=B7730021",
              "-k", "ScheduledProcedureStepSequence[0].Modality=MR")  # fmt: skip
    assert r.returncode == 0, r.stderr
    queries = audit_rows(srv, auditor, user="WS1", action="query")
    assert [channel(x) for x in queries] == ["dimse c-find", "dimse worklist"]

    # C-GET: one RETRIEVE record with the study, the patient and the instance count.
    got = tmp_path / "got"
    got.mkdir()
    r = dcmtk(getscu, "-S", "-aet", "WS1", *pacs, "-od", str(got),
              "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={alice_zzb}")  # fmt: skip
    assert r.returncode == 0, r.stderr
    received = len(list(got.iterdir()))
    assert received > 0
    (get,) = audit_rows(srv, auditor, user="WS1", action="retrieve")
    assert channel(get) == "dimse c-get" and get["study_uid"] == alice_zzb
    assert (get["patient_issuer"], get["patient_id"]) == ("ZZB", "B7730021")
    detail = json.loads(get["detail"])
    assert detail["instances"] == received and detail["studies"] == [alice_zzb]

    # C-MOVE to the requesting workstation itself (movescu --port), the most common C-MOVE:
    # the destination AE is recorded. This hung about once in 25 runs while pynetdicom's
    # reactor could take a sub-operation's C-STORE-RSP (net.responses_to_the_waiting_sender).
    moved = tmp_path / "moved"
    moved.mkdir()
    study_key = f"StudyInstanceUID={alice_zzb}"
    r = dcmtk(movescu, "-S", "-aet", "WS1", "-aem", "WS1", "--port", str(port), "-od", str(moved),
              *pacs, "-k", "QueryRetrieveLevel=STUDY", "-k", study_key)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = audit_rows(srv, auditor, user="WS1", action="retrieve")
    move = rows[-1]
    assert channel(move) == "dimse c-move" and move["study_uid"] == alice_zzb
    assert json.loads(move["detail"])["destination"] == "WS1"
    assert len(list(moved.iterdir())) == json.loads(move["detail"])["instances"]


def mllp(srv: RunningServer, message: str) -> str:
    """Send one ER7 message over MLLP; the ACK text."""
    with socket.create_connection(("127.0.0.1", int(srv.ports["hl7"])), timeout=30) as s:
        s.sendall(b"\x0b" + message.encode() + b"\x1c\r")
        ack = b""
        deadline = time.monotonic() + 30
        while b"\x1c\r" not in ack and time.monotonic() < deadline:
            ack += s.recv(65536)
    return ack.decode("utf-8", "replace")


def test_hl7_senders_must_be_registered(demo_server: RunningServer) -> None:
    srv = demo_server
    if "hl7" not in srv.ports:
        pytest.skip("this build has no HL7 listener")
    # LAB^ZZA may send, but only from an address this machine is not.
    srv.cli("hl7", "sender", "add", "LAB", "ZZA", "--host", "192.0.2.7")
    srv.cli("hl7", "sender", "add", "RIS2", "ZZA", "--host", "127.0.0.1,::1")
    listing = srv.cli("hl7", "sender", "list", "--json").stdout
    assert {(r["application"], r["facility"]) for r in json.loads(listing)} >= {
        ("LAB", "ZZA"),
        ("RIS2", "ZZA"),
        ("*", "ZZA"),  # the demo's own senders, from this machine
    }
    wrong_address = A08.replace("|PAS|ZZA|", "|LAB|ZZA|").replace("ZZA0000098765", "LAB-1")
    ack = mllp(srv, wrong_address)
    assert "MSA|AR|LAB-1|" in ack and "not registered to send from 127.0.0.1" in ack, ack
    unknown = A08.replace("|PAS|ZZA|", "|PAS|ZZQ|").replace("ZZA0000098765", "ZZQ-1")
    ack = mllp(srv, unknown)
    assert "MSA|AR|ZZQ-1|" in ack and "PAS at ZZQ" in ack and "not registered" in ack, ack
    registered = A08.replace("|PAS|ZZA|", "|RIS2|ZZA|").replace("ZZA0000098765", "RIS2-1")
    assert "MSA|AA|RIS2-1" in mllp(srv, registered)

    auditor = bearer(srv, "privacy", "ZZA", "auditor")
    for who in ("hl7:LAB^ZZA", "hl7:PAS^ZZQ"):
        (row,) = audit_rows(srv, auditor, user=who, action="permission-denied")
        assert row["outcome"] == "denied" and row["actor_kind"] == "node"
        assert row["actor_address"] == "127.0.0.1" and channel(row) == "hl7"
    # Nothing an unregistered sender sent is kept.
    journal = json.loads(srv.cli("hl7", "messages", "--json").stdout)
    assert not {m["control_id"] for m in journal} & {"LAB-1", "ZZQ-1"}
    assert "RIS2-1" in {m["control_id"] for m in journal}


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with `cryptography`."""
    import ipaddress
    from datetime import UTC, datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "solent test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "http.pem", directory / "http.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_https_listener(tmp_path: Path) -> None:
    import ssl

    cert, key = self_signed(tmp_path)
    env = {"SOLENT_HTTP_TLS_CERT": str(cert), "SOLENT_HTTP_TLS_KEY": str(key)}
    srv = start_server(tmp_path / "srv", extra_env=env)
    try:
        srv.env.update(env)
        port = srv.ports["http"]
        trusted = ssl.create_default_context(cafile=str(cert))
        r = httpx.get(f"https://127.0.0.1:{port}/health", verify=trusted, timeout=30)
        assert r.status_code == 200
        srv.cli("trust", "add", "ZZA", "--name", "Trust A")
        dr = bearer(srv, "drza", "ZZA", "clinician")
        me = httpx.get(f"https://127.0.0.1:{port}/api/auth/me", headers=dr, verify=trusted)
        assert me.status_code == 200 and me.json()["name"] == "drza"
        # A client that does not trust the certificate refuses it; plain HTTP gets no answer.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://127.0.0.1:{port}/health", timeout=30)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=30)
    finally:
        srv.stop()


def test_https_needs_both_files(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    from solent.errors import ConfigurationError
    from solent.settings import load_settings

    with pytest.raises(ConfigurationError, match="http_tls_cert and http_tls_key"):
        load_settings(environ={"SOLENT_HTTP_TLS_CERT": str(cert)}, data_dir=tmp_path)


def test_association_and_connection_limits(tmp_path: Path) -> None:
    """SOLENT_DICOM_MAX_ASSOCIATIONS and SOLENT_HL7_MAX_CONNECTIONS: one held open, the next
    refused, and served again once the first goes."""
    from pynetdicom import AE

    from solent.settings import Settings

    echoscu = require_tool("echoscu")
    env = {"SOLENT_DICOM_MAX_ASSOCIATIONS": "1", "SOLENT_HL7_MAX_CONNECTIONS": "1"}
    if "dicom_workers" in Settings.model_fields:
        env["SOLENT_DICOM_WORKERS"] = "1"  # the limit is per receiving process
    srv = start_server(tmp_path / "srv", extra_env=env)
    try:
        srv.env.update(env)
        srv.cli("trust", "add", "ZZA", "--name", "Trust A")
        srv.cli("ae", "add", "WS1", "--host", "127.0.0.1", "--port", "104", "--trust", "ZZA")
        # A registered sender calls from this address, so MLLP connections from it are read
        # (an address no sender is registered for is closed at connect, issue 11).
        srv.cli("hl7", "sender", "add", "PAS", "ZZA", "--host", "127.0.0.1")
        pacs = ["-aet", "WS1", "-aec", srv.ports.get("ae_title", "SOLENT")]
        pacs += ["127.0.0.1", str(srv.ports["dicom"])]
        ae = AE(ae_title="WS1")
        ae.add_requested_context("1.2.840.10008.1.1")
        held = ae.associate("127.0.0.1", int(srv.ports["dicom"]), ae_title="SOLENT")
        assert held.is_established
        try:
            refused = dcmtk(echoscu, *pacs)
            assert refused.returncode != 0
            assert "reject" in (refused.stderr + refused.stdout).lower()
        finally:
            held.release()
        assert _eventually(lambda: dcmtk(echoscu, *pacs).returncode == 0)

        hl7 = ("127.0.0.1", int(srv.ports["hl7"]))
        with socket.create_connection(hl7, timeout=30) as first:
            first.settimeout(30)
            with socket.create_connection(hl7, timeout=30) as second:
                second.settimeout(30)
                assert second.recv(1024) == b""  # closed by the server, nothing said
        probe = A08.replace("|PAS|ZZA|", "|NOBODY|ZZA|")
        assert _eventually(lambda: "MSA|AR|" in _try_mllp(srv, probe))
    finally:
        srv.stop()


def _eventually(check: Any, attempts: int = 50) -> bool:
    """Retry while the server notices a closed peer (no timing is asserted)."""
    for _ in range(attempts):
        if check():
            return True
        time.sleep(0.1)
    return False


def _try_mllp(srv: RunningServer, message: str) -> str:
    try:
        return mllp(srv, message)
    except OSError:
        return ""
