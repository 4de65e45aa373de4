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


def gone(conn: Connection, study_uid: str) -> str:
    """What became of a study no longer stored (an edit found it when it was asked for)."""
    into = store.merged_into(conn, study_uid)
    if into is not None:
        return f"study {study_uid} was merged into study {into}"
    return f"study {study_uid} is no longer stored (merged or deleted)"


#: Why a split or merge cannot be made now, when nothing more precise is known.
CHANGED = "its series or studies changed meanwhile"


def refile(conn: Connection, source: dict[str, Any], edit: dict[str, Any]) -> list[str] | str:
    """Move the edit's series (a merge: every series of ``source``) from ``source`` into
    ``new_study_uid``, made now when missing; the totals of both kept true, an emptied study
    deleted. The series moved, or why not when the studies or series changed meanwhile
    (then the caller rolls back what was written)."""
    patient_pk = int(edit["from_patient_pk"])
    if int(source["patient_pk"]) != patient_pk:
        return "it was moved to another patient record (or its record merged) meanwhile"
    source_pk = int(source["pk"])
    uids = list(edit.get("series_uids") or store.series_of(conn, source_pk))
    forward = edit.get("reverses") is None
    # Checked again here: another split since may have taken the series that would stay.
    if (
        forward
        and edit["kind"] == store.SPLIT
        and not set(store.series_of(conn, source_pk)) - set(uids)
    ):
        return (
            "its series changed meanwhile: the other series were split out or moved since, "
            "and a split must leave at least one series in it"
        )
    into = identity_store.study_by_uid(conn, edit["new_study_uid"])
    if into is None and edit["kind"] == store.MERGE and forward:
        # the study to merge into was merged away meanwhile: no study to make
        return f"the study to merge into changed meanwhile: {gone(conn, edit['new_study_uid'])}"
    if into is None:
        if edit.get("study_attrs"):
            attrs = json.loads(edit["study_attrs"])
        else:
            attrs = {k: source[k] for k in store.STUDY_ATTRS}
            attrs["accession_number"] = edit["new_accession"]
            attrs["accession_issuer"] = edit["new_accession_issuer"]
        into_pk = store.new_study(conn, attrs, edit["new_study_uid"], patient_pk)
    elif int(into["patient_pk"]) != patient_pk or into["pk"] == source_pk:
        return CHANGED
    else:
        into_pk = int(into["pk"])
    moved = []
    for uid in uids:
        series = store.series_in(conn, uid)
        if series is None:  # withdrawn since (IOCM): nothing to move
            continue
        if int(series["study_pk"]) != source_pk:
            return CHANGED
        if not store.refile_series(conn, int(series["pk"]), source_pk, into_pk):
            return CHANGED
        moved.append(uid)
    if not moved:
        return CHANGED
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


#: Why a series move cannot be made now, when nothing more precise is known.
MOVED = "the series or study was moved (or a record merged) meanwhile"


def refile_one(conn: Connection, study: dict[str, Any], edit: dict[str, Any]) -> str | None:
    """Put the series in its new study (made now, or the target's own), totals of both
    kept true; a study left without series is deleted (a reversal's emptied study). None
    when done, else why not (the caller rolls back what was written)."""
    series = store.series_in(conn, edit["series_uid"])
    if (
        series is None
        or series["study_uid"] != edit["study_uid"]
        or int(study["patient_pk"]) != int(edit["from_patient_pk"])
    ):
        return MOVED
    into = identity_store.study_by_uid(conn, edit["new_study_uid"])
    if into is None:
        # A reversal's study (the one the series came from), or a study named to receive
        # it, that is gone meanwhile is not made again under its old UID.
        if edit.get("reverses") is not None or store.merged_into(conn, edit["new_study_uid"]):
            return (
                "the study to move the series into changed meanwhile: "
                f"{gone(conn, edit['new_study_uid'])}"
            )
        # Checked again here: another move since may have taken the series that would stay.
        if not set(store.series_of(conn, int(study["pk"]))) - {edit["series_uid"]}:
            return (
                f"the other series of study {edit['study_uid']} were moved meanwhile: "
                f"series {edit['series_uid']} is its only series now; move the study instead"
            )
        into_pk = store.new_study_like(
            conn, study, edit["new_study_uid"], int(edit["to_patient_pk"])
        )
    elif int(into["patient_pk"]) != int(edit["to_patient_pk"]):
        return MOVED
    else:
        into_pk = int(into["pk"])
    if not store.refile_series(conn, int(series["pk"]), int(study["pk"]), into_pk):
        return MOVED
    store.recount(conn, into_pk)
    store.recount(conn, int(study["pk"]))
    return None
