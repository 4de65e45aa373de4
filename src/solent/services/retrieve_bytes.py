"""Whole stored instances as they go out, for every retrieve (C-GET, C-MOVE, WADO-RS, WADO-URI).

Helpers of ``services/retrieve.RetrieveService`` (which decides access and audits first): the
stored bytes unchanged whenever possible, the record's current patient identity spliced into
the first bytes when it changed since the instance was stored (``header_splice``), a pydicom
re-encode only for what the splice does not take (deflated, no file meta, malformed), and
decoding to Explicit VR Little Endian for a peer that accepts uncompressed syntaxes only.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal, Protocol

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset, read_preamble
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian

from solent.dicom import header_splice as hs
from solent.dicom.transcode import TranscodeError, transcode_instance, values_as_little_endian
from solent.services.outgoing_identity import CurrentIdentity
from solent.storage import BlobStore

CHUNK = 4 << 20  # big reads: each chunk costs a thread hop and an ASGI message
WHOLE_FILE = 8 << 20  # instances up to this size are read in one piece
HEAD_READ = 64 << 10  # the first read for a header patch: most headers end well before
HEAD_MAX = 16 << 20  # a header that needs more than this to splice is re-encoded instead
DEFLATED = "1.2.840.10008.1.2.1.99"
PIXEL_DATA_TAGS = (b"\xe0\x7f\x10\x00", b"\xe0\x7f\x08\x00", b"\xe0\x7f\x09\x00")


class Located(Protocol):
    """What both row types of a located instance (DIMSE ``StoredInstanceRef``, DICOMweb
    ``StoredInstance``) carry: enough to open and patch the stored file."""

    @property
    def study_uid(self) -> str: ...
    @property
    def sop_instance_uid(self) -> str: ...
    @property
    def transfer_syntax_uid(self) -> str: ...
    @property
    def blob_key(self) -> str: ...
    @property
    def size_bytes(self) -> int: ...


@dataclass(frozen=True, slots=True)
class PatchedHeader:
    """An instance with the current identity: ``head`` replaces the stored bytes before
    ``tail_offset`` (the pixel data element onwards is sent as stored)."""

    head: bytes
    tail_offset: int


@dataclass(slots=True)
class OutgoingDataset:
    """One instance's dataset as it goes on the DIMSE wire, without holding it in memory:
    ``prefix`` (the first bytes, with the current identity spliced in), then ``remaining``
    bytes of ``rest``, the stored file positioned where the prefix ends. Close it when sent."""

    prefix: bytes
    rest: BinaryIO | None
    remaining: int

    @property
    def length(self) -> int:
        return len(self.prefix) + self.remaining

    def close(self) -> None:
        if self.rest is not None:
            self.rest.close()


def split_part10(data: bytes) -> tuple[Dataset, int]:
    """(file meta, offset of the dataset) of a Part 10 file held in memory."""
    fp = io.BytesIO(data)
    read_preamble(fp, False)
    meta = read_dataset(
        fp, is_implicit_VR=False, is_little_endian=True, stop_when=lambda tag, *_: tag.group != 2
    )
    return meta, fp.tell()


def read_all(store: BlobStore, ref: Located) -> bytes:
    with store.open(ref.blob_key) as fp:
        return fp.read()


def read_from(store: BlobStore, ref: Located, offset: int) -> Iterator[bytes]:
    """The stored file from ``offset``, in chunks (never held whole when big)."""
    with store.open(ref.blob_key) as fp:
        if offset:
            fp.seek(offset)
        if ref.size_bytes - offset <= WHOLE_FILE:
            yield fp.read()
            return
        while chunk := fp.read(CHUNK):
            yield chunk


# -- Part 10 (DICOMweb) -------------------------------------------------------------------


def with_identity(data: bytes, ref: Located, identity: CurrentIdentity) -> bytes:
    """The Part 10 instance ``data`` with the record's current patient attributes; the old
    values go to Original Attributes. ``data`` itself when nothing differs."""
    try:
        spliced = identity.patch_part10(ref.study_uid, data, complete=True)
    except hs.Unsupported:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if not identity.patch_dataset(ref.study_uid, ds):
            return data if data[128:132] == b"DICM" else as_part10(data, ref, ds)
        if "TransferSyntaxUID" not in ds.file_meta:
            ds.file_meta = _file_meta(ref, ds)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()
    if spliced is None:
        return data
    return b"".join((spliced.head, memoryview(data)[spliced.tail_offset :]))


def _file_meta(ref: Located, ds: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(str(ds.get("SOPClassUID", "")))
    meta.MediaStorageSOPInstanceUID = UID(ref.sop_instance_uid)
    meta.TransferSyntaxUID = UID(ref.transfer_syntax_uid)
    return meta


def as_part10(data: bytes, ref: Located, ds: Dataset) -> bytes:
    """A file stored as received without preamble (and maybe without file meta), as the
    Part 10 file application/dicom must be (PS3.18 8.7.3.1; PS3.10 7.1): a preamble, and file
    meta naming the syntax the data set was read in, before the stored bytes. Served as
    stored, pydicom, DCMTK and browsers' DICOM parsers refused it ("missing DICM prefix")."""
    if data[:4] == b"DICM":  # file meta without preamble
        return bytes(128) + data
    if data[:2] == b"\x02\x00":  # file meta without preamble and DICM prefix
        return bytes(128) + b"DICM" + data
    head = DicomBytesIO()
    head.write(bytes(128) + b"DICM")
    write_file_meta_info(head, _file_meta(ref, ds), enforce_standard=True)
    return bytes(head.getvalue()) + data


