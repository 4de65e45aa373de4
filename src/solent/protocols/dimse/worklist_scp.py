"""Modality Worklist SCP (Basic Worklist Management, PS3.4 Annex K) over the orders table.

Indexed columns (start date, modality, patient) pre-filter in SQL; the remaining PS3.4 C.2.2.2
rules (wildcards, case-insensitive names, UID lists) are applied here to the few rows left.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.events import Event

from solent.domain.matching import NHS_NUMBER_OID
from solent.protocols.dimse import audit
from solent.protocols.dimse.access import Operation, Peer
from solent.protocols.dimse.find_scp import _wire_value
from solent.protocols.dimse.status import (
    CANCEL,
    FIND_OUT_OF_RESOURCES,
    IDENTIFIER_MISMATCH,
    NOT_AUTHORIZED,
    PENDING,
    status,
)
from solent.services.audit_door import AuditDoor
from solent.services.inbox import InboxService

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"

# Top-level worklist keyword -> orders column.
TOP = {
    "PatientName": "patient_name",
    "PatientID": "patient_id",
    "IssuerOfPatientID": "patient_issuer",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
    "AccessionNumber": "accession_number",
    "RequestedProcedureID": "requested_procedure_id",
    "RequestedProcedureDescription": "requested_procedure_description",
    "StudyInstanceUID": "study_instance_uid",
    "ReferringPhysicianName": "referring_physician",
}
# Scheduled Procedure Step Sequence item keyword -> orders column.
STEP = {
    "Modality": "modality",
    "ScheduledStationAETitle": "scheduled_station_ae_title",
    "ScheduledStationName": "scheduled_station_name",
    "ScheduledProcedureStepStartDate": "scheduled_start_date",
    "ScheduledProcedureStepStartTime": "scheduled_start_time",
    "ScheduledProcedureStepID": "scheduled_procedure_step_id",
    "ScheduledProcedureStepDescription": "scheduled_procedure_step_description",
    "ScheduledPerformingPhysicianName": "scheduled_performing_physician",
    "ScheduledProcedureStepStatus": "status",
}
PN_COLUMNS = {"patient_name", "referring_physician", "scheduled_performing_physician"}
RANGE_COLUMNS = {"scheduled_start_date", "scheduled_start_time", "patient_birth_date"}


def _matches(column: str, pattern: str, value: Any) -> bool:
    """PS3.4 C.2.2.2 matching of one key against one stored value."""
    text = "" if value is None else str(value)
    if column in RANGE_COLUMNS and "-" in pattern:
        low, _, high = pattern.partition("-")
        digits = re.sub(r"[^0-9]", "", text)
        return bool(digits) and (not low or digits >= low) and (not high or digits <= high + "~")
    alternatives = pattern.split("\\")
    if column in PN_COLUMNS:
        text = text.upper()
        alternatives = [a.upper() for a in alternatives]
    for alt in alternatives:
        if "*" in alt or "?" in alt:
            rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in alt)
            if re.fullmatch(rx, text, re.DOTALL):
                return True
        elif alt == text or (column in RANGE_COLUMNS and re.sub(r"[^0-9]", "", text) == alt):
            return True
    return False


def _criteria(identifier: Dataset) -> tuple[dict[str, str], list[str], list[str]]:
    """(column -> pattern for non-universal keys, requested top keys, requested step keys)."""
    criteria: dict[str, str] = {}
    top: list[str] = []
    step: list[str] = []
    for elem in identifier:
        kw = elem.keyword
        if kw in TOP:
            top.append(kw)
            value = _wire_value(elem)
            if value and value != "*":
                criteria[TOP[kw]] = value
        elif kw == "ScheduledProcedureStepSequence":
            items = list(elem.value or [])
            for sub in items[0] if items else []:
                if sub.keyword in STEP:
                    step.append(sub.keyword)
                    value = _wire_value(sub)
                    if value and value != "*":
                        criteria[STEP[sub.keyword]] = value
            if not step:
                step = list(STEP)
        elif kw == "OtherPatientIDsSequence":
            top.append(kw)  # returned (R17: the NHS number), not matched on
    return criteria, top, step


def _response(order: dict[str, Any], top: list[str], step: list[str]) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for kw in top:
        if kw == "OtherPatientIDsSequence":
            ds.OtherPatientIDsSequence = Sequence(_nhs_number_items(order.get("nhs_number")))
        else:
            setattr(ds, kw, order.get(TOP[kw]) or None)
    item = Dataset()
    for kw in step:
        setattr(item, kw, order.get(STEP[kw]) or None)
    if step:
        ds.ScheduledProcedureStepSequence = Sequence([item])
    return ds


def _nhs_number_items(number: str | None) -> list[Dataset]:
    """The order's (valid) NHS number as an Other Patient IDs item, issuer-qualified (R17)."""
    if not number:
        return []
    qualifiers = Dataset()
    qualifiers.UniversalEntityID = NHS_NUMBER_OID
    qualifiers.UniversalEntityIDType = "ISO"
    qualifiers.IdentifierTypeCode = "NH"
    item = Dataset()
    item.PatientID = number
    item.IssuerOfPatientID = "NHS"
    item.TypeOfPatientID = "TEXT"
    item.IssuerOfPatientIDQualifiersSequence = Sequence([qualifiers])
    return [item]


def handle_worklist(
    event: Event, inbox: InboxService, trail: AuditDoor, peer: Peer | None, *, max_results: int
) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    if peer is None or not peer.may(Operation.QUERY):
        audit.denied(trail, peer, "worklist", "this node may not query the worklist")
        yield status(NOT_AUTHORIZED, "this node may not query the worklist"), None
        return
    try:
        criteria, top, step = _criteria(event.identifier)
    except Exception as exc:
        yield status(IDENTIFIER_MISMATCH, f"unreadable identifier: {exc}"), None
        return
    exact: dict[str, str] = {
        col: criteria[col]
        for col in ("modality", "patient_id", "accession_number", "scheduled_station_ae_title")
        if col in criteria and not any(c in criteria[col] for c in "*?\\")
    }
    date = criteria.get("scheduled_start_date", "")
    date_from = date_to = None
    if date and not any(c in date for c in "*?\\"):
        low, dash, high = date.partition("-")
        date_from, date_to = (low or None, high or None) if dash else (low, low)
    statuses: tuple[str, ...] = ("SCHEDULED", "ARRIVED", "READY")
    if "status" in criteria:
        statuses = ()
    rows = inbox.worklist(
        peer.principal,
        exact=exact,
        date_from=date_from,
        date_to=date_to,
        statuses=statuses,
        limit=max_results * 4 + 1,
    )
    matches = [
        r for r in rows if all(_matches(col, pat, r.get(col)) for col, pat in criteria.items())
    ]
    audit.worklist_query(trail, peer, criteria, matches)  # issue 6: one record per query
    if len(matches) > max_results:
        yield (
            status(FIND_OUT_OF_RESOURCES, f"more than {max_results} matches: narrow the query"),
            None,
        )
        return
    for order in matches:
        if event.is_cancelled:
            yield CANCEL, None
            return
        yield PENDING, _response(order, top, step)
