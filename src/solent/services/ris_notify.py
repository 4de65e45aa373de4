"""Telling each trust's RIS of study edits (R57: "notify the RIS and downstream consumers").

A study edit (a move to another patient record, a series moved, an accession corrected) is on
the change feed; the ``ris`` job consumer turns each such event into one notice per RIS
concerned: the RIS registered (`solent hl7 ris add`) for the trust that sent the study and for
the issuers of the records it moved between (both trusts of a cross-trust move). The HL7 v2
message itself is the adapter's (``protocols/hl7/ris.py``), given to the job by the
composition root. A notice names a patient to another system, so it is a disclosure: the job
asks as a system principal, and every notification sent (or refused) is audited naming the
patient, the study and the destination.

The message control ID is made from the event and the destination, so a notification retried
after an AE/AR or no answer carries the same MSH-10 and the RIS can recognise the repeat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from solent.domain.principal import Principal, PrincipalKind
from solent.domain.records import DestinationRow
from solent.index import hl7_destinations
from solent.index import identity as identity_store
from solent.index.jobs import feed_row
from solent.index.orders import order_step_ids
from solent.index.sql import Index
from solent.services.access import AccessService, Permission
from solent.services.audit import AuditAction, AuditOutcome, AuditTrail, PatientRef

#: Change-feed kind of a study edit -> HL7 order control (ORC-1) of the notification:
#: XO (order changed: the study now belongs to this patient / study), RU (replaced unsolicited:
#: the order under its old accession, followed by RO, the same order under the new one).
#: A split or merge is an XO of the study that received the series (the new study of a split,
#: the one merged into), whose note names the study they came from.
RIS_MESSAGES: dict[str, str] = {
    "study.moved": "XO",
    "series.moved": "XO",
    "study.accession-corrected": "RU",
    "study.split": "XO",
    "study.merged": "XO",
}

#: The caller the job asks as (and the actor of the audit records of what it sent).
RIS_NOTIFIER = Principal(PrincipalKind.SYSTEM, "ris-notify", None)


@dataclass(frozen=True, slots=True)
class RisPatient:
    issuer: str
    local_id: str
    nhs_number: str | None
    name: str | None  # DICOM PN (family^given^middle^prefix^suffix: HL7 XPN's order)
    birth_date: str | None  # YYYYMMDD
    sex: str | None  # DICOM M/F/O


@dataclass(frozen=True, slots=True)
class RisNotice:
    """One notification due to one RIS, in values of no particular protocol."""

    destination: DestinationRow
    control_id: str  # the same on every retry of this event to this RIS
    at: datetime  # when the edit was made (the change-feed event's time)
    kind: str  # the change-feed kind
    order_control: str  # RIS_MESSAGES[kind]
    patient: RisPatient  # the record the study is filed under after the edit
    prior_patient: RisPatient | None  # the record it was filed under before (moves)
    study_uid: str
    study_description: str | None
    modality: str | None  # the study's first modality
    accession: tuple[str, str] | None  # (number, issuer) after the edit
    old_accession: tuple[str, str] | None  # (number, issuer) before (corrections)
    reason: str
    edit: int | None  # the study edit's number
    #: accession number -> (Requested Procedure ID, Scheduled Procedure Step ID) of the orders
    #: known for the accessions above (IPC-2, IPC-4)
    steps: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: the study the series came from, when the notice is about the one they went to
    from_study_uid: str | None = None


class RisNotifications:
    def __init__(self, index: Index, access: AccessService, audit: AuditTrail) -> None:
        self._index = index
        self._access = access
        self._audit = audit

    def notices(self, principal: Principal, seq: int) -> list[RisNotice]:
        """The notifications due for change-feed event ``seq``: none when it is no study edit,
        its study is gone, or no trust concerned has a RIS registered."""
        self._access.require(principal, Permission.ADMIN, "notify the RIS of study edits")
        with self._index.read() as conn:
            event = feed_row(conn, seq)
            if event is None or event["kind"] not in RIS_MESSAGES:
                return []
            detail: dict[str, Any] = event["detail"]
            study_uid = str(detail.get("to_study_uid") or event["study_uid"] or "")
            study = identity_store.study_by_uid(conn, study_uid)
            if study is None:
                return []
            now_under = _patient(conn, detail.get("to")) or identity_store.get_patient(
                conn, int(study["patient_pk"])
            )
            before = _patient(conn, detail.get("from")) if "to" in detail else None
            accession, old = _accessions(study, detail)
            steps = {
                pair[0]: ids
                for pair in (accession, old)
                if pair is not None and (ids := order_step_ids(conn, *pair)) is not None
            }
        if now_under is None:
            return []
        trusts = [str(study["trust_code"]), str(now_under["issuer"])]
        if before is not None:
            trusts.append(str(before["issuer"]))
        destinations = hl7_destinations.list_destinations(self._index, set(trusts))
        modalities = str(study["modalities"] or "").split("\\")
        source = str(event["study_uid"] or "")
        return [
            RisNotice(
                destination=d,
                control_id=f"SOLENT{seq}.{d.trust_code}"[:64],
                at=event["at"],
                kind=str(event["kind"]),
                order_control=RIS_MESSAGES[event["kind"]],
                patient=_ris_patient(now_under),
                prior_patient=_ris_patient(before) if before is not None else None,
                study_uid=study_uid,
                study_description=study["study_description"],
                modality=modalities[0] or None,
                accession=accession,
                old_accession=old,
                reason=str(detail.get("reason") or ""),
                edit=detail.get("edit"),
                steps=steps,
                from_study_uid=source if source and source != study_uid else None,
            )
            for d in destinations
        ]

    def sent(self, principal: Principal, notice: RisNotice, *, ok: bool, result: str) -> None:
        """The audit record of one notification: the RIS was told (or refused, or never
        answered) that the study is this patient's now."""
        p = notice.patient
        dest = notice.destination
        self._audit.record(
            principal,
            AuditAction.EXPORT,
            AuditOutcome.SUCCESS if ok else AuditOutcome.FAILURE,
            patient=PatientRef(p.issuer, p.local_id, p.nhs_number),
            study_uid=notice.study_uid,
            detail={
                "message": "RIS notification of a study edit",
                "event": notice.kind,
                "edit": notice.edit,
                "control_id": notice.control_id,
                "destination": f"{dest.application}^{dest.facility} ({dest.trust_code})",
                "result": result,
            },
        )


def _patient(conn: Any, key: Any) -> dict[str, Any] | None:
    if not isinstance(key, dict) or not key.get("issuer") or not key.get("patient_id"):
        return None
    return identity_store.find_patient(conn, str(key["issuer"]), str(key["patient_id"]))


def _ris_patient(row: dict[str, Any]) -> RisPatient:
    return RisPatient(
        str(row["issuer"]),
        str(row["local_id"]),
        # An NHS number that fails its check digit is not sent as one (R2).
        (row.get("nhs_number") or None) if row.get("nhs_number_valid") is not False else None,
        row.get("name") or None,
        row.get("birth_date") or None,
        row.get("sex") or None,
    )


def _accessions(
    study: dict[str, Any], detail: dict[str, Any]
) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """(after, before) as (number, issuer); an accession without an issuer is the study's
    trust's (R16). A correction's values are the event's own, not the study's now."""

    def pair(number: Any, issuer: Any) -> tuple[str, str] | None:
        return (str(number), str(issuer or study["trust_code"])) if number else None

    if "accession_after" in detail:
        after, before = detail["accession_after"], detail.get("accession_before") or [None, None]
        return pair(*after), pair(*before)
    return pair(study["accession_number"], study["accession_issuer"]), None
