"""Byte ranges of every frame in a stored file, found once at ingest.

pydicom can decode frames but not tell us where each one's bytes sit in the file; serving
/frames by byte range (no parse, no decode) needs exactly that, so the walk over the Pixel Data
element and its encapsulated items is written here. It also catches truncated and inconsistent
Pixel Data, which pydicom only notices when decoding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from solent.errors import InvalidInput

ITEM = 0xFFFEE000
SEQUENCE_DELIMITER = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF

# A frame is one or more byte ranges (an encapsulated frame may span fragments).
Frame = list[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class PixelLayout:
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    number_of_frames: int

    @property
    def frame_bits(self) -> int:
        return self.rows * self.columns * self.samples_per_pixel * self.bits_allocated

    @property
    def native_length(self) -> int:
        return (self.frame_bits * self.number_of_frames + 7) // 8


@dataclass(frozen=True, slots=True)
class PixelDataInfo:
    encapsulated: bool
    value_offset: int
    value_length: int  # for encapsulated: up to and including the sequence delimiter
    frames: list[Frame] | None  # None when frames are not byte-addressable (e.g. 1-bit native)


def _read_exact(fp: BinaryIO, n: int, what: str) -> bytes:
    data = fp.read(n)
    if len(data) != n:
        raise InvalidInput(f"file ends inside {what}")
    return data


def read_pixel_data(
    fp: BinaryIO,
    file_size: int,
    *,
    little_endian: bool,
    implicit_vr: bool,
    layout: PixelLayout | None,
) -> PixelDataInfo:
    """Walk the Pixel Data element that starts at ``fp``'s position."""
    start = fp.tell()
    e = "<" if little_endian else ">"
    group, elem = struct.unpack(e + "HH", _read_exact(fp, 4, "the Pixel Data header"))
    if implicit_vr:
        (length,) = struct.unpack(e + "L", _read_exact(fp, 4, "the Pixel Data header"))
    else:
        vr = _read_exact(fp, 2, "the Pixel Data header")
        if vr in (b"OB", b"OW", b"OF", b"OD", b"OL", b"UN", b"OV"):
            fp.read(2)
            (length,) = struct.unpack(e + "L", _read_exact(fp, 4, "the Pixel Data header"))
        else:
            raise InvalidInput(f"Pixel Data has VR {vr!r}, expected OB or OW")
    value_offset = fp.tell()
    tag = (group << 16) | elem
    if length != UNDEFINED:
        if value_offset + length > file_size:
            raise InvalidInput(
                f"Pixel Data declares {length} bytes but the file ends after "
                f"{file_size - value_offset}"
            )
        return PixelDataInfo(
            False, value_offset, length, _native_frames(tag, value_offset, length, layout)
        )
    return _encapsulated(fp, file_size, value_offset, layout, start)


def _native_frames(
    tag: int, offset: int, length: int, layout: PixelLayout | None
) -> list[Frame] | None:
    if tag != 0x7FE00010:
        return [[(offset, length)]]  # float / double float pixel data: one frame per file here
    if layout is None:
        raise InvalidInput("Pixel Data present but Rows/Columns/Bits Allocated missing")
    expected = layout.native_length
    if length < expected:
        raise InvalidInput(
            f"Pixel Data is {length} bytes, shorter than Rows x Columns x Samples x Bits x "
            f"Frames = {expected} bytes"
        )
    if layout.frame_bits % 8:
        return None  # 1-bit frames that do not start on a byte boundary
    size = layout.frame_bits // 8
    return [[(offset + i * size, size)] for i in range(layout.number_of_frames)]


def _encapsulated(
    fp: BinaryIO, file_size: int, value_offset: int, layout: PixelLayout | None, start: int
) -> PixelDataInfo:
    fragments: list[tuple[int, int]] = []
    bot: bytes | None = None
    while True:
        header = fp.read(8)
        if len(header) < 8:
            raise InvalidInput("encapsulated Pixel Data ends without a sequence delimiter")
        group, elem, length = struct.unpack("<HHL", header)
        tag = (group << 16) | elem
        if tag == SEQUENCE_DELIMITER:
            break
        if tag != ITEM:
            raise InvalidInput(
                f"unexpected tag ({group:04X},{elem:04X}) inside encapsulated Pixel Data"
            )
        pos = fp.tell()
        if length == UNDEFINED or pos + length > file_size:
            raise InvalidInput("an encapsulated Pixel Data fragment runs past the end of the file")
        if bot is None:
            bot = _read_exact(fp, length, "the Basic Offset Table")
        else:
            fragments.append((pos, length))
            fp.seek(length, 1)
    end = fp.tell()
    if not fragments:
        raise InvalidInput("encapsulated Pixel Data has no fragments")
    n = layout.number_of_frames if layout else 1
    frames = _map_fragments(fp, fragments, n, bot or b"")
    return PixelDataInfo(True, value_offset, end - value_offset, frames)


def _map_fragments(
    fp: BinaryIO, fragments: list[tuple[int, int]], n_frames: int, bot: bytes
) -> list[Frame] | None:
    if n_frames == 1:
        return [list(fragments)]
    if len(fragments) == n_frames:
        return [[f] for f in fragments]
    if bot and len(bot) == 4 * n_frames:
        # Offsets count from the first fragment's item tag, which sits 8 bytes before its value.
        first_item = fragments[0][0] - 8
        starts = [first_item + o for o in struct.unpack(f"<{n_frames}L", bot)]
        frames: list[Frame] = [[] for _ in range(n_frames)]
        k = 0
        for frag in fragments:
            while k + 1 < n_frames and frag[0] - 8 >= starts[k + 1]:
                k += 1
            frames[k].append(frag)
        return frames if all(frames) else None
    # No usable offset table: a frame starts with a JPEG SOI, J2K SOC or JPEG-XL marker.
    frames = []
    for off, length in fragments:
        fp.seek(off)
        head = fp.read(2)
        if not frames or head in (b"\xff\xd8", b"\xff\x4f", b"\xff\x0a"):
            frames.append([(off, length)])
        else:
            frames[-1].append((off, length))
    return frames if len(frames) == n_frames else None
