"""brotli/gzip on the JSON API only (issue 12): /api answers shrink; frames and other routes are
sent as they are (multipart/octet-stream frames must never be re-encoded by the server)."""

from __future__ import annotations

import json

import brotli
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from solent.protocols.compression import ApiGZipMiddleware

ROWS = [{"nhs": f"999000{i:04d}", "name": "DEMO^Patient", "trust": "ZZA"} for i in range(200)]
FRAME = bytes(range(256)) * 4096  # 1 MiB of "pixels"


def api(_: Request) -> Response:
    return JSONResponse({"rows": ROWS})


def tiny(_: Request) -> Response:
    return JSONResponse({"ok": True})


def frames(_: Request) -> Response:
    return Response(FRAME, media_type='multipart/related; type="application/octet-stream"')


def client() -> TestClient:
    app = Starlette(
        routes=[
            Route("/api/search", api),
            Route("/api/tiny", tiny),
            Route("/dicomweb/studies/1/series/2/instances/3/frames/1", frames),
        ]
    )
    return TestClient(ApiGZipMiddleware(app))


def test_api_json_is_gzipped_when_accepted() -> None:
    c = client()
    r = c.get("/api/search", headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert json.loads(r.content) == {"rows": ROWS}  # httpx decodes; the body is intact
    raw = c.get("/api/search", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in raw.headers
    assert int(r.headers["content-length"]) * 5 < len(raw.content)


def test_small_api_answers_and_frames_are_left_alone() -> None:
    c = client()
    assert "content-encoding" not in c.get("/api/tiny", headers={"Accept-Encoding": "gzip"}).headers
    r = c.get(
        "/dicomweb/studies/1/series/2/instances/3/frames/1", headers={"Accept-Encoding": "gzip"}
    )
    assert "content-encoding" not in r.headers and r.content == FRAME


def test_api_json_is_brotli_when_br_is_accepted() -> None:
    c = client()
    r = c.get("/api/search", headers={"Accept-Encoding": "gzip, deflate, br"})
    assert r.status_code == 200 and r.headers["content-encoding"] == "br"
    assert "accept-encoding" in r.headers["vary"].lower()
    gz = c.get("/api/search", headers={"Accept-Encoding": "gzip"})
    assert int(r.headers["content-length"]) < int(gz.headers["content-length"])
    # The bytes on the wire decompress to the very JSON (read raw, not through httpx).
    with c.stream("GET", "/api/search", headers={"Accept-Encoding": "br"}) as raw:
        wire = b"".join(raw.iter_raw())
    assert json.loads(brotli.decompress(wire)) == {"rows": ROWS}
    refused = c.get("/api/search", headers={"Accept-Encoding": "br;q=0, gzip"})
    assert refused.headers["content-encoding"] == "gzip"
    small = c.get("/api/tiny", headers={"Accept-Encoding": "br"})
    assert "content-encoding" not in small.headers and small.json() == {"ok": True}
    frame = c.get(
        "/dicomweb/studies/1/series/2/instances/3/frames/1", headers={"Accept-Encoding": "br"}
    )
    assert "content-encoding" not in frame.headers and frame.content == FRAME
