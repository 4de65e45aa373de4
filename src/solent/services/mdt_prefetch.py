"""Warm what the viewer fetches when an MDT item opens, so the meeting does not wait on it.

Per study, as the viewer asks for it (viewer/src/data.ts, preview.ts, pane.ts):

- the study thumbnail and, per series, the series metadata (gzip accepted) and thumbnail, into
  ``RetrieveService.responses`` under the very keys the WADO-RS adapter computes
  (protocols/dicomweb/wado_rs.py: ``metadata|base|gzip|fingerprint``, ``rendered|frame|options``);
- the preview: the middle slice (in the viewer's slice order) of the first series, rendered
  as ``/frames/N/rendered?quality=85`` with ``Accept: image/jpeg``;
- every frame in the transfer syntax the viewer's Accept header asks for: frames it decodes
  as stored are read from the store (into the page cache, checked with a no-wait read; on a
  store without one, S3, into ``RetrieveService.frames``); native frames, which the viewer
  asks for as lossless HTJ2K, and syntaxes it cannot decode are transcoded into
  ``RetrieveService.frames``, where ``RetrieveService.frame_as`` finds them.

The caches belong to the process that warms them: the prefetch runs in a serving process
(``solent serve``'s first process, where background work runs). Unit tests fetch the same
resources over HTTP afterwards and check they were cache hits, so a change of the adapter's keys
or of the viewer's requests (the Python mirror below is checked against data.ts) is caught.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from solent.dicom import transcode as tc
from solent.dicom.render import RenderOptions, Viewport
from solent.domain.principal import Principal
from solent.domain.records import StoredInstance
from solent.services.retrieve import RetrieveService

log = logging.getLogger(__name__)

GZIP_MIN = 1024  # as wado_rs.GZIP_MIN: smaller metadata bodies are sent uncompressed
#: What a browser's <img> gets for a thumbnail (Accept image/* -> JPEG; 128x128, quality 80).
THUMBNAIL = RenderOptions("image/jpeg", 80, None, "linear", Viewport(128, 128))
#: The viewer's first image (preview.ts): ``frames/N/rendered?quality=85``, Accept image/jpeg.
PREVIEW = RenderOptions("image/jpeg", 85)
PREFETCH = "mdt prefetch"  # the audit channel of reads made to warm a meeting's caches

# What the viewer's frame requests ask for (viewer/src/data.ts ``acceptFor``): syntaxes its
# decoders read as stored, and the native ones it asks for as lossless HTJ2K instead.
VIEWER_NATIVE = frozenset(
    {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
)
VIEWER_DECODES = frozenset(
    {
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
    }
)

WARMED = Counter(
    "solent_mdt_prefetch_warmed_total",
    "What MDT and prior prefetches (R47) warmed, by kind (metadata, thumbnail, preview, "
    "frame-page-cache, frame-memory, frame-transcoded, frame-failed)",
    ["kind"],
)


@dataclass
class Warmed:
    """What one prefetch warmed, by kind (also counted in /metrics)."""

    counts: dict[str, int] = field(default_factory=dict)
    #: Bytes put into ``RetrieveService.frames``: stop before the run evicts its own frames.
    frame_bytes: int = 0

    def add(self, kind: str, n: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n
        WARMED.labels(kind).inc(n)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def viewer_frame_syntax(stored: str) -> str:
    """The transfer syntax the viewer receives a frame stored in ``stored`` in (its Accept
    asks for it first; the archive sends it when it can decode ``stored``)."""
    if stored in VIEWER_DECODES:
        return stored
    if tc.can_decode(stored) and tc.can_encode(tc.HTJ2K_LOSSLESS):
        return tc.HTJ2K_LOSSLESS
    return tc.EXPLICIT_LE if stored in VIEWER_NATIVE else stored


def _gzip(body: bytes) -> bytes:
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    return z.compress(body) + z.flush()


def _sort_key(doc: dict[str, Any]) -> tuple[float, float]:
    """The viewer's slice order (data.ts ``sortKey``): position along the image plane's normal,
    then instance number."""

    def values(tag: str) -> list[Any]:
        return list(doc.get(tag, {}).get("Value") or [])

    ipp, iop = values("00200032"), values("00200037")
    position = 0.0
    if len(ipp) == 3 and len(iop) == 6:
        try:
            r = [float(v) for v in iop]
            n = [
                r[1] * r[5] - r[2] * r[4],
                r[2] * r[3] - r[0] * r[5],
                r[0] * r[4] - r[1] * r[3],
            ]
            position = sum(float(p) * q for p, q in zip(ipp, n, strict=True))
        except (TypeError, ValueError):
            position = 0.0
    number = values("00200013")
    try:
        instance = float(number[0]) if number else 0.0
    except (TypeError, ValueError):
        instance = 0.0
    return position, instance


def _frames_in_viewer_order(docs: Sequence[dict[str, Any]]) -> list[tuple[str, int]]:
    """(SOP instance UID, frame number) of a series' frames as the viewer lists them."""
    out: list[tuple[str, int]] = []
    for doc in sorted(docs, key=_sort_key):
        sop = str((doc.get("00080018", {}).get("Value") or [""])[0])
        try:
            frames = int((doc.get("00280008", {}).get("Value") or [1])[0]) or 1
        except (TypeError, ValueError):
            frames = 1
        out.extend((sop, f) for f in range(1, frames + 1))
    return out


