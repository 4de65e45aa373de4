"""The one retrieve service: stored instances for C-GET, C-MOVE, storage commitment, WADO-RS,
WADO-URI, frames, rendered images and thumbnails.

One access decision (``AccessService``: own trust, linked records, break-glass) and one audit
path for every way images leave the archive; one locate/open path over the index and the blob
store; the caches of ``retrieve_cache`` shared by all of them. The bytes go out as stored
whenever the peer accepts their syntax; the record's current patient identity is spliced into
the header when it changed since (``retrieve_bytes``); frames are byte ranges and only
transcoding and rendering decode (``retrieve_frames``). Metadata is the DICOM JSON computed
at ingest, decompressed and joined, never a re-parse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset

from solent.dicom import header_splice as hs
from solent.dicom import render as rendering
from solent.dicom import transcode as tc
from solent.domain.principal import Principal
from solent.domain.records import StoredInstance, StoredInstanceRef
from solent.errors import NotFound
from solent.index import reads
from solent.index.retrieval import held_sop_uids, locate_instances, stored_sop_classes
from solent.index.sql import Index
from solent.services import retrieve_bytes as rb
from solent.services import retrieve_frames as rf
from solent.services.access import AccessService
from solent.services.audit import AuditAction, AuditOutcome, AuditTrail
from solent.services.outgoing_identity import CurrentIdentity
from solent.services.retrieve_bytes import OutgoingDataset, PatchedHeader, split_part10
from solent.services.retrieve_cache import AccessCache, ByteCache
from solent.storage import BlobStore

log = logging.getLogger(__name__)

__all__ = [
    "LocatedSeries",
    "OutgoingDataset",
    "PatchedHeader",
    "ReadUse",
    "RetrieveKeys",
    "RetrieveService",
    "split_part10",
]

BULK_PREFIX = b'"BulkDataURI":"bulkdata/'
_UNCHANGED = b"="  # a document cache entry meaning "the stored JSON as it is"


@dataclass(frozen=True, slots=True)
class RetrieveKeys:
    """The unique keys of a C-MOVE / C-GET identifier, by level (PS3.4 C.4.2.2.1)."""

    level: str
    patient_id: str | None = None
    patient_issuer: str | None = None
    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    sop_instance_uids: tuple[str, ...] = ()


ReadUse = Literal["retrieve", "view", "image"]
"""What a DICOMweb read is for, as the audit trail records it: a download ("retrieve"), a
metadata read ("view"), or a per-image request ("image": frames, renders, thumbnails — one
coalesced VIEW record per caller, study and channel)."""


@dataclass(frozen=True, slots=True)
class LocatedSeries:
    """A series (or one instance) whose metadata read was decided and audited: what
    :meth:`RetrieveService.series_hashes` hands out and :meth:`~RetrieveService.series_metadata`
    takes, so the documents are never read without the decision and the record."""

    study_uid: str
    series_uid: str | None
    sop_instance_uid: str | None
    hashes: tuple[str, ...]


def _not_stored(study_uid: str, series_uid: str | None, sop_instance_uid: str | None) -> NotFound:
    what = (
        f"instance {sop_instance_uid}"
        if sop_instance_uid
        else f"series {series_uid}"
        if series_uid
        else f"study {study_uid}"
    )
    return NotFound(f"{what} is not stored here")


def _per_study(refs: Iterable[StoredInstanceRef]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ref in refs:
        counts[ref.study_uid] = counts.get(ref.study_uid, 0) + 1
    return counts


class RetrieveService:
    """Downloads (C-GET, C-MOVE, WADO-RS instances) and metadata reads leave an audit record;
    frames and renders leave one coalesced VIEW record per caller, study and channel (one per
    frame would cost a write per image). A granted web decision is reused for
    ``access_ttl`` seconds (``retrieve_cache.AccessCache``); a refusal never is."""

    def __init__(
        self,
        index: Index,
        store: BlobStore,
        access: AccessService,
        audit: AuditTrail,
        *,
        access_ttl: float = 0.0,
        cache_bytes: int = 0,
    ) -> None:
        self._index = index
        self._store = store
        self._access = access
        self._audit = audit
        self.access_cache = AccessCache(access_ttl)
        # Keyed by content hash + identity fingerprint (+ variant): never stale, only evicted.
        self.responses: ByteCache[bytes] = ByteCache(cache_bytes // 4, len)
        # Frames made for a transfer syntax other than the stored one (e.g. native -> lossless
        # HTJ2K, what the viewer asks for), keyed like responses; an MDT prefetch fills it.
        # Frames sent as stored are not kept here on a filesystem (the page cache holds them).
        self.frames: ByteCache[bytes] = ByteCache(cache_bytes // 4, len)
        self._documents: ByteCache[bytes] = ByteCache(cache_bytes // 4, len)
        self._headers: ByteCache[PatchedHeader | bytes] = ByteCache(
            cache_bytes // 4, lambda v: len(v.head) if isinstance(v, PatchedHeader) else 16
        )

    # -- the access decision and the audit record -------------------------------------------

    def allow(self, principal: Principal, study_uid: str, action: str = "view") -> None:
        """Raise NotVisible (answered as "not found") unless ``principal`` may see the study."""
        if self.access_cache.granted(principal, study_uid, action):
            return
        self._access.check_study(principal, study_uid, action)
        self.access_cache.grant(principal, study_uid, action)

    def forget_decisions(self) -> None:
        """Drop the remembered grants (a revocation that must take effect at once)."""
        self.access_cache.clear()

    def _record_read(
        self, principal: Principal, study_uid: str, channel: str, use: ReadUse, count: int
    ) -> None:
        """The audit record of a DICOMweb read, written by the method that located the data
        (an adapter never sees a located instance without it)."""
        if use == "image":
            self._audit.record_coalesced(principal, "view", study_uid=study_uid, channel=channel)
        else:
            self._audit.record(
                principal, use, study_uid=study_uid, detail={"channel": channel, "instances": count}
            )

    def record_refusal(self, principal: Principal, channel: str, reason: str) -> None:
        """A registered node asked to retrieve though its registration does not allow it."""
        self._audit.record(
            principal,
            AuditAction.PERMISSION_DENIED,
            AuditOutcome.DENIED,
            detail={"channel": channel, "reason": reason},
        )

    # -- DIMSE: locate by keys, send ----------------------------------------------------------

    def locate(
        self,
        principal: Principal,
        keys: RetrieveKeys,
        *,
        channel: str,
        destination: str,
        limit: int = 65535,
    ) -> list[StoredInstanceRef]:
        """The stored instances a C-MOVE / C-GET names that ``principal`` may see, and one
        RETRIEVE record per patient of them (channel, destination, instance count). What is
        not visible is left out exactly as what is not stored."""
        refs = locate_instances(
            self._index,
            patient_id=keys.patient_id,
            patient_issuer=keys.patient_issuer,
            study_uids=keys.study_uids,
            series_uids=keys.series_uids,
            sop_instance_uids=keys.sop_instance_uids,
            limit=limit,
        )
        allowed = self._access.visible_study_uids(principal, {r.study_uid for r in refs})
        refs = [r for r in refs if r.study_uid in allowed]
        self._audit.record_studies(
            principal,
            AuditAction.RETRIEVE,
            _per_study(refs),
            detail={"channel": channel, "destination": destination, "instances": len(refs)},
        )
        return refs

    def record_outcome(
        self,
        principal: Principal,
        failed: Iterable[StoredInstanceRef],
        *,
        channel: str,
        completed: int,
        failed_count: int,
        cancelled: bool,
    ) -> None:
        """A C-GET / C-MOVE whose sub-operations did not all succeed: one FAILURE record per
        patient of the studies not (fully) sent, with the counts and the failed UIDs."""
        refs = list(failed)
        try:
            self._audit.record_studies(
                principal,
                AuditAction.RETRIEVE,
                _per_study(refs),
                outcome=AuditOutcome.FAILURE,
                detail={
                    "channel": channel,
                    "completed": completed,
                    "failed": failed_count,
                    "cancelled": cancelled,
                    "failed_sop_instance_uids": [r.sop_instance_uid for r in refs][:100],
                },
            )
        except Exception:  # the images are sent; a lost failure note must not fail the request
            log.exception("could not audit the sub-operation failures of a %s", channel)

    def committed(
        self, principal: Principal, sop_instance_uids: Sequence[str]
    ) -> dict[str, str | None]:
        """SOP Instance UID -> SOP Class UID of the named instances that are durably kept,
        as the caller may know them (storage commitment).

        An instance of a study the caller may not see answers exactly like one never stored
        (left out): commitment is no oracle for another trust's UIDs or SOP classes. One the
        caller's trust sent that ingest held for reconciliation (it named a UID filed under a
        record the sender may not see) is kept durably and was answered as stored, so it is
        committed too; its class is None (not indexed: the caller's own claim stands)."""
        stored = stored_sop_classes(self._index, sop_instance_uids)
        visible = self._access.visible_study_uids(principal, {s for _, s in stored.values()})
        out: dict[str, str | None] = {
            uid: cls for uid, (cls, study) in stored.items() if study in visible
        }
        if principal.trust:
            missing = [u for u in sop_instance_uids if u not in out]
            for uid in held_sop_uids(self._index, missing, principal.trust):
                out[uid] = None
        return out

    def encoded_dataset(
        self, principal: Principal, ref: StoredInstanceRef, identity: CurrentIdentity | None = None
    ) -> bytes:
        """The dataset without preamble and file meta, as it goes on the wire."""
        return rb.wire_dataset(self._store, ref, identity)

    def open_encoded(
        self, principal: Principal, ref: StoredInstanceRef, identity: CurrentIdentity | None = None
    ) -> OutgoingDataset:
        """:meth:`encoded_dataset`, streamed (only the head of the file is read first)."""
        return rb.open_wire(self._store, ref, identity)

    def uncompressed(
        self, principal: Principal, ref: StoredInstanceRef, identity: CurrentIdentity | None = None
    ) -> Dataset:
        """The instance decoded, in Explicit VR Little Endian (a peer without its syntax)."""
        return rb.uncompressed(self._store, ref, identity)

    def transcoded_wire(
        self,
        principal: Principal,
        ref: StoredInstanceRef,
        identity: CurrentIdentity | None,
        transfer_syntax: str,
    ) -> bytes:
        """The data set (no file meta) re-encoded in ``transfer_syntax`` (a peer that accepted
        only that syntax), with the record's current identity; TranscodeError when it cannot."""
        return rb.transcoded_wire(self._store, ref, identity, transfer_syntax)

    def current_identity(self, principal: Principal, viewing_trust: str | None) -> CurrentIdentity:
        """The per-retrieve cache of the records' current patient attributes, as
        ``viewing_trust`` sees the person (services/trust_view.py): the caller's trust for
        DICOMweb and C-GET, the destination's for C-MOVE. The web caches are keyed by its
        fingerprint, so each view of the person has its own entries. It answers only for
        studies ``principal`` may see (``allow``, decisions cached): an adapter cannot read
        another study's patient through it."""
        return CurrentIdentity(
            self._index, viewing_trust, guard=lambda uid: self.allow(principal, uid)
        )

    # -- DICOMweb: locate by UIDs ------------------------------------------------------------

    def instances(
        self,
        principal: Principal,
        study_uid: str,
        series_uid: str | None = None,
        sop_instance_uid: str | None = None,
        *,
        channel: str,
        use: ReadUse = "retrieve",
        with_frames: bool = False,
    ) -> list[StoredInstance]:
        """The stored instances of a study / series / instance that ``principal`` may see,
        with the audit record of the read (``channel``, ``use``); NotFound when there are none
        (or none visible: answered alike)."""
        self.allow(principal, study_uid)
        found = reads.find_instances(
            self._index, study_uid, series_uid, sop_instance_uid, with_frames=with_frames
        )
        if not found:
            raise _not_stored(study_uid, series_uid, sop_instance_uid)
        self._record_read(principal, study_uid, channel, use, len(found))
        return found

    def instance_at_once(
        self,
        principal: Principal,
        study_uid: str,
        series_uid: str,
        sop_instance_uid: str,
        *,
        channel: str,
    ) -> StoredInstance | None:
        """What ``instances(..., use="image", with_frames=True)`` finds of one instance, when
        finding it waits for nothing and writes nothing: the grant is remembered, this caller's
        VIEW record of the study through ``channel`` is within its window, and the index reads
        at once (`Index.reads_at_once`). None otherwise, also when it is not found: then call
        `instances` (from a thread), which decides, records and raises."""
        if not self.access_cache.granted(principal, study_uid, "view"):
            return None
        if not self._index.reads_at_once():
            return None
        if not self._audit.coalesces(principal, "view", study_uid=study_uid, channel=channel):
            return None
        found = reads.find_instances(
            self._index, study_uid, series_uid, sop_instance_uid, with_frames=True
        )
        return found[0] if len(found) == 1 else None

    @staticmethod
    def etag(instances: Sequence[StoredInstance], variant: str) -> str:
        """Strong validator: the content hashes of the instances plus the response variant."""
        return RetrieveService.etag_of([i.sha256 for i in instances], variant)

    @staticmethod
    def etag_of(hashes: Sequence[str], variant: str) -> str:
        h = hashlib.sha256(variant.encode())
        for sha in hashes:
            h.update(sha.encode())
        return '"' + h.hexdigest()[:40] + '"'

    # -- DICOMweb: whole instances -----------------------------------------------------------

    def stored_bytes(self, principal: Principal, inst: StoredInstance) -> Iterator[bytes]:
        """The instance as stored, in chunks (the file is never held whole)."""
        yield from rb.read_from(self._store, inst, 0)

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
        header = self._headers.get(key)
        if header is not None:
            return header != b""
        doc = self._documents.get(key)
        return None if doc is None else doc != _UNCHANGED

    def cached_header(
        self, inst: StoredInstance, identity: CurrentIdentity
    ) -> PatchedHeader | None:
        """The patched header computed earlier, if cached (a response length without work)."""
        cached = self._headers.get((inst.sha256, identity.fingerprint(inst.study_uid)))
        return cached if isinstance(cached, PatchedHeader) else None

    def patched_header(
        self, principal: Principal, inst: StoredInstance, identity: CurrentIdentity
    ) -> PatchedHeader | None:
        """The stored instance's header with the current identity, the pixel data onwards
        left as stored; None when the header already says the same or the syntax cannot be
        split (deflated). Only the first bytes of the file are read."""
        if inst.transfer_syntax_uid == rb.DEFLATED:
            return None
        key = (inst.sha256, identity.fingerprint(inst.study_uid))
        cached = self._headers.get(key)
        if cached is not None:
            return cached if isinstance(cached, PatchedHeader) else None
        patched: PatchedHeader | Literal[False] | None
        try:
            patched = rb.spliced_header(self._store, inst, identity)
        except hs.Unsupported:
            patched = rb.reencoded_header(self._store, inst, identity)
            if patched is False:
                return None  # not where pixel data starts: let the caller re-encode it all
        self._headers.put(key, patched or b"")
        return patched or None

    def patched_bytes(
        self, principal: Principal, inst: StoredInstance, identity: CurrentIdentity
    ) -> Iterator[bytes]:
        """The stored instance with the current identity, streamed: the header patched once
        (cached), the rest as stored. The first time, a file up to WHOLE_FILE is read in one
        piece and patched from memory."""
        key = (inst.sha256, identity.fingerprint(inst.study_uid))
        cached = self._headers.get(key)
        if cached == b"":  # the header already says what the record says
            yield from rb.read_from(self._store, inst, 0)
            return
        if (
            cached is None
            and inst.size_bytes <= rb.WHOLE_FILE
            and inst.transfer_syntax_uid != rb.DEFLATED
        ):
            data = rb.read_all(self._store, inst)
            try:
                spliced = identity.patch_part10(inst.study_uid, data, complete=True)
            except hs.Unsupported:
                yield self._reencoded_whole(inst, identity, data)
                return
            if spliced is None:
                self._headers.put(key, b"")
                yield data
                return
            self._headers.put(key, PatchedHeader(spliced.head, spliced.tail_offset))
            yield spliced.head
            yield data[spliced.tail_offset :]
            return
        patched = self.patched_header(principal, inst, identity)
        if patched is None:
            if self._headers.get(key) == b"":  # found to say what the record says
                yield from rb.read_from(self._store, inst, 0)
            else:
                yield self._reencoded_whole(inst, identity)
            return
        yield patched.head
        if patched.tail_offset < inst.size_bytes:
            yield from rb.read_from(self._store, inst, patched.tail_offset)

    def _reencoded_whole(
        self, inst: StoredInstance, identity: CurrentIdentity, data: bytes | None = None
    ) -> bytes:
        """``with_identity`` for what the header splice does not take (deflated, no file
        meta), remembering "unchanged" so the next retrieve streams the stored bytes."""
        if data is None:
            data = rb.read_all(self._store, inst)
        out = rb.with_identity(data, inst, identity)
        if out is data:
            self._headers.put((inst.sha256, identity.fingerprint(inst.study_uid)), b"")
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
        return rb.with_identity(
            rb.read_all(self._store, inst) if data is None else data, inst, identity
        )

    def transcoded(self, principal: Principal, inst: StoredInstance, target: str) -> bytes:
        with self._store.open(inst.blob_key) as fp:
            return tc.transcode_instance(fp, target)

    # -- DICOMweb: metadata ------------------------------------------------------------------

    def _patched_document(
        self, study_uid: str, sha256: str, json_z: bytes, identity: CurrentIdentity
    ) -> bytes:
        """The stored DICOM JSON with the current identity (relative BulkDataURIs), cached by
        content hash and identity fingerprint so unchanged documents are never parsed twice."""
        key = (sha256, identity.fingerprint(study_uid))
        cached = self._documents.get(key)
        raw = zlib.decompress(json_z)
        if cached is not None:
            return raw if cached == _UNCHANGED else cached
        doc = identity.patch_document(study_uid, raw)
        self._documents.put(key, _UNCHANGED if doc is raw or doc == raw else doc)
        return doc

    def metadata_documents(
        self,
        principal: Principal,
        instances: Sequence[StoredInstance],
        base_url: str,
        identity: CurrentIdentity | None = None,
    ) -> Iterator[bytes]:
        """Each instance's DICOM JSON, with BulkDataURIs made absolute under ``base_url`` and
        the patient attributes the record holds now."""
        identity = identity or self.current_identity(principal, principal.trust)
        by_pk = {i.pk: i for i in instances}
        for pk, json_z in reads.iter_metadata(self._index, [i.pk for i in instances]):
            inst = by_pk[pk]
            doc = self._patched_document(inst.study_uid, inst.sha256, json_z, identity)
            yield _absolute(doc, base_url, inst.study_uid, inst.series_uid, inst.sop_instance_uid)

    def series_hashes(
        self,
        principal: Principal,
        study_uid: str,
        series_uid: str | None,
        sop_instance_uid: str | None,
        *,
        channel: str,
    ) -> LocatedSeries:
        """Content hashes of a series or one instance (for the ETag; one small query), with
        the VIEW record of the metadata read."""
        self.allow(principal, study_uid)
        hashes = reads.find_hashes(self._index, study_uid, series_uid, sop_instance_uid)
        if not hashes:
            raise _not_stored(study_uid, series_uid, sop_instance_uid)
        self._record_read(principal, study_uid, channel, "view", len(hashes))
        return LocatedSeries(study_uid, series_uid, sop_instance_uid, tuple(hashes))

    def series_metadata(
        self,
        principal: Principal,
        located: LocatedSeries,
        base_url: str,
        identity: CurrentIdentity | None = None,
    ) -> tuple[list[str], list[bytes]]:
        """(content hashes, DICOM JSON documents) of a located series or instance, one query
        (the hashes again: an instance may have arrived since it was located)."""
        study_uid, series_uid, sop = located.study_uid, located.series_uid, located.sop_instance_uid
        self.allow(principal, study_uid)
        identity = identity or self.current_identity(principal, principal.trust)
        rows = reads.find_metadata(self._index, study_uid, series_uid, sop)
        if not rows:
            raise _not_stored(study_uid, series_uid, sop)
        docs = [
            _absolute(self._patched_document(st, sha, json_z, identity), base_url, st, se, sop)
            for st, se, sop, sha, json_z in rows
        ]
        return [r[3] for r in rows], docs

    def metadata_of(self, principal: Principal, inst: StoredInstance) -> dict[str, Any]:
        """The stored DICOM JSON of one located instance (as stored: for pixel decoding)."""
        for _pk, json_z in reads.iter_metadata(self._index, [inst.pk]):
            doc: dict[str, Any] = json.loads(zlib.decompress(json_z))
            return doc
        raise NotFound(f"metadata of instance {inst.sop_instance_uid} is missing")

    # -- DICOMweb: frames, renders, bulk data (retrieve_frames) -------------------------------

    @staticmethod
    def check_frames(inst: StoredInstance, numbers: Sequence[int]) -> int:
        return rf.check_frames(inst, numbers)

    @staticmethod
    def frame_key(inst: StoredInstance, number: int, syntax: str) -> str:
        """The `frames` cache key of frame ``number`` of ``inst`` in transfer syntax ``syntax``
        (``*``: as stored)."""
        return RetrieveService.etag([inst], f"frame|{number}|{syntax}")

    def stored_frame(self, principal: Principal, inst: StoredInstance, number: int) -> bytes | None:
        """Frame ``number`` (1-based) as stored, by byte range; None if not byte-addressable.
        From `frames` when a prefetch kept it there (a store without a page cache, S3)."""
        kept = self.frames.get(self.frame_key(inst, number, "*")) if len(self.frames) else None
        if kept is not None:
            return kept
        return rf.stored_frame(self._store, inst, number)

    def warm_stored_frame(self, principal: Principal, inst: StoredInstance, number: int) -> str:
        """Read frame ``number`` as stored so that serving it waits for no device: into the
        page cache (filesystem; checked with a no-wait read), else into `frames`. Which one,
        or ``"none"`` when the frame is not byte-addressable."""
        data = rf.stored_frame(self._store, inst, number)
        if data is None:
            return "none"
        if rf.cached_frame(self._store, inst, number, b"", b"") is not None:
            return "page-cache"
        self.frames.put(self.frame_key(inst, number, "*"), data)
        return "memory"

    def cached_frame(
        self,
        principal: Principal,
        inst: StoredInstance,
        number: int,
        *,
        before: bytes = b"",
        after: bytes = b"",
    ) -> bytearray | None:
        """`stored_frame` between ``before`` and ``after`` in one buffer (sent in one write,
        not copied) when it is in the page cache (reading it waits for nothing); None
        otherwise: then call `stored_frame` from a thread."""
        return rf.cached_frame(self._store, inst, number, before, after)

    def decoded_frame(
        self, principal: Principal, inst: StoredInstance, number: int, doc: dict[str, Any]
    ) -> np.ndarray:
        return rf.decoded_frame(self._store, inst, number, doc)

    def frame_as(
        self,
        principal: Principal,
        inst: StoredInstance,
        number: int,
        target: str,
        doc: dict[str, Any],
    ) -> bytes:
        """Frame ``number`` in transfer syntax ``target`` (native: little-endian octets);
        transcoded once and kept in `frames` (the viewer asks for each frame more than once:
        its early fetch, then the image loader; an MDT prefetch makes them in advance)."""
        key = self.frame_key(inst, number, target)
        data = self.frames.get(key)
        if data is None:
            data = rf.frame_as(self._store, inst, number, target, doc)
            self.frames.put(key, data)
        return data

    def rendered(
        self,
        principal: Principal,
        inst: StoredInstance,
        number: int,
        opts: rendering.RenderOptions,
    ) -> bytes:
        doc = self.metadata_of(principal, inst)
        return rf.rendered(self._store, inst, number, opts, doc)

    @staticmethod
    def document_media_type(inst: StoredInstance) -> str | None:
        """The media type of the document an Encapsulated Document instance carries (its
        rendered representation); None for any other instance."""
        return rf.ENCAPSULATED_DOCUMENTS.get(inst.sop_class_uid)

    def encapsulated_document(self, principal: Principal, inst: StoredInstance) -> bytes:
        """The PDF / CDA document an Encapsulated Document instance carries (its rendered
        representation, PS3.18 8.3.4): ``inst`` was located, access decided and recorded by
        `instances`."""
        return rf.encapsulated_document(self._store, inst)

    def bulk_element(self, principal: Principal, inst: StoredInstance, path: str) -> bytes:
        """The value of a non-pixel bulk data element by its path ``TAG[/index/TAG...]``."""
        return rf.bulk_element(self._store, inst, path)


def _absolute(doc: bytes, base_url: str, study: str, series: str, sop: str) -> bytes:
    """Relative BulkDataURIs of a stored document made absolute under ``base_url``."""
    if BULK_PREFIX not in doc:
        return doc
    prefix = (
        f'"BulkDataURI":"{base_url}/studies/{study}/series/{series}/instances/{sop}/bulkdata/'
    ).encode()
    return doc.replace(BULK_PREFIX, prefix)
