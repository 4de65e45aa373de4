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
from solent.protocols.dimse.ul import client, dimse, get
from solent.protocols.dimse.ul.server import Association, Message, Spool

if TYPE_CHECKING:
    from solent.protocols.dimse.listener import DimseListener

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
GET_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.2.1.3", retrieve_scp.STUDY_ROOT_GET})
MOVE_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.2.1.2", retrieve_scp.STUDY_ROOT_MOVE})
RETRIEVE_SOP_CLASSES = GET_SOP_CLASSES | MOVE_SOP_CLASSES
COMMAND_SYNTAXES = frozenset({"1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"})
STORAGE = frozenset(str(u) for u in STORAGE_SOP_CLASSES)
STORAGE_TS = frozenset(str(u) for u in STORAGE_SYNTAXES) | {"1.2.840.10008.1.2.1.99"}


MOVE_DESTINATION_UNKNOWN = 0xA801


def destination_syntaxes(refs: list[Any]) -> list[tuple[str, list[str]]]:
    """Contexts to propose to a C-MOVE destination, as the pynetdicom path does
    (retrieve_scp.destination_contexts): per SOP class, the stored syntax first on its own
    context, then the uncompressed ones."""
    native = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    out: list[tuple[str, list[str]]] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for ref in refs:
        ts = ref.transfer_syntax_uid
        wanted = [[ts, *[u for u in native if u != ts]]] if ts in native else [[ts], native]
        for syntaxes in wanted:
            key = (ref.sop_class_uid, tuple(syntaxes))
            if key not in seen and len(out) < retrieve_scp.MAX_CONTEXTS:
                seen.add(key)
                out.append((ref.sop_class_uid, syntaxes))
    return out


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
                abstract in RETRIEVE_SOP_CLASSES and (allowed is None or abstract in allowed)
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

    def _keys(self, peer: Peer, assoc: Association, msg: Message, operation: str) -> Any:
        """The retrieve keys of a C-GET/C-MOVE; None once a refusal (audited when denied) has
        been answered."""
        try:
            retrieve_scp.refuse_unless_allowed(self.listener.retrieve, peer)
            identifier = self._identifier(msg)
            sop_class = msg.command.text("AffectedSOPClassUID")
            return retrieve_scp.retrieve_keys(identifier, sop_class, peer)
        except retrieve_scp.RetrieveRefused as exc:
            log.info("%s refused: %s", operation.upper(), exc)
            get.refuse(assoc, msg, exc.code, str(exc))
            return None

    def _ops(self, peer: Peer, refs: list[Any], viewing_trust: str | None) -> list[Any]:
        service = self.listener.retrieve
        # As the receiving trust sees them; only studies the requesting peer may see.
        identity = service.current_identity(peer.principal, viewing_trust)
        principal = peer.principal
        return [
            get.SubOperation(
                ref.sop_class_uid,
                ref.sop_instance_uid,
                ref.transfer_syntax_uid,
                functools.partial(service.open_encoded, principal, ref, identity),
                functools.partial(service.uncompressed, principal, ref, identity),
                functools.partial(service.transcoded_wire, principal, ref, identity),
            )
            for ref in refs
        ]

    def _audit_outcome(
        self, peer: Peer, refs: list[Any], outcome: get.Outcome, operation: str
    ) -> None:
        if outcome.failed or outcome.cancelled:
            failed = set(outcome.failed_uids)
            self.listener.retrieve.record_outcome(
                peer.principal,
                [r for r in refs if r.sop_instance_uid in failed],
                channel=f"dimse {operation}",
                completed=outcome.completed,
                failed_count=outcome.failed,
                cancelled=outcome.cancelled,
            )

    def get(self, peer: object, assoc: Association, msg: Message) -> None:
        assert isinstance(peer, Peer)
        service = self.listener.retrieve
        keys = self._keys(peer, assoc, msg, "c-get")
        if keys is None:
            return
        refs = service.locate(
            peer.principal, keys, channel="dimse c-get", destination=peer.principal.name
        )
        outcome = get.perform(assoc, msg, self._ops(peer, refs, peer.principal.trust))
        self._audit_outcome(peer, refs, outcome, "c-get")

    def move(self, peer: object, assoc: Association, msg: Message) -> None:
        """C-MOVE: the same sub-operations as C-GET, streamed on a sub-association to the
        registered destination (its trust's view of the person), answered here."""
        assert isinstance(peer, Peer)
        service = self.listener.retrieve
        keys = self._keys(peer, assoc, msg, "c-move")
        if keys is None:
            return
        destination = self.listener.services.directory.node(msg.command.text("MoveDestination"))
        if destination is None:
            get.refuse(assoc, msg, MOVE_DESTINATION_UNKNOWN, "move destination unknown")
            return
        refs = service.locate(
            peer.principal, keys, channel="dimse c-move", destination=destination.ae_title
        )
        ops = self._ops(peer, refs, destination.trust_code)
        if not ops:
            get.perform(assoc, msg, ops)  # nothing matched: Success, no sub-association
            return
        try:
            sub = client.open_association(
                destination.host,
                destination.port,
                calling_ae=self.settings.ae_title,
                called_ae=destination.ae_title,
                proposed=destination_syntaxes(refs),
                config=assoc.config,
                services=self,
                workers=assoc.workers,
            )
        except client.AssociationRefused as exc:
            log.warning("C-MOVE sub-association failed: %s", exc)
            outcome = get.Outcome(failed=len(refs), failed_uids=[r.sop_instance_uid for r in refs])
            self._audit_outcome(peer, refs, outcome, "c-move")
            get.refuse(assoc, msg, MOVE_DESTINATION_UNKNOWN, "move destination unreachable")
            return
        try:
            originator = (str(peer.provenance.calling_ae or ""), msg.command.number("MessageID"))
            outcome = get.perform(assoc, msg, ops, sender=sub, originator=originator)
        finally:
            client.release(sub, assoc.config.artim_timeout)
        self._audit_outcome(peer, refs, outcome, "c-move")

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
