"""Several legacy sources with one instance (R54, scenario 2.9): the best copy is served,
every other copy is kept in the blob store, and the verify report says which and why.

Copies are planted as folder sources of one trust (two legacy systems of the same hospital),
so identity is not in question and only the copies differ.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from bench.migration_data import Patient, Study, instance_bytes
from pydicom.uid import RLELossless

from solent.app import Archive
from solent.domain import nhs_number as nhs
from solent.domain.principal import Principal, PrincipalKind
from solent.importers.migration.report import write_html
from solent.importers.migration.sources import FolderSource
from solent.importers.migration.transfer import run_transfer
from solent.services.check import check_archive
from solent.services.migration import Item, Source
from solent.services.migration.quarantine import HEADER_DIFFERS, quarantine_key

IMPORTER = Principal(PrincipalKind.IMPORTER, "solent-migrate", "ZZA")
N1 = nhs.complete("943476591") or ""


def lossy_copy(data: bytes) -> bytes:
    """What a legacy system that compressed lossily holds: pixels a little off, marked lossy."""
    ds = pydicom.dcmread(io.BytesIO(data))
    pixels = ds.pixel_array.astype(np.int32)
    noise = np.random.default_rng(7).integers(-3, 4, pixels.shape)
    ds.PixelData = np.clip(pixels + noise, 0, 4095).astype(np.uint16).tobytes()
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = 8
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def plant(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for sop, data in files.items():
        (folder / f"{sop}.dcm").write_bytes(data)


def migrate(archive: Archive, folder: Path, name: str) -> dict[str, int]:
    src = Source(name=name, kind="folder", address=str(folder), trust="ZZA", nhs_traced=True)
    migration = archive.services.migration
    migration.add_source(IMPORTER, src)
    migration.record_inventory(IMPORTER, name, FolderSource(folder).inventory())
    migration.reconcile(IMPORTER, name)
    stats = run_transfer(migration, IMPORTER, src, FolderSource(folder), folder.parent / "work")
    return dict(stats.states)


def archived_bytes(archive: Archive, sop: str) -> bytes:
    found = archive.index.instance_digest(sop)
    assert found is not None
    with archive.store.open(found[1]) as fp:
        return fp.read()


@pytest.mark.parametrize("lossy_first", [True, False])
def test_the_lossless_copy_is_served_whichever_source_moves_first(
    archive: Archive, tmp_path: Path, lossy_first: bool
) -> None:
    study = Study(Patient("P1", "BEST^COPY", "19700101", "F", N1), "20200101")
    sops = study.add_series(2)
    series = study.series_uids[0]
    original = {sop: instance_bytes(study, series, sop) for sop in sops}
    lossy = {**original, sops[0]: lossy_copy(original[sops[0]])}
    plant(tmp_path / "lossy", lossy)
    plant(tmp_path / "orig", original)
    order = ["lossy", "orig"] if lossy_first else ["orig", "lossy"]
    first, second = (migrate(archive, tmp_path / name, name) for name in order)
    assert first == {"stored": 2}
    assert second == ({"stored": 1, "duplicate": 1} if lossy_first else {"duplicate": 2})

    assert archived_bytes(archive, sops[0]) == original[sops[0]]  # the lossless one, served
    migration = archive.services.migration
    rep_lossy = migration.verification(IMPORTER, "lossy")
    rep_orig = migration.verification(IMPORTER, "orig")
    assert rep_lossy["counts"] == {"superseded": 1, "verified": 1} and rep_lossy["unresolved"] == 0
    assert rep_orig["counts"] == {"verified": 2} and rep_orig["unresolved"] == 0
    for rep in (rep_lossy, rep_orig):
        [chosen] = rep["best_copies"]
        assert chosen["sop_uid"] == sops[0]
        assert "lossless" in chosen["reason"] and "lossy" in chosen["reason"]
    # The lossy copy is not dropped: it is kept in the blob store, and `solent check` knows it.
    [kept] = rep_lossy["quarantine"]
    assert kept["status"] == "superseded" and archive.store.exists(kept["path"])
    with archive.store.open(kept["path"]) as fp:
        assert fp.read() == lossy[sops[0]]
    report = check_archive(archive.index, archive.store, repair=True)
    assert report.clean and archive.store.exists(kept["path"])
    write_html(rep_lossy, tmp_path / "lossy.html")
    page = (tmp_path / "lossy.html").read_text()
    assert "Nothing unresolved." in page and "Best copy" in page
    assert "best copy kept" in page or "superseded by" in page


def test_of_two_lossless_copies_the_fuller_series_wins(archive: Archive, tmp_path: Path) -> None:
    """Same pixels, other encoding (RLE at one source): the source holding more of the series
    is served; an equal ranking never displaces the copy already in the archive."""
    study = Study(Patient("P1", "FULL^SERIES", "19700101", "F", N1), "20200101")
    sops = study.add_series(3)
    series = study.series_uids[0]
    full = {sop: instance_bytes(study, series, sop) for sop in sops}
    ds = pydicom.dcmread(io.BytesIO(full[sops[0]]))
    ds.compress(RLELossless, generate_instance_uid=False)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    plant(tmp_path / "partial", {sops[0]: out.getvalue()})
    plant(tmp_path / "full", full)
    assert migrate(archive, tmp_path / "partial", "partial") == {"stored": 1}
    assert migrate(archive, tmp_path / "full", "full") == {"stored": 3}
    assert archived_bytes(archive, sops[0]) == full[sops[0]]
    [chosen] = archive.services.migration.verification(IMPORTER, "partial")["best_copies"]
    assert chosen["verdict"] == "superseded"
    assert "3 instances of its series at full" in chosen["reason"]


def test_the_original_wins_over_a_derived_copy_of_equal_compression(
    archive: Archive, tmp_path: Path
) -> None:
    study = Study(Patient("P1", "DERIVED^COPY", "19700101", "F", N1), "20200101")
    [sop] = study.add_series(1)
    original = instance_bytes(study, study.series_uids[0], sop)
    ds = pydicom.dcmread(io.BytesIO(original))
    ds.ImageType = ["DERIVED", "SECONDARY"]
    pixels = ds.pixel_array.copy()
    pixels[0, 0] ^= 1  # re-rendered: one pixel off
    ds.PixelData = pixels.tobytes()
    ds.LossyImageCompression = "01"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    plant(tmp_path / "derived", {sop: out.getvalue()})
    plant(tmp_path / "orig", {sop: lossy_copy(original)})  # lossy too, but original
    assert migrate(archive, tmp_path / "derived", "derived") == {"stored": 1}
    assert migrate(archive, tmp_path / "orig", "orig") == {"stored": 1}
    rep = archive.services.migration.verification(IMPORTER, "derived")
    assert rep["counts"] == {"superseded": 1}
    assert "original" in rep["best_copies"][0]["reason"]


def test_other_pixels_under_one_uid_are_a_collision_kept_in_the_store(
    archive: Archive, tmp_path: Path
) -> None:
    study = Study(Patient("P1", "COLL^ISION", "19700101", "F", N1), "20200101")
    [sop] = study.add_series(1)
    series = study.series_uids[0]
    plant(tmp_path / "a", {sop: instance_bytes(study, series, sop)})
    other = instance_bytes(study, series, sop, seed=1)
    plant(tmp_path / "b", {sop: other})
    migrate(archive, tmp_path / "a", "a")
    assert migrate(archive, tmp_path / "b", "b") == {"quarantined": 1}
    rep = archive.services.migration.verification(IMPORTER, "b")
    assert rep["counts"] == {"quarantined": 1} and rep["unresolved"] == 1
    assert rep["best_copies"] == []
    [kept] = rep["quarantine"]
    assert kept["path"] == quarantine_key(hashlib.sha256(other).hexdigest())
    with archive.store.open(kept["path"]) as fp:
        assert fp.read() == other
    assert not (archive.settings.data_dir / "migration-quarantine").exists()
    assert archived_bytes(archive, sop) == instance_bytes(study, series, sop)  # first kept
    assert check_archive(archive.index, archive.store, repair=True).clean
    assert archive.store.exists(kept["path"])


def test_same_pixels_with_another_birth_date_is_not_a_duplicate(
    archive: Archive, tmp_path: Path
) -> None:
    """Scenario 2.9's variant: the header was corrected (or is another patient's); both copies
    are kept, the identity queue names them, the report says so. A relabelled ID alone is a
    duplicate (the IEP case, tests/interop/test_migration_orthanc.py)."""
    study = Study(Patient("P1", "HEAD^ER", "19700101", "F"), "20200101")
    [sop] = study.add_series(1)
    series = study.series_uids[0]
    plant(tmp_path / "a", {sop: instance_bytes(study, series, sop)})
    corrected = Study(
        Patient("P1", "HEAD^ER", "19700111", "F"), "20200101", uid=study.uid,
        series=study.series, series_uids=study.series_uids,
    )  # fmt: skip
    plant(tmp_path / "b", {sop: instance_bytes(corrected, series, sop)})
    migrate(archive, tmp_path / "a", "a")
    assert migrate(archive, tmp_path / "b", "b") == {"quarantined": 1}
    migration = archive.services.migration
    rep = migration.verification(IMPORTER, "b")
    [row] = rep["items"]
    assert row["verdict"] == "quarantined"
    assert "birth_date 19700111 (archive: 19700101)" in row["reason"]
    [kept] = rep["quarantine"]
    assert archive.store.exists(kept["path"])
    queue = [q for q in archive.identity.work_queue() if q["kind"] == HEADER_DIFFERS]
    assert len(queue) == 1 and sop in queue[0]["detail"]
    # Accepting the same copy again (a resumed run) adds neither a row nor a queue item.
    src_b = migration.source(IMPORTER, "b")
    item = Item(sop, study.uid, series, None, "P1", None, None)
    assert migration.accept(IMPORTER, src_b, item, tmp_path / "b" / f"{sop}.dcm") == "quarantined"
    assert len(migration.verification(IMPORTER, "b")["quarantine"]) == 1
    assert len([q for q in archive.identity.work_queue() if q["kind"] == HEADER_DIFFERS]) == 1


def test_same_pixels_under_a_corrected_name_is_a_duplicate_that_says_so(
    archive: Archive, tmp_path: Path
) -> None:
    study = Study(Patient("P1", "SMITH^JO", "19700101", "F"), "20200101")
    [sop] = study.add_series(1)
    series = study.series_uids[0]
    plant(tmp_path / "a", {sop: instance_bytes(study, series, sop)})
    renamed = Study(
        Patient("P1", "SMYTHE^JO", "19700101", "F"), "20200101", uid=study.uid,
        series=study.series, series_uids=study.series_uids,
    )  # fmt: skip
    plant(tmp_path / "b", {sop: instance_bytes(renamed, series, sop)})
    migrate(archive, tmp_path / "a", "a")
    assert migrate(archive, tmp_path / "b", "b") == {"duplicate": 1}
    [row] = archive.services.migration.verification(IMPORTER, "b")["items"]
    assert row["verdict"] == "verified"
    assert "name SMYTHE^JO (archive: SMITH^JO)" in row["reason"]
