"""The DICOM listener `solent serve` starts: one AE, a plain port and optionally a TLS port.

Every association is checked when its A-ASSOCIATE-RQ arrives (registered AE title + address,
or the development switch); the presentation contexts it may use are cut to the operations
its node is allowed, so a node that may not query gets no C-FIND context at all.
"""

from __future__ import annotations

import logging
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
    find_scp,
    retrieve_scp,
    store_scp,
    suboperations,
    worklist_scp,
)
from solent.protocols.dimse.access import Operation, Peer, PeerCertificate, identify_peer
from solent.protocols.dimse.net import (
    STORAGE_SOP_CLASSES,
    STORAGE_SYNTAXES,
    NoDelayServer,
    ReusePortServer,
    configure_pynetdicom,
    dicom_processes,
    make_ae,
    storage_context_for_unknown,
)
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
REJECT_PERMANENT, SOURCE_USER, CALLING_AE_NOT_RECOGNIZED = 0x01, 0x01, 0x03


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
        allowed.add(commitment.STORAGE_COMMITMENT)
    return allowed


class DimseListener:
    name = "dicom"

    def __init__(self, services: Services) -> None:
        self.services = services
        settings = services.settings
        configure_pynetdicom(settings.tmp_dir / "dimse")
        self.ae = make_ae(settings.ae_title)
        self.ae.require_called_aet = True
        self.ae.maximum_associations = settings.dicom_max_associations  # issue 6: hostile input
        self.retrieve = services.retrieve
        self.commitment = commitment.CommitmentSCP(self.ae, self.retrieve)
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
        for uid in (*QUERY_SOP_CLASSES, *RETRIEVE_SOP_CLASSES, commitment.STORAGE_COMMITMENT):
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
        peer = identify_peer(
            self.services.directory,
            calling_ae=calling_ae,
            called_ae=str(rq.called_ae_title).strip(),
            address=str(requestor.address),
            allow_unknown=settings.dicom_allow_unknown,
            unknown_trust=settings.dicom_unknown_trust,
            certificate=PeerCertificate.of(getattr(assoc.dul.socket, "socket", None)),
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

    def peer(self, assoc: Association) -> Peer | None:
        with self._lock:
            return self._peers.get(assoc)

    # -- services ---------------------------------------------------------------------------

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

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_N_ACTION, self._on_n_action),
        ]

    # -- lifecycle --------------------------------------------------------------------------

    def _serve(self, port: int, ssl_context: ssl.SSLContext | None) -> int:
        host = self.services.settings.bind_address
        server = self.ae.make_server(
            (host, port),
            evt_handlers=self.handlers(),
            ssl_context=ssl_context,
            # The plain port is shared with the DIMSE worker processes (protocols/dimse/workers).
            server_class=ReusePortServer
            if ssl_context is None and dicom_processes(self.services.settings.dicom_workers) > 1
            else NoDelayServer,
        )
        thread = threading.Thread(target=server.serve_forever, name=f"dimse-{port}", daemon=True)
        thread.start()
        self._servers.append(server)
        self._threads.append(thread)
        return int(server.server_address[1])

    def tls_context(self) -> ssl.SSLContext:
        settings = self.services.settings
        if settings.dicom_tls_cert is None or settings.dicom_tls_key is None:
            from solent.errors import ConfigurationError

            raise ConfigurationError(
                "SOLENT_DICOM_TLS_PORT needs SOLENT_DICOM_TLS_CERT and SOLENT_DICOM_TLS_KEY"
            )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(settings.dicom_tls_cert), str(settings.dicom_tls_key))
        if settings.dicom_tls_ca is not None:
            context.load_verify_locations(cafile=str(settings.dicom_tls_ca))
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def start(self) -> int:
        settings = self.services.settings
        port = self._serve(settings.dicom_port, None)
        self.tls_port: int | None = None
        if settings.dicom_tls_port >= 0:
            self.tls_port = self._serve(settings.dicom_tls_port, self.tls_context())
            print(f"  dicom_tls: {settings.bind_address}:{self.tls_port}", flush=True)
        log.info("DICOM listener started", extra={"port": port, "tls_port": self.tls_port})
        return port

    def stop(self) -> None:
        for server in self._servers:
            try:
                server.shutdown()
            except Exception:
                log.debug("DICOM server shutdown", exc_info=True)
        self._servers.clear()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
