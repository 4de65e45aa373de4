"""OHIF Viewer 3.x as a trust runs it: its prebuilt ``dist/`` from npm, unmodified, served by a
small Starlette app that writes ``app-config.js`` and proxies ``/dicomweb`` to Solent adding
the bearer token (the browser never holds one).

The package is fetched once with ``npm pack`` into ``.venv/cache/ohif`` (about 50 MB) and
reused by later runs.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import REPO, require

OHIF_VERSION = "3.13.2"
CACHE = REPO / ".venv" / "cache" / "ohif"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}
PASSED_UP = ("accept", "accept-encoding", "if-none-match", "range")

mimetypes.add_type("application/wasm", ".wasm")  # Python 3.11 does not know it


def ohif_dist() -> Path:
    """The ``dist/`` folder of @ohif/app, fetched by npm once and kept in the cache."""
    dist = CACHE / OHIF_VERSION / "package" / "dist"
    if (dist / "index.html").is_file():
        return dist
    npm = shutil.which("npm")
    require(npm is not None, "the `npm` program (to fetch @ohif/app)")
    assert npm is not None
    work = CACHE / f"{OHIF_VERSION}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        done = subprocess.run(
            [npm, "pack", f"@ohif/app@{OHIF_VERSION}", "--pack-destination", str(work)],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=work,
        )
    except subprocess.TimeoutExpired:
        done = None
    tarballs = list(work.glob("*.tgz"))
    require(
        done is not None and done.returncode == 0 and len(tarballs) == 1,
        f"@ohif/app@{OHIF_VERSION} from the npm registry",
    )
    with tarfile.open(tarballs[0]) as tar:
        tar.extractall(work, filter="data")  # no links or paths outside ``work``
    tarballs[0].unlink()
    final = CACHE / OHIF_VERSION
    shutil.rmtree(final, ignore_errors=True)
    work.rename(final)
    return dist


def app_config(origin: str, image_rendering: str, thumbnail_rendering: str) -> str:
    """OHIF's configuration: one DICOMweb data source, Solent behind this server's proxy."""
    root = f"{origin}/dicomweb"
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 1,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": False,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "solent",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "solent",
                "configuration": {
                    "friendlyName": "Solent PACS",
                    "name": "solent",
                    "wadoUriRoot": f"{root}/wado",
                    "qidoRoot": root,
                    "wadoRoot": root,
                    "qidoSupportsIncludeField": False,
                    "imageRendering": image_rendering,
                    "thumbnailRendering": thumbnail_rendering,
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "singlepart": "bulkdata,video",
                    "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                    "omitQuotationForMultipartRequest": True,
                },
            }
        ],
    }
    return f"window.config = {json.dumps(config, indent=1)};\n"


@dataclass
class ViewerSite:
    """The viewer's web server; ``image_rendering`` and ``thumbnail_rendering`` are read on
    every request of ``app-config.js``, so a test switches modes with a page load."""

    dist: Path
    solent: str  # base URL of `solent serve` (or of another archive, see upstream_root)
    token: str  # bearer token added to every proxied request; "" adds none
    image_rendering: str = "wadors"
    thumbnail_rendering: str = "wadors"
    requests: list[tuple[str, int, str]] = field(default_factory=list)  # (path?query, status, type)
    origin: str = ""
    # Where the archive's DICOMweb lives: Solent's /dicomweb, Orthanc's /dicom-web (bench/viewer.py)
    upstream_root: str = "/dicomweb"

    def app(self) -> Starlette:
        client = httpx.AsyncClient(base_url=self.solent, timeout=60)

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            yield
            await client.aclose()

        async def config(request: Request) -> Response:
            text = app_config(self.origin, self.image_rendering, self.thumbnail_rendering)
            return Response(
                text, media_type="text/javascript", headers={"Cache-Control": "no-store"}
            )

        async def proxy(request: Request) -> Response:
            headers = {k: v for k, v in request.headers.items() if k.lower() in PASSED_UP}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            path = self.upstream_root + request.url.path.removeprefix("/dicomweb")
            url = httpx.URL(path=path, query=request.url.query.encode())
            upstream = await client.send(
                client.build_request(request.method, url, headers=headers), stream=True
            )
            target = request.url.path + ("?" + request.url.query if request.url.query else "")
            self.requests.append(
                (target, upstream.status_code, upstream.headers.get("content-type", ""))
            )
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}

            async def body() -> AsyncIterator[bytes]:
                async for chunk in upstream.aiter_raw():
                    yield chunk

            return StreamingResponse(
                body(),
                status_code=upstream.status_code,
                headers=out,
                background=BackgroundTask(upstream.aclose),
            )

        async def static(request: Request) -> Response:
            rel = request.path_params["path"]
            path = (self.dist / rel).resolve()
            if rel and path.is_file() and self.dist.resolve() in path.parents:
                return FileResponse(path)
            return FileResponse(self.dist / "index.html")  # the app's own routes (/viewer...)

        return Starlette(
            routes=[
                Route("/app-config.js", config),
                Route("/dicomweb/{rest:path}", proxy, methods=["GET"]),
                Route("/{path:path}", static),
            ],
            lifespan=lifespan,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_viewer(site: ViewerSite) -> Iterator[ViewerSite]:
    """Run the site with uvicorn on loopback in a thread; stopped on exit."""
    port = _free_port()
    site.origin = f"http://127.0.0.1:{port}"
    # The proxy's httpx logs a line per request from the server thread, which outlives the
    # test's captured output under pytest-xdist ("Logging error ... closed file"): not needed.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = uvicorn.Config(site.app(), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="ohif-site", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("the viewer site did not start")
        time.sleep(0.05)
    try:
        yield site
    finally:
        server.should_exit = True
        thread.join(timeout=30)
