"""C-MOVE and C-GET SCPs: sub-operations that send the stored bytes (see suboperations.py).

pynetdicom counts the sub-operations, sends Pending responses and reports failures in the
final response (Warning B000 with the Failed SOP Instance UID List when some failed); C-CANCEL
is honoured between sub-operations.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.events import Event
from pynetdicom.presentation import build_context

from solent.domain.records import StoredInstanceRef
from solent.protocols.dimse.access import Operation, Peer
from solent.protocols.dimse.net import UNCOMPRESSED
from solent.protocols.dimse.status import (
    CANCEL,
    IDENTIFIER_MISMATCH,
    NOT_AUTHORIZED,
    PENDING,
    status,
)
from solent.protocols.dimse.suboperations import StoredInstance
from solent.services.directory import Directory
from solent.services.retrieve import RetrieveKeys, RetrieveService

log = logging.getLogger(__name__)

STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
MAX_CONTEXTS = 128


class RetrieveRefused(Exception):
    """The identifier cannot be served; ``code`` is the DIMSE status to answer."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _values(ds: Dataset, keyword: str) -> tuple[str, ...]:
    value = ds.get(keyword)
    if value is None or value == "":
        return ()
    items = value.split("\\") if isinstance(value, str) else [str(v) for v in value]
    return tuple(v.strip() for v in items if v and v.strip())


