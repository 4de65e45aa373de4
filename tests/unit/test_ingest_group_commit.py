"""Group commit: instances indexed together still get their own, exact outcomes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from solent.app import Archive
from solent.domain.outcomes import Outcome, RejectReason
from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance

IMPORTER = Principal(PrincipalKind.IMPORTER, "solent-import", "ZZA")


def _variant(src: Path, out: Path, **changes: object) -> Path:
    ds = pydicom.dcmread(src)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(out)
    return out


def test_one_batch_gives_each_instance_its_own_outcome(
    archive: Archive, corpus_dir: Path, tmp_path: Path
) -> None:
    src = corpus_dir / "mod_ct_small.dcm"
    study, series = generate_uid(), generate_uid()
    first = _variant(src, tmp_path / "a.dcm", StudyInstanceUID=study, SeriesInstanceUID=series)
    same = _variant(src, tmp_path / "same.dcm", StudyInstanceUID=study, SeriesInstanceUID=series)
    other = _variant(
        src, tmp_path / "c.dcm", StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=99
    )
    intruder = _variant(
        src,
        tmp_path / "w.dcm",
        StudyInstanceUID=study,
        SeriesInstanceUID=series,
        SOPInstanceUID=generate_uid(),
        PatientID="SOMEONE-ELSE",
    )
    second = _variant(
        src,
        tmp_path / "b.dcm",
        StudyInstanceUID=study,
        SeriesInstanceUID=series,
        SOPInstanceUID=generate_uid(),
    )
    files = [first, same, other, intruder, second]
    results = archive.ingestor.ingest_files(
        [(f, Provenance(Channel.IMPORT, source_path=str(f))) for f in files], IMPORTER
    )
    assert [r.outcome for r in results] == [
        Outcome.STORED,
        Outcome.DUPLICATE,
        Outcome.REJECTED,
        Outcome.REJECTED,
        Outcome.STORED,
    ]
    assert results[2].reason is RejectReason.CONFLICT
    assert results[3].reason is RejectReason.PATIENT_MISMATCH
    # The refused instances left nothing behind: no second patient, two instances, one study.
    stats = archive.index.stats()
    assert (stats["patients"], stats["studies"], stats["instances"]) == (1, 1, 2)
    assert archive.audit.verify().intact
    kept = {key for key, _ in archive.store.iter_keys()}
    assert len(kept) == 2  # the conflicting file's blob was removed


def test_concurrent_stores_are_all_indexed(
    archive: Archive, corpus_dir: Path, tmp_path: Path
) -> None:
    src = corpus_dir / "mod_ct_small.dcm"
    study, series = generate_uid(), generate_uid()
    files = [
        _variant(
            src,
            tmp_path / f"{i}.dcm",
            StudyInstanceUID=study,
            SeriesInstanceUID=series,
            SOPInstanceUID=generate_uid(),
        )
        for i in range(16)
    ]
    node = Principal(PrincipalKind.NODE, "MODALITY", "ZZA")
    provenance = Provenance(Channel.DIMSE, calling_ae="MODALITY")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda f: archive.ingestor.ingest_file(f, node, provenance), files))
    assert all(r.outcome is Outcome.STORED for r in results), results
    stats = archive.index.stats()
    assert (stats["studies"], stats["series"], stats["instances"]) == (1, 1, 16)
    assert archive.audit.verify().intact


def test_an_instance_whose_commit_failed_is_not_indexed_by_the_next_one(
    archive: Archive, corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group-commit queue is taken once the write gate is held; a caller that fails
    before that (its C-STORE answers a failure) must not leave its instance queued for the
    next caller's transaction."""
    src = corpus_dir / "mod_ct_small.dcm"
    study, series = generate_uid(), generate_uid()
    failed, later = (
        _variant(
            src,
            tmp_path / f"{name}.dcm",
            StudyInstanceUID=study,
            SeriesInstanceUID=series,
            SOPInstanceUID=generate_uid(),
        )
        for name in ("failed", "later")
    )
    node = Principal(PrincipalKind.NODE, "MODALITY", "ZZA")
    provenance = Provenance(Channel.DIMSE, calling_ae="MODALITY")

    @contextlib.contextmanager
    def broken_gate() -> Iterator[None]:
        raise OSError("lock file gone")
        yield

    with monkeypatch.context() as m:
        m.setattr(archive.ingestor, "_write_gate", broken_gate)
        with pytest.raises(OSError):
            archive.ingestor.ingest_file(failed, node, provenance)
    assert archive.ingestor.ingest_file(later, node, provenance).outcome is Outcome.STORED
    assert archive.index.stats()["instances"] == 1
