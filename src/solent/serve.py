"""`solent serve`: the HTTP app plus every protocol listener, one process, clean SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

import uvicorn

from solent import gc_tuning
from solent.app import Archive, Listener
from solent.errors import ConfigurationError, ListenerUnavailable
from solent.http_accept import FairAcceptor, LoadBoard
from solent.http_limits import LimitedHttpProtocol
from solent.http_workers import HttpWorkers
from solent.services.broadcast import ACCESS_CHANNEL
from solent.settings import Settings
from solent.ttl_cache import invalidate_all

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


# The setting that names each listener's port, for the message when it cannot be bound.
PORT_SETTINGS = {"http": "SOLENT_HTTP_PORT", "dicom": "SOLENT_DICOM_PORT", "hl7": "SOLENT_HL7_PORT"}


def port_unavailable(what: str, host: str, port: int, exc: OSError) -> ListenerUnavailable:
    """A refusal to start that says which port, why, and which setting moves it."""
    setting = PORT_SETTINGS.get(what, "its port setting")
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        reason = "address already in use (another `solent serve` or program listens there)"
    return ListenerUnavailable(
        f"cannot listen for {what.upper()} on {host}:{port}: {reason}; stop that program or set "
        f"{setting} to a free port (0 picks one), or SOLENT_BIND_ADDRESS to another address"
    )


def bind_http(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise port_unavailable("http", host, port, exc) from exc
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


class NoDelayHttpProtocol(LimitedHttpProtocol):
    """HTTP protocol with Nagle off: a keep-alive response otherwise waits ~40 ms for the
    client's delayed ACK, which would dominate every WADO frame and metadata request."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


