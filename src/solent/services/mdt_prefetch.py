"""Warm the DICOMweb caches with what the viewer fetches when an MDT item opens.

For each study: its thumbnail; for each series: the series metadata (as a browser asks for
it: gzip accepted), the series thumbnail and the first image rendered. They go into
``RetrieveService.responses`` under the very keys the WADO-RS adapter computes
(protocols/dicomweb/wado_rs.py: ``metadata|base|gzip|fingerprint`` and
``rendered|frame|options``), so the viewer's first requests are answered from memory. A unit
test fetches the same resources over HTTP afterwards and checks that no new entry was needed,
so a change of the adapter's keys is caught.

Frames (``/frames/N``) have no response cache: they are byte ranges of the stored file.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from solent.dicom.render import RenderOptions, Viewport
from solent.domain.principal import Principal
from solent.domain.records import StoredInstance
from solent.services.retrieve import RetrieveService

GZIP_MIN = 1024  # as wado_rs.GZIP_MIN: smaller metadata bodies are sent uncompressed
#: What a browser's <img> gets for a thumbnail (Accept image/* -> JPEG; 128x128, quality 80).
THUMBNAIL = RenderOptions("image/jpeg", 80, None, "linear", Viewport(128, 128))
#: A rendered frame without parameters.
RENDERED = RenderOptions()
PREFETCH = "mdt prefetch"  # the audit channel of reads made to warm a meeting's caches


def _gzip(body: bytes) -> bytes:
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    return z.compress(body) + z.flush()


def warm_series_metadata(
    svc: RetrieveService, principal: Principal, study: str, series: str, base: str
) -> None:
    identity = svc.current_identity(principal.trust)
    located = svc.series_hashes(principal, study, series, None, channel=PREFETCH)
    hashes, docs = svc.series_metadata(principal, located, base, identity)
    variant = f"metadata|{base}|{True}|{identity.fingerprint(study)}"
    body = b"[" + b",".join(docs) + b"]"
    if len(body) >= GZIP_MIN:
        body = _gzip(body)
    svc.responses.put(svc.etag_of(hashes, variant), body)


def _warm_render(
    svc: RetrieveService, principal: Principal, inst: StoredInstance, opts: RenderOptions
) -> None:
    etag = svc.etag([inst], f"rendered|{1}|{opts!r}")
    if svc.responses.get(etag) is None:
        svc.responses.put(etag, svc.rendered(principal, inst, 1, opts))


def _images(instances: Sequence[StoredInstance]) -> list[StoredInstance]:
    return [i for i in instances if i.number_of_frames]


def warm_study_thumbnail(svc: RetrieveService, principal: Principal, study: str) -> None:
    """The middle image of the first series with images (as wado_rs._representative)."""
    images = _images(
        svc.instances(principal, study, channel=PREFETCH, use="image", with_frames=True)
    )
    if not images:
        return
    series = [i for i in images if i.series_uid == images[0].series_uid]
    _warm_render(svc, principal, series[len(series) // 2], THUMBNAIL)


def warm_series_images(svc: RetrieveService, principal: Principal, study: str, series: str) -> None:
    """The series thumbnail (its middle image) and its first image rendered."""
    images = _images(
        svc.instances(principal, study, series, channel=PREFETCH, use="image", with_frames=True)
    )
    if not images:
        return
    _warm_render(svc, principal, images[len(images) // 2], THUMBNAIL)
    _warm_render(svc, principal, images[0], RENDERED)