def retrieve_keys(identifier: Dataset, sop_class: str, peer: Peer) -> RetrieveKeys:
    """The unique keys of a C-MOVE/C-GET identifier (PS3.4 C.4.2.2.1)."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    study_root = sop_class in (STUDY_ROOT_MOVE, STUDY_ROOT_GET)
    if level not in ("PATIENT", "STUDY", "SERIES", "IMAGE") or (study_root and level == "PATIENT"):
        raise RetrieveRefused(IDENTIFIER_MISMATCH, f"invalid Query/Retrieve Level {level!r}")
    keys = RetrieveKeys(
        level=level,
        patient_id=(_values(identifier, "PatientID") or (None,))[0],
        patient_issuer=(_values(identifier, "IssuerOfPatientID") or (peer.principal.trust,))[0],
        study_uids=_values(identifier, "StudyInstanceUID"),
        series_uids=_values(identifier, "SeriesInstanceUID"),
        sop_instance_uids=_values(identifier, "SOPInstanceUID"),
    )
    needed = {
        "PATIENT": keys.patient_id,
        "STUDY": keys.study_uids,
        "SERIES": keys.series_uids,
        "IMAGE": keys.sop_instance_uids,
    }[level]
    if not needed:
        raise RetrieveRefused(IDENTIFIER_MISMATCH, f"the unique key of level {level} is missing")
    return keys


def refuse_unless_allowed(service: RetrieveService, peer: Peer | None) -> Peer:
    """The peer, when its registration allows retrieves; else RetrieveRefused (audited)."""
    if peer is None or not peer.may(Operation.RETRIEVE):
        if peer is not None:
            service.record_refusal(peer.principal, "dimse retrieve", "this node may not retrieve")
        raise RetrieveRefused(NOT_AUTHORIZED, "this node may not retrieve")
    return peer


def _keys(event: Event, service: RetrieveService, peer: Peer | None) -> tuple[Peer, RetrieveKeys]:
    peer = refuse_unless_allowed(service, peer)
    try:
        identifier = event.identifier
    except Exception as exc:
        raise RetrieveRefused(IDENTIFIER_MISMATCH, f"unreadable identifier: {exc}") from exc
    return peer, retrieve_keys(identifier, str(event.request.AffectedSOPClassUID), peer)


def _suboperations(
    event: Event,
    refs: list[StoredInstanceRef],
    service: RetrieveService,
    peer: Peer,
    viewing_trust: str | None,
    operation: str,
) -> Iterator[tuple[int, Dataset | None]]:
    # One read of the patient attributes per study, as the receiving trust sees the person.
    identity = service.current_identity(peer.principal, viewing_trust)
    failed: list[StoredInstanceRef] = []  # noted by suboperations.send_c_store
    sent = 0
    try:
        for ref in refs:
            if event.is_cancelled:
                yield CANCEL, None
                return
            sent += 1
            yield PENDING, StoredInstance(ref, service, peer.principal, identity, failed)
    finally:
        # pynetdicom resumes the generator after the last sub-operation was answered.
        if failed or sent < len(refs):
            service.record_outcome(
                peer.principal,
                failed,
                channel=f"dimse {operation}",
                completed=sent - len(failed),
                failed_count=len(failed),
                cancelled=sent < len(refs),
            )


def destination_contexts(refs: list[StoredInstanceRef]) -> list[Any]:
    """Per SOP class: the stored syntax on its own context (offered first), then uncompressed."""
    contexts: list[Any] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for ref in refs:
        native = [str(u) for u in UNCOMPRESSED[:2]]
        wanted = (
            [[ref.transfer_syntax_uid, *[u for u in native if u != ref.transfer_syntax_uid]]]
            if ref.transfer_syntax_uid in native
            else [[ref.transfer_syntax_uid], native]
        )
        for syntaxes in wanted:
            key = (ref.sop_class_uid, tuple(syntaxes))
            if key not in seen and len(contexts) < MAX_CONTEXTS:
                seen.add(key)
                contexts.append(build_context(ref.sop_class_uid, syntaxes))
    return contexts


def _answer_refusal(event: Event, refusal: RetrieveRefused) -> None:
    """Make the one response pynetdicom sends to this C-MOVE/C-GET carry the refusal's status.

    pynetdicom's Move SCP wants a destination before any status (a handler failing there gets
    C514), and its Get SCP only fails a request by counting a failed sub-operation. PS3.4
    C.4.2.1.5/C.4.3.1.4 have A900 for an identifier that does not match the SOP class, and
    PS3.7 0124 for a caller that may not retrieve, with no sub-operation. So the handler takes
    pynetdicom's shortest path to a final response and that response is rewritten on its way
    out; nothing else on the association is touched.
    """
    dimse: Any = event.assoc.dimse
    send = dimse.send_msg
    msg_id = event.request.MessageID

    def send_msg(primitive: Any, context_id: int) -> None:
        if isinstance(primitive, (C_MOVE, C_GET)) and primitive.MessageIDBeingRespondedTo == msg_id:
            del dimse.send_msg  # back to the class's method for every later message
            primitive.Status = refusal.code
            primitive.ErrorComment = status(refusal.code, str(refusal)).ErrorComment
        send(primitive, context_id)

    dimse.send_msg = send_msg


def handle_move(
    event: Event, directory: Directory, service: RetrieveService, peer: Peer | None
) -> Iterator[Any]:
    try:
        peer, keys = _keys(event, service, peer)
    except RetrieveRefused as exc:
        log.info("C-MOVE refused: %s", exc)
        _answer_refusal(event, exc)
        yield None, None  # pynetdicom's final A801, rewritten to exc.code
        return
    destination = directory.node(str(event.move_destination).strip())
    if destination is None:
        yield None, None
        return
    refs = service.locate(
        peer.principal, keys, channel="dimse c-move", destination=destination.ae_title
    )
    kwargs = {"contexts": destination_contexts(refs)} if refs else {}
    yield destination.host, destination.port, kwargs
    yield len(refs)
    # The images go to the destination's trust: its record of the person (trust_view).
    yield from _suboperations(event, refs, service, peer, destination.trust_code, "c-move")


def handle_get(event: Event, service: RetrieveService, peer: Peer | None) -> Iterator[Any]:
    try:
        peer, keys = _keys(event, service, peer)
    except RetrieveRefused as exc:
        log.info("C-GET refused: %s", exc)
        _answer_refusal(event, exc)
        yield 0  # no sub-operation: pynetdicom's final response, rewritten to exc.code
        return
    refs = service.locate(
        peer.principal, keys, channel="dimse c-get", destination=peer.principal.name
    )
    yield len(refs)
    yield from _suboperations(event, refs, service, peer, peer.principal.trust, "c-get")
