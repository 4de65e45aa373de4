"""Storage Commitment Push Model SCP (PS3.4 Annex J).

N-ACTION asks whether instances are safely stored; the answer is an N-EVENT-REPORT listing
what is durably stored and indexed (success) and what is not (failure 0112, no such object).
The report goes on the same association right after the N-ACTION response when the peer keeps
it open, otherwise on a new association to the node's registered host and port (J.3.3).
"""

from __future__ import annotations

import logging
import threading
import time

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import build_context, build_role

from solent.protocols.dimse.access import Operation, Peer
from solent.protocols.dimse.net import SolentAE
from solent.protocols.dimse.status import NOT_AUTHORIZED, PROCESSING_FAILURE, SUCCESS
from solent.services.retrieve import RetrieveService

log = logging.getLogger(__name__)

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119


def commitment_report(request: Dataset, stored: dict[str, str | None]) -> tuple[int, Dataset]:
    """(event type, N-EVENT-REPORT dataset): 1 when all are committed, 2 when some failed.
    ``stored`` is what the service commits for the caller; a class of None is not indexed
    (a held instance) and stands as the caller named it."""
    report = Dataset()
    report.TransactionUID = request.TransactionUID
    ok, failed = [], []
    for item in request.get("ReferencedSOPSequence", []):
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        cls = str(item.get("ReferencedSOPClassUID", ""))
        out = Dataset()
        out.ReferencedSOPClassUID = cls
        out.ReferencedSOPInstanceUID = uid
        if uid in stored and stored[uid] in (cls, None):
            ok.append(out)
        else:
            out.FailureReason = (
                CLASS_INSTANCE_CONFLICT if uid in stored else NO_SUCH_OBJECT_INSTANCE
            )
            failed.append(out)
    if ok:
        report.ReferencedSOPSequence = Sequence(ok)
    if failed:
        report.FailedSOPSequence = Sequence(failed)
    return (2 if failed else 1), report


class CommitmentSCP:
    def __init__(self, ae: SolentAE, service: RetrieveService) -> None:
        self.ae = ae
        self.service = service

    def handle_n_action(self, event: Event, peer: Peer | None) -> tuple[int, Dataset | None]:
        if peer is None or not peer.may(Operation.STORE):
            return NOT_AUTHORIZED, None
        if event.action_type != 1:
            return 0x0123, None  # No such action
        try:
            request = event.action_information
            _ = request.TransactionUID
        except Exception:
            return PROCESSING_FAILURE, None
        uids = [
            str(i.get("ReferencedSOPInstanceUID", ""))
            for i in request.get("ReferencedSOPSequence", [])
        ]
        stored = self.service.committed(peer.principal, uids)
        event_type, report = commitment_report(request, stored)
        threading.Thread(
            target=self._deliver,
            args=(event.assoc, peer, event_type, report),
            name="storage-commitment-report",
            daemon=True,
        ).start()
        return SUCCESS, None

    def _deliver(self, assoc: Association, peer: Peer, event_type: int, report: Dataset) -> None:
        time.sleep(0.05)  # let the N-ACTION response go first (the reactor pauses for us)
        if assoc.is_established:
            try:
                rsp = assoc.send_n_event_report(
                    report, event_type, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
                )
                if rsp[0] is not None and getattr(rsp[0], "Status", None) is not None:
                    return
            except Exception:
                log.info("storage commitment report: same association failed, opening a new one")
        self._deliver_new_association(peer, event_type, report)

    def _deliver_new_association(self, peer: Peer, event_type: int, report: Dataset) -> None:
        node = peer.node
        if node is None:
            log.warning("storage commitment report undeliverable: unregistered node")
            return
        contexts = [build_context(STORAGE_COMMITMENT)]
        role = build_role(STORAGE_COMMITMENT, scp_role=True)
        assoc = self.ae.associate(
            node.host, node.port, contexts=contexts, ae_title=node.ae_title, ext_neg=[role]
        )
        if not assoc.is_established:
            log.warning("storage commitment report undeliverable to %s", node.ae_title)
            return
        try:
            assoc.send_n_event_report(
                report, event_type, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
            )
        finally:
            assoc.release()
