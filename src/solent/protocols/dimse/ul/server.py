"""The fast DICOM listener: a blocking socket and one thread per association.

Why threads and not asyncio: every C-STORE ends in ingest, which is blocking work (parse,
fsync, an SQLite/PostgreSQL transaction) and would need a hop to a thread pool and back per
instance; a thread that owns its socket reads P-DATA with ``recv_into`` into one preallocated
buffer, writes the dataset PDVs straight into the spool file (no per-PDV objects) and calls
ingest in place, all with the GIL released in the system calls. Memory per association is one
receive buffer (our maximum PDU length) and one send buffer.

Associations whose proposed abstract syntaxes are all verification, storage, C-GET or C-MOVE
go this way; any other (C-FIND, worklist, storage commitment) is handed, with the bytes of its
A-ASSOCIATE-RQ, to pynetdicom (``handoff``), which serves those less hot services well.

State machine essentials (PS3.8 9.2): the A-ASSOCIATE-RQ must come within the ARTIM time;
anything but P-DATA, A-RELEASE-RQ and A-ABORT in the data transfer state is answered by
A-ABORT; after A-RELEASE-RP the peer has ARTIM to close. As acceptor we never request a
release, so a release collision cannot arise from our side.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections import deque
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from solent.protocols.dimse.artim import AssociationSlots, PendingConnections
from solent.protocols.dimse.ul import dimse, pdu
from solent.protocols.dimse.ul.association import (
    RJ_CALLED_AE,
    RJ_CALLING_AE,
    RJ_LOCAL_LIMIT,
    RJ_PERMANENT,
    RJ_SOURCE_PRESENTATION,
    RJ_SOURCE_USER,
    RJ_TRANSIENT,
    Context,
    Negotiated,
    Policy,
    Rejected,
    negotiate,
)
from solent.protocols.dimse.ul.pdu import PduError

log = logging.getLogger(__name__)

# Bytes of a stored file read and sent per sendmsg. Measured against getscu (DCMTK sets a
# 32 KB receive buffer): 64 KB batches beat 256 KB and 1 MB ones (best of 3: 0.37 s vs 0.89 s
# and 0.71 s for 100 x 512 KB); it is also all a sending association holds of an instance.
SEND_CHUNK = 64 << 10
MAX_DATASET_IN_MEMORY = 1 << 20  # identifiers and other non-C-STORE datasets
IOV_MAX = 512
ABORT_LINGER, ABORT_DRAIN = 2.0, 4 << 20


class Closed(Exception):
    """The association ended (release, abort, peer gone); nothing more to answer."""


class Spool(Protocol):
    """Where a C-STORE dataset is received (a file the ingest pipeline takes)."""

    name: str

    def write(self, data: bytes | memoryview) -> int: ...
    def close(self) -> None: ...


class Services(Protocol):
    """What the listener gives the fast path: decisions and work on the caller's behalf.

    ``peer`` is opaque here: whatever ``identify`` returned, handed back unchanged.
    """

    def identify(self, calling_ae: str, called_ae: str, address: str) -> object | None: ...
    def syntaxes(self, peer: object) -> Callable[[str], Collection[str] | None]: ...
    def spool(self, sop_class: str, sop_instance: str, transfer_syntax: str) -> Spool: ...
    def discard(self, spool: Spool) -> None: ...
    def store(
        self, peer: object, spool: Spool, sop_class: str, sop_instance: str
    ) -> tuple[int, str]: ...
    def get(self, peer: object, assoc: Association, msg: Message) -> None: ...
    def move(self, peer: object, assoc: Association, msg: Message) -> None: ...


@dataclass(slots=True)
class Message:
    command: dimse.Command
    context: Context
    dataset: Spool | bytearray | None = None


@dataclass(frozen=True, slots=True)
class Config:
    ae_title: str
    max_pdu_length: int
    implementation_class_uid: str
    implementation_version_name: str
    max_associations: int
    artim_timeout: float = 30.0
    network_timeout: float = 60.0
    max_operations: int = 8


def recv_exact(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock`` or raise Closed when the peer goes away first."""
    got, want = 0, len(view)
    while got < want:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise Closed("connection closed by the peer")
        got += n


