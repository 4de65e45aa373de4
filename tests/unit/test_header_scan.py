"""The hand-written header reader gives exactly what pydicom gives, or declines.

For every file of the shared corpus and for generated edge cases, the file is parsed twice
(``header_scan`` on and off, with the conversion caches emptied before each), and the two
ParsedInstances (every field, the DICOM JSON decompressed) or rejections must be equal. Where
the reader takes a file, its dataset must also equal ``pydicom.dcmread``'s element by element.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from solent.dicom import header_scan, metadata_json, parse
from solent.dicom.header_scan import read_header
from solent.dicom.parse import DEFER_SIZE, RejectedInstance, parse_file
from tests.conftest import require_corpus

CT = "1.2.840.10008.5.1.4.1.1.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def _clear_caches() -> None:
    metadata_json._JSON_CACHE.clear()
    parse._VALUE_CACHE.clear()
    parse._NHS_CACHE.clear()


def _outcome(path: Path, scan: bool, nhs_tag: str = "") -> Any:
    _clear_caches()
    try:
        p = parse_file(path, sha256="-", nhs_tag=nhs_tag, header_scan=scan)
    except RejectedInstance as exc:
        return ("rejected", exc.reason, exc.message, exc.sop_instance_uid)
    fields = {name: getattr(p, name) for name in p.__slots__}  # type: ignore[attr-defined]
    fields["metadata_json"] = zlib.decompress(p.metadata_json).decode("utf-8")
    return fields


def _accepted(path: Path) -> bool:
    """Whether read_header takes the file; when it does, its dataset must be pydicom's."""
    size = path.stat().st_size
    with path.open("rb") as fp, warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        fast = read_header(parse._Positioned(fp), size, DEFER_SIZE)
        if fast is None:
            return False
        fp.seek(0)
        slow = pydicom.dcmread(parse._Positioned(fp), defer_size=DEFER_SIZE, force=True)
    assert list(fast._dict.items()) == list(slow._dict.items())
    assert list(fast.file_meta._dict.items()) == list(slow.file_meta._dict.items())
    assert (fast.is_implicit_VR, fast.is_little_endian) == (slow.is_implicit_VR, True)
    assert fast._character_set == slow._character_set
    assert fast.original_encoding == slow.original_encoding
    assert fast.original_character_set == slow.original_character_set
    assert fast.preamble == slow.preamble
    return True


def _same(path: Path, nhs_tag: str = "") -> bool:
    """Both paths give the same outcome; whether the fast path took the file."""
    accepted = _accepted(path)
    assert _outcome(path, True, nhs_tag) == _outcome(path, False, nhs_tag), path.name
    return accepted


# --- the shared corpus


def _corpus_files() -> Iterator[Path]:
    d = require_corpus()
    yield from sorted(p for p in d.iterdir() if p.is_file())


def test_every_corpus_file_parses_the_same(tmp_path: Path) -> None:
    taken = [f.name for f in _corpus_files() if _same(f)]
    # The reader must take the plain files (else this test compares pydicom with itself).
    assert "mod_ct_small.dcm" in taken
    assert "ts_explicit_vr_le_mr_siemens_trio.dcm" in taken
    assert "ts_jpeg_baseline_rgb_dcmtk.dcm" in taken
    assert "ts_implicit_vr_le_mr_small.dcm" in taken
    assert "series_mr_dcm4che_01.dcm" in taken
    assert "ts_explicit_vr_be_mr_small.dcm" not in taken
    assert "ts_deflated_sc_image.dcm" not in taken
    assert header_scan.ENABLED and len(taken) >= 120


