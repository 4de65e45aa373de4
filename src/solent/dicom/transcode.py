"""Decode and re-encode pixel data between transfer syntaxes, through well-kept codecs.

Decoding goes through pydicom's pixel backends (pylibjpeg, openjpeg, libjpeg plugins), with
imagecodecs for what pydicom 3.0 does not yet decode (JPEG XL, Deflated Image Frame). Encoding
goes through imagecodecs (libjpeg-turbo, CharLS, OpenJPEG, OpenJPH) and pydicom's RLE encoder.

Lossless stays lossless: a lossless target is always encoded reversibly, and a lossy target is
produced only when a caller names it.
"""

from __future__ import annotations

import io
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import imagecodecs
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pack_bits
from pydicom.uid import UID

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
RLE = "1.2.840.10008.1.2.5"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
JPEG_XL_SYNTAXES = {"1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112"}
DEFLATED_IMAGE_FRAME = "1.2.840.10008.1.2.8.1"

NATIVE = {IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE, DEFLATED}
# Syntaxes whose encoding always loses information; others are lossless or may be either.
ALWAYS_LOSSY = {JPEG_BASELINE, JPEG_EXTENDED, "1.2.840.10008.1.2.4.111"}
LOSSLESS_ONLY = {
    *NATIVE,
    RLE,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS,
    J2K_LOSSLESS,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
}
NATIVE_TARGETS = {EXPLICIT_LE, IMPLICIT_LE}


class TranscodeError(Exception):
    """The pixel data cannot be produced in the asked syntax; the message says why."""


@dataclass(frozen=True, slots=True)
class PixelHeader:
    """The Image Pixel module values a frame codec needs (read from the stored metadata)."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str
    planar_configuration: int
    number_of_frames: int
    pixel_keyword: str = "PixelData"

    @property
    def float_pixels(self) -> bool:
        return self.pixel_keyword != "PixelData"

    def decode_options(self, frames: int = 1) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "columns": self.columns,
            "samples_per_pixel": self.samples_per_pixel,
            "bits_allocated": self.bits_allocated,
            "bits_stored": self.bits_stored,
            "pixel_representation": self.pixel_representation,
            "photometric_interpretation": self.photometric_interpretation,
            "planar_configuration": self.planar_configuration,
            "number_of_frames": frames,
            "pixel_keyword": self.pixel_keyword,
        }


def _first(doc: dict[str, Any], tag: str, default: Any = None) -> Any:
    values = doc.get(tag, {}).get("Value")
    return values[0] if values else default


def header_from_json(doc: dict[str, Any]) -> PixelHeader | None:
    """The pixel header of an instance's DICOM JSON, or None if it holds no image."""
    rows, cols = _first(doc, "00280010"), _first(doc, "00280011")
    if not rows or not cols:
        return None
    bits = int(_first(doc, "00280100", 8))
    return PixelHeader(
        rows=int(rows),
        columns=int(cols),
        samples_per_pixel=int(_first(doc, "00280002", 1)),
        bits_allocated=bits,
        bits_stored=int(_first(doc, "00280101", bits)),
        pixel_representation=int(_first(doc, "00280103", 0)),
        photometric_interpretation=str(_first(doc, "00280004", "MONOCHROME2")).strip(),
        planar_configuration=int(_first(doc, "00280006", 0)),
        number_of_frames=int(_first(doc, "00280008", 1) or 1),
        pixel_keyword=(
            "FloatPixelData"
            if "7FE00008" in doc
            else "DoubleFloatPixelData"
            if "7FE00009" in doc
            else "PixelData"
        ),
    )


def can_decode(ts: str) -> bool:
    if ts in NATIVE or ts in JPEG_XL_SYNTAXES or ts == DEFLATED_IMAGE_FRAME:
        return True
    try:
        return bool(get_decoder(UID(ts)).is_available)
    except (NotImplementedError, ValueError):
        return False


def can_encode(ts: str) -> bool:
    return ts in NATIVE_TARGETS or ts in _ENCODERS


