"""The header parser: frame byte ranges, deflate, truncation, UIDs and the NHS number.

Frame ranges are checked against pydicom: the bytes at each range in the file must be exactly
the frame pydicom finds (native: its slice of Pixel Data; encapsulated: its fragments).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from solent.dicom.parse import ParsedInstance, RejectedInstance, parse_file
from solent.domain.outcomes import RejectReason

SC = "1.2.840.10008.5.1.4.1.1.7"


def _dataset(frames: int = 1, rows: int = 4, cols: int = 4, bits: int = 16) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SC, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "P1", "TEST^PARSE", "OT"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    return ds


def _save(ds: Dataset, path: Path, ts: str = ExplicitVRLittleEndian) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(ds.SOPClassUID)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(ts)
    ds.save_as(path, enforce_file_format=True)
    return path


def _frame_bytes(path: Path, parsed: ParsedInstance) -> list[bytes]:
    assert parsed.frames is not None
    data = path.read_bytes()
    return [b"".join(data[o : o + n] for o, n in frame) for frame in parsed.frames]


def _reject(path: Path) -> RejectedInstance:
    with pytest.raises(RejectedInstance) as err:
        parse_file(path)
    return err.value


# --- native -------------------------------------------------------------------------------


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_native_multiframe_offsets(tmp_path: Path, ts: str) -> None:
    ds = _dataset(frames=3)
    frames = [bytes([i]) * 32 for i in (1, 2, 3)]
    ds.PixelData = b"".join(frames)
    path = _save(ds, tmp_path / "mf.dcm", ts)
    parsed = parse_file(path)
    assert parsed.instance["number_of_frames"] == 3
    assert _frame_bytes(path, parsed) == frames
    assert parsed.transfer_syntax_uid == ts


def test_native_frames_of_corpus_multiframe(corpus_dir: Path) -> None:
    path = corpus_dir / "mf_mr_16frames_uncompressed.dcm"
    ds = pydicom.dcmread(path)
    parsed = parse_file(path)
    size = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
    expected = [ds.PixelData[i * size : (i + 1) * size] for i in range(int(ds.NumberOfFrames))]
    assert _frame_bytes(path, parsed) == expected


def test_one_bit_frames_are_not_byte_addressable(tmp_path: Path) -> None:
    ds = _dataset(frames=3, rows=3, cols=3, bits=1)
    ds.BitsStored, ds.HighBit = 1, 0
    ds.PixelData = bytes(4)  # 27 bits
    parsed = parse_file(_save(ds, tmp_path / "seg.dcm"))
    assert parsed.frames is None and parsed.instance["number_of_frames"] == 3


# --- encapsulated ---------------------------------------------------------------------------


def _jpeg_like(i: int, n: int = 40) -> bytes:
    return b"\xff\xd8" + bytes([i]) * n + b"\xff\xd9"


@pytest.mark.parametrize(("has_bot", "fragments"), [(True, 1), (False, 1), (True, 3), (False, 3)])
def test_encapsulated_offsets_with_and_without_offset_table(
    tmp_path: Path, has_bot: bool, fragments: int
) -> None:
    frames = [_jpeg_like(i) for i in range(1, 5)]
    ds = _dataset(frames=4, bits=8)
    ds.PixelData = encapsulate(frames, fragments_per_frame=fragments, has_bot=has_bot)
    ds["PixelData"].VR = "OB"
    path = _save(ds, tmp_path / "enc.dcm", JPEGBaseline8Bit)
    parsed = parse_file(path)
    assert parsed.frames is not None and len(parsed.frames) == 4
    assert all(len(f) == fragments for f in parsed.frames)
    assert _frame_bytes(path, parsed) == frames


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("mf_enhanced_mr_10frames_j2k.dcm", 10),
        ("mod_xa_96frames_jpeg.dcm", 96),
        ("mf_wsi_sm_jpegls_25frames.dcm", 25),
        ("ts_jpeg_lossless_sv1_rgb_us_2frames.dcm", 2),
        ("ts_rle_mr_small.dcm", 1),
    ],
)
def test_encapsulated_frames_of_corpus_files(corpus_dir: Path, name: str, count: int) -> None:
    path = corpus_dir / name
    ds = pydicom.dcmread(path)
    expected = list(generate_frames(ds.PixelData, number_of_frames=count))
    parsed = parse_file(path)
    assert len(expected) == count
    assert _frame_bytes(path, parsed) == expected


def test_pixel_data_encoding_must_match_the_transfer_syntax(corpus_dir: Path) -> None:
    """Encapsulated (undefined-length) Pixel Data in a file that says Explicit VR Little Endian."""
    err = _reject(corpus_dir / "bad_pixel_data_short_ct.dcm")
    assert err.reason is RejectReason.MALFORMED
    assert "Pixel Data is encapsulated but the transfer syntax" in err.message


# --- deflated -----------------------------------------------------------------------------


def test_deflated_file_is_parsed_without_frame_offsets(tmp_path: Path) -> None:
    ds = _dataset(frames=2)
    ds.PixelData = bytes(range(64))
    path = _save(ds, tmp_path / "deflated.dcm", DeflatedExplicitVRLittleEndian)
    parsed = parse_file(path)
    assert parsed.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert parsed.frames is None  # offsets into the inflated stream mean nothing on disk
    doc = json.loads(zlib.decompress(parsed.metadata_json))
    assert doc["7FE00010"]["BulkDataURI"] == "bulkdata/7FE00010"
    assert doc["00100020"]["Value"] == ["P1"]


def test_deflated_corpus_files(corpus_dir: Path) -> None:
    for name in ("ts_deflated_sc_image.dcm", "ts_deflated_sr_report.dcm"):
        parsed = parse_file(corpus_dir / name)
        assert parsed.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
        assert parsed.frames is None


# --- truncation and structure ---------------------------------------------------------------


def test_truncated_pixel_data_is_rejected(tmp_path: Path) -> None:
    ds = _dataset(frames=2)
    ds.PixelData = bytes(64)
    full = _save(ds, tmp_path / "full.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(full[:-10])
    err = _reject(cut)
    assert err.reason is RejectReason.MALFORMED and "truncated" in err.message


def test_file_cut_inside_a_sequence_is_rejected(tmp_path: Path) -> None:
    ds = _dataset()
    ds.PixelData = bytes(32)
    item = Dataset()
    item.CodeValue, item.CodeMeaning = "T-04000", "Breast " * 20
    ds.ProcedureCodeSequence = Sequence([item])
    full = _save(ds, tmp_path / "full.dcm").read_bytes()
    pos = full.index(b"Breast")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(full[: pos + 10])
    err = _reject(cut)
    assert err.reason is RejectReason.MALFORMED and "truncated" in err.message


def test_encapsulated_cut_before_delimiter_is_rejected(tmp_path: Path) -> None:
    ds = _dataset(frames=2, bits=8)
    ds.PixelData = encapsulate([_jpeg_like(1), _jpeg_like(2)])
    ds["PixelData"].VR = "OB"
    full = _save(ds, tmp_path / "full.dcm", JPEGBaseline8Bit).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(full[:-20])
    err = _reject(cut)
    assert err.reason is RejectReason.MALFORMED
    assert "truncated" in err.message or "past the end" in err.message


def test_corpus_truncated_files_are_rejected(corpus_dir: Path) -> None:
    for name in (
        "bad_truncated_rtplan.dcm",
        "bad_truncated_pixel_data_mr.dcm",
        "bad_j2k_codestream_too_short.dcm",
    ):
        err = _reject(corpus_dir / name)
        assert "truncated" in err.message, (name, err.message)


def test_text_file_is_not_dicom(tmp_path: Path) -> None:
    path = tmp_path / "LICENSE.txt"
    path.write_text("Permission is hereby granted, free of charge, to any person...\n" * 20)
    err = _reject(path)
    assert "not a DICOM file" in err.message


def test_tiny_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "tiny.dcm"
    path.write_bytes(b"DICM")
    assert "only 4 bytes" in _reject(path).message


# --- UIDs -----------------------------------------------------------------------------------


def test_missing_sop_instance_uid(tmp_path: Path) -> None:
    ds = _dataset()
    ds.PixelData = bytes(32)
    path = _save(ds, tmp_path / "x.dcm")
    data = pydicom.dcmread(path)
    del data.SOPInstanceUID
    data.save_as(path)
    err = _reject(path)
    assert err.reason is RejectReason.MISSING_ATTRIBUTE and "SOPInstanceUID" in err.message


@pytest.mark.parametrize("bad", ["1.2.3.abc", "1..2", "1." + "2" * 70])
def test_invalid_study_uid(tmp_path: Path, bad: str) -> None:
    ds = _dataset()
    ds.StudyInstanceUID = bad
    ds.PixelData = bytes(32)
    err = _reject(_save(ds, tmp_path / "x.dcm"))
    assert err.reason is RejectReason.INVALID_UID and "StudyInstanceUID" in err.message


def test_uids_and_fields_are_read(tmp_path: Path) -> None:
    ds = _dataset()
    ds.PixelData = bytes(32)
    ds.AccessionNumber, ds.StudyDate, ds.SeriesNumber = "ACC1", "20260101", "7"
    path = _save(ds, tmp_path / "x.dcm")
    parsed = parse_file(path)
    assert (parsed.sop_instance_uid, parsed.study_uid, parsed.series_uid) == (
        ds.SOPInstanceUID,
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
    )
    assert parsed.study["accession_number"] == "ACC1" and parsed.series["series_number"] == 7
    assert parsed.size == path.stat().st_size and len(parsed.sha256) == 64


# --- NHS number -----------------------------------------------------------------------------


def _with_other_ids(tmp_path: Path, *ids: tuple[str, str]) -> Path:
    ds = _dataset()
    ds.PixelData = bytes(32)
    items = []
    for value, issuer in ids:
        item = Dataset()
        item.PatientID, item.IssuerOfPatientID, item.TypeOfPatientID = value, issuer, "TEXT"
        items.append(item)
    ds.OtherPatientIDsSequence = Sequence(items)
    return _save(ds, tmp_path / "nhs.dcm")


def test_nhs_number_from_other_patient_ids_with_issuer_nhs(tmp_path: Path) -> None:
    parsed = parse_file(_with_other_ids(tmp_path, ("H123", "RHM"), ("943 476 5919", "NHS")))
    assert parsed.patient["nhs_number"] == "9434765919"
    assert parsed.patient["nhs_number_valid"] is True
    assert parsed.patient["local_id"] == "P1", "the local ID stays the record key"


def test_invalid_nhs_number_is_kept_but_marked_invalid(tmp_path: Path) -> None:
    parsed = parse_file(_with_other_ids(tmp_path, ("9434765918", "NHS")))
    assert parsed.patient["nhs_number"] == "9434765918"
    assert parsed.patient["nhs_number_valid"] is False


def test_other_issuers_are_not_nhs_numbers(tmp_path: Path) -> None:
    parsed = parse_file(_with_other_ids(tmp_path, ("9434765919", "RHM")))
    assert parsed.patient["nhs_number"] is None and parsed.patient["nhs_number_valid"] is None


def test_nhs_number_from_a_configured_tag(tmp_path: Path) -> None:
    ds = _dataset()
    ds.PixelData = bytes(32)
    ds.PatientComments = "4010232137"
    path = _save(ds, tmp_path / "tag.dcm")
    assert parse_file(path).patient["nhs_number"] is None
    for tag in ("0010,4000", "PatientComments"):
        parsed = parse_file(path, nhs_tag=tag)
        assert parsed.patient["nhs_number"] == "4010232137" and parsed.patient["nhs_number_valid"]


def test_metadata_json_leaves_pixel_data_as_bulk_uri(tmp_path: Path) -> None:
    ds = _dataset()
    ds.PixelData = bytes(32)
    ds.PatientName = "ÉMILE^ZOLA"
    ds.SpecificCharacterSet = "ISO_IR 100"
    parsed = parse_file(_save(ds, tmp_path / "x.dcm"))
    doc = json.loads(zlib.decompress(parsed.metadata_json))
    assert doc["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulkdata/7FE00010"}
    assert doc["00100010"]["Value"] == [{"Alphabetic": "ÉMILE^ZOLA"}]
    assert doc["00083002"]["Value"] == [ExplicitVRLittleEndian]


def _reference_metadata_json(
    ds: Dataset, transfer_syntax: str, pixel_vr: str | None, pixel_tag: str | None
) -> bytes:
    """pydicom's own DICOM JSON of the whole dataset, as ingest built it before the cache."""
    from solent.dicom.metadata_json import BULK_THRESHOLD, _bulk_paths

    paths = _bulk_paths(ds)
    doc = ds.to_json_dict(
        bulk_data_threshold=BULK_THRESHOLD,
        bulk_data_element_handler=lambda e: "bulkdata/" + paths.get(id(e), f"{e.tag:08X}"),
    )
    doc["00083002"] = {"vr": "UI", "Value": [transfer_syntax]}
    if pixel_tag is not None:
        doc[pixel_tag] = {"vr": pixel_vr or "OB", "BulkDataURI": "bulkdata/" + pixel_tag}
    text = json.dumps(dict(sorted(doc.items())), separators=(",", ":"), ensure_ascii=False)
    return zlib.compress(text.encode("utf-8"), 6)