def spliced_header(
    store: BlobStore, ref: Located, identity: CurrentIdentity
) -> PatchedHeader | None:
    """The header with the current identity spliced in, reading only the first bytes."""
    with store.open(ref.blob_key) as fp:
        buf = fp.read(HEAD_READ)
        while True:
            complete = len(buf) >= ref.size_bytes
            try:
                spliced = identity.patch_part10(ref.study_uid, buf, complete=complete)
                break
            except hs.Truncated:
                more = fp.read(3 * len(buf))  # a long header: read four times as much
                if not more:
                    raise hs.Unsupported("the file is shorter than the index says") from None
                buf += more
    if spliced is None:
        return None
    return PatchedHeader(spliced.head, spliced.tail_offset)


def reencoded_header(
    store: BlobStore, ref: Located, identity: CurrentIdentity
) -> PatchedHeader | Literal[False] | None:
    """The header parsed, patched and written by pydicom (files the splice does not take:
    no file meta, malformed); False when the header does not end at the pixel data."""
    with store.open(ref.blob_key) as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
        offset = fp.tell()
        fp.seek(offset)
        at = fp.read(4)
    if at and at not in PIXEL_DATA_TAGS:
        return False
    if not identity.patch_dataset(ref.study_uid, ds):
        return None
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return PatchedHeader(out.getvalue(), offset if at else ref.size_bytes)


# -- the DIMSE wire (dataset without preamble and file meta) ------------------------------


def wire_dataset(store: BlobStore, ref: Located, identity: CurrentIdentity | None) -> bytes:
    """The dataset without preamble and file meta, in the stored syntax, with the record's
    current identity spliced in when ``identity`` is given and it changed."""
    dataset = _wire_dataset(store, ref, identity)
    if ref.transfer_syntax_uid == DEFLATED and len(dataset) % 2:
        # PS3.5 A.5: a deflated stream of odd length is padded with one trailing NUL (inflate
        # stops at the end of the stream). A DIMSE peer refuses an odd-length data set:
        # DCMTK's getscu/storescp dropped the instance ("Odd Fragment Length").
        return dataset + b"\x00"
    return dataset


def _wire_dataset(store: BlobStore, ref: Located, identity: CurrentIdentity | None) -> bytes:
    data = read_all(store, ref)
    if identity is not None:
        try:
            spliced = identity.patch_part10(ref.study_uid, data, complete=True)
        except hs.Unsupported:
            return _reencoded_wire(data, ref, identity)
        if spliced is not None:
            head = memoryview(spliced.head)[spliced.dataset_start :]
            return b"".join((head, memoryview(data)[spliced.tail_offset :]))
    _, offset = split_part10(data)
    return data[offset:]


