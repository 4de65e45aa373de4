"""The fast upper layer (ul/) wired to the listener: who the peer is, what it may negotiate,
where a C-STORE is spooled and ingested, and what a C-GET sends.

The decisions are the pynetdicom handlers' own (identify_peer, allowed_abstract_syntaxes,
store_spooled, retrieve_keys, RetrieveService, the DIMSE audit records), so both engines answer
alike; only the wire handling differs.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.filereader import read_dataset

from solent.protocols.dimse import retrieve_scp
from solent.protocols.dimse.access import Operation, Peer
from solent.protocols.dimse.net import STORAGE_SOP_CLASSES, STORAGE_SYNTAXES, SpoolFile
from solent.protocols.dimse.store_scp import store_spooled
from solent.protocols.dimse.ul import dimse, get
from solent.protocols.dimse.ul.server import Association, Message, Spool

if TYPE_CHECKING:
    from solent.protocols.dimse.listener import DimseListener

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
GET_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.2.1.3", retrieve_scp.STUDY_ROOT_GET})
COMMAND_SYNTAXES = frozenset({"1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"})
STORAGE = frozenset(str(u) for u in STORAGE_SOP_CLASSES)
STORAGE_TS = frozenset(str(u) for u in STORAGE_SYNTAXES) | {"1.2.840.10008.1.2.1.99"}


def fast_path(slow: Collection[str], abstract_syntaxes: Collection[str]) -> bool:
    """Whether an association goes to the fast path: none of its proposed abstract syntaxes
    is one of the services left to pynetdicom."""
    return not any(a in slow for a in abstract_syntaxes)


def _remove(spool: SpoolFile) -> None:
    """Close a spool and delete its file if it is still there under its name (and is still
    this spool's file: once ingest renamed it away, the name may be another spool's)."""
    if spool.closed:
        return
    mine = os.fstat(spool.fileno())
    spool.close()
    with contextlib.suppress(OSError):
        there = os.stat(spool.name)
        if (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
            os.unlink(spool.name)


class FastServices:
    """ul.server.Services for one DimseListener."""

    def __init__(self, listener: DimseListener, spool_dir: Path, implementation_uid: str) -> None:
        self.listener = listener
        self.settings = listener.services.settings
        self.spool_dir = str(spool_dir)
        self.implementation_uid = implementation_uid

    def identify(self, calling_ae: str, called_ae: str, address: str) -> object | None:
        return self.listener.identify(calling_ae, called_ae, address, None)

    def syntaxes(self, peer: object) -> Callable[[str], Collection[str] | None]:
        assert isinstance(peer, Peer)
        from solent.protocols.dimse.listener import allowed_abstract_syntaxes

        allowed = allowed_abstract_syntaxes(peer)
        storage = peer.may(Operation.STORE) or peer.may(Operation.RETRIEVE)
        unknown = self.settings.dicom_accept_unknown_sop_classes and peer.may(Operation.STORE)
        known = self.listener._known_abstract_syntaxes

        def offered(abstract: str) -> Collection[str] | None:
            if abstract == VERIFICATION or (
                abstract in GET_SOP_CLASSES and (allowed is None or abstract in allowed)
            ):
                return COMMAND_SYNTAXES
            if abstract in STORAGE:
                return STORAGE_TS if storage else None
            if unknown and abstract not in known:
                return STORAGE_TS
            return None

        return offered

    def spool(self, sop_class: str, sop_instance: str, transfer_syntax: str) -> Spool:
        spool = SpoolFile(self.spool_dir)
        spool.write(
            dimse.file_meta(sop_class, sop_instance, transfer_syntax, self.implementation_uid)
        )
        return spool

    def discard(self, spool: Spool) -> None:
        assert isinstance(spool, SpoolFile)
        _remove(spool)

    def store(
        self, peer: object, spool: Spool, sop_class: str, sop_instance: str
    ) -> tuple[int, str]:
        assert isinstance(peer, Peer) and isinstance(spool, SpoolFile)
        try:
            return store_spooled(
                Path(spool.name),
                spool,
                (sop_class, sop_instance),
                self.listener.services.ingest,
                peer,
            )
        finally:
            _remove(spool)  # ingest moved it into the store unless it was refused

    def get(self, peer: object, assoc: Association, msg: Message) -> None:
        assert isinstance(peer, Peer)
        service = self.listener.retrieve
        sop_class = msg.command.text("AffectedSOPClassUID")
        try:
            retrieve_scp.refuse_unless_allowed(service, peer)
            identifier = self._identifier(msg)
            keys = retrieve_scp.retrieve_keys(identifier, sop_class, peer)
        except retrieve_scp.RetrieveRefused as exc:
            log.info("C-GET refused: %s", exc)
            get.refuse(assoc, msg, exc.code, str(exc))
            return
        refs = service.locate(
            peer.principal, keys, channel="dimse c-get", destination=peer.principal.name
        )
        identity = service.current_identity(peer.principal.trust)  # the caller's view
        principal = peer.principal
        ops = [
            get.SubOperation(
                ref.sop_class_uid,
                ref.sop_instance_uid,
                ref.transfer_syntax_uid,
                functools.partial(service.open_encoded, principal, ref, identity),
                functools.partial(service.uncompressed, principal, ref, identity),
            )
            for ref in refs
        ]
        outcome = get.perform(assoc, msg, ops)
        if outcome.failed or outcome.cancelled:
            service.record_outcome(
                peer.principal,
                [r for r in refs if r.sop_instance_uid in set(outcome.failed_uids)],
                channel="dimse c-get",
                completed=outcome.completed,
                failed_count=outcome.failed,
                cancelled=outcome.cancelled,
            )

    @staticmethod
    def _identifier(msg: Message) -> Any:
        raw = msg.dataset
        if not isinstance(raw, bytearray):
            raise retrieve_scp.RetrieveRefused(0xA900, "C-GET without an identifier")
        ts = msg.context.transfer_syntax
        try:
            return read_dataset(
                io.BytesIO(bytes(raw)), ts == "1.2.840.10008.1.2", ts != "1.2.840.10008.1.2.2"
            )
        except Exception as exc:
            raise retrieve_scp.RetrieveRefused(0xA900, f"unreadable identifier: {exc}") from exc
