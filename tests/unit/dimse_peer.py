"""A registered DICOM node as the DIMSE listener identifies it, for tests that store and
retrieve in process as that node would."""

from __future__ import annotations

from solent.app import Archive
from solent.protocols.dimse.access import Peer, identify_peer


def registered_scu(archive: Archive, ae_title: str = "SCU", trust: str = "ZZA") -> Peer:
    """Node ``ae_title`` of ``trust`` that may store and retrieve, registered and identified."""
    archive.index.add_node(ae_title, "127.0.0.1", 104, trust, ["store", "retrieve"])
    peer = identify_peer(
        archive.services.directory,
        calling_ae=ae_title,
        called_ae=archive.settings.ae_title,
        address="127.0.0.1",
        allow_unknown=False,
        unknown_trust="",
    )
    assert peer is not None
    return peer
