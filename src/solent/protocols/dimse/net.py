"""pynetdicom plumbing Solent needs and pynetdicom does not give: TCP_NODELAY, raw receive.

Nagle's algorithm on a DIMSE socket costs ~90 ms per round trip on loopback (C-STORE on one
association drops from ~190 to ~20 instances/s), so every socket we accept or open gets
TCP_NODELAY. Received C-STOREs are written to a spool file untouched (pynetdicom's chunked
receive), never decoded, and hashed as the fragments arrive so ingest need not read them again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import ssl
import tempfile
from pathlib import Path
from typing import Any

from pydicom._uid_dict import UID_dictionary
from pydicom.uid import UID, AllTransferSyntaxes
from pynetdicom import AllStoragePresentationContexts, _config, dimse_messages, sop_class
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.presentation import build_context
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from solent.protocols.dimse import suboperations
from solent.protocols.dimse.artim import PendingConnections
from solent.protocols.proxy_header import ProxyHeaderError, ProxyHeaderReader

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

UNCOMPRESSED = (
    UID("1.2.840.10008.1.2.1"),  # Explicit VR Little Endian
    UID("1.2.840.10008.1.2"),  # Implicit VR Little Endian
    UID("1.2.840.10008.1.2.2"),  # Explicit VR Big Endian
)
EXPLICIT_LE = UNCOMPRESSED[0]
# Everything pydicom names plus the newer syntaxes it does not yet (storing needs no decoding).
EXTRA_SYNTAXES = (
    "1.2.840.10008.1.2.4.110",  # JPEG XL Lossless
    "1.2.840.10008.1.2.4.111",  # JPEG XL JPEG Recompression
    "1.2.840.10008.1.2.4.112",  # JPEG XL
    "1.2.840.10008.1.2.8.1",  # Deflated Image Frame Compression
)
STORAGE_SYNTAXES: tuple[UID, ...] = tuple(
    dict.fromkeys([*UNCOMPRESSED, *AllTransferSyntaxes, *(UID(u) for u in EXTRA_SYNTAXES)])
)


def _storage_sop_classes() -> tuple[UID, ...]:
    """pynetdicom's storage SOP classes plus the ones pydicom's dictionary adds (retired ones
    such as the 1994 Ultrasound Image Storage that old modalities still send).

    The additions are registered with pynetdicom so it routes their C-STOREs to the Storage
    Service Class instead of refusing them.
    """
    known = [UID(cx.abstract_syntax) for cx in AllStoragePresentationContexts if cx.abstract_syntax]
    registered = sop_class._STORAGE_CLASSES
    for uid, (name, kind, *_rest) in UID_dictionary.items():
        storage = kind == "SOP Class" and "Storage" in name
        if storage and uid.startswith("1.2.840.10008.5.1.4.1.1.") and UID(uid) not in known:
            known.append(UID(uid))
            registered.setdefault(f"SolentExtra{uid}", UID(uid))
    return tuple(known)


STORAGE_SOP_CLASSES: tuple[UID, ...] = _storage_sop_classes()


def storage_context_for_unknown(uid: str) -> Any:
    """A storage context for a private or unknown SOP class (policy: accept as sent).

    The UID is registered with pynetdicom so its C-STOREs reach the Storage Service Class.
    """
    sop_class._STORAGE_CLASSES.setdefault(f"SolentUnknown{uid}", UID(uid))
    cx = build_context(uid, list(STORAGE_SYNTAXES))
    cx.scu_role = True
    cx.scp_role = True
    return cx


def set_nodelay(sock: socket.socket) -> None:
    """Turn Nagle off; harmless on sockets that are not TCP (AF_UNIX in tests)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NoDelayAssociationSocket(AssociationSocket):
    """Outgoing association socket with TCP_NODELAY set before connecting."""

    def _create_socket(self, address: Any) -> socket.socket:
        sock = super()._create_socket(address)
        set_nodelay(sock)
        return sock


#: Largest PDU a peer may send before it is associated: the A-ASSOCIATE-RQ, a few KiB even with
#: hundreds of presentation contexts. pynetdicom would read whatever length the PDU header
#: claims (up to 4 GiB) into memory from a peer nobody has identified yet.
MAX_UNASSOCIATED_PDU = 1 << 20


class BoundedAssociationSocket(AssociationSocket):
    """An accepted socket that refuses an oversized PDU before the association is established
    (the DUL then sees a short PDU and closes the connection)."""

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > MAX_UNASSOCIATED_PDU and not self.assoc.is_established:
            if self.socket is not None:
                with contextlib.suppress(OSError):
                    self.socket.shutdown(socket.SHUT_RDWR)
            return bytearray()
        return super().recv(nr_bytes)


