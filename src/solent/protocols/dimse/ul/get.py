"""C-GET and C-MOVE on the fast path: C-STORE sub-operations written from the stored bytes.

Hand-written because pynetdicom sends each sub-operation as a synchronous round trip through
its Python send path, one PDV object per fragment; here each instance goes out as PDU headers
around slices of the stored file (``Association.send_stream``: one read and one ``sendmsg``
per MB), with the outgoing identity already spliced into its first bytes by the service.
Statuses follow PS3.4 C.4.3.1.4 as pynetdicom answers them: Pending after each
sub-operation, then Success, Warning B000 or Failure A702 (with the Failed SOP Instance UID
List), or Cancel FE00 when a C-CANCEL-RQ arrived. A C-MOVE sends the same sub-operations on a
sub-association to its destination (ul/client.py, PS3.4 C.4.2.1.4) and answers on its own.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from solent.protocols.dimse.ul import dimse
from solent.protocols.dimse.ul.association import Context
from solent.protocols.dimse.ul.pdu import PduError
from solent.protocols.dimse.ul.server import Association, Closed, Message

log = logging.getLogger(__name__)

PENDING, SUCCESS, CANCEL, WARNING, ALL_FAILED = 0xFF00, 0x0000, 0xFE00, 0xB000, 0xA702
UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
BIG_ENDIAN = "1.2.840.10008.1.2.2"
#: Compressed syntaxes an instance stored in another syntax is re-encoded into when the peer
#: accepted nothing else for its SOP class: only lossless ones (PS3.5 8.2; never a lossy step
#: nobody asked for), all of which transcode.encode_frame writes.
LOSSLESS_TARGETS = (
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.5",  # RLE Lossless
)


@dataclass(frozen=True, slots=True)
class SubOperation:
    """One instance to send: what it is, and how to get its bytes.

    ``stored`` opens the stored dataset (an object with ``prefix``, ``rest``, ``remaining``
    and ``close``, see services/retrieve.OutgoingDataset); ``uncompressed`` gives it decoded,
    as a pydicom Dataset, for a peer that accepted only uncompressed syntaxes."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    stored: Callable[[], Any]
    uncompressed: Callable[[], Dataset]
    #: The data set (no file meta) re-encoded in a lossless compressed syntax; None: cannot.
    transcoded: Callable[[str], bytes] | None = None


@dataclass(slots=True)
class Outcome:
    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int = 0
    cancelled: bool = False
    failed_uids: list[str] = field(default_factory=list)


def encode_dataset(ds: Dataset, transfer_syntax: str) -> bytes:
    """A dataset in a native transfer syntax (no file meta), as a C-STORE or identifier."""
    out = DicomBytesIO()
    out.is_implicit_VR = transfer_syntax == "1.2.840.10008.1.2"
    out.is_little_endian = transfer_syntax != BIG_ENDIAN
    write_dataset(out, ds)
    return out.getvalue()


def _context(assoc: Association, sop_class: str, syntaxes: Sequence[str]) -> Context | None:
    for cx in assoc.contexts.values():
        if cx.abstract_syntax == sop_class and cx.peer_scp and cx.transfer_syntax in syntaxes:
            return cx
    return None


def _send_one(
    assoc: Association, op: SubOperation, originator: tuple[str, int] | None = None
) -> int:
    """Send one sub-operation and wait for its C-STORE-RSP; its status (C001 if unsent).
    ``originator``: the C-MOVE's (calling AE, message ID), named in each C-STORE-RQ."""
    stored = _context(assoc, op.sop_class_uid, (op.transfer_syntax_uid,))
    native = None if stored else _context(assoc, op.sop_class_uid, UNCOMPRESSED)
    # A peer that accepted its SOP class only in another (lossless) compressed syntax, e.g.
    # getscu +xs: JPEG Lossless was negotiated for every storage class, and an instance
    # stored uncompressed or in JPEG 2000 was failed (A702) although it could be sent.
    recoded = (
        _context(assoc, op.sop_class_uid, LOSSLESS_TARGETS)
        if stored is None and native is None and op.transcoded is not None
        else None
    )
    if stored is None and native is None and recoded is None:
        log.info("sub-operation: no context for %s", op.sop_class_uid)
        return 0xA702
    assoc.message_id = assoc.message_id % 0xFFFF + 1
    msg_id = assoc.message_id
    context = stored or native or recoded
    assert context is not None
    command = dimse.encode(
        CommandField=dimse.C_STORE_RQ,
        MessageID=msg_id,
        Priority=2,
        CommandDataSetType=0x0000,
        AffectedSOPClassUID=op.sop_class_uid,
        AffectedSOPInstanceUID=op.sop_instance_uid,
        MoveOriginatorApplicationEntityTitle=originator[0] if originator else None,
        MoveOriginatorMessageID=originator[1] if originator else None,
    )
    try:
        if stored is not None:
            out = op.stored()
            try:
                assoc.send_stream(context.context_id, command, out.prefix, out.rest, out.remaining)
            finally:
                out.close()
        elif native is not None:
            data = encode_dataset(op.uncompressed(), context.transfer_syntax)
            assoc.send_message(context.context_id, command, data)
        else:
            assert op.transcoded is not None
            assoc.send_message(context.context_id, command, op.transcoded(context.transfer_syntax))
    except (Closed, OSError):
        raise
    except Exception as exc:
        log.warning("sub-operation %s not sent: %s", op.sop_instance_uid, exc)
        return 0xC001
    while True:
        reply = assoc.next_message()
        field_ = reply.command.command_field
        if field_ == dimse.C_CANCEL_RQ:
            assoc.cancelled.add(reply.command.number("MessageIDBeingRespondedTo"))
        elif field_ == dimse.C_STORE_RSP and reply.command.number("MessageIDBeingRespondedTo") in (
            msg_id,
        ):
            return reply.command.number("Status")
        elif field_ & 0x8000:
            continue  # a response to nothing outstanding
        else:
            # Our window for the peer is drained during a C-GET: a request now breaks it.
            raise PduError(f"request 0x{field_:04X} in the middle of a C-GET", 2)


