"""SQL of IHE Instance Availability Notification (R20): what a study holds now, each instance
ONLINE or, once an IOCM note withdrew it, UNAVAILABLE; and whether a later change of the
study is still to come through the change feed."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import Connection, exists, select

from solent.index import schema as t

ONLINE = "ONLINE"
UNAVAILABLE = "UNAVAILABLE"
#: The class of a rejected instance withdrawn before revision 0016 kept it (unknown then).
UNKNOWN_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture: the IAN needs a class


@dataclass(frozen=True, slots=True)
class Availability:
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    availability: str  # ONLINE | UNAVAILABLE (PS3.3 C.4.23.1.1)


@dataclass(frozen=True, slots=True)
class StudyAvailability:
    study_uid: str
    patient_pk: int
    issuer: str
    local_id: str
    nhs_number: str | None
    accession_number: str | None
    instances: tuple[Availability, ...]
    #: SOP Instance UIDs of the Modality Performed Procedure Steps reported for the study.
    performed_steps: tuple[str, ...] = ()


def study_availability(conn: Connection, study_uid: str) -> StudyAvailability | None:
    """The study's instances and the ones withdrawn from it; None when neither exists."""
    ic, se, st, pa = t.instance.c, t.series.c, t.study.c, t.patient.c
    rj = t.rejected_instance.c
    online = conn.execute(
        select(se.series_uid, ic.sop_class_uid, ic.sop_instance_uid)
        .join(t.series, se.pk == ic.series_pk)
        .join(t.study, st.pk == se.study_pk)
        .where(st.study_uid == study_uid)
        .order_by(se.series_uid, ic.pk)
    ).all()
    withdrawn = conn.execute(
        select(rj.series_uid, rj.sop_class_uid, rj.sop_uid, rj.patient_issuer, rj.patient_id)
        .where(rj.study_uid == study_uid)
        .order_by(rj.series_uid, rj.pk)
    ).all()
    if not online and not withdrawn:
        return None
    head = conn.execute(
        select(pa.pk, pa.issuer, pa.local_id, pa.nhs_number, st.accession_number)
        .join(t.patient, pa.pk == st.patient_pk)
        .where(st.study_uid == study_uid)
    ).first()
    if head is None:  # every instance withdrawn and the study row gone with them
        first = withdrawn[0]
        row = conn.execute(
            select(pa.pk, pa.issuer, pa.local_id, pa.nhs_number).where(
                pa.issuer == first.patient_issuer, pa.local_id == first.patient_id
            )
        ).first()
        if row is None:
            return None
        head_values = (row.pk, row.issuer, row.local_id, row.nhs_number, None)
    else:
        head_values = tuple(head)
    instances = [Availability(str(s), str(c), str(u), ONLINE) for s, c, u in online]
    instances += [
        Availability(str(r.series_uid), str(r.sop_class_uid or UNKNOWN_CLASS), str(r.sop_uid),
                     UNAVAILABLE)
        for r in withdrawn
    ]  # fmt: skip
    pk, issuer, local_id, nhs, accession = head_values
    ps = t.performed_step.c
    steps = conn.execute(
        select(ps.sop_instance_uid)
        .where(ps.study_uid == study_uid, ps.trust_code == issuer)
        .order_by(ps.created_at)
    ).scalars()
    return StudyAvailability(
        study_uid,
        int(pk),
        str(issuer),
        str(local_id),
        str(nhs) if nhs else None,
        str(accession) if accession else None,
        tuple(instances),
        tuple(str(s) for s in steps),
    )


def changed_after(conn: Connection, study_uid: str, seq: int, kinds: Collection[str]) -> bool:
    """True when the change feed holds a later event of these kinds for the study (a later
    notification will cover what an earlier one would say). Reads only the feed's tail."""
    cf = t.change_feed.c
    return bool(
        conn.execute(
            select(exists().where(cf.seq > seq, cf.study_uid == study_uid, cf.kind.in_(kinds)))
        ).scalar()
    )
