"""`solent import` over the whole shared corpus: every file gets a definite, readable outcome.

The expectation table below is explicit on purpose: when the parser changes what it accepts,
this test names the file whose fate changed. Files of the shared corpus that are not listed as
rejected or skipped are expected to be stored.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from solent.app import Archive, build_archive
from solent.domain.outcomes import Outcome
from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
from solent.domain.uids import is_valid_uid
from solent.index.reads import find_instance_by_uid
from solent.settings import load_settings
from tests.conftest import SOLENT

# Categories whose files must all be stored when they carry the four identifying UIDs.
STORED_CATEGORIES = ("ts_", "mod_", "mf_", "obj_", "cs_", "vr_", "px_", "series_", "meta_")
IDENTIFYING = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

NOT_DICOM = "not a DICOM file"
CONFLICT = "conflict: an instance with this SOP Instance UID is already stored"
# Every fuzz_ file shares one Study Instance UID; fuzz_format_string_payload.dcm is the first of
# them to be stored and carries another PatientID ('%s%s%s%n'), so the later, structurally valid
# ones are refused rather than filed under the wrong patient (each alone is stored: see
# test_allow_listed_file_is_stored_safely).
STUDY_OF_OTHER_PATIENT = "patient-mismatch: this Study Instance UID is already filed under another"
TRUNCATED = "malformed: the file is truncated"

# file -> substring its rejection reason must contain (imported with --workers 1: sorted order).
REJECTED: dict[str, str] = {
    "MANIFEST.tsv": NOT_DICOM,
    "README.md": NOT_DICOM,
    # --- malformed real-world files
    "bad_deeply_nested_sequence.dcm": "malformed: sequences nested too deeply",
    "bad_implicit_sq_inside_explicit.dcm": "invalid-uid: SOPInstanceUID 'dccc9599",
    "bad_invalid_vr_value_rtdose.dcm": "malformed: NumberOfFrames is missing or not an integer",
    "bad_j2k_codestream_too_short.dcm": TRUNCATED,
    "bad_no_meta_leading_stray_byte.dcm": NOT_DICOM,
    "bad_pixel_data_short_ct.dcm": "malformed: Pixel Data is encapsulated but the transfer syntax",
    "bad_stray_item_tag_jpegls_us.dcm": "malformed: stray item tag (FFFE,E000)",
    "bad_truncated_pixel_data_mr.dcm": TRUNCATED + ": element (7FE0,0010) declares 8192 bytes",
    "bad_truncated_rtplan.dcm": TRUNCATED + ": element (300A,00B0) declares 976 bytes",
    # --- fuzzed files
    "fuzz_bits_stored_gt_allocated.dcm": "malformed: BitsStored 17 is not between 1 and",
    "fuzz_deflate_corrupt.dcm": "missing-attribute: SOPClassUID is missing",
    "fuzz_duplicate_tags.dcm": TRUNCATED,
    "fuzz_element_length_4gb.dcm": TRUNCATED + ": element (0010,0010)",
    "fuzz_encap_fragment_len_maxuint.dcm": "malformed: an encapsulated Pixel Data fragment runs",
    "fuzz_meta_group_length_zero.dcm": "malformed: not a readable DICOM file",
    "fuzz_meta_ts_bad_vr_1gb_length.dcm": "malformed: not a readable DICOM file",
    "fuzz_midvalue_truncation.dcm": TRUNCATED + ": element (0010,0010) declares 100 bytes",
    "fuzz_missing_sop_instance_uid.dcm": "missing-attribute: SOPInstanceUID is missing",
    "fuzz_patientname_64kb.dcm": STUDY_OF_OTHER_PATIENT,
    "fuzz_pixel_buffer_half.dcm": "malformed: Pixel Data is 4096 bytes, shorter than",
    "fuzz_pn_encoded_as_ob.dcm": STUDY_OF_OTHER_PATIENT,
    "fuzz_preamble_and_dicm_only.dcm": "malformed: the file holds no dataset",
    "fuzz_preamble_ff.dcm": STUDY_OF_OTHER_PATIENT,
    "fuzz_rle_segment_offset_oob.dcm": STUDY_OF_OTHER_PATIENT,
    "fuzz_rows_zero.dcm": "malformed: Rows is 0, must be >= 1",
    "fuzz_sq_depth_100.dcm": STUDY_OF_OTHER_PATIENT,
    "fuzz_sq_missing_delimiter.dcm": "malformed: not a readable DICOM file",
    "fuzz_stray_item_tag.dcm": "malformed: stray item tag (FFFE,E000)",
    "fuzz_truncated_meta_group.dcm": "malformed: the file holds no dataset",
    "fuzz_uid_65_chars.dcm": "invalid-uid: SOPInstanceUID '1111",
    "fuzz_uid_path_traversal.dcm": "invalid-uid: SOPInstanceUID '../../../tmp/pwned'",
    "fuzz_utf8_surrogate.dcm": STUDY_OF_OTHER_PATIENT,
    "fuzz_window_nan.dcm": STUDY_OF_OTHER_PATIENT,
    # --- valid files without the identifying UIDs (pydicom's minimal test datasets)
    "cs_empty_charset.dcm": "missing-attribute: SOPClassUID is missing",
    "cs_sequence_with_other_charset.dcm": "missing-attribute: SOPInstanceUID is missing",
    "meta_missing_transfer_syntax.dcm": "missing-attribute: SOPClassUID is missing",
    "meta_no_group_length.dcm": "missing-attribute: SOPInstanceUID is missing",
    "meta_swapped_meta_version_mergecom.dcm": "missing-attribute: StudyInstanceUID is missing",
    "ts_htj2k_lossless_rgb.dcm": "missing-attribute: StudyInstanceUID is missing",
    "ts_jpegls_lossless_rgb_ilv2_nopreamble.dcm": "missing-attribute: SOPInstanceUID is missing",
    "ts_jpegls_near_lossless_16bit.dcm": "missing-attribute: StudyInstanceUID is missing",
    "ts_jpegls_near_lossless_8bit.dcm": "missing-attribute: StudyInstanceUID is missing",
    "vr_nested_private_sq.dcm": "missing-attribute: SOPClassUID is missing",
    "vr_private_sq_undefined_length.dcm": "missing-attribute: SOPInstanceUID is missing",
    "vr_un_private_sequence.dcm": "missing-attribute: SOPInstanceUID is missing",
    "vr_ur_value.dcm": "missing-attribute: StudyInstanceUID is missing",
    # --- same SOP Instance UID as a file earlier in sorted order, other bytes (MANIFEST notes)
    "cs_latin1_multivalued.dcm": CONFLICT,  # first: cs_latin1_french.dcm
    "mf_enhanced_mr_10frames_j2k.dcm": CONFLICT,  # first: mf_enhanced_mr_10frames.dcm
    "mf_enhanced_mr_10frames_rle.dcm": CONFLICT,
    "ts_explicit_vr_be_emri_10frames.dcm": CONFLICT,
    "mod_ct_small.dcm": CONFLICT,  # first: meta_missing_media_sop_class.dcm
    "mod_sc_rgb_16bit_2frames.dcm": CONFLICT,  # first: mod_sc_rgb.dcm
    "ts_rle_rgb_32bit_2frames.dcm": CONFLICT,
    "ts_implicit_vr_le_mr_small.dcm": CONFLICT,  # first: ts_explicit_vr_be_mr_small.dcm
    "ts_j2k_lossless_mr_small.dcm": CONFLICT,
    "ts_jpegls_lossless_mr_small.dcm": CONFLICT,
    "ts_rle_mr_small.dcm": CONFLICT,
    "ts_jpeg_baseline_rgb_dcmtk.dcm": CONFLICT,  # first: ts_jpeg_baseline_8bit_gray.dcm
    "ts_jpeg_extended_12bit_nm_nonconformant.dcm": CONFLICT,  # first: ts_jpeg_extended_12bit_nm
}
SKIPPED = {"obj_dicomdir_dcm4che.dcm": "a DICOMDIR is a media index, not an instance"}

# bad_/fuzz_ files that are structurally valid DICOM: their defect shows only when pixels are
# decoded, or is an odd value. A PACS stores what it was sent; the viewer copes when decoding.
ALLOW_LISTED = {
    "bad_jpeg_lossless_corrupt_stream.dcm",  # JPEG entropy-coded data corrupt: decode-time
    "bad_j2k_embedded_sequence_delimiter.dcm",  # E0DD bytes inside a J2K fragment: lengths hold
    "bad_nonbyte_aligned_rle_seg.dcm",  # 1-bit SEG in RLE: decoders refuse, the file is sound
    "fuzz_format_string_payload.dcm",  # '%s%s%s%n' in PatientName/ID: just text
    "fuzz_window_nan.dcm",  # WindowCenter/Width NaN: rendering falls back
    "fuzz_rle_segment_offset_oob.dcm",  # RLE header points past the data: decode-time
    "fuzz_patientname_64kb.dcm",  # over-long value: indexed truncated, kept whole
    "fuzz_pn_encoded_as_ob.dcm",  # PN given VR OB: kept as binary
    "fuzz_preamble_ff.dcm",  # preamble content is free (PS3.10 7.1)
    "fuzz_sq_depth_100.dcm",  # 100 nested sequences: deep but finite
    "fuzz_utf8_surrogate.dcm",  # invalid UTF-8 in PatientName: replaced when decoded
}
# Native single-frame files whose stored frame must equal pydicom's Pixel Data.
NATIVE_SAMPLE = (
    "ts_explicit_vr_le_mr_siemens_trio.dcm",
    "ts_implicit_vr_le_mr_siemens_trio_gdcm.dcm",
    "ts_explicit_vr_be_mr_small.dcm",
    "mod_cr_mono1_chest.dcm",
    "px_rgb_odd_3x3.dcm",
    "series_mr_dcm4che_07.dcm",
)


@dataclass
class CorpusImport:
    corpus: Path
    data_dir: Path
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]

    def summary(self, run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(run.stdout)
        return out

    def outcomes(self, run: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
        """relative path -> (outcome, reason); each file must appear exactly once."""
        s = self.summary(run)
        seen: list[tuple[str, str, str]] = [(p, "stored", "") for p in s["stored"]]
        seen += [(p, "duplicate", "") for p in s["duplicate"]]
        seen += [(r["path"], "rejected", r["reason"]) for r in s["rejected"]]
        seen += [(r["path"], "skipped", r["reason"]) for r in s["skipped"]]
        rel = [str(Path(p).relative_to(self.corpus)) for p, _, _ in seen]
        assert len(rel) == len(set(rel)), "a file was reported twice"
        return {r: (o, why) for r, (_, o, why) in zip(rel, seen, strict=True)}


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLENT_")}
    env["SOLENT_DATA_DIR"] = str(data_dir)
    return env


def _run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SOLENT), *args], env=_env(data_dir), capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def imported(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> CorpusImport:
    data = tmp_path_factory.mktemp("corpus") / "var"
    assert _run(data, "trust", "add", "ZZA", "--name", "Trust A").returncode == 0
    # One worker: "the first of files sharing a SOP Instance UID" is then the first in sorted order.
    first = _run(data, "import", str(corpus_dir), "--trust", "ZZA", "--json", "--workers", "1")
    second = _run(data, "import", str(corpus_dir), "--trust", "ZZA", "--json", "--workers", "2")
    return CorpusImport(corpus_dir, data, first, second)


@pytest.fixture
def stored_archive(imported: CorpusImport) -> Iterator[Archive]:
    a = build_archive(load_settings(environ={}, data_dir=imported.data_dir))
    yield a
    a.close()


def _all_files(root: Path) -> set[str]:
    out = set()
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out |= {str((Path(dirpath) / f).relative_to(root)) for f in files if not f.startswith(".")}
    return out


def _sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, force=True, stop_before_pixels=True).SOPInstanceUID)


def test_import_never_crashes_and_exits_1_because_some_were_rejected(
    imported: CorpusImport,
) -> None:
    for run in (imported.first, imported.second):
        assert run.returncode == 1, run.stderr[-2000:]
        assert "Traceback" not in run.stderr
        assert set(imported.summary(run)) >= {"stored", "duplicate", "rejected", "skipped"}


def test_every_file_gets_the_expected_outcome(imported: CorpusImport) -> None:
    outcomes = imported.outcomes(imported.first)
    assert set(outcomes) == _all_files(imported.corpus), "every file is reported exactly once"
    wrong = []
    for name, (outcome, reason) in sorted(outcomes.items()):
        if name.startswith("LICENSES/"):
            expected: tuple[str, str] = ("rejected", NOT_DICOM)
        elif name in REJECTED:
            expected = ("rejected", REJECTED[name])
        elif name in SKIPPED:
            expected = ("skipped", SKIPPED[name])
        else:
            expected = ("stored", "")
        if outcome != expected[0] or expected[1] not in reason:
            wrong.append(f"{name}: got {outcome} {reason!r}, expected {expected}")
    assert not wrong, "\n".join(wrong)
    assert not (set(REJECTED) | set(SKIPPED)) - set(outcomes), "table names a missing file"


def test_rejection_reasons_are_readable(imported: CorpusImport) -> None:
    for item in imported.summary(imported.first)["rejected"]:
        reason = item["reason"]
        assert re.match(r"^[a-z-]+: \S", reason), reason
        assert 15 < len(reason) <= 400 and reason.isprintable(), reason


def test_bad_and_fuzz_files_are_rejected_unless_allow_listed(imported: CorpusImport) -> None:
    outcomes = imported.outcomes(imported.first)
    malformed = {n for n in outcomes if n.startswith(("bad_", "fuzz_"))}
    for name in sorted(malformed - ALLOW_LISTED):
        assert outcomes[name][0] == "rejected", name
    # Allow-listed files: stored, or refused only because another file's patient owns the study.
    for name in sorted(ALLOW_LISTED):
        outcome, reason = outcomes[name]
        assert outcome == "stored" or STUDY_OF_OTHER_PATIENT in reason, (name, reason)


def test_every_identified_file_of_the_valid_categories_is_stored(imported: CorpusImport) -> None:
    """Cross-check the table with pydicom: four valid UIDs => stored, or a later conflict."""
    outcomes = imported.outcomes(imported.first)
    first_by_uid: dict[str, str] = {}
    for name in sorted(n for n in outcomes if n.startswith(STORED_CATEGORIES)):
        ds = pydicom.dcmread(imported.corpus / name, force=True, stop_before_pixels=True)
        uids = [str(ds.get(k, "") or "") for k in IDENTIFYING]
        if not all(is_valid_uid(u) for u in uids) or name in SKIPPED:
            continue
        first = first_by_uid.setdefault(uids[1], name)
        outcome, reason = outcomes[name]
        if first == name:
            assert outcome == "stored", (name, reason)
        else:
            assert outcome == "rejected" and reason.startswith("conflict:"), (name, first)


def test_files_without_identifying_uids_really_lack_them(imported: CorpusImport) -> None:
    for name, why in REJECTED.items():
        if why.startswith("missing-attribute") and not name.startswith("fuzz_"):
            ds = pydicom.dcmread(imported.corpus / name, force=True, stop_before_pixels=True)
            assert not all(is_valid_uid(str(ds.get(k, "") or "")) for k in IDENTIFYING), name


def test_stored_bytes_are_identical_to_the_originals(
    imported: CorpusImport, stored_archive: Archive
) -> None:
    stored = imported.summary(imported.first)["stored"]
    assert len(stored) > 100
    for path in map(Path, stored):
        digest = stored_archive.index.instance_digest(_sop_uid(path))
        assert digest is not None, path
        with stored_archive.store.open(digest[1]) as blob:
            assert blob.read() == path.read_bytes(), path


def test_native_frames_are_the_pixel_data_bytes(
    imported: CorpusImport, stored_archive: Archive
) -> None:
    for name in NATIVE_SAMPLE:
        path = imported.corpus / name
        ds = pydicom.dcmread(path)
        row = find_instance_by_uid(stored_archive.index, str(ds.SOPInstanceUID))
        assert row is not None, name
        frames = row.frames()
        assert frames is not None and len(frames) == 1 and len(frames[0]) == 1, name
        offset, length = frames[0][0]
        expected = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
        assert length == expected, name
        got = stored_archive.store.open_range(row.blob_key, offset, length)
        assert got == ds.PixelData[:length], name


def test_second_import_reports_every_stored_file_as_duplicate(imported: CorpusImport) -> None:
    first, second = imported.outcomes(imported.first), imported.outcomes(imported.second)
    assert set(second) == set(first)
    for name, (outcome, reason) in first.items():
        if outcome == "stored":
            assert second[name] == ("duplicate", ""), name
        else:  # refusals are as readable, and the same, the second time
            assert second[name] == (outcome, reason), name
    assert imported.summary(imported.second)["stored"] == []


@pytest.mark.parametrize("name", sorted(ALLOW_LISTED))
def test_allow_listed_file_is_stored_safely(name: str, corpus_dir: Path, archive: Archive) -> None:
    path = corpus_dir / name
    principal = Principal(PrincipalKind.IMPORTER, "solent-import", "ZZA")
    result = archive.ingestor.ingest_file(
        path, principal, Provenance(Channel.IMPORT, source_path=str(path))
    )
    assert result.outcome is Outcome.STORED, result
    assert result.sop_instance_uid is not None
    digest = archive.index.instance_digest(result.sop_instance_uid)
    assert digest is not None
    with archive.store.open(digest[1]) as blob:
        assert blob.read() == path.read_bytes()
    row = find_instance_by_uid(archive.index, result.sop_instance_uid)
    assert row is not None and row.size_bytes == path.stat().st_size
    # What serving needs was computed once and is usable.
    from solent.index.reads import iter_metadata

    (_, json_z), *_ = list(iter_metadata(archive.index, [row.pk]))
    doc = json.loads(zlib.decompress(json_z))
    assert doc["00080018"]["Value"] == [result.sop_instance_uid]
