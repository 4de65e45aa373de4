"""`solent serve`: the HTTP app plus every protocol listener, one process, clean SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from solent.app import Archive, Listener
from solent.errors import ConfigurationError

log = logging.getLogger(__name__)


def build_listeners(archive: Archive) -> list[Listener]:
    """Protocol listeners beside HTTP. DIMSE and HL7 MLLP register here as they land."""
    listeners: list[Listener] = []
    try:
        from solent.protocols.dimse.listener import DimseListener
    except ImportError:
        pass
    else:
        listeners.append(DimseListener(archive.services))
    try:
        from solent.protocols.hl7.listener import Hl7Listener
    except ImportError:
        pass
    else:
        listeners.append(Hl7Listener(archive.services))
    return listeners


def bind_http(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


class NoDelayHttpProtocol(HttpToolsProtocol):
    """HTTP protocol with Nagle off: a keep-alive response otherwise waits ~40 ms for the
    client's delayed ACK, which would dominate every WADO frame and metadata request."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def https_files(archive: Archive) -> tuple[str | None, str | None]:
    """(certificate, key) for uvicorn when SOLENT_HTTP_TLS_CERT/KEY are set (issue 6): the port
    then speaks HTTPS only. Checked before anything listens, so a bad path fails the start."""
    settings = archive.settings
    if settings.http_tls_cert is None or settings.http_tls_key is None:
        return None, None
    for what, path in (("certificate", settings.http_tls_cert), ("key", settings.http_tls_key)):
        if not path.is_file():
            raise ConfigurationError(f"HTTPS {what} {path} does not exist or is not a file")
    return str(settings.http_tls_cert), str(settings.http_tls_key)


def serve(archive: Archive) -> None:
    from solent.protocols.http import create_app

    settings = archive.settings
    tls_cert, tls_key = https_files(archive)
    sock = bind_http(settings.bind_address, settings.http_port)
    ports: dict[str, int | str] = {"http": sock.getsockname()[1]}
    archive.listeners = build_listeners(archive)
    for listener in archive.listeners:
        ports[listener.name] = listener.start()
    workers = None
    if "dicom" in ports:
        from solent.protocols.dimse.workers import start_workers

        workers = start_workers(settings, int(ports["dicom"]))  # READY only once they listen
    config = uvicorn.Config(
        create_app(archive.services),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        lifespan="off",
        http=NoDelayHttpProtocol,
        loop="uvloop",
        ssl_certfile=tls_cert,  # HTTPS only when SOLENT_HTTP_TLS_CERT/KEY are set
        ssl_keyfile=tls_key,
    )
    server = uvicorn.Server(config)

    # Uvicorn shuts down gracefully on SIGTERM/SIGINT and then re-raises the signal with the
    # handlers found at start. Ours ask the server to stop, so a signal that arrives after
    # SOLENT_READY but before uvicorn takes over still ends the process cleanly (status 0).
    def stop(*_: object) -> None:
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ports["ae_title"] = settings.ae_title
    # One machine-readable line for tests and tools, then one for people.
    print("SOLENT_READY " + json.dumps(ports, sort_keys=True), flush=True)
    host = settings.bind_address
    scheme = "https" if settings.http_tls_cert else "http"
    print(
        f"Solent PACS is running: {scheme}://{host}:{ports['http']}/health  "
        "(API at /api, metrics at /metrics)",
        flush=True,
    )
    for name, port in ports.items():
        if name not in ("http", "ae_title"):
            print(f"  {name}: {host}:{port}", flush=True)
    print(
        f"  data: {settings.effective_database_url}  blobs: {settings.effective_storage_url}",
        flush=True,
    )
    try:
        server.run(sockets=[sock])
    finally:
        if workers is not None:
            workers.stop()
        archive.close()
        print("Solent PACS stopped.", file=sys.stderr, flush=True)