def is_lossy(ts: str) -> bool:
    return ts in ALWAYS_LOSSY


# -- decoding one frame --------------------------------------------------------------------


def decode_frame(data: bytes, header: PixelHeader, ts: str) -> np.ndarray:
    """Decode one frame's stored bytes to an array (colour as RGB, native byte order)."""
    try:
        if ts in JPEG_XL_SYNTAXES:
            return np.asarray(imagecodecs.jpegxl_decode(data))
        if ts == DEFLATED_IMAGE_FRAME:
            raw = zlib.decompress(data, -zlib.MAX_WBITS)  # raw deflate per frame
            arr, _ = get_decoder(UID(EXPLICIT_LE)).as_array(raw, **header.decode_options())
            return arr
        src = data if ts in NATIVE else encapsulate([data])
        try:
            arr, _ = get_decoder(UID(ts)).as_array(src, **header.decode_options())
        except Exception:
            fallback = _jpeg_fallback(data, header, ts)
            if fallback is None:
                raise
            return fallback
        return arr
    except Exception as exc:
        raise TranscodeError(f"cannot decode a frame of {_name(ts)}: {exc}"[:300]) from exc


def _jpeg_fallback(data: bytes, header: PixelHeader, ts: str) -> np.ndarray | None:
    """A JPEG baseline / extended frame libjpeg (pylibjpeg) refuses, through libjpeg-turbo
    (imagecodecs): 12-bit streams of some writers ("A misplaced marker", libjpeg -1038, in
    the WG04 mammogram and NM samples) decode there to the same pixels. None when it does
    not apply (other syntaxes, signed pixels) or fails too."""
    if ts not in (JPEG_BASELINE, JPEG_EXTENDED) or header.pixel_representation:
        return None
    try:
        arr = np.asarray(imagecodecs.jpeg8_decode(data))
    except Exception:
        return None
    expected: tuple[int, ...] = (header.rows, header.columns)
    if header.samples_per_pixel > 1:
        expected += (header.samples_per_pixel,)
    return arr if arr.shape == expected else None


def _frames_of(ds: Dataset, source: str) -> np.ndarray:
    """Every frame through :func:`decode_frame` (its fallbacks), stacked like pixel_array."""
    header = _header_of(ds)
    frames = generate_frames(ds.PixelData, number_of_frames=header.number_of_frames)
    out = [decode_frame(f, header, source) for f in frames]
    return np.stack(out) if header.number_of_frames > 1 else out[0]


def decode_file_frame(fp: BinaryIO, index: int) -> np.ndarray:
    """Decode one frame by parsing the whole file (deflated, 1-bit or unmappable frames)."""
    try:
        ds = pydicom.dcmread(fp, force=True)
        ts = str(ds.file_meta.get("TransferSyntaxUID", EXPLICIT_LE))
        if ts in JPEG_XL_SYNTAXES or ts == DEFLATED_IMAGE_FRAME:
            frames = generate_frames(
                ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))
            )
            for i, frame in enumerate(frames):
                if i == index:
                    return decode_frame(frame, _header_of(ds), ts)
            raise TranscodeError(f"frame {index + 1} is not in the instance")
        frames_in = int(ds.get("NumberOfFrames", 1) or 1)
        try:
            arr = ds.pixel_array
        except Exception:
            if ts not in (JPEG_BASELINE, JPEG_EXTENDED):
                raise
            arr = _frames_of(ds, ts)
        return np.asarray(arr[index] if frames_in > 1 else arr)
    except TranscodeError:
        raise
    except Exception as exc:
        raise TranscodeError(f"cannot decode the instance: {exc}"[:300]) from exc


