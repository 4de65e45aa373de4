"""The audit trail: every store is recorded, the chain proves integrity, exports are standard."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from solent.app import Archive
from solent.domain.principal import Principal, PrincipalKind
from solent.security import auditformats
from solent.services.audit import AuditAction, AuditOutcome, PatientRef
from tests.unit.security_fixtures import demo, demo_template

__all__ = ["demo", "demo_template"]

SOLENT = Path(sys.executable).parent / "solent"
DR = Principal(PrincipalKind.USER, "drza", "ZZA", frozenset({"clinician"}), "10.1.2.3")


def solent(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SOLENT_")}
    return subprocess.run(
        [str(SOLENT), *args],
        env={**base, "SOLENT_DATA_DIR": str(data_dir), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _db(archive: Archive) -> Path:
    return archive.settings.data_dir / "solent.db"


def _tamper(archive: Archive, *sql: str) -> None:
    """What an attacker with write access to the database does, outside Solent."""
    conn = sqlite3.connect(_db(archive))
    with conn:
        for statement in sql:
            conn.execute(statement)
    conn.close()


def test_every_stored_instance_is_audited_with_patient_and_study(demo: Archive) -> None:
    stores = demo.audit.search(action="store", limit=1000)
    assert len(stores) == demo.index.stats()["instances"]
    first = stores[0]
    assert first["actor_kind"] == "system" and first["actor_trust"] == first["patient_issuer"]
    assert first["patient_id"] and first["study_uid"]
    assert json.loads(first["detail"])["sop_instance_uid"]


def test_verify_passes_on_an_untouched_trail(demo: Archive) -> None:
    demo.audit.record(DR, AuditAction.QUERY, detail={"q": "x"})
    r = solent(demo.settings.data_dir, "audit", "verify")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "intact" in r.stdout and "NOT" not in r.stdout


@pytest.mark.parametrize(
    ("what", "sql", "expect"),
    [
        (
            "edited",
            ["UPDATE audit_log SET actor_name = 'someone-else' WHERE seq = 5"],
            "record 5 was changed",
        ),
        ("deleted", ["DELETE FROM audit_log WHERE seq = 5"], "records 5..5 are missing"),
        (
            "reordered",
            [
                "UPDATE audit_log SET seq = -1 WHERE seq = 5",
                "UPDATE audit_log SET seq = 5 WHERE seq = 6",
                "UPDATE audit_log SET seq = 6 WHERE seq = -1",
            ],
            "record 5 does not follow",
        ),
        (
            "tail truncated",
            ["DELETE FROM audit_log WHERE seq > 80"],
            "the trail ends at record 80",
        ),
    ],
)
def test_verify_detects_tampering(demo: Archive, what: str, sql: list[str], expect: str) -> None:
    _tamper(demo, *sql)
    r = solent(demo.settings.data_dir, "audit", "verify")
    assert r.returncode == 1, (what, r.stdout, r.stderr)
    assert "NOT intact" in r.stdout
    assert expect in r.stdout, r.stdout


def test_verify_detects_a_rewritten_record_even_with_a_recomputed_hash(demo: Archive) -> None:
    """Recomputing one record's hash is not enough: the next record points at the old one."""
    from solent.index.audit import FIELDS, record_hash

    conn = sqlite3.connect(_db(demo))
    conn.row_factory = sqlite3.Row
    row = dict(conn.execute("SELECT * FROM audit_log WHERE seq = 7").fetchone())
    row["patient_id"] = "FORGED"
    new_hash = record_hash(7, row["prev_hash"], {k: row[k] for k in FIELDS})
    with conn:
        conn.execute(
            "UPDATE audit_log SET patient_id = 'FORGED', hash = ? WHERE seq = 7", (new_hash,)
        )
    conn.close()
    report = demo.audit.verify()
    assert not report.intact
    assert any("record 8 does not follow" in p for p in report.problems)


