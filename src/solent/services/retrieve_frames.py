"""Frames, rendered images and non-pixel bulk data of one stored instance.

Helpers of ``services/retrieve.RetrieveService`` (which has decided access before calling):
frames come from their byte ranges in the stored file, indexed at ingest; only transcoding,
rendering and non-pixel bulk data open and decode the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from solent.dicom import render as rendering
from solent.dicom import transcode as tc
from solent.domain.records import StoredInstance
from solent.errors import InvalidInput, NotFound
from solent.storage import BlobStore


def check_frames(inst: StoredInstance, numbers: Sequence[int]) -> int:
    """The instance's frame count; InvalidInput / NotFound when a number is not a frame."""
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


def stored_frame(store: BlobStore, inst: StoredInstance, number: int) -> bytes | None:
    """Frame ``number`` (1-based) as stored, by byte range; None if not byte-addressable."""
    check_frames(inst, [number])
    frames = inst.frames()
    if frames is None or number > len(frames):
        return None
    return b"".join(store.open_range(inst.blob_key, o, n) for o, n in frames[number - 1])


def cached_frame(
    store: BlobStore, inst: StoredInstance, number: int, before: bytes, after: bytes
) -> bytearray | None:
    """``before`` + `stored_frame` + ``after`` in one buffer, the frame read straight into it,
    when every byte of the frame is in the page cache (no wait for a device); None otherwise,
    or when the frame is not byte-addressable."""
    check_frames(inst, [number])
    frames = inst.frames()
    if frames is None or number > len(frames):
        return None
    ranges = frames[number - 1]
    size = sum(length for _offset, length in ranges)
    buf = bytearray(len(before) + size + len(after))
    view = memoryview(buf)
    view[: len(before)] = before
    at = len(before)
    for offset, length in ranges:
        if not store.cached_range_into(inst.blob_key, offset, view[at : at + length]):
            return None
        at += length
    view[at:] = after
    return buf


def native_frame_is_stored(inst: StoredInstance, header: tc.PixelHeader | None) -> bool:
    """True when the stored bytes of a frame already are little-endian native pixels."""
    ts = inst.transfer_syntax_uid
    if ts in (tc.EXPLICIT_LE, tc.IMPLICIT_LE):
        return True
    return ts == tc.EXPLICIT_BE and header is not None and header.bits_allocated <= 8


def decoded_frame(
    store: BlobStore, inst: StoredInstance, number: int, doc: dict[str, Any]
) -> np.ndarray:
    """Frame ``number`` decoded to an array (RGB for colour)."""
    check_frames(inst, [number])
    header = tc.header_from_json(doc)
    stored = stored_frame(store, inst, number)
    if stored is None or header is None or header.bits_allocated == 1:
        with store.open(inst.blob_key) as fp:
            return tc.decode_file_frame(fp, number - 1)
    arr = tc.decode_frame(stored, header, inst.transfer_syntax_uid)
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


def frame_as(
    store: BlobStore, inst: StoredInstance, number: int, target: str, doc: dict[str, Any]
) -> bytes:
    """Frame ``number`` in transfer syntax ``target`` (native: little-endian octets)."""
    header = tc.header_from_json(doc)
    if header is None:
        raise InvalidInput(f"instance {inst.sop_instance_uid} holds no image")
    if target == inst.transfer_syntax_uid or (
        target == tc.EXPLICIT_LE and native_frame_is_stored(inst, header)
    ):
        stored = stored_frame(store, inst, number)
        if stored is not None:
            return stored
    arr = decoded_frame(store, inst, number, doc)
    if target in tc.NATIVE_TARGETS:
        return tc.native_bytes(arr, header.bits_allocated)
    decoded_header = dataclasses.replace(
        header,
        photometric_interpretation=tc.photometric_after_decode(header),
        planar_configuration=0,
    )
    return tc.encode_frame(arr, decoded_header, target)


