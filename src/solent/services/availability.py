"""IHE Instance Availability Notification (R20, R56): which registered nodes are told that a
study's instances are available (or, after an IOCM rejection, no longer), and the audit
record of each telling.

A notification names a patient's study and instances to another system, so it is a disclosure
like any other: a node subscribed with ``notify`` is told only of studies its trust may see
under the one access rule, and every notification sent (or refused by the node) is audited
with the node as the recipient. The DIMSE N-CREATE itself is the adapter's
(``protocols/dimse/ian.py``); background work calls both (``jobs/tasks.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from solent.domain.principal import Principal, PrincipalKind
from solent.domain.records import NodeRow
from solent.index.availability import StudyAvailability, changed_after, study_availability
from solent.index.sql import Index
from solent.services.access import AccessService
from solent.services.audit import AuditAction, AuditOutcome, AuditTrail, PatientRef

#: The change-feed events after which a study's availability is notified again.
AVAILABILITY_EVENTS = frozenset({"instance.stored", "instance.replaced", "instance.rejected"})


@dataclass(frozen=True, slots=True)
class Notice:
    """One notification due: what ``node`` may be told about the study now."""

    node: NodeRow
    study: StudyAvailability


def node_principal(node: NodeRow) -> Principal:
    """The node as a caller of the access rule (as when it associates itself)."""
    return Principal(
        PrincipalKind.NODE, node.ae_title, node.trust_code, roles=frozenset(node.allowed)
    )


class AvailabilityService:
    def __init__(self, index: Index, access: AccessService, audit: AuditTrail) -> None:
        self._index = index
        self._access = access
        self._audit = audit

    def subscribers(self) -> list[NodeRow]:
        return [n for n in self._index.list_nodes() if n.allow_notify]

    def superseded(self, study_uid: str, seq: int) -> bool:
        """True when a later change of the study is in the feed: its own notification will
        say everything this one would (one notification per burst of stores)."""
        with self._index.read() as conn:
            return changed_after(conn, study_uid, seq, AVAILABILITY_EVENTS)

    def notices(self, study_uid: str) -> list[Notice]:
        """The notifications due for the study: one per subscribed node that may see it."""
        nodes = self.subscribers()
        if not nodes:
            return []
        with self._index.read() as conn:
            study = study_availability(conn, study_uid)
        if study is None:
            return []
        return [
            Notice(node, study)
            for node in nodes
            if self._access.visible_among(node_principal(node), [study.patient_pk])
        ]

    def sent(self, notice: Notice, *, ok: bool, detail: str) -> None:
        """The audit record of one notification: the node received (or refused) the UIDs of
        the study's instances."""
        study = notice.study
        counts: dict[str, int] = {}
        for item in study.instances:
            counts[item.availability] = counts.get(item.availability, 0) + 1
        self._audit.record(
            node_principal(notice.node),
            AuditAction.EXPORT,
            AuditOutcome.SUCCESS if ok else AuditOutcome.FAILURE,
            patient=PatientRef(study.issuer, study.local_id, study.nhs_number),
            study_uid=study.study_uid,
            detail={
                "message": "instance availability notification",
                "destination": notice.node.ae_title,
                "instances": counts,
                "result": detail,
            },
        )
