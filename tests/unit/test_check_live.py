"""`solent check --repair` while nodes keep ingesting (issue 16: a multi-node deployment is
never quiet). The check lists the store, then reads the index: an instance stored in between
has its row but was not in the listing. It is not missing, and a repair must not delete the
rows of an instance whose store acknowledged it (that loses acknowledged data: the blob then
becomes an orphan the next repair deletes too).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from solent.app import Archive
from solent.domain.outcomes import Outcome
from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
from solent.services.check import check_archive
from solent.storage import blob_key_for
from tests.contract.synthetic import write_instance

WHO = Principal(PrincipalKind.IMPORTER, "check-live-test", "ZZA")


def test_an_instance_stored_while_the_store_is_listed_is_neither_missing_nor_removed(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = write_instance(tmp_path / "before.dcm", patient_id="H1", seed=1)
    assert (
        archive.ingestor.ingest_file(before.path, WHO, Provenance(Channel.IMPORT)).outcome
        is Outcome.STORED
    )
    during = write_instance(tmp_path / "during.dcm", patient_id="H1", seed=2)
    listing = archive.store.iter_keys

    def listed_then_another_node_stores() -> Iterator[tuple[str, float]]:
        keys = list(listing())  # what the listing saw...
        result = archive.ingestor.ingest_file(during.path, WHO, Provenance(Channel.IMPORT))
        assert result.outcome is Outcome.STORED  # ...and a store acknowledged meanwhile
        yield from keys

    monkeypatch.setattr(archive.store, "iter_keys", listed_then_another_node_stores)
    report = check_archive(archive.index, archive.store, repair=True)
    assert report.missing_blobs == [], report.as_json()
    assert report.repaired["rows_without_blob_removed"] == 0
    assert archive.index.instance_digest(during.sop_instance_uid) is not None
    assert archive.store.exists(blob_key_for(during.sha256))


def test_a_blob_really_gone_is_still_reported_and_repaired(
    archive: Archive, tmp_path: Path
) -> None:
    gone = write_instance(tmp_path / "gone.dcm", patient_id="H1", seed=3)
    assert (
        archive.ingestor.ingest_file(gone.path, WHO, Provenance(Channel.IMPORT)).outcome
        is Outcome.STORED
    )
    archive.store.delete(blob_key_for(gone.sha256))
    report = check_archive(archive.index, archive.store, repair=True)
    assert [m["sop_instance_uid"] for m in report.missing_blobs] == [gone.sop_instance_uid]
    assert report.repaired["rows_without_blob_removed"] == 1
    assert archive.index.instance_digest(gone.sop_instance_uid) is None
