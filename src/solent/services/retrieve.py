"""Reading stored instances for C-MOVE, C-GET (and later WADO): as stored, or transcoded.

The stored bytes go out unchanged whenever the destination accepts their transfer syntax;
only when it accepts uncompressed syntaxes alone is the instance decoded (pydicom + pylibjpeg)
and sent as Explicit VR Little Endian.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.uid import UID, ExplicitVRLittleEndian

from solent.dicom import header_splice as hs
from solent.domain.principal import Principal
from solent.domain.records import StoredInstanceRef
from solent.index.retrieval import locate_instances, stored_sop_classes
from solent.index.sql import Index
from solent.services.access import AccessService
from solent.services.audit import AuditTrail
from solent.services.outgoing_identity import CurrentIdentity
from solent.storage import BlobStore

log = logging.getLogger(__name__)

NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


class TranscodeError(Exception):
    """The instance cannot be turned into an uncompressed dataset (no decoder, corrupt)."""


@dataclass(frozen=True, slots=True)
class RetrieveKeys:
    """The unique keys of a C-MOVE / C-GET identifier, by level (PS3.4 C.4.2.2.1)."""

    level: str
    patient_id: str | None = None
    patient_issuer: str | None = None
    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    sop_instance_uids: tuple[str, ...] = ()


def split_part10(data: bytes) -> tuple[Dataset, int]:
    """(file meta, offset of the dataset) of a Part 10 file held in memory."""
    fp = io.BytesIO(data)
    read_preamble(fp, False)
    meta = read_dataset(
        fp, is_implicit_VR=False, is_little_endian=True, stop_when=lambda tag, *_: tag.group != 2
    )
    return meta, fp.tell()


class RetrieveService:
    def __init__(
        self, index: Index, store: BlobStore, access: AccessService, audit: AuditTrail
    ) -> None:
        self.index = index
        self.store = store
        self.access = access
        self.audit = audit

    def locate(
        self, principal: Principal, keys: RetrieveKeys, *, limit: int = 65535
    ) -> list[StoredInstanceRef]:
        """Stored instances the retrieve names (access control hangs here: one place)."""
        refs = locate_instances(
            self.index,
            patient_id=keys.patient_id,
            patient_issuer=keys.patient_issuer,
            study_uids=keys.study_uids,
            series_uids=keys.series_uids,
            sop_instance_uids=keys.sop_instance_uids,
            limit=limit,
        )
        # Security (issue 6): only studies of patients the caller has a relationship with.
        allowed = self.access.visible_study_uids(principal, {r.study_uid for r in refs})
        return [r for r in refs if r.study_uid in allowed]

    def committed(self, principal: Principal, sop_instance_uids: Sequence[str]) -> dict[str, str]:
        """SOP Instance UID -> SOP Class UID of the instances durably stored and indexed."""
        return stored_sop_classes(self.index, sop_instance_uids)

    def read_part10(self, principal: Principal, ref: StoredInstanceRef) -> bytes:
        """The stored file, byte for byte."""
        with self.store.open(ref.blob_key) as fp:
            return fp.read()

    def current_identity(self) -> CurrentIdentity:
        """The per-retrieve cache of the records' current patient attributes (issue 5)."""
        return CurrentIdentity(self.index)

    def encoded_dataset(
        self, principal: Principal, ref: StoredInstanceRef, identity: CurrentIdentity | None = None
    ) -> bytes:
        """The dataset without preamble and file meta: what goes on the wire. The stored bytes
        unless the record's patient identity changed since; then the re-encoded patient
        elements (old values in Original Attributes Sequence) spliced between the stored
        bytes, in the stored syntax (a full re-encode only for what the splice does not take:
        deflated, no file meta, malformed)."""
        data = self.read_part10(principal, ref)
        if identity is not None:
            try:
                spliced = identity.patch_part10(ref.study_uid, data, complete=True)
            except hs.Unsupported:
                return self._reencoded(data, ref, identity)
            if spliced is not None:
                head = memoryview(spliced.head)[spliced.dataset_start :]
                return b"".join((head, memoryview(data)[spliced.tail_offset :]))
        _, offset = split_part10(data)
        return data[offset:]

    @staticmethod
    def _reencoded(data: bytes, ref: StoredInstanceRef, identity: CurrentIdentity) -> bytes:
        header = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
        if not identity.patch_dataset(ref.study_uid, header):
            _, offset = split_part10(data)
            return data[offset:]
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        identity.patch_dataset(ref.study_uid, ds)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)  # the stored syntax, deflate included
        encoded = out.getvalue()
        _, start = split_part10(encoded)
        return encoded[start:]

    def uncompressed(
        self, principal: Principal, ref: StoredInstanceRef, identity: CurrentIdentity | None = None
    ) -> Dataset:
        """The instance as a dataset in Explicit VR Little Endian, pixel data decoded, with the
        record's current patient attributes when ``identity`` is given."""
        data = self.read_part10(principal, ref)
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            ts = UID(str(ds.file_meta.get("TransferSyntaxUID", ref.transfer_syntax_uid)))
            if ts.is_compressed:
                ds.decompress(generate_instance_uid=False)
            elif ts == "1.2.840.10008.1.2.2" and "PixelData" in ds:
                # Big endian: swap the pixel words by decoding and re-encoding them.
                arr = ds.pixel_array
                ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.set_original_encoding(False, True)
            if identity is not None:
                identity.patch_dataset(ref.study_uid, ds)
        except Exception as exc:
            raise TranscodeError(
                f"cannot decode {ref.sop_instance_uid} ({ref.transfer_syntax_uid}): {exc}"
            ) from exc
        return ds