def open_wire(store: BlobStore, ref: Located, identity: CurrentIdentity | None) -> OutgoingDataset:
    """What :func:`wire_dataset` gives, streamed: only the head of the stored file is read
    (64 KB, more while the patient elements need it), the rest is read by the sender in
    slices, so a 300 MB instance costs the sender's buffer, not 300 MB. A deflated data set
    is read whole (its identity is re-encoded, its length made even)."""
    if ref.transfer_syntax_uid == DEFLATED:
        return OutgoingDataset(wire_dataset(store, ref, identity), None, 0)
    fp = store.open(ref.blob_key)
    try:
        size = fp.seek(0, io.SEEK_END)
        fp.seek(0)
        head = fp.read(HEAD_READ)
        while True:
            complete = len(head) >= size
            try:
                spliced = (
                    identity.patch_part10(ref.study_uid, head, complete=complete)
                    if identity is not None
                    else None
                )
                start, tail = (
                    (spliced.head[spliced.dataset_start :], spliced.tail_offset)
                    if spliced is not None
                    else (b"", hs.read_layout(head).dataset_start)
                )
            except hs.Truncated:
                if complete or len(head) >= HEAD_MAX:
                    raise hs.Unsupported("patient elements too far into the file") from None
                head += fp.read(len(head))
                continue
            break
    except hs.Unsupported:
        fp.close()
        return OutgoingDataset(wire_dataset(store, ref, identity), None, 0)
    except BaseException:
        fp.close()
        raise
    return OutgoingDataset(bytes(start) + head[tail:], fp, size - len(head))


def _reencoded_wire(data: bytes, ref: Located, identity: CurrentIdentity) -> bytes:
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


EXPLICIT = "1.2.840.10008.1.2.1"
NATIVE_SYNTAXES = frozenset({EXPLICIT, "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", DEFLATED})


def uncompressed(store: BlobStore, ref: Located, identity: CurrentIdentity | None) -> Dataset:
    """The instance as a dataset in Explicit VR Little Endian, pixel data decoded, with the
    record's current patient attributes when ``identity`` is given."""
    data = read_all(store, ref)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        ts = UID(str(ds.file_meta.get("TransferSyntaxUID", ref.transfer_syntax_uid)))
        if ts not in NATIVE_SYNTAXES:
            try:
                ds.decompress(generate_instance_uid=False)
            except Exception:
                # What pydicom does not decode (JPEG XL, Deflated Image Frame; JPEG streams
                # libjpeg refuses): the transcoder's decoders (imagecodecs).
                ds = pydicom.dcmread(io.BytesIO(transcode_instance(io.BytesIO(data), EXPLICIT)))
        elif ts == "1.2.840.10008.1.2.2" and "PixelData" in ds:
            # Big endian: swap the pixel words by decoding and re-encoding them.
            arr = ds.pixel_array
            ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
            if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
                ds.PlanarConfiguration = 0  # pixel_array is colour-by-pixel, whatever was read
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        # The writer re-encodes from the encoding as read (implicit VR: VRs from the
        # dictionary); big endian it will not convert, so the values are made little endian.
        values_as_little_endian(ds)
        if identity is not None:
            identity.patch_dataset(ref.study_uid, ds)
    except Exception as exc:
        raise TranscodeError(
            f"cannot decode {ref.sop_instance_uid} ({ref.transfer_syntax_uid}): {exc}"
        ) from exc
    return ds


def transcoded_wire(
    store: BlobStore, ref: Located, identity: CurrentIdentity | None, transfer_syntax: str
) -> bytes:
    """The data set without file meta, re-encoded in ``transfer_syntax`` (Explicit VR Little
    Endian around encapsulated pixels), with the current identity when ``identity`` is given."""
    with store.open(ref.blob_key) as fp:
        part10 = transcode_instance(fp, transfer_syntax)
    ds = pydicom.dcmread(io.BytesIO(part10))
    if identity is not None:
        identity.patch_dataset(ref.study_uid, ds)
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = transfer_syntax == "1.2.840.10008.1.2"
    write_dataset(out, ds)
    return out.getvalue()
