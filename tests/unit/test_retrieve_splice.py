"""C-GET/C-MOVE send a re-identified instance by splicing its patched header onto the stored
Pixel Data bytes; the result must equal a full decode and re-encode, in every native syntax."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pydicom
from bench.compare_data import write_variant
from pydicom.uid import UID

from solent.app import Archive
from solent.dicom import header_splice as hs
from solent.domain.principal import Principal, PrincipalKind
from solent.services.identity import Change, Demographics, IdentityService, PatientKey
from solent.services.outgoing_identity import CurrentIdentity
from solent.services.retrieve import RetrieveKeys, split_part10
from tests.unit.dimse_peer import registered_scu

SYNTAXES = {
    "1.2.840.10008.1.2": (True, True),  # implicit VR little endian
    "1.2.840.10008.1.2.2": (False, False),  # explicit VR big endian
}


def test_spliced_header_equals_full_reencode(archive: Archive, tmp_path: Path) -> None:
    uids = write_variant(903, tmp_path / "s", slices=1)
    original = next((tmp_path / "s").iterdir())
    for i, (ts, (little, implicit)) in enumerate(SYNTAXES.items()):
        ds = pydicom.dcmread(original)
        uid = UID(f"{ds.SOPInstanceUID}.{i}")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.file_meta.TransferSyntaxUID = UID(ts)
        if not little:
            ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
        pydicom.dcmwrite(
            tmp_path / "s" / f"x{i}.dcm",
            ds,
            implicit_vr=implicit,
            little_endian=little,
            force_encoding=True,
        )
    peer = registered_scu(archive)
    for f in sorted((tmp_path / "s").iterdir()):
        assert archive.ingestor.ingest_file(f, peer.principal, peer.provenance).ok
    # The PAS corrects the name after the images came in: outgoing headers must say so.
    ds = pydicom.dcmread(original, stop_before_pixels=True)
    IdentityService(archive.index).update_record(
        PatientKey("ZZA", str(ds.PatientID)),
        Demographics(name="CORRECTED^NAME", birth_date=str(ds.get("PatientBirthDate", ""))),
        Change(Principal(PrincipalKind.NODE, "hl7:PAS", "ZZA")),
    )
    service = archive.services.retrieve
    refs = service.locate(
        peer.principal,
        RetrieveKeys(level="SERIES", study_uids=(uids.study,), series_uids=(uids.series,)),
        channel="test",
        destination="T",
    )
    assert {r.transfer_syntax_uid for r in refs} == {"1.2.840.10008.1.2.1", *SYNTAXES}
    spliced = 0
    real_splice = hs.splice

    def counting(*args: Any) -> bytes:
        nonlocal spliced
        spliced += 1
        return real_splice(*args)

    def unsupported(*_: object, **__: object) -> None:
        raise hs.Unsupported("take the full re-encode")

    for ref in refs:
        with mock.patch.object(hs, "splice", counting):
            fast = service.encoded_dataset(
                peer.principal, ref, service.current_identity(peer.principal, None)
            )
        with mock.patch.object(CurrentIdentity, "patch_part10", unsupported):
            slow = service.encoded_dataset(
                peer.principal, ref, service.current_identity(peer.principal, None)
            )
        with archive.store.open(ref.blob_key) as fp:
            stored = fp.read()
        assert fast != stored[split_part10(stored)[1] :], "the identity should have been patched"
        assert fast == slow, ref.transfer_syntax_uid
    assert spliced == len(refs)
