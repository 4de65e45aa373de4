"""DIMSE over TLS with DCMTK as the peer: echoscu and storescu on the TLS port of a real
`solent serve`, and TLS client certificates when SOLENT_DICOM_TLS_CA is set (a peer without a
certificate signed by that CA never gets past the handshake)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import (
    SOLENT,
    RunningServer,
    require_corpus,
    require_tool,
    shared_dir,
    start_server,
)

pytestmark = pytest.mark.timeout(300)
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
CORPUS = shared_dir() / "dicom-corpus"
AET = "TLSSCU"


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


class Authority:
    """A test CA that issues server and client certificates (EC P-256, valid for a day)."""

    def __init__(self, directory: Path, name: str) -> None:
        self.dir = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.pem = directory / f"{name}-ca.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.dir / f"{common_name}.pem", self.dir / f"{common_name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(_key_pem(key))
        return issued


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), env=DCMTK_ENV, capture_output=True, text=True, timeout=120)


@dataclass
class TlsPacs:
    server: RunningServer
    tls_port: int
    ca: Authority
    client: Issued


def _start(tmp: Path, *, require_client_certs: bool, **settings: str) -> Iterator[TlsPacs]:
    require_tool("echoscu")
    if "--enable-tls" not in run("echoscu", "--help").stdout:
        pytest.skip("DCMTK built without OpenSSL")
    certs = tmp / "certs"
    certs.mkdir()
    ca = Authority(certs, "regional")
    server_cert = ca.issue("solent.test", server=True)
    client = ca.issue("tlsscu.test", server=False)
    data = tmp / "srv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLENT_")}
    env["SOLENT_DATA_DIR"] = str(data)
    subprocess.run(
        [str(SOLENT), "trust", "add", "ZZA", "--name", "Trust A"],
        env=env,
        check=True,
        capture_output=True,
    )
    tls_port = free_port()
    extra = {
        "SOLENT_DICOM_TLS_PORT": str(tls_port),
        "SOLENT_DICOM_TLS_CERT": str(server_cert.cert),
        "SOLENT_DICOM_TLS_KEY": str(server_cert.key),
    }
    if require_client_certs:
        extra["SOLENT_DICOM_TLS_CA"] = str(ca.pem)
    extra.update(settings)
    srv = start_server(data, extra)
    try:
        srv.cli("ae", "add", AET, "--host", "127.0.0.1", "--port", "104", "--trust", "ZZA")
        yield TlsPacs(srv, tls_port, ca, client)
    finally:
        srv.stop()


@pytest.fixture
def tls_pacs(tmp_path: Path) -> Iterator[TlsPacs]:
    yield from _start(tmp_path, require_client_certs=False)


@pytest.fixture
def mutual_tls_pacs(tmp_path: Path) -> Iterator[TlsPacs]:
    yield from _start(tmp_path, require_client_certs=True)


@pytest.fixture
def patient_tls_pacs(tmp_path: Path) -> Iterator[TlsPacs]:
    """ARTIM long enough that waiting for it could not pass for serving at once."""
    yield from _start(
        tmp_path,
        require_client_certs=False,
        SOLENT_DICOM_ARTIM_TIMEOUT_SECONDS="90",
        SOLENT_DICOM_MAX_PENDING_CONNECTIONS="256",
    )


def tls_args(pacs: TlsPacs, client: Issued | None) -> list[str]:
    """DCMTK 3.6.7 TLS options: our key and certificate (or anonymous TLS), the server's CA."""
    who = ["+tls", str(client.key), str(client.cert)] if client else ["+tla"]
    return [*who, "+cf", str(pacs.ca.pem)]


def echo(
    pacs: TlsPacs, client: Issued | None, port: int | None = None
) -> subprocess.CompletedProcess[str]:
    return run(
        "echoscu",
        "-v",
        *tls_args(pacs, client),
        "-aet",
        AET,
        "-aec",
        "SOLENT",
        "127.0.0.1",
        str(port or pacs.tls_port),
    )


def dropped(result: subprocess.CompletedProcess[str]) -> bool:
    """The connection was cut (TLS alert / reset), not answered with an A-ASSOCIATE-RJ."""
    out = result.stdout + result.stderr
    return "Association Request Failed" in out and "Association Rejected" not in out


def test_echoscu_and_storescu_over_tls(tls_pacs: TlsPacs) -> None:
    require_corpus()
    ok = echo(tls_pacs, tls_pacs.client)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Received Echo Response (Success)" in ok.stdout + ok.stderr
    # Anonymous TLS is fine while no client CA is configured.
    assert echo(tls_pacs, None).returncode == 0
    # A TLS client on the plain port gets no association.
    plain = echo(tls_pacs, tls_pacs.client, port=tls_pacs.server.ports["dicom"])
    assert plain.returncode != 0
    ct = CORPUS / "mod_ct_small.dcm"
    stored = run(
        "storescu",
        "-v",
        *tls_args(tls_pacs, tls_pacs.client),
        "-aet",
        AET,
        "-aec",
        "SOLENT",
        "127.0.0.1",
        str(tls_pacs.tls_port),
        str(ct),
    )
    out = stored.stdout + stored.stderr
    assert stored.returncode == 0, out
    assert re.findall(r"Received Store Response \(([^)]*)\)", out) == ["Success"]
    # And it is in the archive: a plain C-FIND finds the instance.
    import pydicom

    uid = str(pydicom.dcmread(ct, stop_before_pixels=True).SOPInstanceUID)
    found = tls_pacs.server.cli(
        "ae", "add", "SOLENT", "--host", "127.0.0.1",
        "--port", str(tls_pacs.server.ports["dicom"]), "--trust", "ZZA",
    )  # fmt: skip
    assert found.returncode == 0
    query = tls_pacs.server.cli(
        "query", "SOLENT", "--level", "IMAGE", "-k", f"SOPInstanceUID={uid}"
    )
    assert uid in query.stdout