def _header_dataset(store: BlobStore, inst: StoredInstance, doc: dict[str, Any]) -> Dataset:
    """The instance's attributes for rendering; palette LUTs (bulk data) need the file."""
    pi = str((doc.get("00280004", {}).get("Value") or [""])[0]).strip()
    if pi == "PALETTE COLOR":
        with store.open(inst.blob_key) as fp:
            return pydicom.dcmread(fp, stop_before_pixels=True, force=True)
    return Dataset.from_json(doc, bulk_data_uri_handler=lambda *_: None)


def rendered(
    store: BlobStore,
    inst: StoredInstance,
    number: int,
    opts: rendering.RenderOptions,
    doc: dict[str, Any],
) -> bytes:
    if tc.header_from_json(doc) is None:
        raise InvalidInput(f"instance {inst.sop_instance_uid} holds no image to render")
    arr = decoded_frame(store, inst, number, doc)
    ds = _header_dataset(store, inst, doc)
    return rendering.render_frame(arr, ds, number - 1, opts)


PIXEL_DATA = 0x7FE00010


def _with_creator(tag: int) -> list[int]:
    """``tag`` and, for a private element, its private creator (which gives it its VR)."""
    if tag >> 16 & 1 and tag & 0xFFFF >= 0x1000:
        return [tag, tag & 0xFFFF0000 | (tag & 0xFF00) >> 8]
    return [tag]


def bulk_element(store: BlobStore, inst: StoredInstance, path: str) -> bytes:
    """The value of a non-pixel bulk data element by its path ``TAG[/index/TAG...]``."""
    parts = path.strip("/").split("/")
    if len(parts) % 2 != 1:
        raise InvalidInput(f"bulk data path {path!r} is not TAG[/item/TAG...]")
    try:
        tags = [int(p, 16) for p in parts[::2]]
        items = [int(p) for p in parts[1::2]]
        if any(i < 0 for i in items):  # Python would count -1 from the end
            raise ValueError("negative item")
    except ValueError as exc:
        raise InvalidInput(f"bulk data path {path!r} is not TAG[/item/TAG...]") from exc
    with store.open(inst.blob_key) as fp:
        if tags[0] < PIXEL_DATA:
            ds: Any = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
        else:  # after Pixel Data (a GE (7FE1,xxxx) group, trailing padding): read past it
            ds = pydicom.dcmread(fp, specific_tags=_with_creator(tags[0]), force=True)
    for depth, tag in enumerate(tags):
        if tag not in ds:
            raise NotFound(f"bulk data {path} does not exist in this instance")
        elem = ds[tag]
        if depth == len(tags) - 1:
            value = elem.value
            if isinstance(value, bytes):
                return value
            raise NotFound(f"{path} is not a bulk data element")
        if elem.VR != "SQ":  # bytes or a number: no items to descend into
            raise NotFound(f"bulk data {path} does not exist in this instance")
        seq = elem.value or []
        if items[depth] >= len(seq):
            raise NotFound(f"bulk data {path} does not exist in this instance")
        ds = seq[items[depth]]
    raise NotFound(f"bulk data {path} does not exist")


# SOP classes whose content is a document in another format (PS3.3 A.45): what their
# rendered representation is (PS3.18 8.3.4: the document itself, in its own media type).
ENCAPSULATED_DOCUMENTS = {
    "1.2.840.10008.5.1.4.1.1.104.1": "application/pdf",
    "1.2.840.10008.5.1.4.1.1.104.2": "text/xml",  # CDA
}
ENCAPSULATED_DOCUMENT = 0x00420011
ENCAPSULATED_DOCUMENT_LENGTH = 0x00420015


def encapsulated_document(store: BlobStore, inst: StoredInstance) -> bytes:
    """The document an Encapsulated PDF / CDA instance carries, without the padding byte an
    odd-length document gets (trimmed by Encapsulated Document Length where it is given)."""
    with store.open(inst.blob_key) as fp:
        ds: Any = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
    value = ds.get(ENCAPSULATED_DOCUMENT)
    if value is None or not isinstance(value.value, bytes):
        raise NotFound(f"instance {inst.sop_instance_uid} holds no encapsulated document")
    data: bytes = value.value
    length = ds.get(ENCAPSULATED_DOCUMENT_LENGTH)
    if length is not None and isinstance(length.value, int) and 0 < length.value <= len(data):
        data = data[: length.value]
    return data
