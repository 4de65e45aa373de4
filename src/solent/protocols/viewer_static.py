"""The browser viewer's built files at /viewer (issue 12).

The app shell holds no patient data, so it is served without a principal (the security
middleware lets /viewer through); every image and JSON read it makes carries a bearer token.
Hashed assets never change under their name, so browsers keep them a year; index.html is
revalidated each time so a new build is picked up. Files are pre-compressed at build time
(gzip and brotli, viewer/scripts/compress.mjs) and the best one the browser accepts is sent.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

DIST = Path(__file__).resolve().parents[1] / "viewer_dist"
PREFIX = "/viewer"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
ENCODINGS = (("br", ".br"), ("gzip", ".gz"))

router = APIRouter(include_in_schema=False)
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")


def _resolve(path: str) -> Path | None:
    """The built file for ``path``, or None when absent or outside the build directory."""
    root = DIST.resolve()
    target = (root / (path or "index.html")).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        return None
    return target


def _accepted(request: Request) -> set[str]:
    header = request.headers.get("accept-encoding", "")
    return {part.split(";")[0].strip().lower() for part in header.split(",")}


@router.get(PREFIX)
def viewer_root() -> Response:
    return RedirectResponse(f"{PREFIX}/", status_code=308)


@router.get(PREFIX + "/{path:path}")
def viewer_file(path: str, request: Request) -> Response:
    target = _resolve(path)
    if target is None:
        if not (DIST / "index.html").is_file():
            return Response(
                "The viewer is not built: run `make viewer` (or `make run`).",
                status_code=503,
                media_type="text/plain",
            )
        return Response("not found", status_code=404, media_type="text/plain")
    media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    cache = REVALIDATE if target.name == "index.html" else IMMUTABLE
    headers = {"Cache-Control": cache, "Vary": "Accept-Encoding"}
    accepted = _accepted(request)
    for encoding, suffix in ENCODINGS:
        compressed = target.with_name(target.name + suffix)
        if encoding in accepted and compressed.is_file():
            headers["Content-Encoding"] = encoding
            return FileResponse(compressed, media_type=media_type, headers=headers)
    return FileResponse(target, media_type=media_type, headers=headers)