def _header_of(ds: Dataset) -> PixelHeader:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.get("BitsAllocated", 8) or 8)
        return PixelHeader(
            rows=rows,
            columns=cols,
            samples_per_pixel=int(ds.get("SamplesPerPixel", 1) or 1),
            bits_allocated=bits,
            bits_stored=int(ds.get("BitsStored", bits) or bits),
            pixel_representation=int(ds.get("PixelRepresentation", 0) or 0),
            photometric_interpretation=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
            planar_configuration=int(ds.get("PlanarConfiguration", 0) or 0),
            number_of_frames=int(ds.get("NumberOfFrames", 1) or 1),
            pixel_keyword=next(
                (k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds), "PixelData"
            ),
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise TranscodeError("the instance holds no usable image pixel description") from exc


def native_bytes(arr: np.ndarray, bits_allocated: int = 0) -> bytes:
    """Little-endian native pixel bytes of a decoded frame (what application/octet-stream is)."""
    if bits_allocated == 1:
        return bytes(pack_bits(arr))
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"), copy=False)).tobytes()


# -- encoding one frame ------------------------------------------------------------------


def _unsigned(arr: np.ndarray, header: PixelHeader) -> np.ndarray:
    """Two's complement within BitsStored, as DICOM codecs of unsigned samples expect."""
    if header.pixel_representation == 0 or arr.dtype.kind == "u":
        return arr
    mask = (1 << header.bits_stored) - 1
    out_type = np.uint8 if header.bits_allocated <= 8 else np.uint16
    return (arr.astype(np.int64) & mask).astype(out_type)


def _jpeg_baseline(arr: np.ndarray, header: PixelHeader, quality: int) -> bytes:
    if header.bits_stored > 8 or arr.dtype.itemsize > 1:
        raise TranscodeError(
            f"JPEG Baseline holds 8-bit samples; this image has BitsStored {header.bits_stored}"
        )
    return bytes(imagecodecs.jpeg8_encode(arr, level=quality, subsampling="444"))


def _jpeg_lossless(arr: np.ndarray, header: PixelHeader, quality: int) -> bytes:
    data = _unsigned(arr, header)
    bits = max(2, min(16, header.bits_stored))
    return bytes(imagecodecs.jpeg8_encode(data, lossless=True, predictor=1, bitspersample=bits))


def _jpegls(arr: np.ndarray, header: PixelHeader, quality: int) -> bytes:
    return bytes(imagecodecs.jpegls_encode(_unsigned(arr, header), level=0))


def _j2k(arr: np.ndarray, header: PixelHeader, quality: int) -> bytes:
    return bytes(
        imagecodecs.jpeg2k_encode(
            arr,
            level=0,
            codecformat="j2k",
            reversible=True,
            mct=False,
            bitspersample=header.bits_stored,
        )
    )


def _htj2k(arr: np.ndarray, header: PixelHeader, quality: int) -> bytes:
    # Colour with the reversible colour transform (RCT), as OpenJPH itself writes it: without
    # it, the viewer's HTJ2K decoder (OpenJPH in WebAssembly, Cornerstone) gave all three
    # samples the value of the first, and every uncompressed colour image (ultrasound,
    # secondary capture) reached the screen as grey-and-white garbage. Still lossless.
    return bytes(imagecodecs.htj2k_encode(arr, reversible=True, rgb=header.samples_per_pixel == 3))


def _rle(arr: np.ndarray, header: PixelHeader, quality: int) -> bytes:
    from pydicom.pixels.encoders.base import RLELosslessEncoder

    src = native_bytes(_unsigned(arr, header))
    opts = header.decode_options()
    opts["planar_configuration"] = 0
    opts.pop("pixel_keyword")
    opts["photometric_interpretation"] = photometric_after_decode(header)
    return bytes(RLELosslessEncoder.encode(src, index=0, **opts))


_ENCODERS: dict[str, Callable[[np.ndarray, PixelHeader, int], bytes]] = {
    JPEG_BASELINE: _jpeg_baseline,
    JPEG_LOSSLESS: _jpeg_lossless,
    JPEG_LOSSLESS_SV1: _jpeg_lossless,
    JPEG_LS: _jpegls,
    JPEG_LS_NEAR: _jpegls,  # encoded with NEAR=0: a lossless stream is a valid near-lossless one
    J2K_LOSSLESS: _j2k,
    J2K: _j2k,
    HTJ2K_LOSSLESS: _htj2k,
    HTJ2K: _htj2k,
    RLE: _rle,
}


ENCODABLE: frozenset[str] = frozenset({*NATIVE_TARGETS, *_ENCODERS})


def encode_frame(arr: np.ndarray, header: PixelHeader, ts: str, *, quality: int = 90) -> bytes:
    """Encode one decoded frame in ``ts``; TranscodeError says why when it cannot."""
    if header.float_pixels:
        raise TranscodeError("float pixel data has no compressed transfer syntax")
    if header.bits_allocated == 1:
        raise TranscodeError("1-bit pixel data is served natively or as stored, not re-encoded")
    encoder = _ENCODERS.get(ts)
    if encoder is None:
        raise TranscodeError(f"Solent cannot encode {_name(ts)}")
    if header.samples_per_pixel not in (1, 3):
        raise TranscodeError(f"{header.samples_per_pixel} samples per pixel cannot be encoded")
    try:
        return encoder(np.ascontiguousarray(arr), header, quality)
    except TranscodeError:
        raise
    except Exception as exc:
        raise TranscodeError(f"cannot encode {_name(ts)}: {exc}"[:300]) from exc


def photometric_after_decode(header: PixelHeader) -> str:
    pi = header.photometric_interpretation
    return "RGB" if pi.startswith("YBR") and header.samples_per_pixel == 3 else pi


# -- whole instances -------------------------------------------------------------------------


def transcode_instance(fp: BinaryIO, target: str, *, quality: int = 90) -> bytes:
    """The Part 10 bytes of an instance re-encoded in ``target`` (held in memory: one instance)."""
    if not can_encode(target):
        raise TranscodeError(f"Solent cannot encode {_name(target)}")
    try:
        ds = pydicom.dcmread(fp, force=True)
    except Exception as exc:
        raise TranscodeError(f"cannot read the stored instance: {exc}"[:300]) from exc
    for stray in [t for t in ds.keys() if t >> 16 == 0xFFFE]:  # noqa: SIM118 - tags
        # A writer's stray delimiter at dataset level, stored as received (ingest takes it as
        # harmless): no encoding can write it, and it carries nothing.
        del ds[stray]
    source = str(ds.file_meta.get("TransferSyntaxUID", EXPLICIT_LE))
    pixel = next(
        (k for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in ds), None
    )
    if pixel is None:
        # No pixels: only the dataset encoding changes; compressed syntaxes need no pixels.
        return _write(ds, target if target in NATIVE_TARGETS else EXPLICIT_LE)
    if (
        pixel == "PixelData"
        and source in NATIVE
        and source != EXPLICIT_BE
        and target in NATIVE_TARGETS
    ):
        return _write(ds, target)
    arr = _decode_all(ds, source)
    header = _header_of(ds)
    frames = arr if header.number_of_frames > 1 else arr[np.newaxis, ...]
    if target in NATIVE_TARGETS:
        all_frames = frames if header.number_of_frames > 1 else frames[0]
        if header.bits_allocated == 1:
            ds[pixel].value = pack_bits(all_frames)
        else:
            ds[pixel].value = native_bytes(all_frames)
        if pixel == "PixelData":
            ds[pixel].VR = "OB" if arr.dtype.itemsize == 1 else "OW"
        _set_photometric(ds, header)
        if header.samples_per_pixel > 1:
            ds.PlanarConfiguration = 0
        return _write(ds, target)
    if pixel != "PixelData":
        raise TranscodeError("float pixel data has no compressed transfer syntax")
    encoded = [encode_frame(f, header, target, quality=quality) for f in frames]
    ds.PixelData = encapsulate(encoded, has_bot=len(encoded) > 1)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    _set_photometric(ds, header)
    if header.samples_per_pixel == 3:
        ds.PlanarConfiguration = 0
        if _ENCODERS[target] is _htj2k:
            ds.PhotometricInterpretation = "YBR_RCT"  # PS3.5 8.2.4: RCT applied (_htj2k)
    if is_lossy(target):
        _record_lossy(ds, sum(np.asarray(f).nbytes for f in frames), sum(map(len, encoded)))
    return _write(ds, target)


def _record_lossy(ds: Dataset, raw_bytes: int, coded_bytes: int) -> None:
    """PS3.3 C.7.6.1.1.5: say the pixels went through a lossy step, its method (JPEG baseline
    is the only lossy encoder here) and ratio; after an earlier lossy step the new values are
    appended to the old ones, so a reader sees the whole history."""
    ratio = f"{raw_bytes / max(coded_bytes, 1):.2f}"[:16]
    earlier = str(ds.get("LossyImageCompression", "")) == "01"

    def values(keyword: str) -> list[str]:
        value = ds.get(keyword) if earlier else None
        if value is None or value == "":
            return []
        return [str(v) for v in value] if isinstance(value, list | MultiValue) else [str(value)]

    methods, ratios = values("LossyImageCompressionMethod"), values("LossyImageCompressionRatio")
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = [*methods, "ISO_10918_1"]
    ds.LossyImageCompressionRatio = [*ratios, ratio]


def _decode_all(ds: Dataset, source: str) -> np.ndarray:
    try:
        if source in JPEG_XL_SYNTAXES or source == DEFLATED_IMAGE_FRAME:
            return _frames_of(ds, source)
        try:
            arr = np.asarray(ds.pixel_array)
        except Exception:
            if source not in (JPEG_BASELINE, JPEG_EXTENDED):
                raise
            arr = _frames_of(ds, source)
        return arr.astype(arr.dtype.newbyteorder("="), copy=False)
    except TranscodeError:
        raise
    except Exception as exc:
        raise TranscodeError(f"cannot decode {_name(source)}: {exc}"[:300]) from exc


def _set_photometric(ds: Dataset, header: PixelHeader) -> None:
    after = photometric_after_decode(header)
    if after != header.photometric_interpretation:
        ds.PhotometricInterpretation = after


_SWAP_WIDTH = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}
_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}


