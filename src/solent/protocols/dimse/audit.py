"""Audit records of DIMSE requests (issue 6): one per C-FIND / C-MOVE / C-GET, never one per
instance, written through the archive's one audit trail (services/audit.py).

C-FIND on the Patient and Study Root models is audited by the query service itself, C-GET and
C-MOVE by the retrieve service; this module covers what does not pass through them: refused
queries and worklist queries.
Kept apart from the SCP handlers so they stay about the protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from solent.protocols.dimse.access import Peer
from solent.services.audit import AuditAction, AuditOutcome, PatientRef
from solent.services.audit_door import AuditDoor

log = logging.getLogger(__name__)


def denied(trail: AuditDoor, peer: Peer | None, operation: str, reason: str) -> None:
    """A registered node asked for something its registration does not allow."""
    if peer is None:
        return  # the association itself was refused; there is no one to name
    try:
        trail.record(
            peer.principal,
            AuditAction.PERMISSION_DENIED,
            AuditOutcome.DENIED,
            detail={"channel": f"dimse {operation}", "reason": reason},
        )
    except Exception:
        log.exception("could not audit a refused DIMSE %s", operation)


def worklist_query(
    trail: AuditDoor,
    peer: Peer,
    criteria: Mapping[str, str],
    matches: Sequence[Mapping[str, Any]],
) -> None:
    """One QUERY record per Modality Worklist C-FIND: keys, match count, the patient when all
    matches are one patient's orders."""
    patients = {(m.get("patient_issuer"), m.get("patient_id")) for m in matches}
    patient = None
    if len(patients) == 1:
        issuer, local_id = next(iter(patients))
        if issuer and local_id:
            patient = PatientRef(str(issuer), str(local_id))
    trail.record(
        peer.principal,
        AuditAction.QUERY,
        patient=patient,
        detail={"channel": "dimse worklist", "keys": dict(criteria), "matches": len(matches)},
    )
