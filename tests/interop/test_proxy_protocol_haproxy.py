"""PROXY protocol behind HAProxy (issue 16): the registered-peer checks see the real client.

Every address here is loopback, so the client is told apart from the balancer by its source
address: the modality and the PAS connect from 127.0.0.2 (where they are registered), a stranger
from 127.0.0.3, and HAProxy reaches the node from 127.0.0.1, the only balancer allowed to send
PROXY headers. Through `send-proxy` (v1) and `send-proxy-v2` the node accepts the registered
client and refuses the stranger; without a header (straight to the node, or a balancer frontend
without send-proxy) it refuses everyone.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pynetdicom import AE

from solent.app import build_archive
from solent.index.hl7_senders import add_sender
from solent.settings import load_settings
from tests.conftest import RunningServer, require_tool, start_server
from tests.interop.haproxy_support import free_port

MODALITY = "PXMODALITY"
CLIENT, STRANGER = "127.0.0.2", "127.0.0.3"
VERIFICATION = "1.2.840.10008.1.1"
ADT = (
    "MSH|^~\\&|PAS|ZZA|SOLENT|REGION|20261204120000||ADT^A08|{cid}|P|2.4\r"
    "EVN|A08|20261204120000\r"
    "PID|1||ZZA0001^^^ZZA^MR||PROXY^PATIENT||19700101|F\r"
)


@dataclass
class Fronts:
    v1: int
    v2: int
    bare: int
    mllp: int


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[RunningServer, Fronts]]:
    haproxy = require_tool("haproxy")
    data = tmp_path / "node"
    archive = build_archive(load_settings(environ={}, data_dir=data))
    archive.index.add_trust("ZZA", "Trust A")
    archive.index.add_node(MODALITY, CLIENT, 104, "ZZA", ["store", "query"])
    add_sender(archive.index, "*", "ZZA", (CLIENT,), None)
    archive.close()
    node = start_server(
        data,
        extra_env={"SOLENT_PROXY_PROTOCOL": "true", "SOLENT_PROXY_PROTOCOL_FROM": "127.0.0.1/32"},
    )
    fronts = Fronts(free_port(), free_port(), free_port(), free_port())
    dicom, hl7 = node.ports["dicom"], node.ports["hl7"]
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n"
        + "".join(
            f"listen {name}\n  bind 127.0.0.1:{port}\n  server n1 127.0.0.1:{target}{extra}\n"
            for name, port, target, extra in (
                ("dicom_v1", fronts.v1, dicom, " send-proxy"),
                ("dicom_v2", fronts.v2, dicom, " send-proxy-v2"),
                ("dicom_bare", fronts.bare, dicom, ""),
                ("mllp_v2", fronts.mllp, hl7, " send-proxy-v2"),
            )
        )
    )
    proc = subprocess.Popen(
        [haproxy, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        for port in (fronts.v1, fronts.v2, fronts.bare, fronts.mllp):
            _wait_listening(port)
        yield node, fronts
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        node.stop()


def _wait_listening(port: int) -> None:
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"HAProxy is not listening on {port}")


def echo(port: int, source: str) -> bool:
    """C-ECHO from ``source`` as the registered modality; True when the association was
    accepted and the echo succeeded."""
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.network_timeout = 4
    assoc = ae.associate("127.0.0.1", port, ae_title="SOLENT", bind_address=(source, 0))
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status and status.Status == 0)


def mllp(port: int, source: str, control_id: str) -> str:
    """One ADT over MLLP from ``source``; the ACK text, or "" when the node closed instead."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(b"\x0b" + ADT.format(cid=control_id).encode() + b"\x1c\r")
        data = b""
        while not data.endswith(b"\x1c\r"):
            chunk = s.recv(4096)
            if not chunk:
                return ""
            data += chunk
    return data.decode().strip("\x0b\x1c\r")


def test_dimse_sees_the_client_behind_haproxy_through_proxy_v1_and_v2(
    proxied: tuple[RunningServer, Fronts],
) -> None:
    node, fronts = proxied
    assert echo(fronts.v1, CLIENT)
    assert echo(fronts.v2, CLIENT)
    # The node checks the address the header carries, not the balancer's.
    assert not echo(fronts.v1, STRANGER)
    assert not echo(fronts.v2, STRANGER)
    # No header: straight to the node, or a balancer that sends none, is refused.
    assert not echo(node.ports["dicom"], CLIENT)
    assert not echo(fronts.bare, CLIENT)


def test_mllp_sees_the_sender_behind_haproxy(proxied: tuple[RunningServer, Fronts]) -> None:
    node, fronts = proxied
    ack = mllp(fronts.mllp, CLIENT, "PX1")
    assert "MSA|AA|PX1" in ack, ack
    assert mllp(fronts.mllp, STRANGER, "PX2") == ""  # not a registered sender's address
    assert mllp(node.ports["hl7"], CLIENT, "PX3") == ""  # no header