def warm_series_metadata(
    svc: RetrieveService,
    principal: Principal,
    study: str,
    series: str,
    base: str,
    channel: str = PREFETCH,
) -> list[dict[str, Any]]:
    """The series metadata as a browser gets it; returns the documents (viewer order input)."""
    identity = svc.current_identity(principal, principal.trust)
    located = svc.series_hashes(principal, study, series, None, channel=channel)
    hashes, docs = svc.series_metadata(principal, located, base, identity)
    variant = f"metadata|{base}|{True}|{identity.fingerprint(study)}"
    body = b"[" + b",".join(docs) + b"]"
    if len(body) >= GZIP_MIN:
        body = _gzip(body)
    svc.responses.put(svc.etag_of(hashes, variant), body)
    return [json.loads(d) for d in docs]


def _warm_render(
    svc: RetrieveService,
    principal: Principal,
    inst: StoredInstance,
    frame: int,
    opts: RenderOptions,
) -> None:
    etag = svc.etag([inst], f"rendered|{frame}|{opts!r}")
    if etag not in svc.responses:
        svc.responses.put(etag, svc.rendered(principal, inst, frame, opts))


def _images(instances: Sequence[StoredInstance]) -> list[StoredInstance]:
    return [i for i in instances if i.number_of_frames]


def warm_study_thumbnail(
    svc: RetrieveService,
    principal: Principal,
    study: str,
    warmed: Warmed,
    channel: str = PREFETCH,
) -> None:
    """The middle image of the first series with images (as wado_rs._representative)."""
    images = _images(
        svc.instances(principal, study, channel=channel, use="image", with_frames=True)
    )
    if not images:
        return
    series = [i for i in images if i.series_uid == images[0].series_uid]
    _warm_render(svc, principal, series[len(series) // 2], 1, THUMBNAIL)
    warmed.add("thumbnail")


def warm_series(
    svc: RetrieveService,
    principal: Principal,
    study: str,
    series: str,
    base: str,
    warmed: Warmed,
    *,
    preview: bool,
    channel: str = PREFETCH,
) -> None:
    """A series' metadata, thumbnail, frames and, for the study's first series, the preview.
    ``channel``: what the audit records of the reads name (an MDT's warming, a prior prefetch)."""
    docs = warm_series_metadata(svc, principal, study, series, base, channel)
    warmed.add("metadata")
    found = svc.instances(principal, study, series, channel=channel, use="image", with_frames=True)
    images = _images(found)
    if not images:
        return
    _warm_render(svc, principal, images[len(images) // 2], 1, THUMBNAIL)
    warmed.add("thumbnail")
    by_sop = {i.sop_instance_uid: i for i in found}
    frames = _frames_in_viewer_order(docs)
    if preview and frames:
        sop, number = frames[len(frames) // 2]
        shown = by_sop.get(sop)
        if shown is not None and shown.number_of_frames:
            _warm_render(svc, principal, shown, number, PREVIEW)
            warmed.add("preview")
    budget = svc.frames.max_bytes // 2  # more would evict this run's own first frames
    middle = len(frames) // 2  # the viewer opens at the middle and fetches outwards
    order = sorted(range(len(frames)), key=lambda i: abs(i - middle))
    for sop, number in (frames[i] for i in order):
        inst = by_sop.get(sop)
        if inst is None or not inst.number_of_frames or number > inst.number_of_frames:
            continue
        target = viewer_frame_syntax(inst.transfer_syntax_uid)
        try:
            as_stored = inst.frames() is not None and (
                target == inst.transfer_syntax_uid
                or (target == tc.EXPLICIT_LE and inst.transfer_syntax_uid in tc.NATIVE_TARGETS)
            )
            if as_stored:
                where = svc.warm_stored_frame(principal, inst, number)
                if where != "none":
                    warmed.add(f"frame-{where}")
                    continue
            if warmed.frame_bytes >= budget:
                continue
            key = svc.frame_key(inst, number, target)
            if key not in svc.frames:
                doc = svc.metadata_of(principal, inst)
                data = svc.frame_as(principal, inst, number, target, doc)
                warmed.frame_bytes += len(data)
            warmed.add("frame-transcoded")
        except Exception:  # one frame the archive cannot make must not stop the meeting's
            log.warning("prefetch of frame %s of %s failed", number, sop, exc_info=True)
            warmed.add("frame-failed")