def _response_field(msg: Message) -> int:
    return msg.command.command_field | 0x8000  # C-GET-RSP or C-MOVE-RSP


def _response(
    assoc: Association, msg: Message, status: int, outcome: Outcome, identifier: bytes | None
) -> None:
    cmd = msg.command
    command = dimse.encode(
        CommandField=_response_field(msg),
        MessageIDBeingRespondedTo=cmd.number("MessageID"),
        AffectedSOPClassUID=cmd.text("AffectedSOPClassUID"),
        CommandDataSetType=0x0000 if identifier is not None else dimse.NO_DATASET,
        Status=status,
        NumberOfRemainingSuboperations=outcome.remaining if status in (PENDING, CANCEL) else None,
        NumberOfCompletedSuboperations=outcome.completed,
        NumberOfFailedSuboperations=outcome.failed,
        NumberOfWarningSuboperations=outcome.warning,
    )
    assoc.send_message(msg.context.context_id, command, identifier)


def refuse(assoc: Association, msg: Message, status: int, comment: str) -> None:
    """The one final response of a C-GET / C-MOVE that is not performed (no sub-operation)."""
    cmd = msg.command
    assoc.send_message(
        msg.context.context_id,
        dimse.encode(
            CommandField=_response_field(msg),
            MessageIDBeingRespondedTo=cmd.number("MessageID"),
            AffectedSOPClassUID=cmd.text("AffectedSOPClassUID"),
            CommandDataSetType=dimse.NO_DATASET,
            Status=status,
            ErrorComment=comment[:64] or None,
            NumberOfCompletedSuboperations=0,
            NumberOfFailedSuboperations=0,
            NumberOfWarningSuboperations=0,
        ),
    )


def _poll_cancel(assoc: Association) -> None:
    """C-MOVE: read what the requestor sent meanwhile on its association, without waiting
    (a C-CANCEL-RQ; its window is drained, so a request now breaks it)."""
    while select.select([assoc.sock], [], [], 0)[0]:
        reply = assoc.next_message()
        field_ = reply.command.command_field
        if field_ == dimse.C_CANCEL_RQ:
            assoc.cancelled.add(reply.command.number("MessageIDBeingRespondedTo"))
        elif not field_ & 0x8000:
            raise PduError(f"request 0x{field_:04X} in the middle of a C-MOVE", 2)


def perform(
    assoc: Association,
    msg: Message,
    ops: Sequence[SubOperation],
    sender: Association | None = None,
    originator: tuple[str, int] | None = None,
) -> Outcome:
    """Send every sub-operation, answering Pending after each, then the final response.

    ``sender``: the C-MOVE sub-association the sub-operations go on (C-GET: ``assoc``)."""
    get_id = msg.command.number("MessageID")
    outcome = Outcome(remaining=len(ops))
    for op in ops:
        if sender is not None:
            _poll_cancel(assoc)
        if get_id in assoc.cancelled:
            break
        try:
            status = _send_one(sender or assoc, op, originator)
        except (Closed, OSError, PduError):
            if sender is None:
                raise  # C-GET: the association itself is gone
            log.warning("C-MOVE sub-association ended early", exc_info=True)
            outcome.failed += outcome.remaining
            outcome.failed_uids += [o.sop_instance_uid for o in ops[len(ops) - outcome.remaining :]]
            outcome.remaining = 0
            break
        outcome.remaining -= 1
        if status == 0x0000:
            outcome.completed += 1
        elif status in (0xB000, 0xB006, 0xB007):
            outcome.warning += 1
        else:
            outcome.failed += 1
            outcome.failed_uids.append(op.sop_instance_uid)
        if get_id in assoc.cancelled:
            break
        if outcome.remaining:
            _response(assoc, msg, PENDING, outcome, None)
    identifier = None
    if get_id in assoc.cancelled:
        assoc.cancelled.discard(get_id)
        outcome.cancelled = True
        status = CANCEL
    elif not outcome.failed and not outcome.warning:
        status = SUCCESS
    else:
        status = ALL_FAILED if outcome.failed == len(ops) else WARNING
    if outcome.failed_uids and status != SUCCESS:
        ds = Dataset()
        ds.FailedSOPInstanceUIDList = outcome.failed_uids
        identifier = encode_dataset(ds, msg.context.transfer_syntax)
    _response(assoc, msg, status, outcome, identifier)
    return outcome
