"""IOCM rejection (R56) in the index: the instances a rejection note lists leave the query
tables in the note's own transaction, so no query or retrieve finds them once the note is
acknowledged; each is kept as a ``rejected_instance`` row naming its blob (kept by policy) and
the note. A later send of a rejected SOP Instance UID is refused (``rejected_before``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Connection, bindparam, insert, select

from solent.dicom.rejection_note import REJECTION_TITLES, RejectionNote
from solent.index import schema as t
from solent.index.key_objects import referencing
from solent.index.prepared import Prepared
from solent.index.sql import Index, now
from solent.index.study_edits import series_moved
from solent.index.viewer import key_images_on


@dataclass(frozen=True, slots=True)
class Rejected:
    """What a note withdrew (its own study only) and what it listed that was not there."""

    series: dict[str, list[str]]  # series UID -> SOP Instance UIDs withdrawn
    not_found: list[str]  # listed, not in the note's study (unknown, elsewhere, or gone)
    #: Key images users marked on a withdrawn instance (R30): {"id", "sop_uid", "by"} each;
    #: they stay, flagged, until their author removes them.
    key_images: list[dict[str, object]] = field(default_factory=list)
    #: Stored key object selections and presentation states that reference a withdrawn
    #: instance (R30): {"sop_uid", "kind", "title", "by"} each.
    key_objects: list[dict[str, object]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.series.values())


class WithdrawnInstance(Exception):
    """A send of a SOP Instance UID a rejection note withdrew: refused, nothing changes."""

    def __init__(self, code: str, note_uid: str) -> None:
        super().__init__(f"rejected by IOCM note {note_uid} ({code})")
        self.code = code
        self.note_uid = note_uid
        self.meaning = REJECTION_TITLES.get(code, code)


#: Asked for every instance ingested: compiled once (a statement built per call cost ingest
#: ~0.3 ms of CPU per instance).
_WITHDRAWN = Prepared(
    select(t.rejected_instance.c.code, t.rejected_instance.c.note_uid).where(
        t.rejected_instance.c.sop_uid == bindparam("sop_uid")
    )
)


def rejected_before(conn: Connection, sop_uid: str) -> tuple[str, str] | None:
    """(title code, note UID) when this SOP Instance UID was withdrawn by a rejection note."""
    row = _WITHDRAWN.first(conn, {"sop_uid": sop_uid})
    return (str(row[0]), str(row[1])) if row else None


def apply_rejection(
    conn: Connection, note: RejectionNote, note_uid: str, study_uid: str, by: str
) -> Rejected:
    """Withdraw what ``note`` lists in ``study_uid`` (the note's study: whoever may file a note
    into a study may correct that study, and nothing else), including the series a person split
    or merged out of it into another study of the same record."""
    ic, se, st, pa = t.instance.c, t.series.c, t.study.c, t.patient.c
    withdrawn: dict[str, list[str]] = {}
    missing: list[str] = []
    studies = {study_uid}
    note_patient = conn.execute(
        select(st.patient_pk)
        .join(t.series, se.study_pk == st.pk)
        .join(t.instance, ic.series_pk == se.pk)
        .where(ic.sop_instance_uid == note_uid)
    ).scalar()
    for ref_study, ref_series, sop in note.references:
        row = (
            conn.execute(
                select(
                    ic.pk,
                    ic.series_pk,
                    ic.blob_key,
                    ic.sha256,
                    ic.size_bytes,
                    ic.sop_class_uid,
                    se.series_uid,
                    se.study_pk,
                    st.study_uid,
                    st.patient_pk,
                    pa.issuer,
                    pa.local_id,
                )
                .join(t.series, se.pk == ic.series_pk)
                .join(t.study, st.pk == se.study_pk)
                .join(t.patient, pa.pk == st.patient_pk)
                .where(ic.sop_instance_uid == sop)
            ).first()
            if ref_study == study_uid and sop != note_uid
            else None
        )
        if row is None or row.series_uid != ref_series:
            missing.append(sop)
            continue
        if row.study_uid != study_uid and not (
            # Split or merged out of the note's study by a person (R57), same record: the
            # modality still names the study it made the images in.
            row.patient_pk == note_patient and series_moved(conn, row.series_uid, study_uid)
        ):
            missing.append(sop)
            continue
        studies.add(str(row.study_uid))
        conn.execute(
            insert(t.rejected_instance).values(
                at=now(),
                sop_uid=sop,
                series_uid=row.series_uid,
                study_uid=row.study_uid,
                blob_key=row.blob_key,
                sha256=row.sha256,
                size_bytes=row.size_bytes,
                patient_issuer=row.issuer,
                patient_id=row.local_id,
                code=note.code,
                note_uid=note_uid,
                rejected_by=by[:200],
                sop_class_uid=row.sop_class_uid,
            )
        )
        # Consumers of the change feed (Instance Availability Notification) learn of it.
        conn.execute(
            insert(t.change_feed).values(
                at=now(),
                kind="instance.rejected",
                principal=by[:200],
                detail=None,
                trust_code=row.issuer,
                patient_pk=row.patient_pk,
                study_uid=row.study_uid,
                series_uid=row.series_uid,
                sop_instance_uid=sop,
            )
        )
        Index.remove_instance(
            conn, int(row.pk), int(row.series_pk), int(row.study_pk), int(row.size_bytes)
        )
        withdrawn.setdefault(str(row.series_uid), []).append(sop)
    gone = [s for sops in withdrawn.values() for s in sops]
    flagged = [k for uid in sorted(studies) for k in key_images_on(conn, uid, gone)]
    marks = [{"id": int(k["pk"]), "sop_uid": k["sop_uid"], "by": k["created_by"]} for k in flagged]
    objects = [
        {
            "sop_uid": o["object_sop_uid"],
            "kind": o["kind"],
            "title": o["title"],
            "by": o["stored_by"],
        }
        for o in referencing(conn, gone)
        if o["object_sop_uid"] not in gone
    ]
    return Rejected(withdrawn, missing, marks, objects)


def rejected_blob_keys(conn: Connection) -> set[str]:
    """Blobs kept for rejected instances (``solent check`` must not take them for orphans)."""
    return {str(k) for (k,) in conn.execute(select(t.rejected_instance.c.blob_key))}
