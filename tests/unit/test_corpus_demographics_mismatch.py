"""Images that contradict the record they are filed under reach a person.

mod_dx_highdicom.dcm (Dog^AVeryGood, F, born 2014-04-22) and
mf_legacy_converted_enhanced_ct.dcm (Anonymous, M, born 2006-01-01) both say Patient ID
123456. Sent by one trust, the second is filed under the first's record and every retrieve
sends it with that record's name, sex and birth date: it may be another patient's images under
a reused or mistyped ID, and nobody was told.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import select

from solent.app import Archive
from solent.index import schema as t
from tests.unit.dimse_peer import registered_scu


def test_a_contradicting_birth_date_and_sex_raise_a_work_item(
    archive: Archive, corpus_dir: Path, tmp_path: Path
) -> None:
    peer = registered_scu(archive)

    def store(name: str) -> None:
        path = tmp_path / name
        shutil.copy(corpus_dir / name, path)
        assert archive.ingestor.ingest_file(path, peer.principal, peer.provenance).ok

    def items() -> list[dict[str, object]]:
        with archive.index.read() as conn:
            q = select(t.data_quality).where(t.data_quality.c.kind == "image-demographics-mismatch")
            return [dict(r) for r in conn.execute(q).mappings()]

    store("mod_dx_highdicom.dcm")
    store("series_mr_dcm4che_05.dcm")  # another patient: nothing to say
    assert items() == []
    store("mf_legacy_converted_enhanced_ct.dcm")
    (item,) = items()
    assert (item["issuer"], item["local_id"], item["status"]) == ("ZZA", "123456", "open")
    assert "birth date 20060101 (record: 20140422)" in str(item["detail"])
    assert "sex M (record: F)" in str(item["detail"])
