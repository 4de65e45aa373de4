"""Matching a node's registered TLS identity against the certificate its peer presented."""

from __future__ import annotations

from solent.protocols.dimse.access import PeerCertificate, certificate_matches

CERT = PeerCertificate(("ct01.zza.example.nhs.uk",), "ab" * 32)


def test_common_name_matches_case_insensitively() -> None:
    assert certificate_matches("CT01.zza.example.nhs.uk", CERT)
    assert not certificate_matches("ct02.zza.example.nhs.uk", CERT)


def test_fingerprint_matches_with_or_without_colons() -> None:
    assert certificate_matches("AB" * 32, CERT)
    assert certificate_matches(":".join(["AB"] * 32), CERT)
    assert not certificate_matches("cd" * 32, CERT)


def test_no_certificate_never_matches() -> None:
    assert not certificate_matches("ct01.zza.example.nhs.uk", None)