def test_patient_search_and_exports(demo: Archive) -> None:
    seq = demo.audit.record(
        DR,
        AuditAction.VIEW,
        AuditOutcome.SUCCESS,
        patient=PatientRef("ZZB", "B7730021", "9990000018"),
        study_uid="1.2.826.0.1.3680043.10.1455.1.3",
        purpose="MDT-2026-11-27-LUNG",
    )
    rec = next(r for r in demo.audit.search(patient_id="B7730021") if r["seq"] == seq)
    xml = ET.fromstring(auditformats.dicom_xml(rec))
    ev = xml.find("EventIdentification")
    assert ev is not None and ev.get("EventActionCode") == "R"
    assert ev.get("EventOutcomeIndicator") == "0"
    assert ev.find("EventID").get("csd-code") == "110103"  # type: ignore[union-attr]
    assert ev.find("PurposeOfUse").get("csd-code") == "MDT-2026-11-27-LUNG"  # type: ignore[union-attr]
    user = xml.find("ActiveParticipant")
    assert user is not None and user.get("UserID") == "drza"
    assert user.get("NetworkAccessPointID") == "10.1.2.3"
    assert user.find("RoleIDCode").get("csd-code") == "clinician"  # type: ignore[union-attr]
    objects = {
        o.get("ParticipantObjectTypeCodeRole"): o.get("ParticipantObjectID")
        for o in xml.findall("ParticipantObjectIdentification")
    }
    assert objects["1"] == "B7730021^^^ZZB" and objects["3"] == rec["study_uid"]

    event = auditformats.fhir_audit_event(rec)
    assert event["resourceType"] == "AuditEvent" and event["action"] == "R"
    assert event["type"]["code"] == "110103"
    assert event["meta"]["profile"][0].endswith("IHE.BasicAudit.PatientRead")
    assert event["purposeOfEvent"][0]["text"] == "MDT-2026-11-27-LUNG"
    ids = [e["what"]["identifier"] for e in event["entity"]]
    assert {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990000018"} in ids
    assert {"system": "urn:solent:trust:ZZB", "value": "B7730021"} in ids
    agent = event["agent"][0]
    assert agent["who"]["identifier"]["value"] == "drza" and agent["role"] == [
        {"text": "clinician"}
    ]

    out = demo.settings.data_dir.parent / "audit.json"
    r = solent(demo.settings.data_dir, "audit", "export", "--format", "fhir", "--output", str(out))
    assert r.returncode == 0, r.stderr
    bundle = json.loads(out.read_text())
    assert bundle["total"] == seq and len(bundle["entry"]) == seq
    r = solent(
        demo.settings.data_dir, "audit", "export", "--format", "dicom", "--after", str(seq - 1)
    )
    # The view, then the audit record of the FHIR export itself (exports are audited).
    assert r.returncode == 0 and r.stdout.count("<AuditMessage>") == 2
    assert "110106" in r.stdout.splitlines()[1]  # Export


# -- syslog over TLS ---------------------------------------------------------------------------


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
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
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "syslog.pem", tmp / "syslog.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_syslog(tmp_path: Path) -> Iterator[tuple[int, Path, list[bytes]]]:
    """A TLS syslog collector (RFC 5425 octet-counted frames) on loopback."""
    cert, key = _self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    sock = socket.create_server(("127.0.0.1", 0))
    frames: list[bytes] = []
    done = threading.Event()

    def serve() -> None:
        conn, _ = sock.accept()
        try:
            tls = ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):  # a client that refused our certificate
            conn.close()
            done.set()
            return
        with tls:
            buf = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                buf += chunk
                while b" " in buf:
                    length, _, rest = buf.partition(b" ")
                    if len(rest) < int(length):
                        break
                    frames.append(rest[: int(length)])
                    buf = rest[int(length) :]
        done.set()

    threading.Thread(target=serve, daemon=True).start()
    yield sock.getsockname()[1], cert, frames
    done.wait(10)
    sock.close()


def test_export_to_tls_syslog(demo: Archive, tls_syslog: tuple[int, Path, list[bytes]]) -> None:
    port, ca, frames = tls_syslog
    total = demo.audit.verify().records
    r = solent(
        demo.settings.data_dir,
        "audit",
        "export",
        "--syslog",
        SOLENT_AUDIT_SYSLOG_URL=f"tls://localhost:{port}",
        SOLENT_AUDIT_SYSLOG_CA_FILE=str(ca),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for _ in range(100):
        if len(frames) >= total:
            break
        threading.Event().wait(0.1)
    assert len(frames) == total
    header, _, body = frames[0].partition(b"\xef\xbb\xbf")
    assert header.startswith(b"<85>1 ")  # authpriv.notice, RFC 5424 version 1
    assert b" solent - IHE+RFC-3881 - " in header
    msg = ET.fromstring(body.decode())
    assert msg.tag == "AuditMessage"
    assert msg.find("EventIdentification/EventID").get("csd-code") == "110104"  # type: ignore[union-attr]


def test_export_refuses_an_untrusted_syslog_server(
    demo: Archive, tls_syslog: tuple[int, Path, list[bytes]]
) -> None:
    port, _ca, frames = tls_syslog
    r = solent(
        demo.settings.data_dir,
        "audit",
        "export",
        "--syslog",
        SOLENT_AUDIT_SYSLOG_URL=f"tls://localhost:{port}",
    )
    assert r.returncode != 0 and frames == []
    # Unblock the collector's accept() so the fixture ends.
    socket.create_connection(("127.0.0.1", port)).close()
