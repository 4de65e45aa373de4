"""The comparison harness's own logic: data it generates, how it accounts and reports.

The benchmark itself is not run here (no timings are asserted); these check that what it sends
is what it claims, and that its table says what the numbers say.
"""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from bench import compare, compare_data, cpuwatch, limits, population, pyspy


def _row() -> population.StudyRow:
    return population.StudyRow(
        study_uid="2.25.91.17",
        study_date="20240215",
        study_time="101500",
        accession="ZZB240000017",
        description="CT synthetic study",
        modality="CT",
        issuer="ZZB",
        local_id="ZZB00000009",
        name="SMITH^AVA",
        birth_date="19700101",
        sex="F",
        nhs_number="9990000018",
    )


def test_orthanc_copy_of_a_study_row_carries_the_same_identity() -> None:
    ds = pydicom.dcmread(io.BytesIO(population.instance_bytes(_row())))
    assert ds.StudyInstanceUID == "2.25.91.17"
    assert ds.SeriesInstanceUID == "2.25.91.17.1"
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == "2.25.91.17.1.1"
    assert (ds.PatientID, ds.IssuerOfPatientID) == ("ZZB00000009", "ZZB")
    assert ds.OtherPatientIDsSequence[0].PatientID == "9990000018"
    assert ds.OtherPatientIDsSequence[0].IssuerOfPatientID == "NHS"
    assert (ds.StudyDate, ds.Modality, ds.AccessionNumber) == ("20240215", "CT", "ZZB240000017")
    assert str(ds.PatientName) == "SMITH^AVA" and ds.PatientSex == "F"
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert len(ds.PixelData) == ds.Rows * ds.Columns * 2


def test_series_variant_changes_the_uids_and_keeps_every_pixel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOLENT_BENCH_CACHE", str(tmp_path / "cache"))
    base = compare_data.base_series(slices=3, size=32)
    uids = compare_data.write_variant(7, tmp_path / "v7", slices=3, size=32)
    for i in range(3):
        a = pydicom.dcmread(base / f"{i:04d}.dcm")
        b = pydicom.dcmread(tmp_path / "v7" / f"{i:04d}.dcm")
        assert b.StudyInstanceUID == uids.study != a.StudyInstanceUID
        assert b.SeriesInstanceUID == uids.series != a.SeriesInstanceUID
        assert b.SOPInstanceUID == uids.sops[i] == b.file_meta.MediaStorageSOPInstanceUID
        assert b.FrameOfReferenceUID != a.FrameOfReferenceUID
        assert b.PixelData == a.PixelData
        assert b.PatientID == a.PatientID == compare_data.CT_PATIENT_ID
    assert len(set(uids.sops)) == 3


def test_cpu_watch_counts_this_process_as_ours() -> None:
    watch = cpuwatch.CpuWatch()
    before = watch.sample()
    x = 0
    for i in range(3_000_000):
        x += i * i
    use = cpuwatch.CpuWatch.delta(before, watch.sample())
    assert use.ours_pct > 0
    assert 0 <= use.others_pct <= 100 and use.machine_busy_pct >= use.others_pct


def test_profile_summary_ranks_functions_by_samples(tmp_path: Path) -> None:
    raw = tmp_path / "p.txt"
    raw.write_text(
        "main (solent/cli.py:10);ingest (solent/ingest/pipeline.py:5);fsync (os.py:1) 30\n"
        "main (solent/cli.py:10);parse (solent/dicom/parse.py:7) 10\n",
        encoding="utf-8",
    )
    text = pyspy.summarise(raw)
    assert "40 samples" in text
    self_part, inclusive = text.split("including callees:")
    assert self_part.index("75.0%  fsync (os.py)") < self_part.index("25.0%  parse")
    assert "100.0%  main (solent/cli.py)" in inclusive


def test_limits_measure_the_bytes_they_are_given(tmp_path: Path) -> None:
    mb_s, files_s = limits.disk_per_file(tmp_path, files=4, size=8192)
    assert mb_s > 0 and files_s > 0
    assert limits.disk_sequential(tmp_path, 1 << 20) > 0
    assert limits.tcp_loopback(1 << 20) > 0
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def _comparison_row(key: str, solent: list[float], orthanc: list[float]) -> compare.Row:
    spec = next(s for s in compare.SPECS if s.key == key)
    row = compare.Row(spec, key, spec.label)
    row.solent.samples, row.orthanc.samples = solent, orthanc
    return row


def test_ratio_target_and_slower_follow_the_direction_of_each_figure() -> None:
    ingest = _comparison_row("cstore_1", [300, 310, 290], [100, 90, 110])
    assert ingest.ratio == pytest.approx(3.0)
    assert ingest.meets_target() is True and not ingest.solent_slower()
    metadata = _comparison_row("metadata", [30, 40, 35], [20, 20, 20])
    assert metadata.ratio == pytest.approx(1.75)
    assert metadata.meets_target() is False and metadata.solent_slower()
    frames = _comparison_row("frames", [500], [400])
    assert frames.meets_target() is None and not frames.solent_slower()


def test_unavailable_endpoint_shows_as_na_with_the_reason(tmp_path: Path) -> None:
    cfg = compare.parse_args(["--quick"])
    comparison = compare.Comparison(cfg, compare.Console(width=200))
    try:
        row = comparison.row(compare.SPECS[2])
        row.orthanc.samples = [50.0]
        row.solent.note = "n/a (not implemented: STOW-RS POST /studies)"
        cells = comparison.cells(row, rich=False)
        assert cells[2] == "n/a" and cells[4] == "—"
        assert "Solent: n/a (not implemented: STOW-RS POST /studies)" in comparison.notes()[0]
        assert "| n/a |" in comparison.markdown()
    finally:
        comparison.work.rmdir()
        comparison.ram.rmdir()


def test_every_query_row_appears_at_10k_and_100k_in_table_and_json() -> None:
    cfg = compare.parse_args([])
    assert cfg.sizes == [10_000, 100_000] and not cfg.quick
    comparison = compare.Comparison(cfg, compare.Console(width=250))
    try:
        for n in reversed(cfg.sizes):
            for key in ("cfind_pid_{n}", "cfind_range_{n}", "qido_pid_{n}", "qido_range_{n}"):
                spec = next(s for s in compare.SPECS if s.key == key)
                row = comparison.row(spec, n)
                row.solent.samples, row.orthanc.samples = [10.0], [20.0]
        keys = [r["key"] for r in comparison.as_json()["rows"]]
        assert keys == [
            "cfind_pid_10k",
            "cfind_pid_100k",
            "cfind_range_10k",
            "cfind_range_100k",
            "qido_pid_10k",
            "qido_pid_100k",
            "qido_range_10k",
            "qido_range_100k",
        ]
        markdown = comparison.markdown()
        for label in ("C-FIND study, PatientID+issuer @100k", "QIDO-RS /studies, date range"):
            assert label in markdown
        assert markdown.count("@10k") == 4 and markdown.count("@100k") == 4
    finally:
        comparison.work.rmdir()
        comparison.ram.rmdir()


def test_fill_progress_reports_every_batch_without_a_terminal() -> None:
    out = io.StringIO()
    comparison = compare.Comparison(compare.parse_args(["--quick"]), compare.Console(file=out))
    try:
        advance = comparison.fill_progress("Orthanc fill to 10k", 1000)
        for _ in range(10):
            advance(100)
        lines = [x for x in out.getvalue().splitlines() if "Orthanc fill" in x]
        assert len(lines) == 10 and "1,000/1,000" in lines[-1]
    finally:
        comparison.work.rmdir()
        comparison.ram.rmdir()
