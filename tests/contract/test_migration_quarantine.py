"""Migration's kept copies live in the blob store on every backend (files and S3 alike):
a UID collision's second copy is written there, readable, and `solent check --repair`
counts it as referenced instead of deleting it as an orphan."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.migration_data import Patient, Study, instance_bytes

from solent.app import Archive, build_archive
from solent.domain.principal import Principal, PrincipalKind
from solent.importers.migration.sources import FolderSource
from solent.importers.migration.transfer import run_transfer
from solent.services.check import check_archive
from solent.services.migration import Source
from solent.settings import Settings

IMPORTER = Principal(PrincipalKind.IMPORTER, "solent-migrate", "ZZA")


@pytest.fixture(params=["filesystem", "s3"])
def any_archive(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Archive]:
    chosen = settings if request.param == "filesystem" else request.getfixturevalue("s3_settings")
    archive = build_archive(chosen)
    archive.index.add_trust("ZZA", "Trust A")
    yield archive
    archive.close()


def test_a_collision_is_kept_in_the_blob_store(any_archive: Archive, tmp_path: Path) -> None:
    archive, migration = any_archive, any_archive.services.migration
    study = Study(Patient("P1", "KEPT^COPY", "19700101", "F"), "20200101")
    [sop] = study.add_series(1)
    series = study.series_uids[0]
    for name, seed in (("a", 0), ("b", 1)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "x.dcm").write_bytes(instance_bytes(study, series, sop, seed=seed))
        src = Source(name=name, kind="folder", address=str(folder), trust="ZZA")
        migration.add_source(IMPORTER, src)
        migration.record_inventory(IMPORTER, name, FolderSource(folder).inventory())
        migration.reconcile(IMPORTER, name)
        run_transfer(migration, IMPORTER, src, FolderSource(folder), tmp_path / "work")
    [kept] = migration.verification(IMPORTER, "b")["quarantine"]
    with archive.store.open(kept["path"]) as fp:
        assert fp.read() == instance_bytes(study, series, sop, seed=1)
    report = check_archive(archive.index, archive.store, repair=True)
    assert report.clean and report.blobs == 2  # the archive's copy and the kept one
    assert archive.store.exists(kept["path"])
    assert not (archive.settings.data_dir / "migration-quarantine").exists()
