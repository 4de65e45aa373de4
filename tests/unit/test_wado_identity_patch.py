"""WADO-RS instances carry the record's current identity, patched cheaply and the same each time.

A real archive (SQLite + files): instances are ingested, the patient record is renamed, and
``RetrieveService.patched_bytes`` must give what a full pydicom re-encode gives (spliced or,
for deflated files, re-encoded), byte-identical on the next request (cached header) and the
stored bytes for an instance whose header already says what the record says.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import update

from solent.app import Archive
from solent.errors import NotFound
from solent.index import schema as t
from solent.index.sql import now
from solent.protocols.dimse.access import identify_peer
from solent.services.retrieve import RetrieveService
from tests.unit.dimse_peer import registered_scu
from tests.unit.test_header_splice import assert_same, corpus

FILES = [
    "ts_explicit_vr_le_mr_siemens_trio.dcm",
    "ts_implicit_vr_le_mr_small.dcm",
    "ts_jpeg_baseline_rgb_dcmtk.dcm",
    "ts_deflated_sc_image.dcm",
]


def test_patched_bytes_follow_the_record_and_repeat(archive: Archive, tmp_path: Path) -> None:
    peer = registered_scu(archive)
    studies = set()
    for name in FILES:
        path = tmp_path / name
        shutil.copy(corpus(name), path)
        assert archive.ingestor.ingest_file(path, peer.principal, peer.provenance).ok
        studies.add(str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID))
    svc = RetrieveService(
        archive.index, archive.store, archive.access, archive.audit, cache_bytes=64 << 20
    )
    who = peer.principal
    instances = [i for s in sorted(studies) for i in svc.instances(who, s, channel="test")]
    assert len(instances) == len(FILES)

    # Nothing changed yet: the stored bytes, and known unchanged from then on.
    identity = svc.current_identity(who, who.trust)
    for inst in instances:
        stored = b"".join(svc.stored_bytes(who, inst))
        assert b"".join(svc.patched_bytes(who, inst, identity)) == stored
    assert svc.identity_changed(instances, svc.current_identity(who, who.trust)) == set()

    archive.index.write(
        lambda c: c.execute(update(t.patient).values(name="RENAMED^PAT", updated_at=now()))
    )
    first: dict[int, bytes] = {}
    identity = svc.current_identity(who, who.trust)
    assert svc.identity_changed(instances, identity) == {i.pk for i in instances}
    for inst in instances:
        out = b"".join(svc.patched_bytes(who, inst, identity))
        got = pydicom.dcmread(io.BytesIO(out))
        assert str(got.PatientName) == "RENAMED^PAT", inst.transfer_syntax_uid
        expected = pydicom.dcmread(io.BytesIO(b"".join(svc.stored_bytes(who, inst))))
        assert identity.patch_dataset(inst.study_uid, expected)
        assert_same(expected, got)
        first[inst.pk] = out

    again = svc.current_identity(who, who.trust)
    assert svc.identity_changed(instances, again) == {i.pk for i in instances}
    for inst in instances:
        assert b"".join(svc.patched_bytes(who, inst, again)) == first[inst.pk]
        if inst.transfer_syntax_uid != "1.2.840.10008.1.2.1.99":
            assert svc.cached_header(inst, again) is not None


def test_the_identity_handle_answers_only_for_studies_the_caller_may_see(
    archive: Archive, tmp_path: Path
) -> None:
    """Issue 11: the per-retrieve identity cache takes the caller, so an adapter holding one
    cannot read the patient of a study the caller may not see (not found, like no study)."""
    archive.index.add_node("SCU", "127.0.0.1", 104, "ZZA", ["store", "retrieve"])
    archive.index.add_node("OUT", "127.0.0.2", 104, "ZZB", ["store", "retrieve"])

    def peer(ae: str, address: str) -> Any:
        found = identify_peer(
            archive.services.directory,
            calling_ae=ae,
            called_ae=archive.settings.ae_title,
            address=address,
            allow_unknown=False,
            unknown_trust="",
        )
        assert found is not None
        return found

    owner, outsider = peer("SCU", "127.0.0.1"), peer("OUT", "127.0.0.2")
    path = tmp_path / FILES[0]
    shutil.copy(corpus(FILES[0]), path)
    assert archive.ingestor.ingest_file(path, owner.principal, owner.provenance).ok
    study = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    svc = archive.services.retrieve

    mine = svc.current_identity(owner.principal, "ZZA")
    assert mine.attributes(study) is not None
    theirs = svc.current_identity(outsider.principal, "ZZB")
    for read in (theirs.attributes, theirs.modified_at, theirs.fingerprint):
        with pytest.raises(NotFound):
            read(study)
