"""HL7 v2 over MLLP with TLS (R37, R14): a trust's PAS sends ADT across the network to the
cloud archive. With a CA configured the sender must present a certificate it signs; the
messages are then handled exactly as on the plain port (registered sender, journal, ACK).
A sender without a certificate, or speaking plain MLLP to the TLS port, is closed after the
failed handshake and the port keeps serving."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import pytest

from solent.protocols.hl7.mllp import Deframer, frame
from tests.conftest import RunningServer, start_server
from tests.interop.hl7_support import er7, msa, prepare_data_dir
from tests.interop.test_dimse_tls_dcmtk import Authority, Issued, free_port

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

ADT = """
MSH|^~\\&|PAS|ZZA|SOLENT|REGION|20250314120000||ADT^A04^ADT_A01|{control}|P|2.4
EVN|A04|20250314120000
PID|1||T7001^^^ZZA^MR||TLS^TESSA||19700101|F
PV1|1|O
"""


@pytest.fixture(scope="module")
def pacs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, int, Authority, Issued]]:
    root = tmp_path_factory.mktemp("hl7-tls")
    ca = Authority(root, "hl7")
    server_cert = ca.issue("localhost", server=True)
    client = ca.issue("pas.zza", server=False)
    data = root / "var"
    prepare_data_dir(data)
    tls_port = free_port()
    srv = start_server(
        data,
        {
            "SOLENT_HL7_TLS_PORT": str(tls_port),
            "SOLENT_HL7_TLS_CERT": str(server_cert.cert),
            "SOLENT_HL7_TLS_KEY": str(server_cert.key),
            "SOLENT_HL7_TLS_CA": str(ca.pem),
        },
    )
    try:
        yield srv, tls_port, ca, client
    finally:
        srv.stop()


def _exchange(sock: socket.socket, message: str) -> str:
    sock.sendall(frame(er7(message).encode()))
    deframer = Deframer()
    while True:
        data = sock.recv(65536)
        assert data, "the server closed the connection without an ACK"
        acks = deframer.feed(data)
        if acks:
            return acks[0].decode()


def _context(ca: Authority, client: Issued | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.pem))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return context


def test_a_sender_with_its_certificate_gets_its_ack(
    pacs: tuple[RunningServer, int, Authority, Issued],
) -> None:
    srv, port, ca, client = pacs
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        _context(ca, client).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        ack = _exchange(tls, ADT.format(control="TLS0001"))
    assert msa(ack)[:2] == ["AA", "TLS0001"]
    found = srv.cli("identity", "history", "ZZA", "T7001", "--json")
    assert "TLS0001" in found.stdout  # the record's change names the message that made it


def test_no_certificate_or_plain_mllp_is_closed_and_the_port_keeps_serving(
    pacs: tuple[RunningServer, int, Authority, Issued],
) -> None:
    _srv, port, ca, client = pacs
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        pytest.raises((ssl.SSLError, ConnectionError, OSError)),
        _context(ca, None).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        _exchange(tls, ADT.format(control="TLS0002"))
    with socket.create_connection(("127.0.0.1", port), timeout=15) as plain:
        plain.sendall(frame(er7(ADT.format(control="TLS0003")).encode()))
        try:
            reply = plain.recv(65536)
        except ConnectionResetError:
            reply = b""
        assert reply == b""  # closed (or reset): no ACK in clear text
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        _context(ca, client).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert msa(_exchange(tls, ADT.format(control="TLS0004")))[0] == "AA"
