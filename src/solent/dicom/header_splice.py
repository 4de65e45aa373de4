"""Replace a few top-level elements of a stored Part 10 file without re-encoding the rest.

Outgoing instances carry the patient's current identity (``identity_patch``): a handful of
group 0010 elements and Original Attributes Sequence (0400,0561) change, everything else goes
out as stored. Parsing and re-writing the whole header with pydicom costs milliseconds per
instance; this module instead walks the top-level elements by their tags and lengths only
(values are never decoded), hands the raw bytes of the elements that may change to pydicom,
and splices pydicom's encoding of the replacements back between the stored bytes.

Why a small hand walker rather than ``pydicom.filereader.data_element_generator``: the
generator builds a RawDataElement (and reads the value) for every element and parses
undefined-length sequences into Datasets; skipping needs only tag, VR and length, so a loop
over ``struct.unpack_from`` is several times cheaper and its offsets are exact by
construction. Undefined-length values (sequences, encapsulated pixel data, UN) are skipped by
walking their items and delimiters. Anything unexpected raises :class:`Unsupported` and the
caller falls back to the full pydicom re-encode; a buffer that ends mid-element raises
:class:`Truncated` (read more of the file and try again).
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
# Explicit VR: these have a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
SHORT_VRS = frozenset(
    {
        *(b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO"),
        *(b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"),
    }
)


class Unsupported(Exception):
    """The bytes are not a layout this module splices: re-encode with pydicom instead."""


class Truncated(Exception):
    """The buffer ends inside an element that must be walked: give more of the file."""


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a Part 10 file's dataset starts (after preamble and file meta) and its encoding."""

    dataset_start: int
    transfer_syntax: str
    implicit_vr: bool
    little_endian: bool


@dataclass(frozen=True, slots=True)
class Walk:
    """Top-level elements as (tag, start, end) offsets, up to ``stop``: the offset of the
    first element after the last tag asked for (or the end of the buffer's dataset)."""

    elements: list[tuple[int, int, int]]
    stop: int


_U16_LE = struct.Struct("<H")
_U32_LE = struct.Struct("<I")
_TAG_LE = struct.Struct("<HH")
_TAG_LEN_LE = struct.Struct("<HHI")


def read_layout(buf: bytes | memoryview) -> Layout:
    """The file meta of ``buf`` (explicit VR little endian, group 0002): where the dataset
    starts and its transfer syntax. Files without preamble and meta are Unsupported."""
    if len(buf) < 132:
        raise Truncated("shorter than a preamble")
    if buf[128:132] != b"DICM":
        raise Unsupported("no DICM prefix")
    pos = 132
    ts = None
    while True:
        if pos + 8 > len(buf):
            raise Truncated("inside the file meta")
        group, elem = _TAG_LE.unpack_from(buf, pos)
        if group != 2:
            break
        vr = bytes(buf[pos + 4 : pos + 6])
        if vr in LONG_VRS:
            length = _U32_LE.unpack_from(buf, pos + 8)[0]
            value = pos + 12
        elif vr in SHORT_VRS:
            length = _U16_LE.unpack_from(buf, pos + 6)[0]
            value = pos + 8
        else:
            raise Unsupported("file meta is not explicit VR")
        if length == UNDEFINED:
            raise Unsupported("undefined length in the file meta")
        if elem == 0x0010:
            ts = bytes(buf[value : value + length]).rstrip(b"\x00 ").decode("ascii", "replace")
        pos = value + length
    if ts is None:
        raise Unsupported("no Transfer Syntax UID in the file meta")
    if ts == DEFLATED:
        raise Unsupported("deflated dataset")
    layout = Layout(pos, ts, ts == IMPLICIT_LE, ts != EXPLICIT_BE)
    _check_encoding(buf, layout)
    return layout


def _check_encoding(buf: bytes | memoryview, layout: Layout) -> None:
    """pydicom reads a dataset whose first element contradicts the declared syntax the way
    it is really encoded; the splice would not, so such files take the slow path."""
    pos = layout.dataset_start
    if pos + 6 > len(buf):
        return  # empty dataset
    looks_explicit = bytes(buf[pos + 4 : pos + 6]) in LONG_VRS | SHORT_VRS
    if looks_explicit == layout.implicit_vr:
        raise Unsupported("the dataset is not encoded as its transfer syntax says")


