"""Accept header parsing and PS3.18 content negotiation (instances, frames, rendered).

Pure functions: the routes pass the header and the stored transfer syntax, and get back what
to send or a NotAcceptable with a message a person can act on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from solent.dicom import transcode as tc

DICOM = "application/dicom"
OCTETS = "application/octet-stream"
WILDCARDS = {"*/*", "*", "multipart/*"}

# Image media types of pixel data and their transfer syntaxes, the default first (PS3.18 8.7.3).
IMAGE_FAMILIES: dict[str, tuple[str, ...]] = {
    "image/jpeg": (
        tc.JPEG_LOSSLESS_SV1,
        tc.JPEG_BASELINE,
        tc.JPEG_EXTENDED,
        tc.JPEG_LOSSLESS,
    ),
    "image/jls": (tc.JPEG_LS, tc.JPEG_LS_NEAR),
    "image/x-jls": (tc.JPEG_LS, tc.JPEG_LS_NEAR),
    "image/jp2": (tc.J2K_LOSSLESS, tc.J2K),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/jphc": (tc.HTJ2K_LOSSLESS, tc.HTJ2K_LOSSLESS_RPCL, tc.HTJ2K),
    "image/dicom-rle": (tc.RLE,),
    "image/x-dicom-rle": (tc.RLE,),
    "image/jxl": tuple(sorted(tc.JPEG_XL_SYNTAXES)),
    "video/mpeg2": ("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101"),
    "video/mp4": tuple(f"1.2.840.10008.1.2.4.{n}" for n in range(102, 107)),
}
MEDIA_OF_SYNTAX: dict[str, str] = {}
for _media, _syntaxes in IMAGE_FAMILIES.items():
    for _ts in _syntaxes:
        MEDIA_OF_SYNTAX.setdefault(_ts, _media)


class NotAcceptable(Exception):
    """Nothing in Accept can be produced; the message says what can."""


@dataclass(frozen=True, slots=True)
class MediaRange:
    media: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def inner(self) -> str:
        """The type of the parts for multipart/related, else the type itself."""
        if self.media == "multipart/related":
            return self.params.get("type", "*/*").lower()
        return self.media

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


def _split(value: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [p.strip() for p in out if p.strip()]


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges by preference (q descending, then order). Missing header: */*."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[tuple[float, int, MediaRange]] = []
    for pos, item in enumerate(_split(header, ",")):
        pieces = _split(item, ";")
        media = pieces[0].lower()
        if "/" not in media and media != "*":
            raise NotAcceptable(f"Accept value {item!r} is not a media type")
        params: dict[str, str] = {}
        q = 1.0
        for p in pieces[1:]:
            name, _, val = p.partition("=")
            name, val = name.strip().lower(), val.strip().strip('"')
            if name == "q":
                try:
                    q = float(val)
                except ValueError as exc:
                    raise NotAcceptable(f"Accept quality {val!r} is not a number") from exc
            else:
                params[name] = val
        if q > 0:
            ranges.append((-q, pos, MediaRange(media, params, q)))
    return [r for _, _, r in sorted(ranges, key=lambda x: (x[0], x[1]))]


def _feasible(stored: str, target: str) -> bool:
    return target == stored or (tc.can_decode(stored) and tc.can_encode(target))


def negotiate_instance(ranges: list[MediaRange], stored: str) -> str:
    """Transfer syntax to send an instance in (``stored`` means the bytes as stored)."""
    for r in ranges:
        inner = r.inner
        ts = r.transfer_syntax
        if inner in WILDCARDS and r.media in WILDCARDS and ts is None:
            return stored  # no preference at all: the server's choice, which is as stored
        if inner not in (DICOM, *WILDCARDS):
            continue
        if ts is None:
            ts = tc.EXPLICIT_LE  # PS3.18 default for application/dicom
        if ts == "*":
            return stored
        if _feasible(stored, ts):
            return stored if ts == stored else ts
    raise NotAcceptable(
        f"cannot send this instance in any accepted form: it is stored as {tc.describe(stored)}; "
        f'ask for multipart/related; type="application/dicom" with transfer-syntax=* (as stored), '
        f"{tc.EXPLICIT_LE} or one of {', '.join(sorted(tc.ENCODABLE))}"
    )


def stored_media_type(stored: str) -> str:
    return OCTETS if stored in tc.NATIVE else MEDIA_OF_SYNTAX.get(stored, OCTETS)


@dataclass(frozen=True, slots=True)
class FramePlan:
    media_type: str  # of each part
    transfer_syntax: str  # what the bytes are in
    as_stored: bool


def negotiate_pixels(ranges: list[MediaRange], stored: str) -> FramePlan:
    """How to send pixel data frames (or Pixel Data bulk data) stored in ``stored``."""
    for plan in pixel_plans(ranges, stored):
        return plan
    raise NotAcceptable(
        f"cannot send these frames in any accepted form: they are stored as "
        f"{tc.describe(stored)}; ask for {stored_media_type(stored)} (as stored), "
        f"application/octet-stream (uncompressed) or an image type with a transfer-syntax of "
        f"{', '.join(sorted(tc.ENCODABLE - tc.NATIVE_TARGETS))}"
    )


def pixel_plans(ranges: list[MediaRange], stored: str) -> Iterator[FramePlan]:
    """Every acceptable way to send frames stored in ``stored``, the caller's first choice
    first. Whether an encoding works depends on the pixels too (1-bit and float pixels have
    no compressed syntax): a caller that finds the first plan infeasible tries the next, as
    the client's Accept allows (the viewer asks for HTJ2K, then uncompressed; q=0.5)."""
    stored_native = stored in tc.NATIVE
    for r in ranges:
        inner, ts = r.inner, r.transfer_syntax
        if inner in WILDCARDS or (inner == "image/*" and not stored_native):
            if ts in (None, "*", stored):
                if stored_native:
                    yield FramePlan(OCTETS, tc.EXPLICIT_LE, False)
                else:
                    yield FramePlan(stored_media_type(stored), stored, True)
            continue
        if inner == OCTETS:
            if ts == "*":  # any syntax, labelled octet-stream (what OHIF asks for)
                if stored_native:
                    yield FramePlan(OCTETS, tc.EXPLICIT_LE, False)
                else:
                    yield FramePlan(OCTETS, stored, True)
            elif ts in (None, tc.EXPLICIT_LE) and tc.can_decode(stored):
                yield FramePlan(OCTETS, tc.EXPLICIT_LE, False)
            continue
        family = IMAGE_FAMILIES.get(inner)
        if family is None:
            continue
        if ts in (None, "*"):
            if stored in family:
                yield FramePlan(inner, stored, True)
                continue
            for candidate in family:
                if _feasible(stored, candidate) and not tc.is_lossy(candidate):
                    yield FramePlan(inner, candidate, False)
                    break
            continue
        if ts in family and _feasible(stored, ts):
            yield FramePlan(inner, ts, ts == stored)


RENDERED = ("image/jpeg", "image/png", "image/gif")


def negotiate_rendered(ranges: list[MediaRange]) -> str:
    for r in ranges:
        media = r.inner if r.media == "multipart/related" else r.media
        if media in RENDERED:
            return media
        if media in WILDCARDS or media == "image/*":
            return "image/jpeg"
    raise NotAcceptable("rendered images are available as image/jpeg, image/png or image/gif")