def values_as_little_endian(ds: Dataset) -> None:
    """Make a dataset read as big endian writable as little endian (pixels already swapped by
    the caller): every element is converted to its value as read, binary words of other
    elements are swapped, and the dataset then counts as little endian. pydicom refuses to
    change endianness itself, and marking the raw elements little endian wrote their big
    endian bytes as they were (High Bit 15 sent as 3840)."""
    if ds.original_encoding[1] is not False:
        return
    for elem in ds.iterall():  # converts every element, in nested items too
        width = _SWAP_WIDTH.get(str(elem.VR))
        if width and elem.tag not in _PIXEL_TAGS and isinstance(elem.value, bytes):
            words = np.frombuffer(elem.value[: len(elem.value) // width * width], f">u{width}")
            elem.value = words.astype(f"<u{width}").tobytes() + elem.value[len(words) * width :]
    for item in [ds, *(i for e in ds.iterall() if e.VR == "SQ" for i in e.value)]:
        item.set_original_encoding(False, True, item.original_character_set)


def _write(ds: Dataset, target: str) -> bytes:
    ds.file_meta.TransferSyntaxUID = UID(target)
    values_as_little_endian(ds)
    buf = io.BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=True)
    except Exception as exc:
        raise TranscodeError(f"cannot write {_name(target)}: {exc}"[:300]) from exc
    return buf.getvalue()


def describe(ts: str) -> str:
    """A transfer syntax as people read it: name and UID."""
    return _name(ts)


def _name(ts: str) -> str:
    uid = UID(ts)
    return f"{uid.name} ({ts})" if uid.is_transfer_syntax else ts


def header_from_metadata_z(json_z: bytes) -> tuple[dict[str, Any], PixelHeader | None]:
    doc: dict[str, Any] = json.loads(zlib.decompress(json_z))
    return doc, header_from_json(doc)
