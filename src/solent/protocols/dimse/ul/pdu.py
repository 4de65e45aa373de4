"""DICOM upper-layer PDUs (PS3.8 9.3): parsing and building, every length checked.

Hand-written because the hot path must not build one Python object per PDV (pynetdicom does,
which is most of its ~4 ms per instance): P-DATA bodies are walked in place as memoryview
slices. Only A-ASSOCIATE-RQ is parsed into objects, once per association. Every item length is
checked against its parent before use, so a hostile PDU ends in :class:`PduError` (the caller
answers A-ABORT), never in an over-read or an unbounded allocation.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = 0x04, 0x05, 0x06, 0x07
PDU_TYPES = frozenset(range(0x01, 0x08))
HEADER = struct.Struct(">BxI")  # type, reserved, length
PDV_HEADER = struct.Struct(">IBB")  # item length, presentation context ID, control header
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
MAX_ASSOCIATE_RQ = 1 << 20  # ~170 SOP classes x ~45 syntaxes fits in well under 1 MB

# A-ABORT source / reason (PS3.8 9.3.8); A-ASSOCIATE-RJ result / source / reason (9.3.4).
ABORT_SERVICE_USER, ABORT_SERVICE_PROVIDER = 0, 2
REASON_NOT_SPECIFIED, REASON_UNRECOGNIZED_PDU, REASON_UNEXPECTED_PDU = 0, 1, 2
REASON_UNRECOGNIZED_PARAMETER, REASON_UNEXPECTED_PARAMETER, REASON_INVALID_PARAMETER = 3, 4, 6


class PduError(Exception):
    """A PDU that breaks PS3.8; ``reason`` is the A-ABORT reason to answer with."""

    def __init__(self, message: str, reason: int = REASON_INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class ProposedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]


@dataclass(slots=True)
class RoleSelection:
    scu: bool
    scp: bool


@dataclass(slots=True)
class AssociateRequest:
    """What an A-ASSOCIATE-RQ proposes; user-information sub-items by PS3.7 Annex D."""

    protocol_version: int
    called_ae: str
    calling_ae: str
    application_context: str
    contexts: list[ProposedContext] = field(default_factory=list)
    max_pdu_length: int = 0  # 0: the requestor takes PDUs of any length
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    async_window: tuple[int, int] | None = None  # (invoked, performed)
    roles: dict[str, RoleSelection] = field(default_factory=dict)
    extended: dict[str, bytes] = field(default_factory=dict)  # SOP class extended negotiation
    user_identity: bytes | None = None


def _text(raw: bytes | memoryview) -> str:
    return bytes(raw).decode("ascii", "replace").strip(" \x00")


def items(body: memoryview, start: int, end: int) -> Iterator[tuple[int, memoryview]]:
    """(type, value) of the variable items between ``start`` and ``end`` of ``body``."""
    pos = start
    while pos < end:
        if pos + 4 > end:
            raise PduError("item header past the end of its PDU or item")
        kind = body[pos]
        length = U16.unpack_from(body, pos + 2)[0]
        if pos + 4 + length > end:
            raise PduError(f"item 0x{kind:02X} of length {length} runs past its PDU or item")
        yield kind, body[pos + 4 : pos + 4 + length]
        pos += 4 + length


def _uid(value: memoryview) -> str:
    if len(value) > 64:
        raise PduError("UID longer than 64 characters")
    return _text(value)


def _presentation_context(value: memoryview) -> ProposedContext:
    if len(value) < 4:
        raise PduError("presentation context item too short")
    cx = ProposedContext(value[0], "", [])
    for kind, sub in items(value, 4, len(value)):
        if kind == 0x30:
            if cx.abstract_syntax:
                raise PduError("two abstract syntaxes in one presentation context")
            cx.abstract_syntax = _uid(sub)
        elif kind == 0x40:
            cx.transfer_syntaxes.append(_uid(sub))
        else:
            raise PduError(f"unknown sub-item 0x{kind:02X}", REASON_UNRECOGNIZED_PARAMETER)
    if not cx.abstract_syntax or not cx.transfer_syntaxes:
        raise PduError("presentation context without abstract or transfer syntax")
    return cx


def _user_information(rq: AssociateRequest, value: memoryview) -> None:
    for kind, sub in items(value, 0, len(value)):
        if kind == 0x51:
            if len(sub) != 4:
                raise PduError("maximum length sub-item is not 4 bytes")
            rq.max_pdu_length = U32.unpack_from(sub)[0]
        elif kind == 0x52:
            rq.implementation_class_uid = _uid(sub)
        elif kind == 0x55:
            rq.implementation_version_name = _text(sub)[:16]
        elif kind == 0x53:
            if len(sub) != 4:
                raise PduError("asynchronous operations window sub-item is not 4 bytes")
            rq.async_window = (U16.unpack_from(sub)[0], U16.unpack_from(sub, 2)[0])
        elif kind in (0x54, 0x56):
            if len(sub) < 2:
                raise PduError(f"sub-item 0x{kind:02X} too short")
            n = U16.unpack_from(sub)[0]
            if 2 + n > len(sub):
                raise PduError(f"UID of sub-item 0x{kind:02X} runs past it")
            uid = _uid(sub[2 : 2 + n])
            rest = sub[2 + n :]
            if kind == 0x54:
                if len(rest) != 2:
                    raise PduError("role selection sub-item has a wrong length")
                rq.roles[uid] = RoleSelection(bool(rest[0]), bool(rest[1]))
            else:
                rq.extended[uid] = bytes(rest)
        elif kind == 0x58:
            rq.user_identity = bytes(sub)
        # 0x57 (common extended negotiation) and unknown user sub-items are ignored (PS3.7 D.3.3)


def parse_associate_rq(body: bytes | memoryview) -> AssociateRequest:
    """An A-ASSOCIATE-RQ body (after the 6-byte PDU header)."""
    view = memoryview(body)
    if len(view) < 68:
        raise PduError("A-ASSOCIATE-RQ shorter than its fixed fields")
    rq = AssociateRequest(U16.unpack_from(view)[0], _text(view[4:20]), _text(view[20:36]), "")
    seen_user_info = False
    for kind, value in items(view, 68, len(view)):
        if kind == 0x10:
            rq.application_context = _uid(value)
        elif kind == 0x20:
            rq.contexts.append(_presentation_context(value))
        elif kind == 0x50:
            seen_user_info = True
            _user_information(rq, value)
        else:
            raise PduError(f"unknown item 0x{kind:02X}", REASON_UNRECOGNIZED_PARAMETER)
    if not rq.application_context or not seen_user_info:
        raise PduError("A-ASSOCIATE-RQ without application context or user information")
    return rq


# -- building ------------------------------------------------------------------------------


def _item(kind: int, value: bytes) -> bytes:
    return bytes((kind, 0)) + U16.pack(len(value)) + value


def _sized_uid(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return U16.pack(len(raw)) + raw


def pdu(kind: int, body: bytes) -> bytes:
    return HEADER.pack(kind, len(body)) + body


def _ae(title: str) -> bytes:
    return title.encode("ascii", "replace")[:16].ljust(16, b" ")


@dataclass(slots=True)
class AcceptedContext:
    context_id: int
    result: int  # 0 acceptance, 1 user rejection, 3 abstract syntax, 4 transfer syntaxes
    transfer_syntax: str


def associate_ac(
    rq: AssociateRequest,
    results: list[AcceptedContext],
    *,
    max_pdu_length: int,
    implementation_class_uid: str,
    implementation_version_name: str,
    async_window: tuple[int, int] | None,
    roles: dict[str, RoleSelection],
) -> bytes:
    """The A-ASSOCIATE-AC answering ``rq`` (called/calling AE echoed as PS3.8 asks)."""
    parts = [
        U16.pack(1),
        b"\x00\x00",
        _ae(rq.called_ae),
        _ae(rq.calling_ae),
        bytes(32),
        _item(0x10, APPLICATION_CONTEXT.encode()),
    ]
    for cx in results:
        ts = _item(0x40, cx.transfer_syntax.encode()) if cx.transfer_syntax else b""
        parts.append(_item(0x21, bytes((cx.context_id, 0, cx.result, 0)) + ts))
    user = [
        _item(0x51, U32.pack(max_pdu_length)),
        _item(0x52, implementation_class_uid.encode()),
    ]
    if async_window is not None:
        user.append(_item(0x53, U16.pack(async_window[0]) + U16.pack(async_window[1])))
    for uid, role in roles.items():
        user.append(_item(0x54, _sized_uid(uid) + bytes((role.scu, role.scp))))
    if implementation_version_name:
        user.append(_item(0x55, implementation_version_name.encode()[:16]))
    parts.append(_item(0x50, b"".join(user)))
    return pdu(ASSOCIATE_AC, b"".join(parts))


def associate_rj(result: int, source: int, reason: int) -> bytes:
    return pdu(ASSOCIATE_RJ, bytes((0, result, source, reason)))


def abort(source: int = ABORT_SERVICE_PROVIDER, reason: int = REASON_NOT_SPECIFIED) -> bytes:
    return pdu(ABORT, bytes((0, 0, source, reason)))


RELEASE_RP_PDU = pdu(RELEASE_RP, bytes(4))
RELEASE_RQ_PDU = pdu(RELEASE_RQ, bytes(4))


def p_data_header(value_length: int, context_id: int, control: int) -> bytes:
    """PDU + PDV headers of a P-DATA-TF carrying one PDV of ``value_length`` bytes."""
    return HEADER.pack(P_DATA, value_length + 6) + PDV_HEADER.pack(
        value_length + 2, context_id, control
    )


def fragments(total: int, max_pdu_length: int) -> Iterator[tuple[int, int, bool]]:
    """(offset, length, last) of the PDVs a message part of ``total`` bytes is split into so
    that no P-DATA-TF exceeds the peer's maximum length (0: no limit)."""
    step = (max_pdu_length - 6) if max_pdu_length else total
    step = max(step, 1)
    if total == 0:
        yield 0, 0, True
        return
    for offset in range(0, total, step):
        yield offset, min(step, total - offset), offset + step >= total


def pdvs(body: memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """(context ID, control header, value) of each PDV of a P-DATA-TF body, in place."""
    pos, end = 0, len(body)
    if end == 0:
        raise PduError("P-DATA-TF without a PDV")
    while pos < end:
        if pos + 6 > end:
            raise PduError("PDV header past the end of its PDU")
        length, context_id, control = PDV_HEADER.unpack_from(body, pos)
        if length < 2 or pos + 4 + length > end:
            raise PduError(f"PDV of length {length} does not fit its PDU")
        if control & 0xFC:
            raise PduError("reserved bits set in a PDV message control header")
        yield context_id, control, body[pos + 6 : pos + 4 + length]
        pos += 4 + length
