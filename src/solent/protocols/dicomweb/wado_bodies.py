"""Multipart/related bodies of WADO-RS answers (PS3.18 8.6): instances and frames, streamed.

Kept apart from ``wado_rs`` (the routes: what is asked, negotiation, caching, audit) so each
reads as one job. Instance parts go out as stored, with the patient's current identity spliced
into the header when it changed, or transcoded; the body's length is known in advance when
every part is (stored bytes or a cached patched header), so big downloads carry one.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from solent.dicom.transcode import TranscodeError
from solent.domain.principal import Principal
from solent.domain.records import StoredInstance
from solent.protocols.dicomweb import accept as neg
from solent.protocols.dicomweb import multipart as mp
from solent.services.outgoing_identity import CurrentIdentity
from solent.services.retrieve import RetrieveService

log = logging.getLogger(__name__)
COALESCE = 2 << 20  # bytes per streamed chunk of a WADO-RS response
Buffer = bytes | bytearray  # a frame read into a buffer of its own is not copied into bytes


def location(base: str, inst: StoredInstance) -> str:
    """The Content-Location of one instance's part."""
    return (
        f"{base}/studies/{inst.study_uid}/series/{inst.series_uid}/instances/"
        f"{inst.sop_instance_uid}"
    )


def dicom_type(ts: str) -> str:
    return f"{neg.DICOM}; transfer-syntax={ts}"


def content_length(
    svc: RetrieveService,
    instances: Sequence[StoredInstance],
    targets: Sequence[str],
    boundary: str,
    base: str,
    identity: CurrentIdentity,
    changed: set[int],
) -> int | None:
    """The body's length when every part is known without work: stored bytes, or a header
    patched earlier (cached); None when something must be transcoded or patched first."""
    total = len(mp.closing(boundary))
    for inst, target in zip(instances, targets, strict=True):
        if target != inst.transfer_syntax_uid:
            return None
        size = inst.size_bytes
        if inst.pk in changed:
            patched = svc.cached_header(inst, identity)
            if patched is None:
                return None
            size = len(patched.head) + inst.size_bytes - patched.tail_offset
        total += len(mp.part_head(boundary, dicom_type(target), location(base, inst))) + size + 2
    return total


def primed(pieces: Iterator[bytes], count: int = 1) -> Iterator[bytes]:
    """``pieces`` with the first ``count`` produced now, in the route: a blob store that cannot
    be read (S3 down) is then a clean 503 with a readable body, not a 200 whose body is cut
    short after its headers. Later pieces follow as the response is sent."""
    first = list(itertools.islice(pieces, count))
    return itertools.chain(first, pieces)


def coalesced(pieces: Iterator[bytes], at_least: int = COALESCE) -> Iterator[bytes]:
    """Joins small pieces (part heads, small files, CRLFs) into big chunks: each chunk a
    streaming response yields costs a thread hop and an ASGI message, whatever its size."""
    batch: list[bytes] = []
    size = 0
    for piece in pieces:
        if len(piece) >= at_least and not batch:
            yield piece
            continue
        batch.append(piece)
        size += len(piece)
        if size >= at_least:
            yield b"".join(batch)
            batch, size = [], 0
    if batch:
        yield b"".join(batch)


def instance_parts(
    svc: RetrieveService,
    who: Principal,
    instances: Sequence[StoredInstance],
    targets: Sequence[str],
    boundary: str,
    base: str,
    first: bytes | None,
    patch: tuple[CurrentIdentity, set[int]],
) -> Iterator[bytes]:
    """Each instance as one part; ``first`` is the first instance already transcoded (so a
    failure could still be a clean 406). An instance that cannot be transcoded once the
    headers are sent is left out and logged."""
    identity, changed = patch
    for n, (inst, target) in enumerate(zip(instances, targets, strict=True)):
        head = mp.part_head(boundary, dicom_type(target), location(base, inst))
        if target == inst.transfer_syntax_uid:
            yield head
            if inst.pk in changed:  # the header only is re-encoded (cached), pixels as stored
                yield from svc.patched_bytes(who, inst, identity)
            else:
                yield from svc.stored_bytes(who, inst)
        else:
            try:
                data = first if n == 0 and first else svc.transcoded(who, inst, target)
                if inst.pk in changed:  # the patient's identity changed since it was stored
                    data = svc.with_identity(who, inst, identity, data)
            except TranscodeError as exc:
                # Headers are sent: the instance is left out and the reason logged.
                log.warning(
                    "instance left out of a WADO-RS response",
                    extra={"sop_instance_uid": inst.sop_instance_uid, "reason": str(exc)},
                )
                continue
            yield head
            yield data
        yield b"\r\n"
    yield mp.closing(boundary)


def single_part_frame(boundary: str, part_type: str) -> tuple[bytes, bytes]:
    """What goes before and after the data of a body of one part."""
    return mp.part_head(boundary, part_type), b"\r\n" + mp.closing(boundary)


def single_part(boundary: str, part_type: str, data: bytes) -> tuple[bytes, ...]:
    """A body of one part held in memory (one frame, one bulk data element), as its pieces.

    Never joined: chained ``+`` copied a 512 KB frame three times and one join still once, each
    copy into a fresh allocation the kernel had to map and zero (a tenth to a third of a
    /frames request's CPU); `PiecesResponse` sends the pieces as they are. (Better still, a
    frame read straight into a buffer between head and tail: `single_part_frame`.)"""
    head, tail = single_part_frame(boundary, part_type)
    return (head, data, tail)


class PiecesResponse(Response):
    """A body known in memory, sent as several ASGI messages instead of one joined copy (the
    server writes them together); Content-Length is their sum."""

    def __init__(
        self, pieces: Sequence[Buffer], *, media_type: str, headers: dict[str, str]
    ) -> None:
        self.pieces = tuple(pieces)
        length = str(sum(len(p) for p in self.pieces))
        super().__init__(None, headers={**headers, "Content-Length": length}, media_type=media_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        last = len(self.pieces) - 1
        for n, piece in enumerate(self.pieces):
            await send({"type": "http.response.body", "body": piece, "more_body": n < last})


def frame_parts(
    boundary: str, part_type: str, first: bytes, rest: Iterable[bytes]
) -> Iterator[bytes]:
    """Frames as parts, streamed; ``first`` was made before answering (a clean error)."""
    yield b"".join((mp.part_head(boundary, part_type), first, b"\r\n"))
    for data in rest:
        yield b"".join((mp.part_head(boundary, part_type), data, b"\r\n"))
    yield mp.closing(boundary)
