"""The spliced identity patch gives the dataset a full pydicom re-encode gives, byte-cheaply.

Outgoing instances carry the record's current identity (``OutgoingIdentity.patch_part10``):
for corpus files of every stored encoding, with and without sequences, an earlier Original
Attributes Sequence, NHS numbers traced, changed or contact details removed, the spliced file
must parse (pydicom and DCMTK) to the same elements, pixel data included, as the reference
path (pydicom reads the whole file, ``patch_dataset``, writes it).
"""

from __future__ import annotations

import copy
import io
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from solent.dicom import header_splice as hs
from solent.services.outgoing_identity import FixedIdentity
from tests.conftest import require, require_tool, shared_dir

STAMP = "20260102030405"
STUDY = "1.2.3"
NHS_OID = "2.16.840.1.113883.2.1.4.1"
PATIENT = ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex")

# Explicit/implicit VR LE, big endian, JPEG/JPEG-LS/J2K/RLE, undefined-length and nested
# sequences (SR, enhanced multi-frame, PET icon), private elements, three character sets.
FILES = [
    "ts_explicit_vr_le_mr_siemens_trio.dcm",
    "ts_implicit_vr_le_mr_small.dcm",
    "ts_implicit_vr_le_mr_siemens_trio_gdcm.dcm",
    "ts_explicit_vr_be_mr_small.dcm",
    "ts_explicit_vr_be_emri_10frames.dcm",
    "ts_jpeg_baseline_rgb_dcmtk.dcm",
    "ts_jpeg_extended_12bit_nm.dcm",
    "ts_jpegls_lossless_mr_charls.dcm",
    "ts_j2k_lossless_mr_small.dcm",
    "ts_rle_mr_small.dcm",
    "mod_ct_small.dcm",
    "mod_mr_siemens_overlays.dcm",
    "mod_pt_acrin_flt_breast_1.dcm",
    "mf_enhanced_ct_2frames_supplemental_lut.dcm",
    "obj_sr_tid1500_dcmqi.dcm",
    "series_mr_dcm4che_01.dcm",
]


def nhs_item(number: str) -> dict[str, Any]:
    return {
        "PatientID": number,
        "IssuerOfPatientID": "NHS",
        "TypeOfPatientID": "TEXT",
        "IssuerOfPatientIDQualifiersSequence": [
            {
                "UniversalEntityID": NHS_OID,
                "UniversalEntityIDType": "ISO",
                "IdentifierTypeCode": "NH",
            }
        ],
    }


def corpus(name: str) -> Path:
    path = shared_dir() / "dicom-corpus" / name
    require(path.exists(), f"the shared DICOM corpus ({path})")
    return path


def rewritten(data: bytes, change: Callable[[Dataset], None]) -> bytes:
    """A received file: ``data`` with its header changed, in the same transfer syntax."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    change(ds)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def as_stored(ds: Dataset) -> dict[str, Any]:
    """Attributes equal to what the header already says (so only the extra ones differ)."""
    return {k: str(ds[k].value) if k in ds else "" for k in PATIENT}


# -- scenarios: (received file bytes, the record's attributes) -----------------------------


def new_identity(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """A merge or correction: another trust's ID, name, birth date; NHS number traced."""
    attrs = {
        "PatientID": "B7654321",
        "IssuerOfPatientID": "ZZB",
        "PatientName": "CARTER^JAMES^PAUL",
        "PatientBirthDate": "19620417",
        "PatientSex": "M",
        "OtherPatientIDsSequence": [nhs_item("9990000026")],
    }
    return data, attrs


