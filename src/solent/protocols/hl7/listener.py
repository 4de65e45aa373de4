"""The MLLP listener `solent serve` starts: one thread per connection, messages in order.

Each message is handled to completion (journalled, applied, committed) before its ACK is
written and before the next message of that connection is read, so a sender's messages are
applied in the order sent. On start, messages journalled by a process that died before
applying them are applied first.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from solent.protocols.hl7.handler import Hl7Handler
from solent.protocols.hl7.mllp import Deframer, FramingError, MessageTooLarge, frame
from solent.protocols.hl7.senders import SenderGate
from solent.protocols.proxy_header import ProxyHeaderError, ProxyHeaderReader
from solent.protocols.tls import server_context
from solent.services.registry import Services

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 600.0
PROXY_HEADER_TIMEOUT_S = 10.0  # the balancer writes it at once, before any MLLP byte
TLS_HANDSHAKE_TIMEOUT_S = 10.0
DRAIN_SECONDS = 10.0  # after refusing an over-large message, how long its rest is read


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        handler: Hl7Handler,
        max_connections: int = 64,
        *,
        idle_timeout: float = IDLE_TIMEOUT_S,
        address_allowed: Callable[[str], bool] | None = None,
        proxy: ProxyHeaderReader | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.hl7 = handler
        self.proxy = proxy
        self.tls = tls  # MLLP over TLS: each connection's handshake runs on its own thread
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.address_allowed = address_allowed
        self.active = 0
        super().__init__(address, _Connection)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Security (issue 6, 11): a connection from an address no registered sender calls
        from, or beyond ``max_connections``, is closed before anything is read, so a flood of
        idle or foreign connections cannot take a thread each."""
        host = str(client_address[0]) if isinstance(client_address, tuple) else ""
        if self.proxy is None and not self.allowed(host):
            return False  # behind a balancer the client's address comes with the first bytes
        with self.lock:
            if self.active >= self.max_connections:
                log.warning("HL7 connection from %s refused: too many connections", client_address)
                return False
            self.active += 1
            return True

    def allowed(self, host: str) -> bool:
        if self.address_allowed is not None and not self.address_allowed(host):
            log.warning(
                "HL7 connection from %s refused: no registered sender calls from this address",
                host,
            )
            return False
        return True


class _Connection(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.server.proxy is not None:
            try:
                self.client_address = self.server.proxy.client_address(sock, self.client_address)
            except ProxyHeaderError as exc:
                log.warning("HL7 connection from %s closed: %s", self.client_address[0], exc)
                return
            if not self.server.allowed(str(self.client_address[0])):
                return
        if self.server.tls is not None:
            sock.settimeout(TLS_HANDSHAKE_TIMEOUT_S)
            try:
                sock = self.server.tls.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                log.warning(
                    "HL7 TLS connection from %s closed: handshake failed (%s)",
                    self.client_address[0],
                    exc,
                )
                return
            self.request = sock  # closed with the connection (socketserver's close_request)
        sock.settimeout(self.server.idle_timeout)
        remote = f"{self.client_address[0]}:{self.client_address[1]}"
        with self.server.lock:
            self.server.connections.add(sock)
        deframer = Deframer()
        try:
            while True:
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    log.info(
                        "HL7 connection from %s closed: idle for %gs", remote, sock.gettimeout()
                    )
                    return
                except OSError:
                    return
                if not data:
                    return
                try:
                    messages = deframer.feed(data)
                except MessageTooLarge as exc:
                    # Refused AR, named by its MSH, so the sender stops resending it; then the
                    # rest is read and dropped for a while, as closing on unread bytes resets
                    # the connection and the sender may lose the AR with it.
                    log.warning("HL7 connection from %s closed: %s", remote, exc)
                    with contextlib.suppress(OSError):
                        for message in exc.before:
                            sock.sendall(frame(self.server.hl7.handle_bytes(message, remote)))
                        sock.sendall(frame(self.server.hl7.refuse_unread(exc.head, str(exc))))
                        sock.shutdown(socket.SHUT_WR)
                        _drain(sock, time.monotonic() + DRAIN_SECONDS)
                    return
                except FramingError as exc:
                    log.warning("HL7 connection from %s closed: %s", remote, exc)
                    return
                for message in messages:
                    ack = self.server.hl7.handle_bytes(message, remote)
                    sock.sendall(frame(ack))
        finally:
            with self.server.lock:
                self.server.connections.discard(sock)

    def finish(self) -> None:
        """Runs after ``handle`` whatever happened in it: frees the connection's slot."""
        with self.server.lock:
            self.server.active -= 1


def _drain(sock: socket.socket, deadline: float) -> None:
    """Read and drop what the peer still sends, until it closes or ``deadline``."""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        if not sock.recv(65536):
            return


class Hl7Listener:
    """HL7 v2 MLLP server (SOLENT_HL7_PORT)."""

    name = "hl7"

    def __init__(self, services: Services) -> None:
        self.services = services
        settings = services.settings
        link_senders = settings.hl7_link_senders
        self.handler = Hl7Handler(
            services,
            link_senders=tuple(s.strip() for s in str(link_senders).split(",") if s.strip()),
            gate=SenderGate(
                services.directory,
                services.audit,
                allow_unknown=settings.hl7_allow_unknown_senders,
            ),
        )
        self._servers: list[_Server] = []
        self.tls_port: int | None = None

    def start(self) -> int:
        recovered = self.handler.recover()
        if recovered:
            log.info("applied %d HL7 message(s) journalled before a restart", recovered)
        settings = self.services.settings
        port = self._serve(settings.hl7_port, None)
        if settings.hl7_tls_port >= 0:
            self.tls_port = self._serve(settings.hl7_tls_port, self.tls_context())
            print(f"  hl7_tls: {settings.bind_address}:{self.tls_port}", flush=True)
        return port

    def tls_context(self) -> ssl.SSLContext:
        """MLLP inside TLS (R37); with a CA, senders must present a certificate it signs and
        are then still checked as on the plain port."""
        s = self.services.settings
        return server_context("SOLENT_HL7_TLS", s.hl7_tls_cert, s.hl7_tls_key, s.hl7_tls_ca)

    def _serve(self, port: int, tls: ssl.SSLContext | None) -> int:
        settings = self.services.settings
        server = _Server(
            (settings.bind_address, port),
            self.handler,
            settings.hl7_max_connections,
            idle_timeout=settings.hl7_idle_timeout_seconds,
            # The development switch lets unregistered senders in, from any address too.
            address_allowed=None
            if settings.hl7_allow_unknown_senders
            else self.services.peers.hl7_sender_address,
            proxy=ProxyHeaderReader.from_settings(
                settings.proxy_protocol, settings.proxy_protocol_from, PROXY_HEADER_TIMEOUT_S
            ),
            tls=tls,
        )
        self._servers.append(server)
        name = "hl7-mllp-tls" if tls is not None else "hl7-mllp"
        threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
        bound: Any = server.server_address[1]
        return int(bound)

    def stop(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.shutdown()
            with server.lock:
                for sock in list(server.connections):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            server.server_close()
