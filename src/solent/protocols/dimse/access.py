"""Who may associate, and as whom: registered nodes only (AE title + address), per operation.

The node's trust becomes the trust of what it stores. Decided once per association, when the
A-ASSOCIATE-RQ arrives; the result rides on the association for every later request.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from solent.domain.principal import (
    OUTSIDE_SOURCE,
    Channel,
    Principal,
    PrincipalKind,
    Provenance,
)
from solent.domain.records import NodeRow
from solent.security.addresses import host_matches
from solent.services.directory import Directory

log = logging.getLogger(__name__)


class Operation(StrEnum):
    STORE = "store"
    QUERY = "query"
    RETRIEVE = "retrieve"


@dataclass(frozen=True, slots=True)
class Peer:
    """An authenticated calling node on one association."""

    principal: Principal
    provenance: Provenance
    node: NodeRow | None  # None only under the dicom_allow_unknown development switch

    def may(self, op: Operation) -> bool:
        if self.node is None:
            return True
        return op.value in self.node.allowed


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The TLS client certificate a peer presented and the server verified against its CA."""

    common_names: tuple[str, ...]
    sha256: str  # lower-case hex of the DER certificate's SHA-256

    @classmethod
    def of(cls, sock: object) -> PeerCertificate | None:
        """The verified client certificate of an accepted socket; None on a plain socket or
        when no certificate was asked for (no SOLENT_DICOM_TLS_CA) or given."""
        if not isinstance(sock, ssl.SSLSocket):
            return None
        info = sock.getpeercert()
        der = sock.getpeercert(binary_form=True)
        if not info or not der:
            return None
        subject: Any = info.get("subject", ())  # ((("commonName", "ct01"),), ...)
        names = tuple(str(value) for rdn in subject for key, value in rdn if key == "commonName")
        return cls(names, hashlib.sha256(der).hexdigest())


def certificate_matches(expected: str, cert: PeerCertificate | None) -> bool:
    """A node's registered TLS identity: its certificate's SHA-256 fingerprint (64 hex digits,
    colons allowed) or its subject common name (case-insensitive)."""
    if cert is None:
        return False
    wanted = expected.strip()
    digest = wanted.replace(":", "").lower()
    if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
        return hmac.compare_digest(digest, cert.sha256)
    return any(name.casefold() == wanted.casefold() for name in cert.common_names)


def identify_peer(
    directory: Directory,
    *,
    calling_ae: str,
    called_ae: str,
    address: str,
    allow_unknown: bool,
    unknown_trust: str,
    certificate: PeerCertificate | None = None,
) -> Peer | None:
    """The Peer for a calling AE at ``address``, or None when it must be rejected.

    A node registered with a TLS identity is itself only over TLS with that certificate: the CA
    alone says a certificate is one of ours, the binding says which node it may speak for.
    """
    calling_ae = calling_ae.strip()
    node = directory.node(calling_ae)
    if node is not None and not host_matches(node.host, address):
        log.warning(
            "association from a registered AE title at an unregistered address rejected",
            extra={"calling_ae": calling_ae, "address": address, "registered_host": node.host},
        )
        node = None
        if not allow_unknown:
            return None
    if (
        node is not None
        and node.tls_identity
        and not certificate_matches(node.tls_identity, certificate)
    ):
        log.warning(
            "association from a registered AE title without its TLS certificate rejected",
            extra={
                "calling_ae": calling_ae,
                "address": address,
                "certificate_cn": list(certificate.common_names) if certificate else None,
            },
        )
        node = None
        if not allow_unknown:
            return None
    if node is None and not allow_unknown:
        return None
    trust = node.trust_code if node is not None else (unknown_trust or None)
    principal = Principal(
        PrincipalKind.NODE,
        calling_ae,
        trust,
        roles=_roles(node),
        address=address,
    )
    provenance = Provenance(
        Channel.DIMSE, calling_ae=calling_ae, called_ae=called_ae.strip(), remote_address=address
    )
    return Peer(principal, provenance, node)


def _roles(node: NodeRow | None) -> frozenset[str]:
    """What a registered node may do, and whether it is an outside source (R28: ingest holds
    what it stores until a steward reconciles it)."""
    if node is None:
        return frozenset()
    return frozenset([*node.allowed, *([OUTSIDE_SOURCE] if node.outside else [])])
