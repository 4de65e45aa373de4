"""Audit records of DIMSE requests (issue 6): one per C-FIND / C-MOVE / C-GET, never one per
instance, written through the archive's one audit trail (services/audit.py).

C-FIND on the Patient and Study Root models is audited by the query service itself; this
module covers what does not pass through it: refused requests, worklist queries and retrieves.
Kept apart from the SCP handlers so they stay about the protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from solent.domain.records import StoredInstanceRef
from solent.protocols.dimse.access import Peer
from solent.services.audit import AuditAction, AuditOutcome, AuditTrail, PatientRef

log = logging.getLogger(__name__)


def denied(trail: AuditTrail, peer: Peer | None, operation: str, reason: str) -> None:
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
    trail: AuditTrail,
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


def retrieve(
    trail: AuditTrail,
    peer: Peer,
    refs: Iterable[StoredInstanceRef],
    *,
    operation: str,
    destination: str,
) -> None:
    """C-MOVE / C-GET: one RETRIEVE record per patient of the studies being sent, with the
    destination AE and the instance count (sub-operation failures are in the DIMSE log)."""
    refs = list(refs)
    per_study: dict[str, int] = {}
    for ref in refs:
        per_study[ref.study_uid] = per_study.get(ref.study_uid, 0) + 1
    trail.record_studies(
        peer.principal,
        AuditAction.RETRIEVE,
        per_study,
        detail={
            "channel": f"dimse {operation}",
            "destination": destination,
            "instances": len(refs),
        },
    )