def nhs_traced(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """Only the NHS number is new (the usual case: headers without it)."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    return data, {**as_stored(ds), "OtherPatientIDsSequence": [nhs_item("9990000042")]}


def nhs_changed(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """The sender's NHS number (undefined-length sequence) differs from the record's."""

    def old_nhs(ds: Dataset) -> None:
        item = Dataset()
        item.PatientID, item.IssuerOfPatientID = "9990000018", "NHS"
        ds.OtherPatientIDsSequence = Sequence([item])
        ds["OtherPatientIDsSequence"].is_undefined_length = True
        item.is_undefined_length_sequence_item = True

    received = rewritten(data, old_nhs)
    ds = pydicom.dcmread(io.BytesIO(received), stop_before_pixels=True, force=True)
    return received, {**as_stored(ds), "OtherPatientIDsSequence": [nhs_item("9990000026")]}


def sensitive(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """A sensitive record: address and telephone numbers are removed on the way out."""

    def contact(ds: Dataset) -> None:
        ds.PatientAddress = "1 HIGH STREET^^SOUTHAMPTON"
        ds.PatientTelephoneNumbers = "023 8000 0000"

    received = rewritten(data, contact)
    ds = pydicom.dcmread(io.BytesIO(received), stop_before_pixels=True, force=True)
    attrs = {**as_stored(ds), "PatientAddress": None, "PatientTelephoneNumbers": None}
    return received, attrs


def patched_before(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """A file that already has Original Attributes (patched elsewhere) gets another item."""
    _, first = new_identity(data)
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    FixedIdentity(first, "20250101000000").patch_dataset(STUDY, ds)
    ds["OriginalAttributesSequence"].is_undefined_length = True
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    attrs = {**first, "PatientID": "C1234567", "IssuerOfPatientID": "ZZC", "PatientSex": "F"}
    return out.getvalue(), attrs


def unchanged(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """The record says what the header says: nothing is patched."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    return data, as_stored(ds)


SCENARIOS = [new_identity, nhs_traced, nhs_changed, sensitive, patched_before, unchanged]


# -- comparing ------------------------------------------------------------------------------


def _keys(ds: Dataset) -> list[int]:
    tags = ds.keys()  # iterating a Dataset itself would convert every element
    return sorted(int(k) for k in tags if not hs.is_group_length(int(k)))


def assert_same(a: Dataset, b: Dataset, where: str = "") -> None:
    """Element by element (values, VRs, items, pixel data bytes); group lengths aside."""
    assert _keys(a) == _keys(b), f"{where}: elements differ"
    for tag in _keys(a):
        ea, eb = a[tag], b[tag]
        at = f"{where}({tag >> 16:04X},{tag & 0xFFFF:04X})"
        assert ea.VR == eb.VR, at
        if ea.VR == "SQ":
            assert len(ea.value) == len(eb.value), at
            for n, (x, y) in enumerate(zip(ea.value, eb.value, strict=True)):
                assert_same(x, y, f"{at}[{n}]")
        else:
            assert ea.value == eb.value or str(ea.value) == str(eb.value), at


def reference(data: bytes, attrs: dict[str, Any]) -> Dataset | None:
    """The slow path: pydicom reads all, patches, writes; None when nothing changed."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if not FixedIdentity(attrs, STAMP).patch_dataset(STUDY, ds):
        return None
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(out.getvalue()), force=True)


def fast(data: bytes, attrs: dict[str, Any]) -> bytes | None:
    spliced = FixedIdentity(attrs, STAMP).patch_part10(STUDY, data, complete=True)
    if spliced is None:
        return None
    return spliced.head + data[spliced.tail_offset :]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("name", FILES)
def test_splice_equals_a_full_reencode(
    name: str, scenario: Callable[[bytes], tuple[bytes, dict[str, Any]]], tmp_path: Path
) -> None:
    received, attrs = scenario(corpus(name).read_bytes())
    expected = reference(received, attrs)
    out = fast(received, attrs)
    if expected is None:
        assert out is None, "patched although the header says what the record says"
        return
    assert out is not None, "not patched although the record differs"
    got = pydicom.dcmread(io.BytesIO(out), force=True)
    assert_same(expected, got)
    assert got.file_meta.TransferSyntaxUID == expected.file_meta.TransferSyntaxUID
    stored_meta = received[: hs.read_layout(received).dataset_start]
    assert out.startswith(stored_meta), "the file meta goes out as stored"
    if "OriginalAttributesSequence" in got:  # something was replaced or removed
        assert got.OriginalAttributesSequence[-1].AttributeModificationDateTime == STAMP
    assert out == fast(received, attrs), "the same patch must give the same bytes"
    path = tmp_path / "out.dcm"
    path.write_bytes(out)
    dump = subprocess.run(
        [require_tool("dcmdump"), str(path)], capture_output=True, encoding="latin-1", timeout=60
    )
    assert dump.returncode == 0, dump.stderr
    assert "E: " not in dump.stderr, dump.stderr
    for tag in _keys(expected):  # DCMTK reads every top-level element
        assert f"({tag >> 16:04x},{tag & 0xFFFF:04x})" in dump.stdout


def test_a_short_read_asks_for_more_then_gives_the_same_head() -> None:
    data = corpus("mod_pt_acrin_flt_breast_1.dcm").read_bytes()
    _, attrs = new_identity(data)
    whole = FixedIdentity(attrs, STAMP).patch_part10(STUDY, data, complete=True)
    assert whole is not None
    with pytest.raises(hs.Truncated):
        FixedIdentity(attrs, STAMP).patch_part10(STUDY, data[:600], complete=False)
    part = FixedIdentity(attrs, STAMP).patch_part10(
        STUDY, data[: whole.tail_offset + 16], complete=False
    )
    assert part == whole


def test_one_reencode_per_distinct_patient_module() -> None:
    """A series shares its patient elements: the plan is made once, spliced per instance."""
    data = corpus("ts_explicit_vr_le_mr_siemens_trio.dcm").read_bytes()
    _, attrs = new_identity(data)
    identity = FixedIdentity(attrs, STAMP)
    first = identity.patch_part10(STUDY, data, complete=True)
    other = rewritten(data, lambda ds: setattr(ds, "InstanceNumber", 99))
    second = identity.patch_part10(STUDY, other, complete=True)
    assert first is not None and second is not None
    assert len(identity._plans) == 1
    got = pydicom.dcmread(io.BytesIO(second.head + other[second.tail_offset :]))
    assert (got.InstanceNumber, got.PatientID) == (99, "B7654321")


def test_a_wrongly_encoded_patient_name_is_replaced_with_its_dictionary_vr() -> None:
    """A name received as UN is sent as PN; the received element stays in Original Attributes."""
    data = corpus("ts_explicit_vr_le_mr_siemens_trio.dcm").read_bytes()

    def as_un(ds: Dataset) -> None:
        ds["PatientName"].VR = "UN"
        ds["PatientName"].value = b"OLD^NAME"

    received = rewritten(data, as_un)
    _, attrs = new_identity(received)
    out = fast(received, attrs)
    assert out is not None
    got = pydicom.dcmread(io.BytesIO(out))
    assert got["PatientName"].VR == "PN" and str(got.PatientName) == "CARTER^JAMES^PAUL"
    expected = reference(received, attrs)
    assert expected is not None
    assert_same(expected, got)


@pytest.mark.parametrize("name", ["ts_deflated_sc_image.dcm", "mod_ot_palette_face_nometa.dcm"])
def test_what_cannot_be_spliced_says_so(name: str) -> None:
    data = corpus(name).read_bytes()
    _, attrs = new_identity(data)
    with pytest.raises(hs.Unsupported):
        FixedIdentity(attrs, STAMP).patch_part10(STUDY, data, complete=True)


def test_modification_time_is_the_stamp_given() -> None:
    data = corpus("mod_ct_small.dcm").read_bytes()
    _, attrs = new_identity(data)
    one = fast(data, copy.deepcopy(attrs))
    later = FixedIdentity(attrs, "20270101000000").patch_part10(STUDY, data, complete=True)
    assert one is not None and later is not None
    assert one != later.head + data[later.tail_offset :]
    assert b"20270101000000" in later.head


def test_an_undefined_length_un_element_is_walked_as_implicit_vr() -> None:
    """PS3.5 6.2.2: an undefined-length UN holds implicit VR little endian items; the walk
    must step over it (an item with a value that looks like a delimiter included)."""
    data = corpus("ts_explicit_vr_le_mr_siemens_trio.dcm").read_bytes()
    layout = hs.read_layout(data)
    found = hs.walk(data, layout, 0x0010FFFF, complete=True)
    at = next(s for tag, s, _ in found.elements if tag >> 16 == 0x0010)
    inner = b"\x08\x00\x00\x01" + (8).to_bytes(4, "little") + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + inner + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    private = (
        b"\x09\x00\x10\x00LO\x0c\x00SOLENT TEST "
        + b"\x09\x00\x01\x10UN\x00\x00\xff\xff\xff\xff"
        + item
        + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    )
    received = data[:at] + private + data[at:]
    _, attrs = new_identity(received)
    out = fast(received, attrs)
    assert out is not None
    assert private in out
    got = pydicom.dcmread(io.BytesIO(out), force=True)
    assert (
        got.PatientID,
        got.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientID,
    ) == ("B7654321", pydicom.dcmread(io.BytesIO(data)).PatientID)
    assert got.pixel_array.tobytes() == pydicom.dcmread(io.BytesIO(data)).pixel_array.tobytes()
