"""Send audit messages to a syslog collector: RFC 5424 messages, TLS transport (RFC 5425).

IHE ATNA (ITI-20) uses exactly this: the DICOM audit XML as the MSG part, MSGID
``IHE+RFC-3881``, octet-counted frames over TLS. ``udp://`` is there for lab set-ups only.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from solent.errors import ConfigurationError

FACILITY_AUTHPRIV = 10
SEVERITY = {"success": 5, "denied": 4, "failure": 4, "error": 3}  # notice, warning, error


def rfc5424(xml: str, outcome: str, *, hostname: str | None = None, at: str | None = None) -> bytes:
    pri = FACILITY_AUTHPRIV * 8 + SEVERITY.get(outcome, 4)
    stamp = at or datetime.now(UTC).isoformat(timespec="milliseconds")
    host = (hostname or socket.gethostname() or "-")[:255].replace(" ", "_")
    header = f"<{pri}>1 {stamp} {host} solent - IHE+RFC-3881 - "
    return header.encode("utf-8") + b"\xef\xbb\xbf" + xml.encode("utf-8")


def send(
    url: str, messages: Iterable[bytes], ca_file: Path | None = None, timeout: float = 30
) -> int:
    """Send every message; returns how many were sent. Raises OSError on a transport failure."""
    parts = urlsplit(url)
    if parts.scheme not in ("tls", "udp") or not parts.hostname or not parts.port:
        raise ConfigurationError("audit_syslog_url must be tls://host:port or udp://host:port")
    sent = 0
    if parts.scheme == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for m in messages:
                sock.sendto(m, (parts.hostname, parts.port))
                sent += 1
        return sent
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection((parts.hostname, parts.port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=parts.hostname) as tls,
    ):
        for m in messages:
            tls.sendall(str(len(m)).encode() + b" " + m)  # RFC 5425 octet counting
            sent += 1
        # Close cleanly (close_notify), reading what the server sent (TLS 1.3 session tickets):
        # closing with unread data makes the kernel reset the connection and drop our tail.
        with contextlib.suppress(OSError):
            tls.unwrap()
    return sent
