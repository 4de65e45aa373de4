"""Study split and merge (R57): series regrouped between studies of one patient record.

The rules and the refiling of the study edit door (``study_edit.py``), which decides who may,
writes the edit row, its audit records, identity event and change-feed event, and reverses it.

* A split moves some series of a study into a new study of the same record: a new Study
  Instance UID, the study's other attributes, and the accession given (else none: the series
  leave the study's order). A study is never split into nothing: moving all of its series is
  refused.
* A merge moves every series of study B into study A of the same record; B, left empty, leaves
  every query. Its attributes stay on the edit row, so the merge's reversal brings B back.
* Both are one steward's edit done at once (one record, one issuer). Studies of two records
  are never merged: the study is moved to the right record first.
* A reversal moves the same series back: from the study they went to, to the one they came
  from (made again when the edit emptied it). Series withdrawn since (IOCM) are skipped.

Outgoing DICOM of a study that received series (``study_edits.study_overrides``) says its
own Study Instance UID and accession, the stored ones kept in Original Attributes Sequence,
as for a series moved alone; a late instance of a moved series follows it (``series_moved``),
and a new series that names a merged study goes into the study it was merged into.
"""

from __future__ import annotations

import json
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import Connection

from solent.errors import InvalidInput, NotFound
from solent.index import identity as identity_store
from solent.index import study_edits as store

#: Why a reversal cannot be done: the series or studies changed since.
LATER = "the series were moved again (or a study merged) since; reverse the later edit first"


def plan_split(
    conn: Connection,
    study: dict[str, Any],
    series_uids: list[str],
    accession: tuple[str, str] | None,
) -> dict[str, Any] | str:
    """The edit columns of a split of ``study`` (already checked to be the caller's), or why
    it is refused. Unknown series are NotFound."""
    uids = list(dict.fromkeys(u.strip() for u in series_uids if u.strip()))
    if not uids:
        raise InvalidInput("name the series to split out of the study")
    study_uid = str(study["study_uid"])
    for uid in uids:
        series = store.series_in(conn, uid)
        if series is None or series["study_uid"] != study_uid:
            raise NotFound(f"no series {uid} in study {study_uid}")
    if len(uids) >= len(store.series_of(conn, int(study["pk"]))):
        return (
            f"these are all the series of study {study_uid}: a split must leave at least one "
            "series in it (to give the study another Study Instance UID, it is not split)"
        )
    return {
        "kind": store.SPLIT,
        "study_uid": study_uid,
        "new_study_uid": generate_uid(),
        "series_uids": uids,
        "old_accession": study["accession_number"],
        "old_accession_issuer": study["accession_issuer"],
        "new_accession": accession[0] if accession else None,
        "new_accession_issuer": accession[1] if accession else None,
    }


def plan_merge(
    conn: Connection, study: dict[str, Any], into: dict[str, Any]
) -> dict[str, Any] | str:
    """The edit columns of merging ``study`` into ``into`` (both the caller's), or why not."""
    if study["study_uid"] == into["study_uid"]:
        return f"study {study['study_uid']} cannot be merged into itself"
    if int(study["patient_pk"]) != int(into["patient_pk"]):
        return (
            f"studies {study['study_uid']} and {into['study_uid']} are filed under different "
            "patient records: move the study to the right record first "
            f"(POST /api/identity/studies/{study['study_uid']}/move), then merge"
        )
    return {
        "kind": store.MERGE,
        "study_uid": study["study_uid"],
        "new_study_uid": into["study_uid"],
        "old_accession": study["accession_number"],
        "old_accession_issuer": study["accession_issuer"],
        "new_accession": into["accession_number"],
        "new_accession_issuer": into["accession_issuer"],
        "study_attrs": json.dumps({k: study[k] for k in store.STUDY_ATTRS}),
    }


