"""PROXY protocol (v1 text, v2 binary) on the DIMSE and MLLP listeners (issue 16).

Behind a TCP load balancer every connection comes from the balancer, so the registered-peer
checks (a DICOM node's or an HL7 sender's address) would see the balancer's address, not the
modality's. With ``SOLENT_PROXY_PROTOCOL`` on, the balancer (HAProxy ``send-proxy`` or
``send-proxy-v2``) writes the client's address before the first byte of DICOM or MLLP; the
listener reads exactly that header (parsed by the maintained ``proxy-protocol`` package) and
uses its source address from then on. A connection without a valid header is closed: with the
setting on, the port must only be reachable through the balancer, and
``SOLENT_PROXY_PROTOCOL_FROM`` names the balancers' addresses so nobody else can claim one.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from proxyprotocol import (
    ProxyProtocolIncompleteError,
    ProxyProtocolSyntaxError,
)
from proxyprotocol.detect import ProxyProtocolDetect
from proxyprotocol.result import is_ipv4, is_ipv6

V1_MAX = 107  # the longest v1 line, CRLF included (the specification's own bound)
V2_MAX = 16 + 512  # header + addresses and the TLVs a balancer adds; more is refused


class ProxyHeaderError(Exception):
    """The connection did not start with an acceptable PROXY protocol header."""


@dataclass(frozen=True)
class ProxyHeaderReader:
    """Reads the header of one connection; ``trusted``: balancer networks (empty: any)."""

    timeout: float
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def from_settings(cls, enabled: bool, trusted: str, timeout: float) -> ProxyHeaderReader | None:
        if not enabled:
            return None
        nets = tuple(ipaddress.ip_network(n.strip()) for n in trusted.split(",") if n.strip())
        return cls(timeout, nets)

    def client_address(self, sock: socket.socket, address: Any) -> tuple[str, int]:
        """The client's (host, port) the balancer reports, reading only the header's bytes.

        A LOCAL (v2) or UNKNOWN (v1) header — the balancer's own health check — keeps the
        socket's address. Raises ProxyHeaderError for a missing, malformed or untrusted one.
        """
        host, port = str(address[0]), int(address[1])
        if self.trusted and not any(ipaddress.ip_address(host) in n for n in self.trusted):
            raise ProxyHeaderError(f"{host} is not a balancer allowed to send PROXY headers")
        previous = sock.gettimeout()
        sock.settimeout(self.timeout)
        try:
            result = _read(sock)
        except (TimeoutError, OSError) as exc:
            raise ProxyHeaderError(f"no PROXY header from {host}: {exc}") from exc
        finally:
            sock.settimeout(previous)
        if is_ipv4(result) or is_ipv6(result):
            return str(result.source[0]), int(result.source[1])
        return host, port


def _read(sock: socket.socket) -> Any:
    """Exactly the header's bytes, as the parser asks for them (never a byte of payload)."""
    detect = ProxyProtocolDetect()
    data = bytearray(_recv(sock, 8))
    while True:
        try:
            return detect.unpack(bytes(data))
        except ProxyProtocolIncompleteError as exc:
            want = exc.want_read
            if want.want_line:  # v1: the line ends with LF; read it a byte at a time
                data += _recv(sock, 1)
                if len(data) > V1_MAX:
                    raise ProxyHeaderError("PROXY v1 line longer than 107 bytes") from None
            else:
                need = int(want.want_bytes or 1)
                if len(data) + need > V2_MAX:
                    raise ProxyHeaderError("PROXY v2 header too long") from None
                data += _recv(sock, need)
        except (ProxyProtocolSyntaxError, ValueError, KeyError) as exc:
            raise ProxyHeaderError(f"not a PROXY protocol header: {exc}") from exc


def _recv(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ProxyHeaderError("connection closed inside the PROXY header")
        out += chunk
    return bytes(out)
