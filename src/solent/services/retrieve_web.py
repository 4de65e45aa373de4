"""Read side of DICOMweb: instances as stored or transcoded, metadata, frames, bulk data, renders.

Metadata comes from the DICOM JSON ingest precomputed (decompress and join, never a re-parse);
frames come from their byte ranges in the stored file. Only transcoding, rendering and
non-pixel bulk data open and decode a file. Every call names the acting principal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from solent.dicom import header_splice as hs
from solent.dicom import render as rendering
from solent.dicom import transcode as tc
from solent.domain.principal import Principal
from solent.domain.records import StoredInstance
from solent.errors import InvalidInput, NotFound
from solent.index import reads
from solent.index.sql import Index
from solent.services.outgoing_identity import CurrentIdentity
from solent.services.retrieve_cache import AccessCache, ByteCache
from solent.storage import BlobStore

CHUNK = 4 << 20  # big reads: each chunk costs a thread hop and an ASGI message
WHOLE_FILE = 8 << 20  # instances up to this size are read in one piece
HEAD_READ = 64 << 10  # the first read for a header patch: most headers end well before
BULK_PREFIX = b'"BulkDataURI":"bulkdata/'
DEFLATED = "1.2.840.10008.1.2.1.99"
PIXEL_DATA_TAGS = (b"\xe0\x7f\x10\x00", b"\xe0\x7f\x08\x00", b"\xe0\x7f\x09\x00")


@dataclasses.dataclass(frozen=True, slots=True)
class PatchedHeader:
    """An instance with the current identity: ``head`` replaces the stored bytes before
    ``tail_offset`` (the pixel data element onwards is sent as stored)."""

    head: bytes
    tail_offset: int


_UNCHANGED = b"="  # a document cache entry meaning "the stored JSON as it is"


class WebRetrieveService:
    """``access`` and ``audit`` are the archive's AccessService and AuditTrail when present:
    every request checks the study is visible to the caller; downloads and metadata (what a
    viewer opens a series with) leave an audit record, frames and renders do not (one per
    frame would cost a write per image)."""

    def __init__(
        self,
        index: Index,
        store: BlobStore,
        access: Any = None,
        audit: Any = None,
        *,
        access_ttl: float = 0.0,
        cache_bytes: int = 0,
    ) -> None:
        self.index = index
        self.store = store
        self.access = access
        self.audit = audit
        self.access_cache = AccessCache(access_ttl)
        # Keyed by content hash + identity fingerprint (+ variant): never stale, only evicted.
        self.responses: ByteCache[bytes] = ByteCache(cache_bytes // 2, len)
        self.documents: ByteCache[bytes] = ByteCache(cache_bytes // 4, len)
        self.headers: ByteCache[PatchedHeader | bytes] = ByteCache(
            cache_bytes // 4, lambda v: len(v.head) if isinstance(v, PatchedHeader) else 16
        )

    def allow(self, principal: Principal, study_uid: str, action: str = "view") -> None:
        """Raise AccessDenied (403) unless ``principal`` may see the study.

        A granted decision is reused for ``access_ttl`` seconds (see retrieve_cache)."""
        if self.access is None or self.access_cache.granted(principal, study_uid, action):
            return
        self.access.check_study(principal, study_uid, action)
        self.access_cache.grant(principal, study_uid, action)

    def record(
        self, principal: Principal, action: str, study_uid: str, detail: dict[str, Any]
    ) -> None:
        """One audit record of a download ("retrieve") or a metadata read ("view")."""
        if self.audit is not None:
            self.audit.record(principal, action, study_uid=study_uid, detail=detail)

    def record_view(self, principal: Principal, study_uid: str, channel: str) -> None:
        """Audit (issue 6) a per-image request (rendered, thumbnail, frames): one VIEW record
        per caller, study and channel within the audit trail's coalescing window."""
        if self.audit is not None:
            self.audit.record_coalesced(principal, "view", study_uid=study_uid, channel=channel)

    # -- locating ----------------------------------------------------------------------

    def instances(
        self,
        principal: Principal,
        study_uid: str,
        series_uid: str | None = None,
        sop_instance_uid: str | None = None,
        *,
        with_frames: bool = False,
    ) -> list[StoredInstance]:
        """The stored instances of a study / series / instance; NotFound when there are none."""
        self.allow(principal, study_uid)
        found = reads.find_instances(
            self.index, study_uid, series_uid, sop_instance_uid, with_frames=with_frames
        )
        if not found:
            what = (
                f"instance {sop_instance_uid}"
                if sop_instance_uid
                else f"series {series_uid}"
                if series_uid
                else f"study {study_uid}"
            )
            raise NotFound(f"{what} is not stored here")
        return found

    def instance_by_uid(self, principal: Principal, sop_instance_uid: str) -> StoredInstance:
        found = reads.find_instance_by_uid(self.index, sop_instance_uid)
        if found is None:
            raise NotFound(f"instance {sop_instance_uid} is not stored here")
        self.allow(principal, found.study_uid)
        return found

    @staticmethod
    def etag(instances: Sequence[StoredInstance], variant: str) -> str:
        """Strong validator: the content hashes of the instances plus the response variant."""
        return WebRetrieveService.etag_of([i.sha256 for i in instances], variant)

    @staticmethod
    def etag_of(hashes: Sequence[str], variant: str) -> str:
        h = hashlib.sha256(variant.encode())
        for sha in hashes:
            h.update(sha.encode())
        return '"' + h.hexdigest()[:40] + '"'

    # -- whole instances ---------------------------------------------------------------

    def stored_bytes(self, principal: Principal, inst: StoredInstance) -> Iterator[bytes]:
        """The instance as stored, in chunks (the file is never held whole)."""
        yield from self._read_from(inst, 0)

    def _read_from(self, inst: StoredInstance, offset: int) -> Iterator[bytes]:
        with self.store.open(inst.blob_key) as fp:
            if offset:
                fp.seek(offset)
            if inst.size_bytes - offset <= WHOLE_FILE:
                yield fp.read()
                return
            while chunk := fp.read(CHUNK):
                yield chunk

    def identity_changed(
        self, instances: Sequence[StoredInstance], identity: CurrentIdentity
    ) -> set[int]:
        """pks of the instances that may need the current identity: those known to differ
        (a patched header or document cached) and those not known yet. Finding out costs
        less while streaming (``patched_bytes`` walks the header it reads anyway and sends
        an unchanged file as stored) than parsing every instance's DICOM JSON first."""
        return {i.pk for i in instances if self.known_changed(i, identity) is not False}

    def known_changed(self, inst: StoredInstance, identity: CurrentIdentity) -> bool | None:
        """Whether the instance's header differs from the current identity, if known already."""
        key = (inst.sha256, identity.fingerprint(inst.study_uid))
        header = self.headers.get(key)
        if header is not None:
            return header != b""
        doc = self.documents.get(key)
        return None if doc is None else doc != _UNCHANGED

    def _patched_document(
        self, study_uid: str, sha256: str, json_z: bytes, identity: CurrentIdentity
    ) -> bytes:
        """The stored DICOM JSON with the current identity (relative BulkDataURIs), cached by
        content hash and identity fingerprint so unchanged documents are never parsed twice."""
        key = (sha256, identity.fingerprint(study_uid))
        cached = self.documents.get(key)
        raw = zlib.decompress(json_z)
        if cached is not None:
            return raw if cached == _UNCHANGED else cached
        doc = identity.patch_document(study_uid, raw)
        self.documents.put(key, _UNCHANGED if doc is raw or doc == raw else doc)
        return doc

    def patched_header(
        self, principal: Principal, inst: StoredInstance, identity: CurrentIdentity
    ) -> PatchedHeader | None:
        """The stored instance's header with the current identity, the pixel data onwards
        left as stored; None when the header already says the same or the syntax cannot be
        split (deflated). The patient elements are spliced between the stored header bytes
        (``header_splice``), so only the first bytes of the file are read."""
        if inst.transfer_syntax_uid == DEFLATED:
            return None
        key = (inst.sha256, identity.fingerprint(inst.study_uid))
        cached = self.headers.get(key)
        if cached is not None:
            return cached if isinstance(cached, PatchedHeader) else None
        patched: PatchedHeader | Literal[False] | None
        try:
            patched = self._spliced_header(inst, identity)
        except hs.Unsupported:
            patched = self._reencoded_header(inst, identity)
            if patched is False:
                return None  # not where pixel data starts: let the caller re-encode it all
        self.headers.put(key, patched or b"")
        return patched or None

    def _spliced_header(
        self, inst: StoredInstance, identity: CurrentIdentity
    ) -> PatchedHeader | None:
        with self.store.open(inst.blob_key) as fp:
            buf = fp.read(HEAD_READ)
            while True:
                complete = len(buf) >= inst.size_bytes
                try:
                    spliced = identity.patch_part10(inst.study_uid, buf, complete=complete)
                    break
                except hs.Truncated:
                    more = fp.read(3 * len(buf))  # a long header: read four times as much
                    if not more:
                        raise hs.Unsupported("the file is shorter than the index says") from None
                    buf += more
        if spliced is None:
            return None
        return PatchedHeader(spliced.head, spliced.tail_offset)

    def _reencoded_header(
        self, inst: StoredInstance, identity: CurrentIdentity
    ) -> PatchedHeader | Literal[False] | None:
        """The header parsed, patched and written by pydicom (files the splice does not take:
        no file meta, malformed); False when the header does not end at the pixel data."""
        with self.store.open(inst.blob_key) as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
            offset = fp.tell()
            fp.seek(offset)
            at = fp.read(4)
        if at and at not in PIXEL_DATA_TAGS:
            return False
        if not identity.patch_dataset(inst.study_uid, ds):
            return None
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return PatchedHeader(out.getvalue(), offset if at else inst.size_bytes)

    def patched_bytes(
        self, principal: Principal, inst: StoredInstance, identity: CurrentIdentity
    ) -> Iterator[bytes]:
        """The stored instance with the current identity, streamed: the header patched once
        (cached), the rest as stored. The first time, a file up to WHOLE_FILE is read in one
        piece and patched from memory."""
        key = (inst.sha256, identity.fingerprint(inst.study_uid))
        cached = self.headers.get(key)
        if cached == b"":  # the header already says what the record says
            yield from self._read_from(inst, 0)
            return
        if (
            cached is None
            and inst.size_bytes <= WHOLE_FILE
            and inst.transfer_syntax_uid != DEFLATED
        ):
            with self.store.open(inst.blob_key) as fp:
                data = fp.read()
            try:
                spliced = identity.patch_part10(inst.study_uid, data, complete=True)
            except hs.Unsupported:
                yield self._reencoded_whole(principal, inst, identity, data)
                return
            if spliced is None:
                self.headers.put(key, b"")
                yield data
                return
            self.headers.put(key, PatchedHeader(spliced.head, spliced.tail_offset))
            yield spliced.head
            yield data[spliced.tail_offset :]
            return
        patched = self.patched_header(principal, inst, identity)
        if patched is None:
            if self.headers.get(key) == b"":  # found to say what the record says
                yield from self._read_from(inst, 0)
            else:
                yield self._reencoded_whole(principal, inst, identity)
            return
        yield patched.head
        if patched.tail_offset < inst.size_bytes:
            yield from self._read_from(inst, patched.tail_offset)

    def _reencoded_whole(
        self,
        principal: Principal,
        inst: StoredInstance,
        identity: CurrentIdentity,
        data: bytes | None = None,
    ) -> bytes:
        """``with_identity`` for what the header splice does not take (deflated, no file
        meta), remembering "unchanged" so the next retrieve streams the stored bytes."""
        if data is None:
            with self.store.open(inst.blob_key) as fp:
                data = fp.read()
        out = self.with_identity(principal, inst, identity, data)
        if out is data:
            self.headers.put((inst.sha256, identity.fingerprint(inst.study_uid)), b"")
        return out

    def with_identity(
        self,
        principal: Principal,
        inst: StoredInstance,
        identity: CurrentIdentity,
        data: bytes | None = None,
    ) -> bytes:
        """The Part 10 instance (stored, or ``data`` already transcoded) with the record's
        current patient attributes; the old values go to Original Attributes."""
        if data is None:
            with self.store.open(inst.blob_key) as fp:
                data = fp.read()
        try:
            spliced = identity.patch_part10(inst.study_uid, data, complete=True)
        except hs.Unsupported:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            if not identity.patch_dataset(inst.study_uid, ds):
                return data
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            return out.getvalue()
        if spliced is None:
            return data
        return b"".join((spliced.head, memoryview(data)[spliced.tail_offset :]))

    def transcoded(self, principal: Principal, inst: StoredInstance, target: str) -> bytes:
        with self.store.open(inst.blob_key) as fp:
            return tc.transcode_instance(fp, target)

    # -- metadata ----------------------------------------------------------------------

    def current_identity(self) -> CurrentIdentity:
        """The per-request cache of the records' current patient attributes (issue 5)."""
        return CurrentIdentity(self.index)

    def metadata_documents(
        self,
        principal: Principal,
        instances: Sequence[StoredInstance],
        base_url: str,
        identity: CurrentIdentity | None = None,
    ) -> Iterator[bytes]:
        """Each instance's DICOM JSON, with BulkDataURIs made absolute under ``base_url`` and
        the patient attributes the record holds now."""
        identity = identity or self.current_identity()
        by_pk = {i.pk: i for i in instances}
        for pk, json_z in reads.iter_metadata(self.index, [i.pk for i in instances]):
            inst = by_pk[pk]
            doc = self._patched_document(inst.study_uid, inst.sha256, json_z, identity)
            yield self._absolute(inst, doc, base_url)

    def series_metadata(
        self,
        principal: Principal,
        study_uid: str,
        series_uid: str | None,
        sop_instance_uid: str | None,
        base_url: str,
        identity: CurrentIdentity | None = None,
    ) -> tuple[list[str], list[bytes]]:
        """(content hashes, DICOM JSON documents) of a series or one instance, one query."""
        self.allow(principal, study_uid)
        identity = identity or self.current_identity()
        rows = reads.find_metadata(self.index, study_uid, series_uid, sop_instance_uid)
        if not rows:
            self.instances(principal, study_uid, series_uid, sop_instance_uid)  # says what
        docs = []
        for st, se, sop, sha, json_z in rows:
            doc = self._patched_document(st, sha, json_z, identity)
            if BULK_PREFIX in doc:
                prefix = (
                    f'"BulkDataURI":"{base_url}/studies/{st}/series/{se}/instances/{sop}/bulkdata/'
                ).encode()
                doc = doc.replace(BULK_PREFIX, prefix)
            docs.append(doc)
        return [r[3] for r in rows], docs

    def series_hashes(
        self,
        principal: Principal,
        study_uid: str,
        series_uid: str | None,
        sop_instance_uid: str | None,
    ) -> list[str]:
        """Content hashes of a series or one instance (for the ETag), one small query."""
        self.allow(principal, study_uid)
        return reads.find_hashes(self.index, study_uid, series_uid, sop_instance_uid)

    @staticmethod
    def _absolute(inst: StoredInstance, doc: bytes, base_url: str) -> bytes:
        if BULK_PREFIX not in doc:
            return doc
        prefix = (
            f'"BulkDataURI":"{base_url}/studies/{inst.study_uid}/series/{inst.series_uid}'
            f"/instances/{inst.sop_instance_uid}/bulkdata/"
        ).encode()
        return doc.replace(BULK_PREFIX, prefix)

    def metadata_of(self, principal: Principal, inst: StoredInstance) -> dict[str, Any]:
        for _pk, json_z in reads.iter_metadata(self.index, [inst.pk]):
            doc: dict[str, Any] = json.loads(zlib.decompress(json_z))
            return doc
        raise NotFound(f"metadata of instance {inst.sop_instance_uid} is missing")

    # -- frames ------------------------------------------------------------------------

    def _check_frames(self, inst: StoredInstance, numbers: Sequence[int]) -> int:
        total = inst.number_of_frames or 0
        if total == 0:
            raise InvalidInput(f"instance {inst.sop_instance_uid} has no pixel data frames")
        for n in numbers:
            if n < 1 or n > total:
                raise NotFound(
                    f"frame {n} does not exist: instance {inst.sop_instance_uid} has {total} "
                    f"frame{'s' if total != 1 else ''}"
                )
        return total

    def stored_frame(self, principal: Principal, inst: StoredInstance, number: int) -> bytes | None:
        """Frame ``number`` (1-based) as stored, by byte range; None if not byte-addressable."""
        self._check_frames(inst, [number])
        frames = inst.frames()
        if frames is None or number > len(frames):
            return None
        return b"".join(self.store.open_range(inst.blob_key, o, n) for o, n in frames[number - 1])

    def native_frame_is_stored(self, inst: StoredInstance, header: tc.PixelHeader | None) -> bool:
        """True when the stored bytes of a frame already are little-endian native pixels."""
        ts = inst.transfer_syntax_uid
        if ts in (tc.EXPLICIT_LE, tc.IMPLICIT_LE):
            return True
        return ts == tc.EXPLICIT_BE and header is not None and header.bits_allocated <= 8

    def decoded_frame(
        self, principal: Principal, inst: StoredInstance, number: int, doc: dict[str, Any]
    ) -> np.ndarray:
        """Frame ``number`` decoded to an array (RGB for colour)."""
        self._check_frames(inst, [number])
        header = tc.header_from_json(doc)
        stored = self.stored_frame(principal, inst, number)
        if stored is None or header is None or header.bits_allocated == 1:
            with self.store.open(inst.blob_key) as fp:
                return tc.decode_file_frame(fp, number - 1)
        arr = tc.decode_frame(stored, header, inst.transfer_syntax_uid)
        return arr.astype(arr.dtype.newbyteorder("="), copy=False)

    def frame_as(
        self,
        principal: Principal,
        inst: StoredInstance,
        number: int,
        target: str,
        doc: dict[str, Any],
    ) -> bytes:
        """Frame ``number`` in transfer syntax ``target`` (native: little-endian octets)."""
        header = tc.header_from_json(doc)
        if header is None:
            raise InvalidInput(f"instance {inst.sop_instance_uid} holds no image")
        if target == inst.transfer_syntax_uid or (
            target == tc.EXPLICIT_LE and self.native_frame_is_stored(inst, header)
        ):
            stored = self.stored_frame(principal, inst, number)
            if stored is not None:
                return stored
        arr = self.decoded_frame(principal, inst, number, doc)
        if target in tc.NATIVE_TARGETS:
            return tc.native_bytes(arr, header.bits_allocated)
        decoded_header = dataclasses.replace(
            header,
            photometric_interpretation=tc.photometric_after_decode(header),
            planar_configuration=0,
        )
        return tc.encode_frame(arr, decoded_header, target)

    # -- rendering ---------------------------------------------------------------------

    def header_dataset(
        self, principal: Principal, inst: StoredInstance, doc: dict[str, Any]
    ) -> Dataset:
        """The instance's attributes for rendering; palette LUTs (bulk data) need the file."""
        pi = str((doc.get("00280004", {}).get("Value") or [""])[0]).strip()
        if pi == "PALETTE COLOR":
            with self.store.open(inst.blob_key) as fp:
                return pydicom.dcmread(fp, stop_before_pixels=True, force=True)
        return Dataset.from_json(doc, bulk_data_uri_handler=lambda *_: None)

    def rendered(
        self,
        principal: Principal,
        inst: StoredInstance,
        number: int,
        opts: rendering.RenderOptions,
    ) -> bytes:
        doc = self.metadata_of(principal, inst)
        if tc.header_from_json(doc) is None:
            raise InvalidInput(f"instance {inst.sop_instance_uid} holds no image to render")
        arr = self.decoded_frame(principal, inst, number, doc)
        ds = self.header_dataset(principal, inst, doc)
        return rendering.render_frame(arr, ds, number - 1, opts)

    # -- bulk data ---------------------------------------------------------------------

    def bulk_element(self, principal: Principal, inst: StoredInstance, path: str) -> bytes:
        """The value of a non-pixel bulk data element by its path ``TAG[/index/TAG...]``."""
        parts = path.strip("/").split("/")
        if len(parts) % 2 != 1:
            raise InvalidInput(f"bulk data path {path!r} is not TAG[/item/TAG...]")
        try:
            tags = [int(p, 16) for p in parts[::2]]
            items = [int(p) for p in parts[1::2]]
        except ValueError as exc:
            raise InvalidInput(f"bulk data path {path!r} is not TAG[/item/TAG...]") from exc
        with self.store.open(inst.blob_key) as fp:
            ds: Any = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
        for depth, tag in enumerate(tags):
            if tag not in ds:
                raise NotFound(f"bulk data {path} does not exist in this instance")
            elem = ds[tag]
            if depth == len(tags) - 1:
                value = elem.value
                if isinstance(value, bytes):
                    return value
                raise NotFound(f"{path} is not a bulk data element")
            seq = elem.value or []
            if items[depth] >= len(seq):
                raise NotFound(f"bulk data {path} does not exist in this instance")
            ds = seq[items[depth]]
        raise NotFound(f"bulk data {path} does not exist")
