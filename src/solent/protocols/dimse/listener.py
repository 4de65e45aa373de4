"""The DICOM listener `solent serve` starts: one AE, a plain port and optionally a TLS port.

Every association is checked when its A-ASSOCIATE-RQ arrives (registered AE title + address,
or the development switch); the presentation contexts it may use are cut to the operations
its node is allowed, so a node that may not query gets no C-FIND context at all.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Any
from weakref import WeakKeyDictionary

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event

from solent.protocols.dimse import (
    commitment,
    fast_engine,
    find_scp,
    mpps_scp,
    retrieve_scp,
    store_scp,
    suboperations,
    worklist_scp,
)
from solent.protocols.dimse.access import Operation, Peer, PeerCertificate, identify_peer
from solent.protocols.dimse.artim import AssociationSlots, PendingConnections
from solent.protocols.dimse.net import (
    STORAGE_SOP_CLASSES,
    STORAGE_SYNTAXES,
    BoundedRequestHandler,
    HandoffServer,
    NoDelayServer,
    ReusePortServer,
    configure_pynetdicom,
    dicom_processes,
    make_ae,
    storage_context_for_unknown,
)
from solent.protocols.dimse.ul import server as ul_server
from solent.protocols.proxy_header import ProxyHeaderReader
from solent.protocols.tls import server_context
from solent.services.registry import Services

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
QUERY_SOP_CLASSES = (
    find_scp.PATIENT_ROOT_FIND,
    find_scp.STUDY_ROOT_FIND,
    worklist_scp.MODALITY_WORKLIST_FIND,
)
RETRIEVE_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.2.1.2",  # Patient Root MOVE
    "1.2.840.10008.5.1.4.1.2.1.3",  # Patient Root GET
    retrieve_scp.STUDY_ROOT_MOVE,
    retrieve_scp.STUDY_ROOT_GET,
)
COMMAND_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2")
#: DIMSE-N services a storing node may use: storage commitment, performed procedure steps.
NORMALIZED_SOP_CLASSES = (
    commitment.STORAGE_COMMITMENT,
    mpps_scp.MODALITY_PERFORMED_PROCEDURE_STEP,
)
REJECT_PERMANENT, SOURCE_USER, CALLING_AE_NOT_RECOGNIZED = 0x01, 0x01, 0x03
REJECT_TRANSIENT, SOURCE_PROVIDER_PRESENTATION, LOCAL_LIMIT_EXCEEDED = 0x02, 0x03, 0x02


def allowed_abstract_syntaxes(peer: Peer) -> set[str] | None:
    """Abstract syntaxes the peer may negotiate; None means all."""
    if peer.node is None:
        return None
    allowed = {VERIFICATION}
    if peer.may(Operation.QUERY):
        allowed.update(QUERY_SOP_CLASSES)
    if peer.may(Operation.RETRIEVE):
        allowed.update(RETRIEVE_SOP_CLASSES)
    if peer.may(Operation.STORE):
        allowed.update((commitment.STORAGE_COMMITMENT, mpps_scp.MODALITY_PERFORMED_PROCEDURE_STEP))
    return allowed


class DimseListener:
    name = "dicom"

    def __init__(self, services: Services, inherited: socket.socket | None = None) -> None:
        self.services = services
        #: A DIMSE worker process's listening socket, inherited from `solent serve`.
        self.inherited = inherited
        #: The plain port's listening socket on the fast engine: what the workers inherit.
        self.plain_socket: socket.socket | None = None
        settings = services.settings
        configure_pynetdicom(settings.tmp_dir / "dimse")
        self.ae = make_ae(settings.ae_title)
        self.ae.require_called_aet = True
        # Issue 11: slots are counted from the A-ASSOCIATE-RQ on (AssociationSlots), and sockets
        # that never send one are bounded apart (PendingConnections, the ARTIM timer), so a
        # flood of silent connections cannot take the slots of real modalities. pynetdicom's
        # own count includes those sockets: it is set above both bounds so it never decides.
        self.slots = AssociationSlots(settings.dicom_max_associations)
        self.pending = PendingConnections(
            settings.dicom_max_pending_connections, settings.dicom_artim_timeout_seconds
        )
        # pynetdicom's own ARTIM (and its wait for the A-ASSOCIATE-RQ, which keeps a dropped
        # socket's thread alive until it expires) use the ACSE timeout.
        self.ae.acse_timeout = settings.dicom_artim_timeout_seconds
        self.ae.maximum_associations = (
            settings.dicom_max_associations + settings.dicom_max_pending_connections + 64
        )
        self.retrieve = services.retrieve
        self.commitment = commitment.CommitmentSCP(self.ae, self.retrieve)
        self.mpps = mpps_scp.MppsSCP(services.performed_steps)
        self._peers: WeakKeyDictionary[Association, Peer] = WeakKeyDictionary()
        self._lock = threading.Lock()
        self._servers: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._add_contexts()
        self._known_abstract_syntaxes = frozenset(
            str(cx.abstract_syntax) for cx in self.ae.supported_contexts
        )

    # -- negotiation ------------------------------------------------------------------------

    def _add_contexts(self) -> None:
        ae = self.ae
        ae.add_supported_context(VERIFICATION, list(COMMAND_SYNTAXES))
        for uid in (*QUERY_SOP_CLASSES, *RETRIEVE_SOP_CLASSES, *NORMALIZED_SOP_CLASSES):
            ae.add_supported_context(uid, list(COMMAND_SYNTAXES))
        # Storage contexts also serve C-GET, where the caller takes the SCP role.
        for uid in STORAGE_SOP_CLASSES:
            ae.add_supported_context(uid, list(STORAGE_SYNTAXES), scu_role=True, scp_role=True)

    def _on_requested(self, event: Event) -> None:
        assoc = event.assoc
        settings = self.services.settings
        requestor = assoc.requestor
        rq: Any = requestor.primitive  # the A-ASSOCIATE-RQ; requestor.ae_title is set later
        calling_ae = str(rq.calling_ae_title).strip()
        self.pending.associated(getattr(assoc.dul.socket, "socket", None))
        if not self.slots.take(assoc):
            log.warning(
                "association rejected: all %d association slots in use",
                self.slots.limit,
                extra={"calling_ae": calling_ae, "address": requestor.address},
            )
            assoc.acse.send_reject(
                REJECT_TRANSIENT, SOURCE_PROVIDER_PRESENTATION, LOCAL_LIMIT_EXCEEDED
            )
            assoc.kill()
            return
        peer = self.identify(
            calling_ae,
            str(rq.called_ae_title).strip(),
            str(requestor.address),
            PeerCertificate.of(getattr(assoc.dul.socket, "socket", None)),
        )
        if peer is None:
            log.warning(
                "association rejected: calling AE title not recognized",
                extra={"calling_ae": calling_ae, "address": requestor.address},
            )
            assoc.acse.send_reject(REJECT_PERMANENT, SOURCE_USER, CALLING_AE_NOT_RECOGNIZED)
            assoc.kill()  # waits until the A-ASSOCIATE-RJ is on the wire, as pynetdicom does
            return
        with self._lock:
            self._peers[assoc] = peer
        allowed = allowed_abstract_syntaxes(peer)
        contexts = list(assoc.acceptor.supported_contexts)
        if allowed is not None:
            storage_needed = peer.may(Operation.STORE) or peer.may(Operation.RETRIEVE)
            contexts = [
                cx
                for cx in contexts
                if cx.abstract_syntax in allowed
                or (storage_needed and cx.abstract_syntax in STORAGE_SOP_CLASSES)
            ]
        if settings.dicom_accept_unknown_sop_classes and peer.may(Operation.STORE):
            known = set(self._known_abstract_syntaxes)
            for cx in rq.presentation_context_definition_list:
                uid = str(cx.abstract_syntax)
                if uid not in known:
                    known.add(uid)
                    contexts.append(storage_context_for_unknown(uid))
        assoc.acceptor.supported_contexts = contexts

    def identify(
        self, calling_ae: str, called_ae: str, address: str, certificate: PeerCertificate | None
    ) -> Peer | None:
        """The Peer of an A-ASSOCIATE-RQ (both engines), or None: reject it."""
        settings = self.services.settings
        return identify_peer(
            self.services.directory,
            calling_ae=calling_ae,
            called_ae=called_ae,
            address=address,
            allow_unknown=settings.dicom_allow_unknown,
            unknown_trust=settings.dicom_unknown_trust,
            certificate=certificate,
        )

    def peer(self, assoc: Association) -> Peer | None:
        with self._lock:
            return self._peers.get(assoc)

    # -- services ---------------------------------------------------------------------------

    def _on_closed(self, event: Event) -> None:
        self.slots.release(event.assoc)

    def _on_echo(self, event: Event) -> int:
        return 0x0000

    def _on_store(self, event: Event) -> Dataset:
        return store_scp.handle_store(event, self.services.ingest, self.peer(event.assoc))

    def _on_find(self, event: Event) -> Any:
        settings = self.services.settings
        peer = self.peer(event.assoc)
        if str(event.request.AffectedSOPClassUID) == worklist_scp.MODALITY_WORKLIST_FIND:
            yield from worklist_scp.handle_worklist(
                event,
                self.services.inbox,
                self.services.audit,
                peer,
                max_results=settings.dicom_max_find_results,
            )
            return
        yield from find_scp.handle_find(
            event,
            self.services.query,
            self.services.audit,
            peer,
            max_results=settings.dicom_max_find_results,
            ae_title=settings.ae_title,
        )

    def _on_move(self, event: Event) -> Any:
        yield from retrieve_scp.handle_move(
            event, self.services.directory, self.retrieve, self.peer(event.assoc)
        )

    def _on_get(self, event: Event) -> Any:
        suboperations.install(event.assoc)
        yield from retrieve_scp.handle_get(event, self.retrieve, self.peer(event.assoc))

    def _on_n_action(self, event: Event) -> tuple[int, Dataset | None]:
        return self.commitment.handle_n_action(event, self.peer(event.assoc))

    def _on_n_create(self, event: Event) -> tuple[Any, Dataset | None]:
        return self.mpps.handle_n_create(event, self.peer(event.assoc))

    def _on_n_set(self, event: Event) -> tuple[Any, Dataset | None]:
        return self.mpps.handle_n_set(event, self.peer(event.assoc))

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_CONN_CLOSE, self._on_closed),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_N_ACTION, self._on_n_action),
            (evt.EVT_N_CREATE, self._on_n_create),
            (evt.EVT_N_SET, self._on_n_set),
        ]

    # -- lifecycle --------------------------------------------------------------------------

    def _serve_fast(self, port: int) -> int:
        """The plain port on the fast upper layer; other services go to a pynetdicom
        acceptor that is never bound (see net.HandoffServer)."""
        settings = self.services.settings
        host = settings.bind_address
        proxy = self.proxy_reader()
        handoff = HandoffServer(
            self.ae, (host, port), self.ae.ae_title, self.ae.supported_contexts,
            evt_handlers=self.handlers(),
        )  # fmt: skip
        config = ul_server.Config(
            ae_title=settings.ae_title,
            max_pdu_length=self.ae.maximum_pdu_size,
            implementation_class_uid=str(self.ae.implementation_class_uid),
            implementation_version_name=str(self.ae.implementation_version_name or ""),
            max_associations=settings.dicom_max_associations,
            artim_timeout=float(self.ae.acse_timeout or 30),
            network_timeout=float(self.ae.network_timeout or 60),
        )
        slow = (
            frozenset({*QUERY_SOP_CLASSES, *RETRIEVE_SOP_CLASSES, *NORMALIZED_SOP_CLASSES})
            - fast_engine.RETRIEVE_SOP_CLASSES
        )
        server = ul_server.FastServer(
            host,
            port,
            config,
            fast_engine.FastServices(
                self, settings.tmp_dir / "dimse", config.implementation_class_uid
            ),
            fast_path=lambda rq: fast_engine.fast_path(
                slow, [c.abstract_syntax for c in rq.contexts]
            ),
            handoff=handoff.handoff,
            client_address=proxy.client_address if proxy is not None else None,
            slots=self.slots,
            pending=self.pending,
            inherited=self.inherited,  # the workers share the parent's socket (workers.py)
        )
        self.plain_socket = server.sock
        server.start()
        self._servers.append(server)
        self._servers.append(handoff)
        return server.port

    def _serve(self, port: int, ssl_context: ssl.SSLContext | None) -> int:
        host = self.services.settings.bind_address
        if ssl_context is None and self.services.settings.dicom_engine == "fast":
            return self._serve_fast(port)
        server = self.ae.make_server(
            (host, port),
            evt_handlers=self.handlers(),
            ssl_context=ssl_context,
            # The plain port is shared with the DIMSE worker processes (protocols/dimse/workers).
            server_class=ReusePortServer
            if ssl_context is None and dicom_processes(self.services.settings.dicom_workers) > 1
            else NoDelayServer,
            request_handler=BoundedRequestHandler,  # issue 11: no 4 GiB A-ASSOCIATE-RQ
        )
        if isinstance(server, NoDelayServer):
            server.pending = self.pending
            if ssl_context is None:  # a header before TLS would need reading before the wrap
                server.proxy = self.proxy_reader()
        thread = threading.Thread(target=server.serve_forever, name=f"dimse-{port}", daemon=True)
        thread.start()
        self._servers.append(server)
        self._threads.append(thread)
        return int(server.server_address[1])

    def proxy_reader(self) -> ProxyHeaderReader | None:
        settings = self.services.settings
        return ProxyHeaderReader.from_settings(
            settings.proxy_protocol, settings.proxy_protocol_from, float(self.ae.acse_timeout or 30)
        )

    def tls_context(self) -> ssl.SSLContext:
        s = self.services.settings
        return server_context("SOLENT_DICOM_TLS", s.dicom_tls_cert, s.dicom_tls_key, s.dicom_tls_ca)

    def start(self) -> int:
        settings = self.services.settings
        self.pending.start()
        port = self._serve(settings.dicom_port, None)
        self.tls_port: int | None = None
        if settings.dicom_tls_port >= 0:
            self.tls_port = self._serve(settings.dicom_tls_port, self.tls_context())
            print(f"  dicom_tls: {settings.bind_address}:{self.tls_port}", flush=True)
        log.info("DICOM listener started", extra={"port": port, "tls_port": self.tls_port})
        return port

    def stop(self) -> None:
        self.pending.stop()
        for server in self._servers:
            try:
                if isinstance(server, HandoffServer):
                    for assoc in server.active_associations:  # as pynetdicom's shutdown does
                        assoc.abort()
                    server.server_close()  # never bound nor served: nothing else to stop
                    continue
                server.shutdown()
            except Exception:
                log.debug("DICOM server shutdown", exc_info=True)
        self._servers.clear()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