class BoundedRequestHandler(RequestHandler):
    """pynetdicom's handler with the bounded socket (set by class: the socket's constructor
    queues the transport-connected event, so a second instance cannot be made)."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        assoc.dul.socket.__class__ = BoundedAssociationSocket
        return assoc


class SharedContexts(list[Any]):
    """The server's supported contexts, shared (not deep-copied) by each new association.

    pynetdicom deep-copies them per association: with ~170 storage SOP classes x ~45 transfer
    syntaxes that is ~0.2 s before every A-ASSOCIATE-AC. Negotiation only reads them, and the
    access check replaces (never mutates) an association's list.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return list(self)


class NoDelayServer(ThreadedAssociationServer):
    """Threaded association server that sets TCP_NODELAY on every accepted connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.contexts = SharedContexts(self.contexts)

    pending: PendingConnections | None = None  # the listener's ARTIM bookkeeping (issue 11)
    proxy: ProxyHeaderReader | None = None  # PROXY protocol behind a balancer (issue 16)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """In the connection's own thread: the client's address from the balancer's PROXY
        header first, so the association's requestor (and the peer check) is the client."""
        if self.proxy is not None:
            try:
                client_address = self.proxy.client_address(request, client_address)
            except ProxyHeaderError as exc:
                log.warning("DICOM connection from %s closed: %s", client_address[0], exc)
                return
        super().finish_request(request, client_address)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        # Not pynetdicom's get_request: it does the TLS handshake here, in the one thread that
        # accepts, so a client that connects and sends nothing stalls every other client. The
        # handshake is done in the connection's own thread (process_request_thread).
        assert self.socket is not None
        client, address = self.socket.accept()
        set_nodelay(client)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        if self.pending is not None:
            self.pending.admit(client, address)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """The TLS handshake, bounded by the ARTIM timeout, then the association."""
        if isinstance(request, ssl.SSLSocket):
            timeout = request.gettimeout()
            request.settimeout(float(self.ae.acse_timeout or 30))
            try:
                request.do_handshake()
            except (OSError, ValueError) as exc:  # timeout, reset, not TLS, dropped by ARTIM
                log.info("DICOM TLS handshake failed: %s", exc, extra={"address": client_address})
                if self.pending is not None:
                    self.pending.associated(request)  # gone: no longer pending
                self.shutdown_request(request)
                return
            request.settimeout(timeout)
        super().process_request_thread(request, client_address)

    def server_bind(self) -> None:
        if getattr(self, "reuse_port", False) and self.socket is not None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class ReusePortServer(NoDelayServer):
    """A server whose port other Solent processes (DIMSE workers) bind too (SO_REUSEPORT)."""

    reuse_port = True


def dicom_processes(configured: int) -> int:
    """How many processes receive on the DICOM port: the setting, or one per CPU for 0."""
    return configured if configured > 0 else max(1, os.cpu_count() or 1)


class SolentAE(ApplicationEntity):
    """ApplicationEntity whose outgoing associations (SCU, C-MOVE sub-associations) use
    TCP_NODELAY."""

    def _create_socket(self, assoc: Any, address: Any, tls_args: Any) -> AssociationSocket:
        sock = NoDelayAssociationSocket(assoc, address=address)
        sock.tls_args = tls_args
        return sock

    def associate(self, *args: Any, **kwargs: Any) -> Association:
        return suboperations.install(
            responses_to_the_waiting_sender(super().associate(*args, **kwargs))
        )


def responses_to_the_waiting_sender(assoc: Association) -> Association:
    """Make the association's reactor leave DIMSE messages to the thread that paused it.

    A thread that sends a request on an association it requested (a C-STORE sub-operation of
    C-MOVE, any SCU request) pauses the association's reactor thread and then takes the
    response from the DIMSE queue itself. pynetdicom's pause is racy: the reactor sets
    ``_is_paused`` just before waiting on its checkpoint and clears it after, so a sender that
    clears the checkpoint while the reactor has already passed it (and not yet cleared the flag)
    sees "paused" and sends; if the reactor thread is not scheduled again before the response
    arrives, it takes the response from the queue and discards it ("unexpected service
    message"), and the sender waits the whole DIMSE timeout (120 s) for a response that came.
    On a loaded host a C-MOVE to a workstation hung so about once in 25-150 moves.

    Here the reactor's take (pynetdicom's only non-blocking ``get_msg``) gives nothing while
    the checkpoint is cleared, i.e. while a sender waits. The check and the take are made under
    the queue's lock, and a response can only be queued after its request, which is sent after
    the checkpoint was cleared, so no response can slip past the check. Requests and responses
    are otherwise taken as before.
    """
    dimse: Any = assoc.dimse
    take = dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        if block:
            return take(block=True)
        messages = dimse.msg_queue
        with messages.mutex:  # queue.Queue's own lock: put() cannot run meanwhile
            if not assoc._reactor_checkpoint.is_set() or not messages._qsize():
                return None, None
            item = messages._get()
            messages.not_full.notify()
        return item

    dimse.get_msg = get_msg
    return assoc