def refile(conn: Connection, source: dict[str, Any], edit: dict[str, Any]) -> list[str] | None:
    """Move the edit's series (a merge: every series of ``source``) from ``source`` into
    ``new_study_uid``, made now when missing; the totals of both kept true, an emptied study
    deleted. The series moved, or None when the studies or series changed meanwhile."""
    patient_pk = int(edit["from_patient_pk"])
    if int(source["patient_pk"]) != patient_pk:
        return None
    source_pk = int(source["pk"])
    uids = list(edit.get("series_uids") or store.series_of(conn, source_pk))
    forward = edit.get("reverses") is None
    # Checked again here: another split since may have taken the series that would stay.
    if (
        forward
        and edit["kind"] == store.SPLIT
        and not set(store.series_of(conn, source_pk)) - set(uids)
    ):
        return None
    into = identity_store.study_by_uid(conn, edit["new_study_uid"])
    if into is None and edit["kind"] == store.MERGE and forward:
        return None  # the study to merge into was merged away meanwhile: no study to make
    if into is None:
        if edit.get("study_attrs"):
            attrs = json.loads(edit["study_attrs"])
        else:
            attrs = {k: source[k] for k in store.STUDY_ATTRS}
            attrs["accession_number"] = edit["new_accession"]
            attrs["accession_issuer"] = edit["new_accession_issuer"]
        into_pk = store.new_study(conn, attrs, edit["new_study_uid"], patient_pk)
    elif int(into["patient_pk"]) != patient_pk or into["pk"] == source_pk:
        return None
    else:
        into_pk = int(into["pk"])
    moved = []
    for uid in uids:
        series = store.series_in(conn, uid)
        if series is None:  # withdrawn since (IOCM): nothing to move
            continue
        if int(series["study_pk"]) != source_pk:
            return None
        if not store.refile_series(conn, int(series["pk"]), source_pk, into_pk):
            return None
        moved.append(uid)
    if not moved:
        return None
    store.recount(conn, into_pk)
    store.recount(conn, source_pk)
    return moved


def reversal(conn: Connection, edit: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(edit columns moving the same series back, why it cannot be done or None)."""
    now_in = identity_store.study_by_uid(conn, edit["new_study_uid"])
    if now_in is None:
        return {}, LATER
    present = []
    for uid in edit["series_uids"]:
        series = store.series_in(conn, uid)
        if series is None:
            continue
        if series["study_uid"] != edit["new_study_uid"]:
            return {}, LATER
        present.append(uid)
    if not present:
        return {}, "none of the series it moved is stored any more; nothing to move back"
    back = identity_store.study_by_uid(conn, edit["study_uid"])
    if back is not None and int(back["patient_pk"]) != int(now_in["patient_pk"]):
        return {}, LATER
    if int(now_in["patient_pk"]) != int(edit["from_patient_pk"]):
        return {}, LATER
    return {
        "kind": edit["kind"],
        "study_uid": edit["new_study_uid"],
        "new_study_uid": edit["study_uid"],
        "series_uids": present,
        "old_accession": edit["new_accession"],
        "old_accession_issuer": edit["new_accession_issuer"],
        "new_accession": edit["old_accession"],
        "new_accession_issuer": edit["old_accession_issuer"],
        "study_attrs": edit["study_attrs"],
    }, None


def state(edit: dict[str, Any], when: str) -> dict[str, Any]:
    """The identity event's before/after of a split or merge."""
    return {
        "study_uid": edit["study_uid" if when == "before" else "new_study_uid"],
        "series_uids": edit.get("series_uids") or [],
    }


def refile_one(conn: Connection, study: dict[str, Any], edit: dict[str, Any]) -> bool:
    """Put the series in its new study (made now, or the target's own), totals of both
    kept true; a study left without series is deleted (a reversal's emptied study)."""
    series = store.series_in(conn, edit["series_uid"])
    if (
        series is None
        or series["study_uid"] != edit["study_uid"]
        or int(study["patient_pk"]) != int(edit["from_patient_pk"])
    ):
        return False
    into = identity_store.study_by_uid(conn, edit["new_study_uid"])
    if into is None:
        into_pk = store.new_study_like(
            conn, study, edit["new_study_uid"], int(edit["to_patient_pk"])
        )
    elif int(into["patient_pk"]) != int(edit["to_patient_pk"]):
        return False
    else:
        into_pk = int(into["pk"])
    if not store.refile_series(conn, int(series["pk"]), int(study["pk"]), into_pk):
        return False
    store.recount(conn, into_pk)
    store.recount(conn, int(study["pk"]))
    return True