def test_cached_metadata_json_is_pydicoms_for_every_corpus_file(
    corpus_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The element cache (metadata_json._JSON_CACHE) gives exactly pydicom's JSON: every corpus file
    parsed twice (the second time from the cache), each result checked against pydicom's
    JSON of the same dataset."""
    import solent.dicom.metadata_json as metadata
    import solent.dicom.parse as parse

    cached = parse.metadata_json
    checked: list[str] = []

    def both(ds: Dataset, ts: str, vr: str | None, tag: str | None, *args: object) -> bytes:
        got = cached(ds, ts, vr, tag, *args)  # type: ignore[arg-type]
        expected = _reference_metadata_json(ds, ts, vr, tag)
        assert json.loads(zlib.decompress(got)) == json.loads(zlib.decompress(expected))
        assert got == expected
        checked.append(ts)
        return got

    monkeypatch.setattr(parse, "metadata_json", both)
    metadata._JSON_CACHE.clear()
    files = sorted(corpus_dir.glob("*.dcm"))
    for _ in range(2):
        for path in files:
            try:
                parse_file(path)
            except RejectedInstance:
                continue
    assert len(metadata._JSON_CACHE) > 100 and len(checked) > 100


def test_large_values_are_read_from_the_open_file_after_its_name_is_gone(tmp_path: Path) -> None:
    """Ingest parses a spool it has already linked into the store; the spool's name goes
    meanwhile. A deferred (large) value must come from the open file, not its name."""
    ds = _dataset()
    ds.PixelData = bytes(32)
    ds.add_new(0x00420011, "OB", bytes(range(256)) * 400)  # Encapsulated Document, 100 KB
    path = _save(ds, tmp_path / "big.dcm")
    with path.open("rb+") as opened:
        path.rename(tmp_path / "elsewhere.dcm")
        parsed = parse_file(path, sha256="0" * 64, opened=opened)
    doc = json.loads(zlib.decompress(parsed.metadata_json))
    assert doc["00420011"] == {"vr": "OB", "BulkDataURI": "bulkdata/00420011"}
    assert parsed.size == (tmp_path / "elsewhere.dcm").stat().st_size


def test_cached_values_give_the_same_index_fields_for_every_corpus_file(
    corpus_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """parse._VALUE_CACHE changes no indexed attribute: every corpus file parsed with plain
    pydicom lookups, then twice with the cache (the second time from it), same fields."""
    import solent.dicom.parse as parse

    def fields(path: Path) -> object:
        try:
            p = parse_file(path, sha256="0" * 64)
        except RejectedInstance as exc:
            return (exc.reason, exc.message)
        return (p.patient, p.study, p.series, p.instance, p.frames, p.transfer_syntax_uid)

    files = sorted(corpus_dir.glob("*.dcm"))
    with monkeypatch.context() as m:
        m.setattr(parse, "_get", lambda ds, keyword: ds.get(keyword))
        m.setattr(parse, "_nhs_in_sequence", parse._nhs_in_sequence_uncached)
        expected = [fields(f) for f in files]
    parse._VALUE_CACHE.clear()
    parse._NHS_CACHE.clear()
    assert [fields(f) for f in files] == expected
    assert len(parse._VALUE_CACHE) > 100 and parse._NHS_CACHE
    assert [fields(f) for f in files] == expected


def test_cached_sequence_json_follows_the_pixel_representation(tmp_path: Path) -> None:
    """A sequence's JSON is cached with the dataset's Pixel Representation in its key: in
    implicit VR an item's "US or SS" value reads as US under 0 and SS under 1 (pydicom passes
    the parent's Pixel Representation down), so the same sequence bytes give two texts."""
    import solent.dicom.metadata_json as metadata

    metadata._JSON_CACHE.clear()
    values = []
    for i, pr in enumerate((0, 1, 0, 1)):
        ds = _dataset()
        ds.PixelRepresentation = pr
        item = Dataset()
        item.add_new(0x00280106, "US", 65535)  # Smallest Image Pixel Value: "US or SS"
        ds.ReferencedImageSequence = Sequence([item])
        ds.PixelData = bytes(32)
        path = _save(ds, tmp_path / f"{i}.dcm", ImplicitVRLittleEndian)
        doc = json.loads(zlib.decompress(parse_file(path).metadata_json))
        values.append(doc["00081140"]["Value"][0]["00280106"])
    assert values[0] == values[2] == {"vr": "US", "Value": [65535]}
    assert values[1] == values[3] == {"vr": "SS", "Value": [-1]}
    sequences = [k for k in metadata._JSON_CACHE if k[0] == 0x00081140]
    assert len(sequences) == 2  # one text per Pixel Representation, each used twice


def test_cached_private_elements_follow_their_creator_only_where_pydicom_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A private element's JSON is cached only when its VR is in the file: in implicit VR the
    same bytes read by their private creator's dictionary VR (US under ADAC_IMG) or as UN."""
    import solent.dicom.metadata_json as metadata
    import solent.dicom.parse as parse

    cached = parse.metadata_json

    def both(ds: Dataset, ts: str, vr: str | None, tag: str | None, *args: object) -> bytes:
        got = cached(ds, ts, vr, tag, *args)  # type: ignore[arg-type]
        assert got == _reference_metadata_json(ds, ts, vr, tag)
        return got

    monkeypatch.setattr(parse, "metadata_json", both)
    metadata._JSON_CACHE.clear()
    docs = []
    for i, (creator, ts) in enumerate(
        [
            ("ADAC_IMG", ImplicitVRLittleEndian),
            ("NOBODY", ImplicitVRLittleEndian),
            ("ADAC_IMG", ExplicitVRLittleEndian),
            ("NOBODY", ExplicitVRLittleEndian),
        ]
        * 2
    ):
        ds = _dataset()
        ds.PixelData = bytes(32)
        ds.add_new(0x00190010, "LO", creator)
        ds.add_new(0x00191011, "US", 7)
        path = _save(ds, tmp_path / f"{i}.dcm", ts)
        docs.append(json.loads(zlib.decompress(parse_file(path).metadata_json))["00191011"])
    assert docs[0]["vr"] == "US" and docs[1]["vr"] == "UN"
    assert docs[2]["vr"] == docs[3]["vr"] == "US"
    assert docs[:4] == docs[4:]
    assert any(k[0] == 0x00191011 for k in metadata._JSON_CACHE)  # the explicit ones