class _Walker:
    """Element-by-element skipping in one encoding (values are never read)."""

    def __init__(self, buf: bytes | memoryview, implicit: bool, little: bool) -> None:
        self.buf = buf
        self.size = len(buf)
        self.implicit = implicit
        self.little = little
        order = "<" if little else ">"
        self.tag_len = struct.Struct(order + "HHI")
        self.u16 = struct.Struct(order + "H")
        self.u32 = struct.Struct(order + "I")

    def element(self, pos: int) -> tuple[int, int]:
        """(tag, end offset) of the element at ``pos``."""
        if pos + 8 > self.size:
            raise Truncated("inside an element header")
        group, elem, length = self.tag_len.unpack_from(self.buf, pos)
        tag = group << 16 | elem
        if group == 0xFFFE:
            raise Unsupported(f"delimiter ({group:04X},{elem:04X}) outside a sequence")
        if self.implicit:
            value = pos + 8
            contents_implicit = True
        else:
            vr = bytes(self.buf[pos + 4 : pos + 6])
            if vr in LONG_VRS:
                if pos + 12 > self.size:
                    raise Truncated("inside an element header")
                length = self.u32.unpack_from(self.buf, pos + 8)[0]
                value = pos + 12
            elif vr in SHORT_VRS:
                length = self.u16.unpack_from(self.buf, pos + 6)[0]
                value = pos + 8
            else:
                raise Unsupported(f"unknown VR {vr!r} in ({group:04X},{elem:04X})")
            contents_implicit = vr == b"UN"  # PS3.5 6.2.2: undefined-length UN is implicit
        if length != UNDEFINED:
            end = value + length
            if end > self.size:
                raise Truncated("inside an element value")
            return tag, end
        if contents_implicit and not self.implicit:
            return tag, _Walker(self.buf, True, True).items(value)
        return tag, self.items(value)

    def items(self, pos: int) -> int:
        """End of an undefined-length value (items up to the Sequence Delimitation Item)."""
        while True:
            if pos + 8 > self.size:
                raise Truncated("inside a sequence")
            group, elem, length = self.tag_len.unpack_from(self.buf, pos)
            tag = group << 16 | elem
            pos += 8
            if tag == SEQUENCE_END:
                return pos
            if tag != ITEM:
                raise Unsupported(f"({group:04X},{elem:04X}) where an item should be")
            if length != UNDEFINED:
                pos += length
                continue
            while True:  # an undefined-length item: its elements up to the Item Delimiter
                if pos + 8 > self.size:
                    raise Truncated("inside an item")
                group, elem, _ = self.tag_len.unpack_from(self.buf, pos)
                if group << 16 | elem == ITEM_END:
                    pos += 8
                    break
                pos = self.element(pos)[1]

    def top_level(self, start: int, last_tag: int, complete: bool) -> Walk:
        elements: list[tuple[int, int, int]] = []
        pos = start
        size = self.size
        fast = self.little and not self.implicit
        buf = self.buf
        previous = -1
        tag_of = _TAG_LE if self.little else struct.Struct(">HH")
        while pos < size:
            if pos + 4 > size:
                raise Truncated("inside a tag")
            group, elem = tag_of.unpack_from(buf, pos)
            tag = group << 16 | elem
            if tag <= previous:
                raise Unsupported(f"({group:04X},{elem:04X}) out of tag order")
            if tag > last_tag:
                return Walk(elements, pos)
            previous = tag
            if fast and pos + 8 <= size:
                # Explicit VR LE short-form elements, most of a header, inline.
                vr = bytes(buf[pos + 4 : pos + 6])
                if vr in SHORT_VRS:
                    end = pos + 8 + _U16_LE.unpack_from(buf, pos + 6)[0]
                    if end <= size:
                        elements.append((tag, pos, end))
                        pos = end
                        continue
            tag, end = self.element(pos)
            elements.append((tag, pos, end))
            pos = end
        if not complete:
            raise Truncated("the buffer ends before the last tag asked for")
        return Walk(elements, pos)