class _NoFlush:
    """What pynetdicom calls ``spool.file.flush()`` on after every fragment: nothing to do,
    the spool writes straight to its descriptor."""

    def flush(self) -> None:
        pass


class SpoolFile:
    """A received C-STORE dataset as it arrives: written unbuffered to a file and hashed.

    Stands in for the NamedTemporaryFile pynetdicom spools to (``name``, ``write``,
    ``file.flush``, ``close``). Fragments arrive in order and nothing seeks, so the running
    SHA-256 is the digest of the file; the blob store keys blobs by it, so ingest never reads
    the spooled bytes back to hash them. ``fileno`` lets the handler fsync while it parses.
    """

    file = _NoFlush()

    def __init__(self, directory: str) -> None:
        fd, self.name = tempfile.mkstemp(dir=directory, suffix=".dcm")
        self._fd: int | None = fd
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        assert self._fd is not None, "spool file written after close"
        view = memoryview(data)
        self._sha.update(view)
        self.size += len(view)
        while view:
            view = view[os.write(self._fd, view) :]
        return len(data)

    def fileno(self) -> int:
        assert self._fd is not None
        return self._fd

    def sha256(self) -> str:
        return self._sha.hexdigest()

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def spool_of(request: Any) -> SpoolFile | None:
    """The SpoolFile a C-STORE request was received into (None if pynetdicom used memory)."""
    spool = getattr(request, "_dataset_file", None)
    return spool if isinstance(spool, SpoolFile) else None


def configure_pynetdicom(spool_dir: Path) -> None:
    """Process-wide pynetdicom settings: stream received datasets to files in ``spool_dir``.

    The spool is on the data volume, so ingest can rename the file into the blob store.
    """
    spool_dir.mkdir(parents=True, exist_ok=True)
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.LOG_HANDLER_LEVEL = "none"
    directory = str(spool_dir)

    def spool(*_args: Any, **_kwargs: Any) -> SpoolFile:
        return SpoolFile(directory)

    dimse_messages.NamedTemporaryFile = spool  # type: ignore[assignment,attr-defined]


def make_ae(ae_title: str) -> SolentAE:
    ae = SolentAE(ae_title=ae_title)
    ae.maximum_pdu_size = 1 << 20  # fewer, larger PDUs; bounded memory per PDU
    ae.network_timeout = 60
    ae.acse_timeout = 30
    ae.dimse_timeout = 120
    return ae


class _PrefixedAssociationSocket(AssociationSocket):
    """An accepted socket whose first bytes (the A-ASSOCIATE-RQ) the fast listener already
    read: they are served from memory before the socket is read again."""

    _prefix: bytearray

    @property
    def ready(self) -> bool:
        return bool(self._prefix) or bool(super().ready)

    def recv(self, nr_bytes: int) -> bytearray:
        if self._prefix:
            out = self._prefix[:nr_bytes]
            del self._prefix[:nr_bytes]
            if len(out) < nr_bytes:
                out += super().recv(nr_bytes - len(out))
            return out
        return super().recv(nr_bytes)


class _HandoffRequestHandler(RequestHandler):
    def _create_association(self) -> Association:
        assoc = super()._create_association()
        sock: Any = assoc.dul.socket
        # pynetdicom builds its AssociationSocket itself (and queues its 'connection open'
        # event); only its class changes here so that it first reads the handed-over bytes.
        sock.__class__ = _PrefixedAssociationSocket
        server: Any = self.server
        sock._prefix = bytearray(server.handoff_prefix.pop(id(self.request), b""))
        return assoc


class HandoffServer(NoDelayServer):
    """pynetdicom's acceptor for associations the fast listener hands over (C-FIND, C-MOVE,
    worklist, storage commitment): never bound or served, it only runs what ``handoff``
    gives it, with pynetdicom's handlers and contexts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.handoff_prefix: dict[int, bytes] = {}
        kwargs["request_handler"] = _HandoffRequestHandler
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        pass

    def server_activate(self) -> None:
        pass

    def handoff(self, conn: socket.socket, address: Any, prefix: bytes) -> None:
        """Serve ``conn`` (its first ``prefix`` bytes already read) with pynetdicom."""
        conn.settimeout(None)
        self.handoff_prefix[id(conn)] = prefix
        try:
            self.finish_request(conn, address)
        finally:
            self.handoff_prefix.pop(id(conn), None)
