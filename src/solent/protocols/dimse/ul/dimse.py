"""DIMSE command sets (PS3.7 9.3 / 10.3 / E): group 0000, implicit VR little endian.

Hand-written because a command set is ~10 fixed elements and pydicom's general reader and
writer cost more than the rest of a C-STORE round trip; here decoding is one pass of struct
unpacks into a dict and encoding a join of pre-packed elements. Also the Part 10 file meta a
received dataset is spooled behind, so ingest reads an ordinary file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from solent.protocols.dimse.ul.pdu import PduError

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
C_FIND_RQ, C_MOVE_RQ = 0x0020, 0x0021
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_CANCEL_RQ = 0x0FFF
NO_DATASET = 0x0101
MAX_COMMAND = 1 << 16  # a command set is a few hundred bytes; refuse more than 64 KB

# tag element -> VR kind of the group 0000 elements Solent reads or writes
_UID, _US, _AE, _LO, _UL, _AT = "UI", "US", "AE", "LO", "UL", "AT"
ELEMENTS: dict[int, tuple[str, str]] = {
    0x0000: ("CommandGroupLength", _UL),
    0x0002: ("AffectedSOPClassUID", _UID),
    0x0003: ("RequestedSOPClassUID", _UID),
    0x0100: ("CommandField", _US),
    0x0110: ("MessageID", _US),
    0x0120: ("MessageIDBeingRespondedTo", _US),
    0x0600: ("MoveDestination", _AE),
    0x0700: ("Priority", _US),
    0x0800: ("CommandDataSetType", _US),
    0x0900: ("Status", _US),
    0x0901: ("OffendingElement", _AT),
    0x0902: ("ErrorComment", _LO),
    0x0903: ("ErrorID", _US),
    0x1000: ("AffectedSOPInstanceUID", _UID),
    0x1001: ("RequestedSOPInstanceUID", _UID),
    0x1020: ("NumberOfRemainingSuboperations", _US),
    0x1021: ("NumberOfCompletedSuboperations", _US),
    0x1022: ("NumberOfFailedSuboperations", _US),
    0x1023: ("NumberOfWarningSuboperations", _US),
    0x1030: ("MoveOriginatorApplicationEntityTitle", _AE),
    0x1031: ("MoveOriginatorMessageID", _US),
}
_BY_NAME = {name: (elem, vr) for elem, (name, vr) in ELEMENTS.items()}
_ELEMENT = struct.Struct("<HHI")
_US_S = struct.Struct("<H")
_UL_S = struct.Struct("<I")


@dataclass(slots=True)
class Command:
    """A decoded command set: known elements by keyword (str or int values)."""

    fields: dict[str, str | int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> str | int:
        return self.fields[name]

    def get(self, name: str, default: str | int | None = None) -> str | int | None:
        return self.fields.get(name, default)

    def text(self, name: str) -> str:
        return str(self.fields.get(name, ""))

    def number(self, name: str) -> int:
        value = self.fields.get(name, 0)
        return value if isinstance(value, int) else 0

    @property
    def command_field(self) -> int:
        return self.number("CommandField")

    @property
    def has_dataset(self) -> bool:
        return self.fields.get("CommandDataSetType", NO_DATASET) != NO_DATASET


def decode(raw: bytes | memoryview) -> Command:
    """A command set; unknown group 0000 elements are skipped, anything else is an error."""
    view = memoryview(raw)
    end = len(view)
    pos = 0
    out: dict[str, str | int] = {}
    while pos < end:
        if pos + 8 > end:
            raise PduError("command element header past the end of the command set")
        group, elem, length = _ELEMENT.unpack_from(view, pos)
        pos += 8
        if group != 0 or pos + length > end:
            raise PduError("command set element outside group 0000 or past its end")
        value = view[pos : pos + length]
        pos += length
        known = ELEMENTS.get(elem)
        if known is None:
            continue
        name, vr = known
        if vr == _US:
            if length != 2:
                raise PduError(f"{name} is not 2 bytes")
            out[name] = _US_S.unpack_from(value)[0]
        elif vr in (_UL, _AT):
            if length != 4:
                raise PduError(f"{name} is not 4 bytes")
            out[name] = _UL_S.unpack_from(value)[0]
        else:
            out[name] = bytes(value).decode("ascii", "replace").strip(" \x00")
    if "CommandField" not in out:
        raise PduError("command set without Command Field")
    return Command(out)


def _element(elem: int, vr: str, value: str | int) -> bytes:
    if vr == _US:
        raw = _US_S.pack(int(value))
    elif vr in (_UL, _AT):
        raw = _UL_S.pack(int(value))
    else:
        raw = str(value).encode("ascii", "replace")
        if len(raw) % 2:
            raw += b"\x00" if vr == _UID else b" "
    return _ELEMENT.pack(0, elem, len(raw)) + raw


def encode(**values: str | int | None) -> bytes:
    """A command set from keyword values (None values left out), group length first."""
    body = b"".join(
        _element(*_BY_NAME[name], value)
        for name, value in sorted(values.items(), key=lambda kv: _BY_NAME[kv[0]][0])
        if value is not None
    )
    return _element(0x0000, _UL, len(body)) + body


def file_meta(
    sop_class: str, sop_instance: str, transfer_syntax: str, implementation_uid: str
) -> bytes:
    """Preamble, DICM and an explicit VR little endian group 0002 (PS3.10 7.1)."""

    def ui(elem: int, value: str) -> bytes:
        raw = value.encode("ascii")
        raw += b"\x00" * (len(raw) % 2)
        return struct.pack("<HH2sH", 2, elem, b"UI", len(raw)) + raw

    body = (
        struct.pack("<HH2sHI", 2, 1, b"OB", 0, 2)
        + b"\x00\x01"
        + ui(2, sop_class)
        + ui(3, sop_instance)
        + ui(0x10, transfer_syntax)
        + ui(0x12, implementation_uid)
    )
    return bytes(128) + b"DICM" + struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(body)) + body