def walk(buf: bytes | memoryview, layout: Layout, last_tag: int, *, complete: bool) -> Walk:
    """The top-level elements of the dataset in ``buf`` up to ``last_tag`` (inclusive).

    ``complete``: ``buf`` is the whole file (else reaching its end raises Truncated)."""
    walker = _Walker(buf, layout.implicit_vr, layout.little_endian)
    try:
        return walker.top_level(layout.dataset_start, last_tag, complete)
    except Truncated:
        if complete:
            raise Unsupported("the file ends inside an element") from None
        raise


def decode(raw: bytes, layout: Layout) -> Dataset:
    """A dataset of the top-level element bytes ``raw`` (in tag order), as pydicom reads it."""
    return read_dataset(BytesIO(raw), layout.implicit_vr, layout.little_endian)


def encode(dataset: Dataset, layout: Layout) -> list[tuple[int, bytes]]:
    """(tag, bytes) of each top-level element of ``dataset`` as pydicom writes it in the
    file's encoding (the same writer ``save_as`` uses)."""
    fp = DicomBytesIO()
    fp.is_implicit_VR = layout.implicit_vr
    fp.is_little_endian = layout.little_endian
    write_dataset(fp, dataset)
    data = fp.getvalue()
    found = _Walker(data, layout.implicit_vr, layout.little_endian).top_level(0, 0xFFFFFFFF, True)
    return [(tag, data[s:e]) for tag, s, e in found.elements]


SOP_CLASS_UID, SOP_INSTANCE_UID = 0x00080016, 0x00080018


def _uid(value: object) -> str:
    return str(value or "").rstrip("\x00 ")


def fixed_meta(buf: bytes | memoryview, layout: Layout, found: Walk) -> bytes | None:
    """Preamble, DICM and a file meta whose Media Storage SOP Class/Instance UIDs are the
    dataset's, when the stored meta names others or none (PS3.10 7.1: they must be the
    same). Files edited by tools that left the meta alone (anonymisers giving the dataset
    new UIDs, RT objects re-identified, a meta without (0002,0002)) are stored as received,
    and were served with a meta that contradicts their dataset. None when it agrees."""
    own = decode(raw_elements(buf, found, (SOP_CLASS_UID, SOP_INSTANCE_UID)), layout)
    sop_class, sop_instance = _uid(own.get("SOPClassUID")), _uid(own.get("SOPInstanceUID"))
    if not sop_class or not sop_instance:
        return None
    meta = FileMetaDataset(
        read_dataset(BytesIO(bytes(buf[132 : layout.dataset_start])), False, True)
    )
    if (
        _uid(meta.get("MediaStorageSOPClassUID")) == sop_class
        and _uid(meta.get("MediaStorageSOPInstanceUID")) == sop_instance
    ):
        return None
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    out = DicomBytesIO()
    out.write(bytes(buf[:128]) + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return bytes(out.getvalue())


def is_group_length(tag: int) -> bool:
    """(gggg,0000) of a dataset group: pydicom never writes these (retired, PS3.5 7.2), and a
    spliced group's stored length would be wrong, so they are left out as in a re-encode."""
    return tag & 0xFFFF == 0 and tag >> 16 > 6


def raw_elements(buf: bytes | memoryview, found: Walk, tags: Collection[int]) -> bytes:
    """The stored bytes of the walked elements whose tag is in ``tags``, in order."""
    return b"".join(buf[s:e] for tag, s, e in found.elements if tag in tags)


def splice(
    buf: bytes | memoryview,
    found: Walk,
    replaced: Collection[int],
    new: Sequence[tuple[int, bytes]],
) -> bytes:
    """``buf[:found.stop]`` with the elements whose tag is in ``replaced`` (and dataset group
    lengths) removed and the ``new`` (tag, bytes) elements put in tag order."""
    pieces: list[bytes | memoryview] = []
    view = memoryview(buf)
    cursor = 0
    k = 0
    for tag, s, e in found.elements:
        while k < len(new) and new[k][0] <= tag:
            if cursor < s:
                pieces.append(view[cursor:s])
                cursor = s
            pieces.append(new[k][1])
            k += 1
        if tag in replaced or is_group_length(tag):
            if cursor < s:
                pieces.append(view[cursor:s])
            cursor = e
    pieces.append(view[cursor : found.stop])
    pieces.extend(b for _, b in new[k:])
    return b"".join(pieces)
