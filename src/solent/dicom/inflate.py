"""A cap on how far a Deflated Explicit VR Little Endian file (PS3.5 A.5) may inflate.

pydicom inflates the whole deflated dataset with one ``zlib.decompress`` call, so a 1 MiB file
of deflated zeros would cost 1 GiB of memory before anything could refuse it. Before pydicom
sees such a file, its stream is inflated here in small chunks that are counted and dropped:
memory stays at one chunk whatever the file claims, and a file beyond the cap is refused.
zlib does the inflating; the counting loop is the only hand-written part (no library offers a
size-capped inflate of a raw deflate stream).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.filereader import _read_file_meta_info, read_preamble

from solent.domain.outcomes import RejectReason

DEFLATED_EXPLICIT_LE = "1.2.840.10008.1.2.1.99"
CHUNK = 1 << 16
# Small files may inflate this far whatever the ratio: a 2 KB deflated SR legitimately
# inflates 20x and more; 1 MiB is still a bounded, trivial cost.
FLOOR = 1 << 20


class InflateRefused(Exception):
    """The deflated stream is over the cap (TOO_LARGE) or not a valid deflate stream."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class InflateLimits:
    """``max_ratio`` x the deflated size, never beyond ``max_bytes`` (settings
    ``deflate_max_ratio`` and ``deflate_max_bytes``)."""

    max_ratio: int = 16
    max_bytes: int = 512 << 20

    def cap(self, deflated_size: int) -> int:
        return min(self.max_bytes, max(FLOOR, self.max_ratio * deflated_size))


def _surely_not_deflated(head: bytes) -> bool:
    """Whether a file starting with ``head`` has a file meta group that ``head`` holds whole
    (its group length says where it ends) and that does not contain the deflated syntax's
    UID anywhere: then it cannot be deflated, without parsing the meta group twice (ingest's
    full parse reads it again)."""
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
        return False
    end = 144 + int.from_bytes(head[140:144], "little")
    return end <= len(head) and DEFLATED_EXPLICIT_LE.encode() not in head[:end]


def deflated_dataset_offset(fp: BinaryIO) -> int | None:
    """Where the deflated dataset starts when the file meta says Deflated Explicit VR LE;
    None for every other file (including those without file meta: pydicom inflates none)."""
    start = fp.tell()
    try:
        if _surely_not_deflated(fp.read(4096)):
            return None
        fp.seek(start)
        read_preamble(fp, True)
        meta = _read_file_meta_info(fp)
        ts = str(meta.get("TransferSyntaxUID", "")).strip().rstrip("\x00")
        return fp.tell() if ts == DEFLATED_EXPLICIT_LE else None
    except Exception:
        return None  # a broken header is judged by the full parse, with its own message
    finally:
        fp.seek(start)


def check_inflated_size(fp: BinaryIO, offset: int, size: int, limits: InflateLimits) -> int:
    """Inflate the raw deflate stream at ``offset`` chunk by chunk, keeping nothing.

    Returns the inflated size; raises InflateRefused once the output passes the cap (without
    inflating further) or when the stream is corrupt.
    """
    deflated = max(size - offset, 0)
    cap = limits.cap(deflated)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    fp.seek(offset)
    try:
        while not inflater.eof:
            data = inflater.unconsumed_tail or fp.read(CHUNK)
            if not data:
                break
            total += len(inflater.decompress(data, CHUNK))
            if total > cap:
                raise InflateRefused(
                    RejectReason.TOO_LARGE,
                    f"the deflated dataset inflates beyond {cap} bytes (limit: "
                    f"{limits.max_ratio}x its {deflated} deflated bytes, at most "
                    f"{limits.max_bytes}); refused",
                )
    except zlib.error as exc:
        raise InflateRefused(
            RejectReason.MALFORMED, f"the deflated dataset is not a valid deflate stream: {exc}"
        ) from exc
    finally:
        fp.seek(offset)
    if not inflater.eof:
        raise InflateRefused(RejectReason.MALFORMED, "the deflated dataset is cut short")
    return total
