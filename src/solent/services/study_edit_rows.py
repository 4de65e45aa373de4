"""How a study edit row is shown, audited and recorded (R57): the API's view of an edit, the
audit and change-feed detail, the identity event's before/after, and the columns naming the
records. Shared by the study edit door (``study_edit.py``) and its split and merge rules."""

from __future__ import annotations

import json
from typing import Any

from solent.errors import InvalidInput
from solent.index import study_edits as store
from solent.services import study_regroup as regroup
from solent.services.audit import PatientRef


def view(edit: dict[str, Any]) -> dict[str, Any]:
    """The edit as the API and CLI show it: identifiers only."""
    out: dict[str, Any] = {
        "id": edit["pk"],
        "kind": edit["kind"],
        "status": edit["status"],
        "study_uid": edit["study_uid"],
        "from": record_key(edit, "from"),
        "reason": edit["reason"],
        "requested_by": edit["requested_by"],
        "requested_at": store.iso(edit["requested_at"]),
        "decided_by": edit["decided_by"],
        "decided_at": store.iso(edit["decided_at"]),
        "reverses": edit["reverses"],
        "reversed_by": edit["reversed_by"],
    }
    if edit["kind"] in store.MOVES:
        out["to"] = record_key(edit, "to")
        out["needs_second_person"] = edit["from_issuer"] != edit["to_issuer"]
    if edit["kind"] == store.MOVE_SERIES:
        out["series_uid"] = edit["series_uid"]
        out["to_study_uid"] = edit["new_study_uid"]
    else:
        if edit["kind"] in store.REGROUPS:
            out["series_uids"] = edit["series_uids"]
            out["to_study_uid"] = edit["new_study_uid"]
        out["accession"] = {
            "before": {
                "accession_number": edit["old_accession"],
                "issuer": edit["old_accession_issuer"],
            },
            "after": {
                "accession_number": edit["new_accession"],
                "issuer": edit["new_accession_issuer"],
            },
        }
    return out


def reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("give the reason for the correction")
    return reason


#: DICOM Accession Number is SH (PS3.5 6.2): 16 characters, no backslash (it would make the
#: value two), no control character; the index keeps no more than that either.
ACCESSION_MAX = 16
MAX_KEY = 2**63 - 1  # the largest database key (a bigint)
ISSUER_MAX = 64


def accession(number: str | None) -> str | None:
    """The accession number given (stripped), None when none; InvalidInput when it is none
    an outgoing instance or a RIS could carry as one value."""
    number = (number or "").strip()
    if not number:
        return None
    if len(number) > ACCESSION_MAX:
        raise InvalidInput(f"an accession number is at most {ACCESSION_MAX} characters")
    if "\\" in number or any(ord(c) < 0x20 or c == "\x7f" for c in number):
        raise InvalidInput(
            "an accession number holds no backslash (DICOM's value separator) and no control "
            "character"
        )
    return number


def pending_text(study_uid: str) -> str:
    return (
        f"study {study_uid} has a move waiting for approval; approve or refuse it first "
        "(GET /api/identity/study-edits?status=requested)"
    )


def issuers(edit: dict[str, Any]) -> list[str | None]:
    return [edit.get("from_issuer"), edit.get("to_issuer")]


def record_key(edit: dict[str, Any], side: str) -> dict[str, str] | None:
    issuer, local_id = edit.get(f"{side}_issuer"), edit.get(f"{side}_local_id")
    if not issuer or not local_id:
        return None
    return {"issuer": str(issuer), "patient_id": str(local_id)}


def record_ref(edit: dict[str, Any], side: str) -> PatientRef | None:
    key = record_key(edit, side)
    return None if key is None else PatientRef(key["issuer"], key["patient_id"], None)


def about(edit: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "edit": edit.get("pk"),
        "kind": edit["kind"],
        "from": record_key(edit, "from"),
    }
    if edit["kind"] in store.MOVES:
        out["to"] = record_key(edit, "to")
        if edit["kind"] == store.MOVE_SERIES:
            out["series_uid"] = edit["series_uid"]
            out["to_study_uid"] = edit["new_study_uid"]
    else:
        if edit["kind"] in store.REGROUPS:
            out["series_uids"] = edit.get("series_uids") or []
            out["to_study_uid"] = edit["new_study_uid"]
        out["accession_before"] = [edit["old_accession"], edit["old_accession_issuer"]]
        out["accession_after"] = [edit["new_accession"], edit["new_accession_issuer"]]
    out["reason"] = edit["reason"]
    if edit.get("reverses") is not None:
        out["reverses"] = edit["reverses"]
    return out


def feed_detail(edit: dict[str, Any]) -> dict[str, Any]:
    detail: dict[str, Any] = json.loads(json.dumps(about(edit), default=str))
    return detail


def state(edit: dict[str, Any], when: str) -> dict[str, Any]:
    if edit["kind"] in store.REGROUPS:
        return regroup.state(edit, when)
    if edit["kind"] == store.MOVE_SERIES:
        return {
            "study_uid": edit["study_uid" if when == "before" else "new_study_uid"],
            "series_uid": edit["series_uid"],
            "patient": record_key(edit, "from" if when == "before" else "to"),
        }
    if edit["kind"] == store.MOVE:
        return {
            "study_uid": edit["study_uid"],
            "patient": record_key(edit, "from" if when == "before" else "to"),
        }
    prefix = "old" if when == "before" else "new"
    return {
        "study_uid": edit["study_uid"],
        "accession_number": edit[f"{prefix}_accession"],
        "accession_issuer": edit[f"{prefix}_accession_issuer"],
    }


def decided(edit: dict[str, Any]) -> str:
    return f"it was {edit['status']} by {edit['decided_by']} at {store.iso(edit['decided_at'])}"


def between(holder: Any, target: Any) -> dict[str, Any]:
    """The from/to record columns of a move: the record a study is filed under (a row with
    pk, issuer, local_id) and the one it goes to."""
    return {
        "from_patient_pk": int(holder["pk"]),
        "from_issuer": holder["issuer"],
        "from_local_id": holder["local_id"],
        "to_patient_pk": target.patient_pk,
        "to_issuer": target.issuer,
        "to_local_id": target.local_id,
    }


def holder(holder: Any) -> dict[str, Any]:
    """The record columns of a split or merge: one record, named once (``from``)."""
    return {
        "from_patient_pk": int(holder["pk"]),
        "from_issuer": holder["issuer"],
        "from_local_id": holder["local_id"],
    }
