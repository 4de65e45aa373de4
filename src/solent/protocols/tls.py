"""The server side of TLS on the DICOM and MLLP ports: one policy for both (TLS 1.2 or
later; with a CA, peers must present a certificate it signs)."""

from __future__ import annotations

import ssl
from pathlib import Path

from solent.errors import ConfigurationError


def server_context(
    port_setting: str, cert: Path | None, key: Path | None, ca: Path | None
) -> ssl.SSLContext:
    """``port_setting`` (e.g. ``SOLENT_HL7_TLS``) names the settings in the error a missing
    certificate or key gives."""
    if cert is None or key is None:
        raise ConfigurationError(
            f"{port_setting}_PORT needs {port_setting}_CERT and {port_setting}_KEY"
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    if ca is not None:
        context.load_verify_locations(cafile=str(ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context
