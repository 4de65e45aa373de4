"""Part 10 files go out with a file meta that names their own dataset.

Several real files were edited by tools that gave the dataset new UIDs and left the file meta
alone (mod_rtplan.dcm: meta 1.2.999..., dataset 1.2.777...), or wrote no Media Storage SOP
Class UID (meta_missing_media_sop_class.dcm). The archive stores them as received and served
that contradiction on: a reader that files by the meta (DCMTK's storescp, dcmqrscp, media
importers) took them for another instance, or refused them.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pydicom
import pytest

from solent.app import Archive
from solent.services.retrieve_bytes import split_part10
from tests.unit.dimse_peer import registered_scu

FILES = (
    "mod_rtplan.dcm",  # Media Storage SOP Instance UID is another instance's
    "vr_siemens_csa_private.dcm",  # ... differs by a ".0"
    "meta_missing_media_sop_class.dcm",  # no (0002,0002)
    "mod_nm_multiframe_13x_heart.dcm",  # neither (0002,0002) nor (0002,0003)
    "ts_explicit_vr_le_mr_siemens_trio.dcm",  # agrees: goes out as stored
)


@pytest.mark.parametrize("name", FILES)
def test_the_file_meta_sent_names_the_dataset_sent(
    archive: Archive, corpus_dir: Path, tmp_path: Path, name: str
) -> None:
    peer = registered_scu(archive)
    who = peer.principal
    path = tmp_path / name
    shutil.copy(corpus_dir / name, path)
    assert archive.ingestor.ingest_file(path, who, peer.provenance).ok
    original = pydicom.dcmread(path)
    svc = archive.services.retrieve
    (inst,) = [
        i
        for i in svc.instances(who, str(original.StudyInstanceUID), channel="test")
        if i.sop_instance_uid == original.SOPInstanceUID
    ]
    identity = svc.current_identity(who, who.trust)
    for _ in range(2):  # computed, then from the cache
        data = b"".join(svc.patched_bytes(who, inst, identity))
        sent = pydicom.dcmread(io.BytesIO(data))
        assert sent.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
        assert sent.file_meta.MediaStorageSOPClassUID == original.SOPClassUID
        assert sent.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert sent.SOPInstanceUID == original.SOPInstanceUID
        assert sent.get("PixelData") == original.get("PixelData")
    # what C-GET / C-MOVE send: the data set alone, not a second file meta
    out = svc.open_encoded(who, inst, identity)
    try:
        wire = out.prefix + (out.rest.read(out.remaining) if out.rest is not None else b"")
    finally:
        out.close()
    assert wire == data[split_part10(data)[1] :]