def test_every_corpus_file_cut_short_parses_the_same(tmp_path: Path) -> None:
    """Truncated real headers: cut inside the file meta, the header and Pixel Data."""
    for f in _corpus_files():
        if not f.name.startswith(("mod_ct", "mod_pt", "ts_jpeg_baseline", "mod_us")):
            continue
        data = f.read_bytes()
        for cut in (140, 300, len(data) // 8, len(data) // 2, len(data) - 1):
            out = tmp_path / f"{f.stem}-{cut}.dcm"
            out.write_bytes(data[:cut])
            _same(out)


# --- generated files, element by element


def _el(tag: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    n = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"):
        return head + b"\0\0" + struct.pack("<L", n) + value
    return head + struct.pack("<H", n) + value


def _item(body: bytes, undefined: bool = False) -> bytes:
    if undefined:
        return b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + body + b"\xfe\xff\x0d\xe0\0\0\0\0"
    return b"\xfe\xff\x00\xe0" + struct.pack("<L", len(body)) + body


SEQ_END = b"\xfe\xff\xdd\xe0\0\0\0\0"


def _uid(u: str) -> bytes:
    b = u.encode()
    return b + b"\0" if len(b) % 2 else b


def _file(
    body: bytes, ts: str = "1.2.840.10008.1.2.1", sop: str = "1.2.3.4", meta_extra: bytes = b""
) -> bytes:
    meta = (
        _el(0x00020001, "OB", b"\0\1")
        + _el(0x00020002, "UI", _uid(CT))
        + _el(0x00020003, "UI", _uid(sop))
        + _el(0x00020010, "UI", _uid(ts))
        + meta_extra
    )
    return b"\0" * 128 + b"DICM" + _el(0x00020000, "UL", struct.pack("<L", len(meta))) + meta + body


def _header(charset: bytes = b"ISO_IR 100", name: bytes = b"DOE^JANE") -> list[bytes]:
    return [
        _el(0x00080005, "CS", charset),
        _el(0x00080008, "CS", b"ORIGINAL\\PRIMARY\\AXIAL "),
        _el(0x00080016, "UI", _uid(CT)),
        _el(0x00080018, "UI", _uid("1.2.3.4")),
        _el(0x00080020, "DA", b"20260115"),
        _el(0x00080050, "SH", b""),
        _el(0x00080060, "CS", b"CT"),
        _el(0x00080090, "PN", b""),
        _el(0x00100010, "PN", name if len(name) % 2 == 0 else name + b" "),
        _el(0x00100020, "LO", b"PID-1 "),
        _el(0x00100030, "DA", b""),
        _el(0x0020000D, "UI", _uid("1.2.3.1")),
        _el(0x0020000E, "UI", _uid("1.2.3.2")),
        _el(0x00200011, "IS", b"2 "),
        _el(0x00200013, "IS", b""),
        _el(0x00200032, "DS", b"-200\\-200\\-187.5 "),
        _el(0x00280002, "US", struct.pack("<H", 1)),
        _el(0x00280004, "CS", b"MONOCHROME2 "),
        _el(0x00280010, "US", struct.pack("<H", 4)),
        _el(0x00280011, "US", struct.pack("<H", 4)),
        _el(0x00280100, "US", struct.pack("<H", 16)),
        _el(0x00280101, "US", struct.pack("<H", 12)),
        _el(0x00280102, "US", struct.pack("<H", 11)),
        _el(0x00280103, "US", struct.pack("<H", 1)),
    ]


PIXELS = _el(0x7FE00010, "OW", bytes(range(32)))


def _other_ids(undefined: bool) -> bytes:
    item = _el(0x00100020, "LO", b"9434765919") + _el(0x00100021, "LO", b"NHS ")
    items = _item(item, undefined) + _item(_el(0x00100020, "LO", b"X1"), undefined)
    if undefined:
        return _el(0x00101002, "SQ", items + SEQ_END, 0xFFFFFFFF)
    return _el(0x00101002, "SQ", items)


def _insert(elements: list[bytes], extra: list[bytes]) -> bytes:
    """The elements in tag order (each starts with its tag, little endian)."""

    def tag(e: bytes) -> int:
        g, el = struct.unpack("<HH", e[:4])
        return g << 16 | el

    return b"".join(sorted(elements + extra, key=tag))


IMPLICIT = "1.2.840.10008.1.2"


def _iel(tag: int, value: bytes, length: int | None = None) -> bytes:
    n = len(value) if length is None else length
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, n) + value


def _implicit(element: bytes) -> bytes:
    """An element written by _el, re-encoded in implicit VR."""
    vr = element[4:6].decode()
    if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"):
        return element[:4] + element[8:12] + element[12:]
    return element[:4] + struct.pack("<L", struct.unpack("<H", element[6:8])[0]) + element[8:]


def _implicit_file(extra: list[bytes], header: list[bytes] | None = None) -> bytes:
    return _file(_insert([_implicit(e) for e in header or _header()], extra), ts=IMPLICIT)


I_PIXELS = _implicit(PIXELS)
I_ITEMS = _item(_iel(0x00100020, b"9434765919") + _iel(0x00100021, b"NHS "), True) + _item(
    _iel(0x00100020, b"X1")
)

EDGE_CASES: dict[str, bytes] = {
    "implicit_plain": _implicit_file([I_PIXELS]),
    "implicit_utf8": _implicit_file([I_PIXELS], _header(b"ISO_IR 192", "MÜLLER^JÖRG".encode())),
    "implicit_seq_defined": _implicit_file([_iel(0x00101002, I_ITEMS), I_PIXELS]),
    "implicit_seq_undefined": _implicit_file(
        [_iel(0x00101002, I_ITEMS + SEQ_END, 0xFFFFFFFF), I_PIXELS]
    ),
    "implicit_seq_undefined_last": _implicit_file(
        [_iel(0x00101002, I_ITEMS + SEQ_END, 0xFFFFFFFF)]
    ),
    "implicit_private": _implicit_file(
        [
            _iel(0x00190010, b"ADAC_IMG"),
            _iel(0x00191011, b"\x07\x00"),
            _iel(0x00290010, b"NOBODY"),
            _iel(0x00291011, b"\x07\x00"),
            _iel(0x00291012, b""),
            I_PIXELS,
        ]
    ),
    "implicit_zero_lengths": _implicit_file(
        [_iel(0x00081030, b""), _iel(0x00181050, b""), _iel(0x00280106, b""), I_PIXELS]
    ),
    "implicit_us_or_ss": _implicit_file([_iel(0x00280106, b"\xff\xff"), I_PIXELS]),
    "implicit_private_undefined_declined": _implicit_file(
        [
            _iel(0x00190010, b"NOBODY"),
            _iel(0x00191010, _item(_iel(0x00100020, b"Z1")) + SEQ_END, 0xFFFFFFFF),
            I_PIXELS,
        ]
    ),
    "implicit_text_undefined_declined": _implicit_file(
        [_iel(0x00081030, b"AB" + SEQ_END, 0xFFFFFFFF), I_PIXELS]
    ),
    "implicit_pixel_undefined_declined": _implicit_file(
        [_iel(0x7FE00010, _item(b"") + _item(b"\xff\xd8\xff\xd9") + SEQ_END, 0xFFFFFFFF)]
    ),
    "implicit_length_past_end_declined": _implicit_file([_iel(0x00081030, b"AB", 4000)]),
    "plain": _file(_insert(_header(), [PIXELS])),
    "utf8": _file(_insert(_header(b"ISO_IR 192", "MÜLLER^JÖRG".encode()), [PIXELS])),
    "no_charset": _file(_insert(_header()[1:], [PIXELS])),
    "empty_charset": _file(_insert(_header(b""), [PIXELS])),
    "latin1_name": _file(_insert(_header(b"ISO_IR 100", "MÜLLER".encode("latin-1")), [PIXELS])),
    "cyrillic_declined": _file(_insert(_header(b"ISO_IR 144", "ИВАНОВ".encode("iso8859_5")), [])),
    "multi_charset_declined": _file(_insert(_header(b"\\ISO 2022 IR 100"), [PIXELS])),
    "seq_defined": _file(_insert(_header(), [_other_ids(False), PIXELS])),
    "seq_undefined": _file(_insert(_header(), [_other_ids(True), PIXELS])),
    "seq_undefined_last": _file(_insert(_header(), [_other_ids(True)])),
    "seq_undefined_utf8": _file(
        _insert(
            _header(b"ISO_IR 192"),
            [
                _el(
                    0x00081032,
                    "SQ",
                    _item(_el(0x00080104, "LO", "TÊTE ÖL".encode()), True) + SEQ_END,
                    0xFFFFFFFF,
                ),
                PIXELS,
            ],
        )
    ),
    "seq_empty": _file(_insert(_header(), [_el(0x00101002, "SQ", b""), PIXELS])),
    "seq_empty_undefined": _file(
        _insert(_header(), [_el(0x00101002, "SQ", SEQ_END, 0xFFFFFFFF), PIXELS])
    ),
    "nested_seq": _file(
        _insert(
            _header(),
            [
                _el(
                    0x00081140,
                    "SQ",
                    _item(
                        _el(0x00081150, "UI", _uid(CT))
                        + _el(0x0008114A, "SQ", _item(_el(0x00081155, "UI", _uid("9.9")), True))
                    ),
                ),
                PIXELS,
            ],
        )
    ),
    "private_tags": _file(
        _insert(
            _header(),
            [
                _el(0x00090010, "LO", b"ACME 1.0"),
                _el(0x00091001, "UN", b"\1\2\3\4"),
                _el(0x00091002, "LO", b"text"),
                _el(0x00091003, "DS", b"1.5 "),
                _el(0x00091004, "OB", bytes(2000)),
                PIXELS,
            ],
        )
    ),
    "private_sq_undefined_un_declined": _file(
        _insert(
            _header(),
            [
                _el(0x00090010, "LO", b"ACME 1.0"),
                _el(0x00091010, "UN", _item(_el(0x00100020, "LO", b"Z1")) + SEQ_END, 0xFFFFFFFF),
                PIXELS,
            ],
        )
    ),
    "odd_lengths": _file(
        _insert(
            _header(),
            [_el(0x00081030, "LO", b"ODD"), _el(0x00200010, "SH", b"7"), PIXELS],
        )
    ),
    "ambiguous_vr": _file(
        _insert(
            _header(), [_el(0x00280106, "US", b"\x10\x00"), _el(0x00281050, "DS", b"40"), PIXELS]
        )
    ),
    "unknown_vr_declined": _file(_insert(_header(), [_el(0x00081030, "ZZ", b"ABCD"), PIXELS])),
    "lower_vr_declined": _file(_insert(_header(), [_el(0x00081030, "lo", b"ABCD"), PIXELS])),
    "out_of_order_declined": _file(b"".join(_header()[::-1]) + PIXELS),
    "duplicate_declined": _file(_insert(_header(), [_header()[6], PIXELS])),
    "stray_item_declined": _file(_insert(_header(), [PIXELS]) + b"\xfe\xff\x00\xe0\0\0\0\0"),
    "stray_delimiter_declined": _file(
        b"".join(_header()[:5]) + b"\xfe\xff\x0d\xe0\0\0\0\0" + b"".join(_header()[5:]) + PIXELS
    ),
    "trailing_bytes_declined": _file(_insert(_header(), [PIXELS]) + b"\0\0\0"),
    "trailing_padding": _file(_insert(_header(), [PIXELS]) + _el(0xFFFCFFFC, "OB", bytes(8))),
    "length_past_end_declined": _file(_insert(_header(), [_el(0x00081030, "LO", b"AB", 4000)])),
    "command_set_declined": _file(_el(0x00000000, "UL", b"\0\0\0\0") + _insert(_header(), [])),
    "implicit_ts_explicit_body_declined": _file(
        _insert(_header(), [PIXELS]), ts="1.2.840.10008.1.2"
    ),
    "big_endian_ts_declined": _file(_insert(_header(), [PIXELS]), ts="1.2.840.10008.1.2.2"),
    "deflate_ts_declined": _file(_insert(_header(), [PIXELS]), ts="1.2.840.10008.1.2.1.99"),
    "no_ts_declined": _file(_insert(_header(), [PIXELS]), ts=""),
    "meta_only_declined": _file(b""),
    "meta_private_element": _file(
        _insert(_header(), [PIXELS]), meta_extra=_el(0x00020100, "UI", _uid("1.2.3"))
    ),
    "encapsulated": _file(
        _insert(
            _header(),
            [
                _el(
                    0x7FE00010,
                    "OB",
                    _item(b"") + _item(b"\xff\xd8" + bytes(30) + b"\xff\xd9") + SEQ_END,
                    0xFFFFFFFF,
                )
            ],
        ),
        ts=JPEG_BASELINE,
    ),
    "encapsulated_then_padding": _file(
        _insert(
            _header(),
            [
                _el(
                    0x7FE00010, "OB", _item(b"") + _item(b"\xff\xd8\xff\xd9") + SEQ_END, 0xFFFFFFFF
                ),
                _el(0xFFFCFFFC, "OB", bytes(4)),
            ],
        ),
        ts=JPEG_BASELINE,
    ),
    "undefined_length_text_declined": _file(
        _insert(_header(), [_el(0x00081030, "UT", b"AB" + SEQ_END, 0xFFFFFFFF), PIXELS])
    ),
    "no_uids": _file(_el(0x00100010, "PN", b"NOBODY")),
}


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_generated_edge_cases_parse_the_same(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(EDGE_CASES[name])
    taken = _same(path, nhs_tag="0010,0020")
    assert taken is not name.endswith("_declined"), name


@pytest.mark.parametrize(
    "name", ["seq_undefined", "private_tags", "encapsulated", "utf8", "implicit_seq_undefined"]
)
def test_generated_files_cut_at_every_byte_parse_the_same(tmp_path: Path, name: str) -> None:
    data = EDGE_CASES[name]
    path = tmp_path / f"{name}.dcm"
    for cut in range(0, len(data), 3):
        path.write_bytes(data[:cut])
        _same(path)


def test_pydicom_written_series_slice_takes_the_fast_path(tmp_path: Path) -> None:
    """A slice as bench/compare_data.py writes it (the C-STORE benchmark's series)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = CT, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.IssuerOfPatientID = "BENCH^CT", "P1", "ZZA"
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID = "9434765919", "NHS"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.Modality, ds.InstanceNumber, ds.ImageType = "CT", 3, ["ORIGINAL", "PRIMARY"]
    ds.ImagePositionPatient = [-200.0, -200.0, -187.5]
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
    ds.PixelData = bytes(64 * 64 * 2)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(CT)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "slice.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert _same(path)
    assert _outcome(path, True)["patient"]["nhs_number"] == "9434765919"