def test_client_certificates_required_when_a_ca_is_configured(
    mutual_tls_pacs: TlsPacs, tmp_path: Path
) -> None:
    pacs = mutual_tls_pacs
    ok = echo(pacs, pacs.client)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # No client certificate: refused at the handshake, before any A-ASSOCIATE.
    anonymous = echo(pacs, None)
    assert anonymous.returncode != 0
    assert "Received Echo Response" not in anonymous.stdout + anonymous.stderr
    # TLS 1.3 reports the server's refusal of the client certificate after the client's side
    # of the handshake, so DCMTK sees the connection dropped: no A-ASSOCIATE-RJ ever came.
    assert dropped(anonymous), anonymous.stderr
    # A certificate from another CA: refused too.
    rogue_dir = tmp_path / "rogue"
    rogue_dir.mkdir()
    rogue = Authority(rogue_dir, "rogue").issue("tlsscu.test", server=False)
    refused = echo(pacs, rogue)
    assert refused.returncode != 0
    assert "Received Echo Response" not in refused.stdout + refused.stderr
    assert dropped(refused), refused.stderr
    # A good certificate does not stand in for node registration: unknown AE title rejected.
    stranger = run(
        "echoscu", *tls_args(pacs, pacs.client), "-aet", "STRANGER", "-aec", "SOLENT",
        "127.0.0.1", str(pacs.tls_port),
    )  # fmt: skip
    assert "Calling AE Title Not Recognized" in stranger.stderr, stranger.stderr
    # The server keeps serving the right certificate afterwards.
    assert echo(pacs, pacs.client).returncode == 0


def _echo_as(
    pacs: TlsPacs, aet: str, client: Issued, port: int
) -> subprocess.CompletedProcess[str]:
    return run(
        "echoscu", *tls_args(pacs, client), "-aet", aet, "-aec", "SOLENT", "127.0.0.1", str(port)
    )


def test_node_bound_to_its_certificate(mutual_tls_pacs: TlsPacs) -> None:
    """`solent ae add --tls-identity`: the node is itself only with that certificate, over TLS."""
    pacs = mutual_tls_pacs
    srv = pacs.server
    modality = pacs.ca.issue("ct01.radiology.test", server=False)
    other = pacs.ca.issue("workstation.test", server=False)  # same CA, another subject
    srv.cli(
        "ae", "add", "CT01", "--host", "127.0.0.1", "--port", "104", "--trust", "ZZA",
        "--tls-identity", "CT01.radiology.test",
    )  # fmt: skip
    assert _echo_as(pacs, "CT01", modality, pacs.tls_port).returncode == 0
    stolen = _echo_as(pacs, "CT01", other, pacs.tls_port)
    assert "Calling AE Title Not Recognized" in stolen.stderr, stolen.stderr
    # Without TLS the bound AE title is not accepted at all.
    plain = run("echoscu", "-aet", "CT01", "-aec", "SOLENT", "127.0.0.1", str(srv.ports["dicom"]))
    assert "Calling AE Title Not Recognized" in plain.stderr, plain.stderr
    # Bound by fingerprint instead (as `openssl x509 -fingerprint -sha256` prints it).
    der = x509.load_pem_x509_certificate(modality.cert.read_bytes()).fingerprint(hashes.SHA256())
    srv.cli(
        "ae", "add", "CT02", "--host", "127.0.0.1", "--port", "104", "--trust", "ZZA",
        "--tls-identity", ":".join(f"{b:02X}" for b in der),
    )  # fmt: skip
    assert _echo_as(pacs, "CT02", modality, pacs.tls_port).returncode == 0
    assert "Calling AE Title Not Recognized" in _echo_as(pacs, "CT02", other, pacs.tls_port).stderr
    listed = srv.cli("ae", "list", "--json").stdout
    assert "CT01.radiology.test" in listed


def test_silent_connections_do_not_stall_the_tls_port(patient_tls_pacs: TlsPacs) -> None:
    """20 clients open TCP to the TLS port and send nothing (no ClientHello): echoscu +tls is
    answered at once, while all 20 are still open (the TLS handshake is done in each
    connection's own thread, bounded by the ARTIM timer, never in the thread that accepts)."""
    import time

    pacs = patient_tls_pacs
    silent = [socket.create_connection(("127.0.0.1", pacs.tls_port)) for _ in range(20)]
    try:
        time.sleep(0.5)  # all accepted (and, before the fix, the first one's handshake begun)
        started = time.monotonic()
        ok = echo(pacs, pacs.client)
        elapsed = time.monotonic() - started
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "Received Echo Response (Success)" in ok.stdout + ok.stderr
        assert elapsed < 10, f"echo took {elapsed:.1f}s behind 20 silent connections"
        for s in silent:  # still open: the server did not just wait for ARTIM to drop them
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1, socket.MSG_PEEK)
    finally:
        for s in silent:
            s.close()
