"""pydicom's ``dcmread`` result for the common file, built from one read of the header.

Why this is hand-written: ``pydicom.dcmread`` reads a header element by element (two or three
``read`` calls, a generator step and a dictionary walk each), and that was about a third of
parsing a CT slice at ingest. For the file a modality or PACS sends nearly every time (a
preamble, a plain Explicit VR Little Endian file meta group, then an Explicit VR Little Endian,
encapsulated or Implicit VR Little Endian dataset in the default, ISO_IR 100 or ISO_IR 192
character set), the same elements are cut from one buffer here.

What it builds must be exactly what pydicom builds, since everything downstream (index columns,
patient identity, DICOM JSON) reads it: the same ``RawDataElement`` tuples (tag, VR or None in
implicit VR, length, value bytes, value position), the same ``FileDataset`` with the same
encodings, and for what it does not cut itself (an undefined-length sequence, encapsulated
Pixel Data) pydicom's own functions at the same position. Anything else makes it decline
(``None``) and the caller reads the file with pydicom: no preamble, other meta encodings, big
endian, deflate, private transfer syntaxes, other character sets, a Command Set group, a
dataset whose first element contradicts the transfer syntax's VR encoding, an unknown VR, an
undefined length on anything but a sequence (in implicit VR: a public tag the dictionary says
is SQ) or explicit VR Pixel Data, stray item tags, tags out of order or repeated, an element
running past the end of the file, trailing bytes that are not an element, or any exception.
tests/unit/test_header_scan.py checks every corpus file and generated edge cases against pydicom.
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import ENCODED_VR, read_sequence
from pydicom.fileutil import read_undefined_length_value
from pydicom.tag import BaseTag, SequenceDelimiterTag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32
from pydicom.values import convert_string

HEAD_READ = 65536  # one read covers a typical header; more is read when it does not
UNDEFINED = 0xFFFFFFFF
CHARSET = 0x00080005
PIXEL_DATA_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
# Character sets whose files take this path (as the raw value of Specific Character Set).
CHARSETS = {b"", b"ISO_IR 100", b"ISO_IR 192"}
_NOT_EXPLICIT_LE = {  # implicit VR is taken on its own test below
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    *PrivateTransferSyntaxes,
}
_SHORT = struct.Struct("<HH2sH")
_IMPLICIT = struct.Struct("<HHL")
_LONG = struct.Struct("<L")
_LONG_VRS = frozenset(str(v) for v in EXPLICIT_VR_LENGTH_32)
_VRS = {v: v.decode(default_encoding) for v in ENCODED_VR}
_EMPTY: dict[str, Any] = {
    vr: empty_value_for_VR(vr, raw=True) for vr in _VRS.values()
}  # as pydicom reads 0
_EMPTY_IMPLICIT: Any = empty_value_for_VR(None, raw=True)


# The tuples below are built field by field: a pydicom whose RawDataElement differs turns this
# reader off rather than build something else.
_RAW_FIELDS = (
    "tag",
    "VR",
    "length",
    "value",
    "value_tell",
    "is_implicit_VR",
    "is_little_endian",
    "is_raw",
    "is_buffered",
)
ENABLED = RawDataElement._fields == _RAW_FIELDS and RawDataElement._field_defaults == {
    "is_raw": True,
    "is_buffered": False,
}


class _Decline(Exception):
    """The file is not one this reader builds exactly; pydicom reads it."""


class _Window:
    """Bytes of the file by absolute offset, read in large pieces through ``fp``."""

    __slots__ = ("base", "buf", "fp", "size")

    def __init__(self, fp: BinaryIO, size: int) -> None:
        self.fp = fp
        self.size = size
        self.base = 0
        fp.seek(0)
        self.buf = fp.read(HEAD_READ)

    def get(self, pos: int, n: int) -> bytes:
        """``n`` bytes at ``pos``; _Decline when the file has fewer."""
        if pos + n > self.size:
            raise _Decline
        start = pos - self.base
        if start < 0 or start + n > len(self.buf):
            self.fp.seek(pos)
            self.buf = self.fp.read(max(n, HEAD_READ))
            self.base = pos
            start = 0
        if start + n > len(self.buf):
            raise _Decline
        return self.buf[start : start + n]


def read_header(fp: BinaryIO, size: int, defer_size: int) -> FileDataset | None:
    """What ``pydicom.dcmread(fp, defer_size=defer_size, force=True)`` returns, or None.

    ``fp`` must keep its own position (parse._Positioned); on None its position is undefined.
    """
    if not ENABLED:
        return None
    try:
        return _read(fp, size, defer_size)
    except _Decline:
        return None
    except Exception:  # anything unexpected: pydicom's reader judges the file
        return None


def _elements(
    win: _Window,
    pos: int,
    end: int,
    defer_size: int | None,
    last: int,
    meta: bool,
    implicit: bool = False,
) -> tuple[dict[BaseTag, Any], int, int]:
    """Little endian elements with defined lengths from ``pos`` to ``end`` (explicit VR, or
    implicit VR when ``implicit``: no VR, a 4-byte length, VR None as pydicom reads it).

    For the file meta (``meta``) it stops at the first tag of another group; for the dataset,
    at an undefined length (returning that element's start). Also gives the last tag read."""
    elements: dict[BaseTag, Any] = {}
    unpack_short, unpack_long, vrs, long_vrs = (
        _SHORT.unpack_from,
        _LONG.unpack_from,
        _VRS,
        _LONG_VRS,
    )
    new_tuple = tuple.__new__
    unpack_implicit = _IMPLICIT.unpack_from
    defer = defer_size if defer_size is not None else end
    buf, base = win.buf, win.base
    while pos < end:
        if pos + 8 > end:
            raise _Decline  # a few stray bytes after the last element
        off = pos - base
        if off < 0 or off + 12 > len(buf):
            win.get(pos, min(12, end - pos))
            buf, base = win.buf, win.base
            off = pos - base
        vr: str | None
        if implicit:
            g, e, length = unpack_implicit(buf, off)
            vr = None
        else:
            g, e, raw_vr, length = unpack_short(buf, off)
            vr = vrs.get(raw_vr)
        if meta and g != 0x0002:
            break  # the dataset starts here (checked by the caller)
        if vr is None and not implicit:
            raise _Decline
        tag = g << 16 | e
        if tag <= last or g == 0xFFFE:
            raise _Decline
        value_tell = pos + 8
        if vr in long_vrs:
            if off + 12 > len(buf):
                raise _Decline
            (length,) = unpack_long(buf, off + 8)
            value_tell += 4
        if length == UNDEFINED:
            if meta:
                raise _Decline
            break
        if value_tell + length > end:
            raise _Decline
        last = tag
        value: bytes | None
        if length == 0:
            value = _EMPTY[vr] if vr is not None else _EMPTY_IMPLICIT
        elif length > defer and tag != CHARSET:
            value = None
        else:
            start = value_tell - base
            if start + length <= len(buf):
                value = buf[start : start + length]
            else:
                value = win.get(value_tell, length)
                buf, base = win.buf, win.base
        key = BaseTag(tag)
        # RawDataElement(key, vr, length, value, value_tell, False, True), without the
        # namedtuple's Python-level __new__ (its two defaults spelled out: is_raw, is_buffered)
        elements[key] = new_tuple(
            RawDataElement, (key, vr, length, value, value_tell, implicit, True, True, False)
        )
        pos = value_tell + length
    return elements, pos, last


def _read(fp: BinaryIO, size: int, defer_size: int) -> FileDataset:
    win = _Window(fp, size)
    if win.get(128, 4) != b"DICM":
        raise _Decline
    preamble = win.get(0, 128)
    meta_raw, pos, _ = _elements(win, 132, size, None, -1, True)
    if not meta_raw or pos >= size:
        raise _Decline
    file_meta = FileMetaDataset(Dataset(meta_raw))
    file_meta.set_original_encoding(
        is_implicit_vr=False, is_little_endian=True, character_encoding=default_encoding
    )
    file_meta[next(iter(file_meta._dict))]  # as pydicom: converting the first must work
    ts = file_meta.get("TransferSyntaxUID")
    implicit = ts == ImplicitVRLittleEndian
    if not ts or (ts in _NOT_EXPLICIT_LE and not implicit):
        raise _Decline
    first = win.get(pos, 8)
    looks_explicit = 0x40 < first[4] < 0x5B and 0x40 < first[5] < 0x5B
    if first[:2] == b"\x00\x00" or looks_explicit == implicit:
        # A Command Set group, or a dataset whose first element says the other VR encoding
        # than the transfer syntax (pydicom warns and switches).
        raise _Decline

    elements: dict[BaseTag, Any] = {}
    encoding: Any = default_encoding
    last = -1
    while pos < size:
        part, pos, last = _elements(win, pos, size, defer_size, last, False, implicit)
        elements.update(part)
        if CHARSET in part:
            raw_charset = part[BaseTag(CHARSET)].value or b""
            if raw_charset.rstrip(b" ") not in CHARSETS:
                raise _Decline
            encoding = convert_encodings(convert_string(raw_charset, True))
        if pos >= size:
            break
        # _elements stopped at an undefined length: a sequence or encapsulated Pixel Data.
        tag, is_sequence, value_tell = _undefined(win, pos, implicit)
        if tag <= last:
            raise _Decline
        fp.seek(value_tell)
        elem: Any
        if is_sequence:
            seq = read_sequence(fp, implicit, True, UNDEFINED, encoding)
            elem = DataElement(BaseTag(tag), "SQ", seq, value_tell, is_undefined_length=True)
        else:
            value = read_undefined_length_value(fp, True, SequenceDelimiterTag, defer_size)
            elem = RawDataElement(BaseTag(tag), "OB", UNDEFINED, value, value_tell, False, True)
        elements[BaseTag(tag)] = elem
        last = tag
        pos = fp.tell()
        win.base, win.buf = pos, b""  # the window no longer matches fp's position
    if pos != size:
        raise _Decline

    dataset = Dataset(elements, parent_encoding=default_encoding)
    dataset.set_original_encoding(implicit, True, encoding)
    ds = FileDataset(fp, dataset, preamble, file_meta, implicit, True)
    ds.set_original_encoding(implicit, True, dataset._character_set)
    return ds


def _undefined(win: _Window, pos: int, implicit: bool) -> tuple[int, bool, int]:
    """(tag, is a sequence, value offset) of the undefined-length element at ``pos``, if it is
    one this reader hands to pydicom: a sequence (explicit SQ, or in implicit VR a tag the
    dictionary says is SQ) or, in explicit VR, encapsulated Pixel Data (OB)."""
    if implicit:
        g, e, length = _IMPLICIT.unpack(win.get(pos, 8))
        tag = g << 16 | e
        if length != UNDEFINED or g == 0xFFFE or g & 1 or _dictionary_vr(tag) != "SQ":
            raise _Decline  # private or other undefined lengths: pydicom peeks and guesses
        return tag, True, pos + 8
    g, e, raw_vr, _ = _SHORT.unpack(win.get(pos, 8))
    tag = g << 16 | e
    if g == 0xFFFE or raw_vr not in (b"SQ", b"OB"):
        raise _Decline
    if raw_vr == b"OB" and tag not in PIXEL_DATA_TAGS:
        raise _Decline
    (length,) = _LONG.unpack(win.get(pos + 8, 4))
    if length != UNDEFINED:
        raise _Decline
    return tag, raw_vr == b"SQ", pos + 12


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return ""