class DrainingServer(uvicorn.Server):
    """Uvicorn with a drain (issue 16): the first SIGTERM/SIGINT fails readiness at once and
    stops the server only ``drain`` seconds later, so a load balancer has taken this node out
    before anything stops accepting; a second signal stops it at once."""

    def __init__(self, config: uvicorn.Config, archive: Archive) -> None:
        super().__init__(config)
        self.archive = archive
        self.drain = archive.settings.shutdown_drain_seconds
        #: Told of each signal first: the HTTP worker processes drain alongside (readiness
        #: fails on every process of the node at once, whichever one the balancer asks).
        self.forward: Callable[[int], None] | None = None
        #: Set when several processes share the port: connections are then accepted fairly
        #: among them (solent.http_accept) instead of by whichever wakes first.
        self.board: LoadBoard | None = None
        #: Called once this process accepts connections (`solent serve` then says READY).
        self.on_started: Callable[[], None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self._listen(sockets)
        if self.on_started is not None:
            self.on_started()

    async def _listen(self, sockets: list[socket.socket] | None) -> None:
        if self.board is None or sockets is None:
            await super().startup(sockets)
            return
        await self.lifespan.startup()
        config, board = self.config, self.board

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        connections = self.server_state.connections
        acceptors = [FairAcceptor(s, protocol, connections, board, config.ssl) for s in sockets]
        self.servers = acceptors  # type: ignore[assignment]  # close()/wait_closed() suffice
        self.started = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.forward is not None:
            self.forward(sig)
        health = self.archive.services.health
        if health.draining or self.drain <= 0:
            health.begin_shutdown()
            super().handle_exit(sig, frame)
            return
        health.begin_shutdown()
        self._captured_signals.append(sig)
        log.info("draining for %.1f s before shutdown", self.drain)
        timer = threading.Timer(self.drain, self._stop)
        timer.daemon = True
        timer.start()

    def _stop(self) -> None:
        self.should_exit = True


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


WS_MAX_MESSAGE = 1024 * 1024


def http_config(archive: Archive, tls_cert: str | None, tls_key: str | None) -> uvicorn.Config:
    """The one uvicorn configuration of `solent serve` and of its HTTP worker processes."""
    from solent.protocols.http import create_app

    settings = archive.settings
    forwarded = [a.strip() for a in settings.http_forwarded_from.split(",") if a.strip()]
    return uvicorn.Config(
        create_app(archive.services),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        lifespan="off",
        http=type(  # issue 11: the request head bounded in size and time (http_limits)
            "SolentHttpProtocol",
            (NoDelayHttpProtocol,),
            {
                "max_head_bytes": settings.http_max_header_bytes,
                "head_timeout": settings.http_header_timeout_seconds,
                "stall_timeout": settings.http_stall_timeout_seconds,
            },
        ),
        limit_concurrency=settings.http_max_connections,  # 503 beyond
        # A WebSocket message (the MDT live room, which refuses more than 64 KiB with a reason)
        # is read into memory whole: at most this much, beyond it the connection closes (1009).
        ws_max_size=WS_MAX_MESSAGE,
        loop="uvloop",
        ssl_certfile=tls_cert,  # HTTPS only when SOLENT_HTTP_TLS_CERT/KEY are set
        ssl_keyfile=tls_key,
        # The client's address (audit trail, login limits) is the TCP peer's unless it is a
        # balancer the operator named: uvicorn would believe anyone on 127.0.0.1 by default.
        proxy_headers=bool(forwarded),
        forwarded_allow_ips=forwarded or None,
    )


def start_http_workers(archive: Archive, sock: socket.socket) -> HttpWorkers | None:
    """``SOLENT_HTTP_WORKERS - 1`` more processes serving HTTP on the same listening socket
    (solent.http_workers); None when there is one. Only on PostgreSQL: that is where the
    processes' caches learn of access changes (broadcast); SQLite keeps one process."""
    count = archive.settings.http_workers - 1
    if count <= 0:
        return None
    if not archive.settings.effective_database_url.startswith("postgres"):
        log.warning("SOLENT_HTTP_WORKERS is for PostgreSQL; on SQLite one process serves HTTP")
        return None
    workers = HttpWorkers(archive.settings, sock, count)
    workers.start()
    log.info("HTTP workers started", extra={"workers": count})
    return workers


def announce(settings: Settings, ports: dict[str, int | str]) -> None:
    """One machine-readable line for tests and tools (``SOLENT_READY``), then some for people."""
    print("SOLENT_READY " + json.dumps(ports, sort_keys=True), flush=True)
    host = settings.bind_address
    scheme = "https" if settings.http_tls_cert else "http"
    print(
        f"Solent PACS is running: {scheme}://{host}:{ports['http']}/health  "
        "(API at /api, metrics at /metrics)",
        flush=True,
    )
    print(f"  viewer: {scheme}://{host}:{ports['http']}/viewer/", flush=True)
    for name, port in ports.items():
        if name not in ("http", "ae_title"):
            print(f"  {name}: {host}:{port}", flush=True)
    print(
        f"  data: {settings.effective_database_url}  blobs: {settings.effective_storage_url}",
        flush=True,
    )


def start_listeners(archive: Archive, http: socket.socket, ports: dict[str, int | str]) -> None:
    """Start DIMSE and MLLP; a port that cannot be bound stops the start with what to change."""
    settings = archive.settings
    started: list[Listener] = []
    for listener in archive.listeners:
        try:
            ports[listener.name] = listener.start()
        except OSError as exc:
            for running in [*started, listener]:
                with contextlib.suppress(Exception):
                    running.stop()
            http.close()
            port = {"dicom": settings.dicom_port, "hl7": settings.hl7_port}.get(listener.name, 0)
            raise port_unavailable(listener.name, settings.bind_address, port, exc) from exc
        started.append(listener)


#: A spool file nobody has written for this long belongs to no running association or STOW-RS
#: request (their network timeouts are a minute); files still open elsewhere are unaffected.
STALE_SPOOL_S = 600.0


def remove_stale_spools(settings: Settings, older_than: float = STALE_SPOOL_S) -> int:
    """Remove what a node killed mid-transfer left in its spool area (partial C-STORE and STOW
    parts: never acknowledged, never indexed), so a node that keeps crashing does not fill its
    disk. Only the spools' own files; the rest of ``tmp_dir`` (migration work) is left."""
    tmp = settings.tmp_dir
    horizon = time.time() - older_than
    removed = 0
    for path in [*tmp.glob("dimse/*.dcm"), *tmp.glob("stow-*.dcm")]:
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < horizon:
                path.unlink()
                removed += 1
    if removed:
        log.info("removed %d stale spool files left by an earlier run", removed)
    return removed


def serve(archive: Archive) -> None:
    settings = archive.settings
    remove_stale_spools(settings)
    tls_cert, tls_key = https_files(archive)
    sock = bind_http(settings.bind_address, settings.http_port)
    ports: dict[str, int | str] = {"http": sock.getsockname()[1]}
    archive.listeners = build_listeners(archive)
    start_listeners(archive, sock, ports)
    if not settings.production:
        log.info(
            "SOLENT_PRODUCTION is off: NHS test numbers (999 range) count as ordinary numbers; "
            "turn it on for an archive of real patients (docs/configuration.md)"
        )
    # Another node changed access (users, tokens, break-glass, links...): drop cached answers
    # now rather than when their TTL runs out (issue 16; PostgreSQL triggers announce it).
    archive.services.broadcast.subscribe(ACCESS_CHANNEL, lambda _note: invalidate_all())
    if settings.jobs_worker:
        archive.services.jobs.start_background()  # change-feed consumers (issue 16)
    # Serving processes warm their own caches: MDT meetings shortly before they start (issue 12).
    archive.services.mdt.start_background()
    workers = None
    if "dicom" in ports:
        from solent.protocols.dimse.workers import start_workers

        dicom = next(x for x in archive.listeners if x.name == "dicom")
        shared = getattr(dicom, "plain_socket", None)  # the fast engine's, for the workers
        workers = start_workers(settings, int(ports["dicom"]), shared)  # READY once they listen
    http_workers = start_http_workers(archive, sock)  # READY only once they listen too
    config = http_config(archive, tls_cert, tls_key)
    server = DrainingServer(config, archive)
    if http_workers is not None:
        server.forward = http_workers.signal
        server.board = http_workers.board  # slot 0: this process

    # Uvicorn shuts down gracefully on SIGTERM/SIGINT and then re-raises the signal with the
    # handlers found at start. Ours ask the server to stop, so a signal that arrives while
    # starting up, before uvicorn takes over, still ends the process cleanly (status 0).
    def stop(sig: int, _frame: object) -> None:
        if http_workers is not None:
            http_workers.signal(sig)
        archive.services.health.begin_shutdown()
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ports["ae_title"] = settings.ae_title
    # READY once this process accepts too (its workers already do): a client that connects
    # on READY is then shared fairly among all of them (solent.http_accept).
    server.on_started = lambda: announce(settings, ports)
    gc_tuning.settle()
    try:
        server.run(sockets=[sock])
    finally:
        if http_workers is not None:
            http_workers.stop()
        if workers is not None:
            workers.stop()
        archive.close()
        print("Solent PACS stopped.", file=sys.stderr, flush=True)