class Association:
    """One accepted association on the fast path (data transfer state onwards)."""

    def __init__(
        self,
        sock: socket.socket,
        negotiated: Negotiated,
        peer: object,
        services: Services,
        config: Config,
        workers: ThreadPoolExecutor,
    ) -> None:
        self.sock = sock
        self.contexts = negotiated.contexts
        self.peer_max_pdu = negotiated.peer_max_pdu
        self.peer = peer
        self.services = services
        self.config = config
        self.workers = workers  # where asynchronous C-STOREs are performed
        self._window = threading.BoundedSemaphore(negotiated.window)
        self._window_size = negotiated.window
        self._send_lock = threading.Lock()
        self._buf = bytearray(config.max_pdu_length)
        self._header = bytearray(6)
        self._ready: deque[Message] = deque()
        self._command = bytearray()
        self._command_context = 0
        self._pending: Message | None = None  # a command waiting for its dataset
        self.cancelled: set[int] = set()  # message IDs a C-CANCEL-RQ named
        self.message_id = 0

    # -- receiving ------------------------------------------------------------------------

    def next_message(self) -> Message:
        """The next complete DIMSE message; Closed when the association ends meanwhile."""
        while not self._ready:
            self._read_pdu()
        return self._ready.popleft()

    def _read_pdu(self) -> None:
        header = memoryview(self._header)
        recv_exact(self.sock, header)
        kind, length = pdu.HEADER.unpack_from(header)
        if kind == pdu.P_DATA:
            if length > self.config.max_pdu_length:
                raise PduError(f"P-DATA-TF of {length} bytes exceeds our maximum length")
            body = memoryview(self._buf)[:length]
            recv_exact(self.sock, body)
            for context_id, control, value in pdu.pdvs(body):
                self._pdv(context_id, control, value)
        elif kind == pdu.RELEASE_RQ:
            if length != 4:
                raise PduError("A-RELEASE-RQ of a wrong length")
            recv_exact(self.sock, memoryview(bytearray(4)))
            self._release()
        elif kind == pdu.ABORT:
            self._discard()
            raise Closed("A-ABORT from the peer")
        elif kind in pdu.PDU_TYPES:
            raise PduError(f"unexpected PDU type 0x{kind:02X}", pdu.REASON_UNEXPECTED_PDU)
        else:
            raise PduError(f"unrecognized PDU type 0x{kind:02X}", pdu.REASON_UNRECOGNIZED_PDU)

    def _pdv(self, context_id: int, control: int, value: memoryview) -> None:
        context = self.contexts.get(context_id)
        if context is None:
            raise PduError(f"PDV on presentation context {context_id}, not accepted")
        last = bool(control & 2)
        if control & 1:  # command fragment
            if self._pending is not None:
                raise PduError("a command arrived while a data set was expected")
            if self._command and context_id != self._command_context:
                raise PduError("command fragments on two presentation contexts")
            if len(self._command) + len(value) > dimse.MAX_COMMAND:
                raise PduError("command set longer than 64 KB")
            self._command_context = context_id
            self._command += value
            if last:
                command = dimse.decode(memoryview(self._command))
                self._command.clear()
                self._begin(Message(command, context))
            return
        pending = self._pending
        if pending is None or pending.dataset is None or context_id != pending.context.context_id:
            raise PduError("a data set fragment without its command")
        if isinstance(pending.dataset, bytearray):
            if len(pending.dataset) + len(value) > MAX_DATASET_IN_MEMORY:
                raise PduError("identifier data set longer than 1 MB")
            pending.dataset += value
        else:
            pending.dataset.write(value)
        if last:
            self._pending = None
            self._ready.append(pending)

    def _begin(self, msg: Message) -> None:
        if not msg.command.has_dataset:
            self._ready.append(msg)
            return
        if msg.command.command_field == dimse.C_STORE_RQ:
            msg.dataset = self.services.spool(
                msg.command.text("AffectedSOPClassUID"),
                msg.command.text("AffectedSOPInstanceUID"),
                msg.context.transfer_syntax,
            )
        else:
            msg.dataset = bytearray()
        self._pending = msg

    def _discard(self) -> None:
        """Drop a data set cut short (abort, close): nothing of it is stored."""
        pending, self._pending = self._pending, None
        for msg in [*self._ready, *([pending] if pending else [])]:
            if msg.dataset is not None and not isinstance(msg.dataset, bytearray):
                self.services.discard(msg.dataset)
        self._ready.clear()

    def _discard_dataset(self, msg: Message) -> None:
        if msg.dataset is not None and not isinstance(msg.dataset, bytearray):
            self.services.discard(msg.dataset)

    def _release(self) -> None:
        if self._pending is not None or self._command:
            raise PduError("A-RELEASE-RQ in the middle of a message", pdu.REASON_UNEXPECTED_PDU)
        self._drain()
        self.send(pdu.RELEASE_RP_PDU)
        self.sock.settimeout(self.config.artim_timeout)  # ARTIM: the peer closes
        with contextlib.suppress(OSError):
            while self.sock.recv(4096):
                pass
        raise Closed("released")

    def _drain(self) -> None:
        """Wait until every operation in progress has sent its response."""
        for _ in range(self._window_size):
            self._window.acquire()
        for _ in range(self._window_size):
            self._window.release()

    # -- sending --------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def _sendv(self, iov: list[bytes | memoryview]) -> None:
        """writev: many PDU headers and slices in one system call (partial sends resumed)."""
        views = [memoryview(b) for b in iov]
        while views:
            sent = self.sock.sendmsg(views[:IOV_MAX])
            while sent and views:
                if sent >= len(views[0]):
                    sent -= len(views.pop(0))
                else:
                    views[0] = views[0][sent:]
                    sent = 0
            if views and not len(views[0]):
                views.pop(0)

    def _fragments(self, context_id: int, data: bytes, control: int) -> list[bytes | memoryview]:
        view = memoryview(data)
        iov: list[bytes | memoryview] = []
        for offset, size, last in pdu.fragments(len(view), self._send_limit()):
            iov.append(pdu.p_data_header(size, context_id, control | (2 if last else 0)))
            iov.append(view[offset : offset + size])
        return iov

    def _send_limit(self) -> int:
        peer = self.peer_max_pdu
        return min(peer, SEND_CHUNK) if peer else SEND_CHUNK

    def send_message(self, context_id: int, command: bytes, dataset: bytes | None = None) -> None:
        iov = self._fragments(context_id, command, 1)
        if dataset is not None:
            iov += self._fragments(context_id, dataset, 0)
        with self._send_lock:
            self._sendv(iov)

    def send_stream(
        self, context_id: int, command: bytes, prefix: bytes, rest: BinaryIO | None, remaining: int
    ) -> None:
        """A command and a data set of ``prefix`` + ``remaining`` bytes of ``rest``, read and
        sent in SEND_CHUNK slices: bounded memory whatever the size of the instance."""
        limit = self._send_limit()
        step = limit - 6
        total = len(prefix) + remaining
        buf = bytearray(max(step, (SEND_CHUNK // step) * step))
        head = memoryview(prefix)
        sent = 0
        with self._send_lock:
            self._sendv(self._fragments(context_id, command, 1))
            while sent < total or total == 0:
                view = memoryview(buf)
                n = min(len(head), len(view))
                view[:n] = head[:n]
                head = head[n:]
                want = min(len(view), total - sent)
                while n < want and rest is not None:
                    got = rest.readinto(view[n:want])  # type: ignore[attr-defined]
                    if not got:
                        raise OSError("the stored file is shorter than its size")
                    n += got
                iov: list[bytes | memoryview] = []
                for offset, size, _ in pdu.fragments(n, limit):
                    last = sent + offset + size >= total
                    iov.append(pdu.p_data_header(size, context_id, 2 if last else 0))
                    iov.append(view[offset : offset + size])
                self._sendv(iov)
                sent += n
                if total == 0:
                    break

    def respond(
        self, msg: Message, field: int, status: int, comment: str = "", **extra: Any
    ) -> None:
        cmd = msg.command
        self.send_message(
            msg.context.context_id,
            dimse.encode(
                CommandField=field,
                MessageIDBeingRespondedTo=cmd.number("MessageID"),
                AffectedSOPClassUID=cmd.text("AffectedSOPClassUID") or None,
                AffectedSOPInstanceUID=cmd.text("AffectedSOPInstanceUID") or None,
                CommandDataSetType=dimse.NO_DATASET,
                Status=status,
                ErrorComment=comment[:64] or None,
                **extra,
            ),
        )

    # -- serving --------------------------------------------------------------------------

    def run(self) -> None:
        self.sock.settimeout(self.config.network_timeout)
        while True:
            msg = self.next_message()
            field = msg.command.command_field
            sop_class = msg.command.text("AffectedSOPClassUID")
            if not field & 0x8000 and sop_class and sop_class != msg.context.abstract_syntax:
                self._discard_dataset(msg)  # PS3.7 C.5.4: SOP class not on this context
                self.respond(msg, field | 0x8000, 0x0122, "SOP class not supported on this context")
            elif field == dimse.C_ECHO_RQ:
                self.respond(msg, dimse.C_ECHO_RSP, 0x0000)
            elif field == dimse.C_STORE_RQ:
                self._window.acquire()
                if self._window_size == 1:
                    self._store(msg)
                else:
                    self.workers.submit(self._store, msg)
            elif field == dimse.C_GET_RQ:
                self._drain()
                self.services.get(self.peer, self, msg)
            elif field == dimse.C_MOVE_RQ:
                self._drain()
                self.services.move(self.peer, self, msg)
            elif field == dimse.C_CANCEL_RQ or field & 0x8000:
                continue  # a cancel of nothing in progress, a late response: nothing to do
            else:
                self.respond(msg, field | 0x8000, 0x0211, "unrecognized operation")

    def _store(self, msg: Message) -> None:
        try:
            spool = msg.dataset
            cmd = msg.command
            if spool is None or isinstance(spool, bytearray):
                status, comment = 0xC000, "C-STORE without a data set"
            else:
                status, comment = self.services.store(
                    self.peer,
                    spool,
                    cmd.text("AffectedSOPClassUID"),
                    cmd.text("AffectedSOPInstanceUID"),
                )
            with contextlib.suppress(OSError):
                self.respond(msg, dimse.C_STORE_RSP, status, comment)
        except Exception:
            log.exception("C-STORE failed")
        finally:
            self._window.release()


class FastServer:
    """Accepts on one port; each connection gets a thread (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        config: Config,
        services: Services,
        *,
        fast_path: Callable[[pdu.AssociateRequest], bool],
        handoff: Callable[[socket.socket, Any, bytes], None],
        client_address: Callable[[socket.socket, Any], Any] | None = None,
        slots: AssociationSlots | None = None,
        pending: PendingConnections | None = None,
        inherited: socket.socket | None = None,
    ) -> None:
        self.config = config
        # Behind a balancer: the client's address from a PROXY protocol header (issue 16).
        self.client_address = client_address
        self.services = services
        self.fast_path = fast_path
        self.handoff = handoff
        # The listener's own bounds, shared with the pynetdicom acceptor the slower services
        # are handed to: association slots counted from the A-ASSOCIATE-RQ, and sockets that
        # have not sent one yet bounded apart (ARTIM reaper), so silent connections never
        # take a slot (protocols/dimse/artim.py).
        self.slots = slots or AssociationSlots(config.max_associations)
        self.pending = pending
        # ``inherited``: the listening socket of `solent serve`, shared by its DIMSE worker
        # processes. Each blocks in accept(), and the kernel wakes the one that has waited
        # longest, so associations go round the processes (SO_REUSEPORT hashes them instead:
        # four associations often landed 3/1, one process's GIL serving three).
        self.shared = inherited is not None
        self.sock = inherited or socket.create_server((host, port), backlog=128)
        self.port = int(self.sock.getsockname()[1])
        self.active: set[Association] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dimse-fast")
        self._thread = threading.Thread(
            target=self._accept, name=f"dimse-fast-{self.port}", daemon=True
        )

    @property
    def active_associations(self) -> list[Association]:
        with self._lock:
            return list(self.active)

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        if not self.shared:  # shutdown() would stop the socket for every process sharing it
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
            self._thread.join(timeout=5)
        for assoc in self.active_associations:
            with contextlib.suppress(OSError):
                assoc.sock.shutdown(socket.SHUT_RDWR)
        self._workers.shutdown(wait=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, address = self.sock.accept()
            except OSError:
                if self._stop.is_set():
                    return
                continue
            if self._stop.is_set():  # a shared socket's accept() outlives shutdown(): refuse
                conn.close()
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.pending is not None:
                self.pending.admit(conn, address)
            threading.Thread(
                target=self._serve, args=(conn, address), name="dimse-assoc", daemon=True
            ).start()

    def _serve(self, conn: socket.socket, address: Any) -> None:
        handed = False
        assoc: Association | None = None
        try:
            if self.client_address is not None:
                address = self.client_address(conn, address)
            conn.settimeout(self.config.artim_timeout)
            header = bytearray(6)
            body = bytearray()
            try:
                recv_exact(conn, memoryview(header))
                kind, length = pdu.HEADER.unpack_from(header)
                if kind == pdu.ASSOCIATE_RQ and length > pdu.MAX_ASSOCIATE_RQ:
                    raise Closed("A-ASSOCIATE-RQ longer than 1 MB: closed unread")
                if kind == pdu.ASSOCIATE_RQ:
                    body = bytearray(length)
                    recv_exact(conn, memoryview(body))
            except (TimeoutError, OSError) as exc:
                # PS3.8 Sta2: the ARTIM timer expired (or the peer went) before an
                # A-ASSOCIATE-RQ: close the transport connection, nothing to answer (AA-2).
                raise Closed(str(exc)) from exc
            if kind != pdu.ASSOCIATE_RQ:
                raise PduError("the first PDU is not an A-ASSOCIATE-RQ", pdu.REASON_UNEXPECTED_PDU)
            if self.pending is not None:
                self.pending.associated(conn)
            rq = pdu.parse_associate_rq(memoryview(body))
            if not self.fast_path(rq):
                self.handoff(conn, address, bytes(header + body))
                handed = True  # pynetdicom owns the socket now and closes it
                return
            assoc = self._associate(conn, address, rq)
            if assoc is not None:
                assoc.run()
        except Closed as exc:
            if assoc is None and not handed:
                log.info("connection closed unassociated: %s", exc, extra={"address": address[0]})
        except PduError as exc:
            log.info("association aborted: %s", exc, extra={"address": address[0]})
            self._abort(conn, exc.reason)
        except (TimeoutError, OSError) as exc:
            log.info("association ended: %s", exc, extra={"address": address[0]})
            self._abort(conn, pdu.REASON_NOT_SPECIFIED)
        except Exception:
            log.exception("association failed")
            self._abort(conn, pdu.REASON_NOT_SPECIFIED)
        finally:
            if self.pending is not None and not handed:
                self.pending.associated(conn)  # gone before associating: no longer pending
            if assoc is not None:
                with contextlib.suppress(Exception):
                    assoc._discard()
                assoc._drain()
                with self._lock:
                    self.active.discard(assoc)
            if not handed:
                self.slots.release(conn)
                conn.close()

    def _abort(self, conn: socket.socket, reason: int) -> None:
        """Send A-ABORT and let it arrive: closing with unread input would reset the
        connection and could drop it, so the peer's bytes are read and dropped (at most
        ABORT_DRAIN bytes or ABORT_LINGER seconds) until it closes."""
        with contextlib.suppress(OSError):
            conn.settimeout(ABORT_LINGER)
            conn.sendall(pdu.abort(pdu.ABORT_SERVICE_PROVIDER, reason))
            conn.shutdown(socket.SHUT_WR)
            drained = 0
            while drained < ABORT_DRAIN:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)

    def _associate(
        self, conn: socket.socket, address: Any, rq: pdu.AssociateRequest
    ) -> Association | None:
        def reject(result: int, source: int, reason: int, why: str) -> None:
            log.warning("association rejected: %s", why, extra={"calling_ae": rq.calling_ae})
            conn.sendall(pdu.associate_rj(result, source, reason))

        if rq.called_ae != self.config.ae_title:
            reject(RJ_PERMANENT, RJ_SOURCE_USER, RJ_CALLED_AE, "called AE title not recognized")
            return None
        peer = self.services.identify(rq.calling_ae, rq.called_ae, str(address[0]))
        if peer is None:
            reject(RJ_PERMANENT, RJ_SOURCE_USER, RJ_CALLING_AE, "calling AE title not recognized")
            return None
        if not self.slots.take(conn):
            log.warning(
                "association rejected: all %d association slots in use",
                self.slots.limit,
                extra={"calling_ae": rq.calling_ae, "address": address[0]},
            )
            conn.sendall(pdu.associate_rj(RJ_TRANSIENT, RJ_SOURCE_PRESENTATION, RJ_LOCAL_LIMIT))
            return None
        policy = Policy(
            self.config.max_pdu_length,
            self.config.implementation_class_uid,
            self.config.implementation_version_name,
            self.services.syntaxes(peer),
            self.config.max_operations,
        )
        try:
            negotiated = negotiate(rq, policy)
        except Rejected as exc:
            log.warning("association rejected: %s", exc, extra={"calling_ae": rq.calling_ae})
            conn.sendall(exc.pdu)
            return None
        conn.sendall(negotiated.ac)
        assoc = Association(conn, negotiated, peer, self.services, self.config, self._workers)
        with self._lock:
            self.active.add(assoc)
        return assoc
