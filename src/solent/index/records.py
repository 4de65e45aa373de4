"""The one write transaction of ingest: patient, study, series, instance, metadata, event."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Connection, DateTime, bindparam, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import NoResultFound

from solent.dicom.parse import ParsedInstance
from solent.domain import nhs_number as nhs_numbers
from solent.domain.principal import Principal, Provenance
from solent.index import identity as identity_store
from solent.index import schema as t
from solent.index import study_edits
from solent.index.prepared import Prepared
from solent.index.sql import Index, now


class PatientMismatchError(Exception):
    """The study or series is already filed under another patient record.

    ``holder_pk`` is that record: ingest decides by whether the sender may see it between
    refusing with this message and holding the instance for reconciliation."""

    def __init__(self, message: str, holder_pk: int | None = None) -> None:
        super().__init__(message)
        self.holder_pk = holder_pk


class AlreadyStoredError(Exception):
    """The SOP Instance UID is stored already (checked inside the write transaction);
    ``holder_pk`` is the patient record the stored instance is filed under."""

    def __init__(self, identical: bool, holder_pk: int | None = None) -> None:
        super().__init__("identical" if identical else "different content")
        self.identical = identical
        self.holder_pk = holder_pk


def _patient_of_series(conn: Connection, series_pk: int) -> int | None:
    pk = conn.execute(
        select(_st.patient_pk).join(t.series, _se.study_pk == _st.pk).where(_se.pk == series_pk)
    ).scalar()
    return None if pk is None else int(pk)


def _patient_of_study(conn: Connection, study_pk: int) -> int | None:
    pk = conn.execute(select(_st.patient_pk).where(_st.pk == study_pk)).scalar()
    return None if pk is None else int(pk)


@dataclass(frozen=True, slots=True)
class RecordedInstance:
    patient_pk: int
    study_pk: int
    series_pk: int
    instance_pk: int
    replaced_blob_key: str | None
    patient_issuer: str = ""
    patient_local_id: str = ""
    patient_nhs_number: str | None = None


# Statements built once: executing a constant statement with a parameter dict skips
# SQLAlchemy's per-call coercion and cache-key work (most of the CPU of a small insert); on
# SQLite they run on the DBAPI cursor (Prepared), the hot path of every stored instance.
_se, _st, _pa, _in = t.series.c, t.study.c, t.patient.c, t.instance.c
_SERIES_LINEAGE = Prepared(
    select(
        _se.pk,
        _se.study_pk,
        _st.study_uid,
        _st.patient_pk,
        _pa.issuer,
        _pa.local_id,
        _pa.nhs_number,
    )
    .select_from(
        t.series.join(t.study, _se.study_pk == _st.pk).join(t.patient, _st.patient_pk == _pa.pk)
    )
    .where(_se.series_uid == bindparam("series_uid"))
)
_EXISTING_INSTANCE = Prepared(
    select(_in.pk, _in.sha256, _in.blob_key, _in.size_bytes, _in.series_pk).where(
        _in.sop_instance_uid == bindparam("sop_instance_uid")
    )
)
_INSERT_INSTANCE = Prepared(insert(t.instance))
_INSERT_METADATA = Prepared(insert(t.instance_metadata))
_INSERT_EVENT = Prepared(insert(t.change_feed))
_COUNT_IN_SERIES = Prepared(
    update(t.series)
    .where(_se.pk == bindparam("series_pk_"))
    .values(num_instances=_se.num_instances + 1)
)


def _study_totals(new_series: bool) -> Any:
    """UPDATE of the study's totals that returns its modalities (one statement, row locked)."""
    values: dict[str, Any] = {
        "num_instances": _st.num_instances + 1,
        "size_bytes": _st.size_bytes + bindparam("size_", type_=BigInteger),
        "updated_at": bindparam("stamp_", type_=DateTime(timezone=True)),
    }
    if new_series:
        values["num_series"] = _st.num_series + 1
    return (
        update(t.study)
        .where(_st.pk == bindparam("study_pk_"))
        .values(**values)
        .returning(_st.modalities)
    )


_STUDY_TOTALS = {flag: Prepared(_study_totals(flag)) for flag in (False, True)}


def _insert_ignore(index: Index, table: Any, values: dict[str, Any], keys: list[str]) -> Any:
    ins = (sqlite_insert if index.dialect == "sqlite" else pg_insert)(table).values(**values)
    return ins.on_conflict_do_nothing(index_elements=keys)


def _patient_pk(
    index: Index, conn: Connection, issuer: str, p: dict[str, Any], placeholder: bool
) -> int:
    c = t.patient.c
    found = conn.execute(
        select(c.pk, c.birth_date, c.sex).where(c.issuer == issuer, c.local_id == p["local_id"])
    ).first()
    if not found:
        replaced_by = _retired_into(conn, issuer, p["local_id"])
        if replaced_by is not None:
            # Merged away (A40) or renumbered (A47): file under the record that replaced it,
            # as IHE PIR expects of late images, and leave a trace on that record.
            identity_store.add_event(
                conn,
                kind="filed-under-retired-id",
                actor="ingest",
                patient_pk=replaced_by,
                issuer=issuer,
                local_id=p["local_id"],
            )
            return replaced_by
    if found:
        # The trust's record may already carry demographics (from earlier studies or HL7);
        # images only fill what is still empty, never overwrite.
        _flag_conflicting_demographics(conn, found, issuer, p)
        if p["nhs_number"] is not None:
            filled = conn.execute(
                update(t.patient)
                .where(c.pk == found.pk, c.nhs_number.is_(None))
                .values(
                    nhs_number=p["nhs_number"],
                    nhs_number_valid=p["nhs_number_valid"],
                    updated_at=now(),
                )
            ).rowcount
            if filled:
                _queue_nhs_number(conn, int(found.pk), issuer, p)
        return int(found.pk)
    stamp = now()
    conn.execute(
        _insert_ignore(
            index,
            t.patient,
            {
                "issuer": issuer,
                "local_id": p["local_id"],
                "name": p["name"],
                "name_upper": p["name"].upper() if p["name"] else None,
                "birth_date": p["birth_date"],
                "sex": p["sex"],
                "nhs_number": p["nhs_number"],
                "nhs_number_valid": p["nhs_number_valid"],
                "nhs_number_verified": False,
                "placeholder": placeholder,
                "created_at": stamp,
                "updated_at": stamp,
            },
            ["issuer", "local_id"],
        )
    )
    pk = int(
        conn.execute(
            select(c.pk).where(c.issuer == issuer, c.local_id == p["local_id"])
        ).scalar_one()
    )
    _queue_nhs_number(conn, pk, issuer, p)
    return pk


def _flag_conflicting_demographics(
    conn: Connection, record: Any, issuer: str, p: dict[str, Any]
) -> None:
    """Images whose birth date or sex contradicts the record they are filed under (same
    trust, same Patient ID): they are filed under it and go out with its demographics, so a
    person must see it; it may be another patient's images under a reused or mistyped ID.
    Silently, images of a boy born 2006 went out as a girl born 2014's."""
    differ = [
        f"{label} {mine} (record: {theirs})"
        for label, mine, theirs in (
            ("birth date", p.get("birth_date"), record.birth_date),
            ("sex", p.get("sex"), record.sex),
        )
        if mine and theirs and str(mine) != str(theirs)
    ]
    if differ:
        identity_store.add_work_item(
            conn,
            kind="image-demographics-mismatch",
            detail=f"images filed under {issuer} {p['local_id']} give {', '.join(differ)}",
            issuer=issuer,
            local_id=p["local_id"],
            patient_pk=int(record.pk),
        )


def _judge_range(patient: dict[str, Any], production: bool) -> dict[str, Any]:
    """R2 on the DICOM interface: the range finding of a valid number the images bring (kept
    in ``nhs_range``); a test number on a live archive is kept but marked not valid, so it
    never links, like a placeholder."""
    number = patient.get("nhs_number")
    if number is None or not patient.get("nhs_number_valid"):
        return patient
    found = nhs_numbers.range_finding(number, production=production)
    if found is None:
        return patient
    return dict(patient, nhs_range=found, nhs_number_valid=found.linkable)


def _queue_nhs_number(conn: Connection, pk: int, issuer: str, p: dict[str, Any]) -> None:
    """R1/R2/R12 on the DICOM interface too: a number the images bring that fails the check
    digit, or a placeholder, is kept unlinked and queued for a person, as from HL7; so is a
    number outside the issued ranges (kept, a warning) and a test number on a live archive."""
    number = p["nhs_number"]
    if number is None:
        return
    where = {"issuer": issuer, "local_id": p["local_id"], "patient_pk": pk, "nhs_number": number}
    found: nhs_numbers.RangeFinding | None = p.get("nhs_range")
    if found is not None:
        identity_store.add_work_item(
            conn, kind=found.kind, detail=f"{found.reason} (from the images)", **where
        )
        return
    if p["nhs_number_valid"]:
        return
    identity_store.add_work_item(
        conn,
        kind="invalid-nhs-number",
        detail=f"NHS number {number} in the images' Other Patient IDs fails the modulus 11 "
        "check or is a placeholder; records not linked",
        **where,
    )


def _retired_into(conn: Connection, issuer: str, local_id: str) -> int | None:
    """The record a retired identifier now names (A40 merge, A47 renumbering), if any."""
    r = t.retired_identifier.c
    pk = conn.execute(
        select(r.patient_pk).where(r.issuer == issuer, r.local_id == local_id)
    ).scalar()
    return None if pk is None else int(pk)


def _lineage(
    index: Index,
    conn: Connection,
    parsed: ParsedInstance,
    trust: str,
    patient: dict[str, Any],
    placeholder: bool,
) -> tuple[int, int, int, bool, str | None, str]:
    """(patient_pk, study_pk, series_pk, new_series, nhs_number of the patient record, the
    study's UID: the instance's own, or the study its series was moved to, R57).

    A known series is resolved and checked in one joined read: it must belong to this study,
    and the study to this trust's patient; anything else is a PatientMismatchError, never a
    silent filing under another patient. A new series takes the longer path that creates rows.
    """
    found = _SERIES_LINEAGE.first(conn, {"series_uid": parsed.series_uid})
    if found is not None:
        if found.study_uid != parsed.study_uid and not study_edits.series_moved(
            conn, parsed.series_uid, parsed.study_uid
        ):
            raise PatientMismatchError(
                "this Series Instance UID already belongs to another study; "
                "the instance was not stored",
                int(found.patient_pk),
            )
        same_record = found.issuer == trust and found.local_id == patient["local_id"]
        if (
            not same_record
            and _retired_into(conn, trust, patient["local_id"]) != int(found.patient_pk)
            and not study_edits.moved_away_from(conn, parsed.study_uid, trust, patient["local_id"])
        ):
            raise PatientMismatchError(
                "this Study Instance UID is already filed under another patient record; "
                "the instance was not stored (check Patient ID / issuing trust)",
                int(found.patient_pk),
            )
        number = found.nhs_number
        if number is None and patient["nhs_number"] is not None:
            # Images only fill what the record still lacks, never overwrite.
            filled = conn.execute(
                update(t.patient)
                .where(_pa.pk == found.patient_pk, _pa.nhs_number.is_(None))
                .values(
                    nhs_number=patient["nhs_number"],
                    nhs_number_valid=patient["nhs_number_valid"],
                    updated_at=now(),
                )
            ).rowcount
            if filled:
                _queue_nhs_number(conn, int(found.patient_pk), trust, patient)
            number = patient["nhs_number"]
        study_uid = str(found.study_uid)
        return int(found.patient_pk), int(found.study_pk), int(found.pk), False, number, study_uid

    patient_pk = _patient_pk(index, conn, trust, patient, placeholder)
    stamp = now()
    sc = t.study.c
    study_uid = parsed.study_uid
    study_row = conn.execute(select(sc.pk, sc.patient_pk).where(sc.study_uid == study_uid)).first()
    for _ in range(8):  # a person merged this study into another (R57): its series go there
        merged = None if study_row is not None else study_edits.merged_into(conn, study_uid)
        if merged is None:
            break
        study_uid = merged
        study_row = conn.execute(select(sc.pk, sc.patient_pk).where(sc.study_uid == merged)).first()
    if study_row is None:
        study_uid = parsed.study_uid
        conn.execute(
            _insert_ignore(
                index,
                t.study,
                dict(
                    parsed.study,
                    patient_pk=patient_pk,
                    trust_code=trust,
                    modalities="",
                    num_series=0,
                    num_instances=0,
                    size_bytes=0,
                    created_at=stamp,
                    updated_at=stamp,
                ),
                ["study_uid"],
            )
        )
        study_row = conn.execute(
            select(sc.pk, sc.patient_pk).where(sc.study_uid == parsed.study_uid)
        ).one()
    if study_row.patient_pk != patient_pk and study_edits.moved_away_from(
        conn, parsed.study_uid, trust, patient["local_id"]
    ):
        # Moved to another record by a person (R57): the rest of the study follows it.
        patient_pk = int(study_row.patient_pk)
    if study_row.patient_pk != patient_pk:
        raise PatientMismatchError(
            "this Study Instance UID is already filed under another patient record; "
            "the instance was not stored (check Patient ID / issuing trust)",
            int(study_row.patient_pk),
        )
    study_pk = int(study_row.pk)

    se = t.series.c
    conn.execute(
        _insert_ignore(
            index,
            t.series,
            dict(parsed.series, study_pk=study_pk, num_instances=0, created_at=stamp),
            ["series_uid"],
        )
    )
    series_row = conn.execute(
        select(se.pk, se.study_pk, se.num_instances).where(se.series_uid == parsed.series_uid)
    ).one()
    if series_row.study_pk != study_pk:
        raise PatientMismatchError(
            "this Series Instance UID already belongs to another study; "
            "the instance was not stored",
            _patient_of_study(conn, int(series_row.study_pk)),
        )
    # Another writer may have created it between our two statements (PostgreSQL).
    new_series = series_row.num_instances == 0
    nhs = conn.execute(select(_pa.nhs_number).where(_pa.pk == patient_pk)).scalar_one()
    return patient_pk, study_pk, int(series_row.pk), new_series, nhs, study_uid


def record_instance(
    index: Index,
    conn: Connection,
    parsed: ParsedInstance,
    *,
    trust: str,
    patient_local_id: str,
    placeholder: bool,
    blob_key: str,
    provenance: Provenance,
    principal: Principal,
    replace: bool,
    production: bool = False,
) -> RecordedInstance:
    """Index one instance whose blob is durable, inside the caller's write transaction.

    The duplicate check runs here, in the same transaction as the insert, so no separate read
    transaction is needed and no concurrent writer can slip in between: a stored SOP Instance
    UID raises AlreadyStoredError unless ``replace`` allows replacing different content.
    """
    ic, se, sc = t.instance.c, t.series.c, t.study.c
    old = _EXISTING_INSTANCE.first(conn, {"sop_instance_uid": parsed.sop_instance_uid})
    if old is not None and (old.sha256 == parsed.sha256 or not replace):
        identical = old.sha256 == parsed.sha256
        raise AlreadyStoredError(
            identical, None if identical else _patient_of_series(conn, int(old.series_pk))
        )

    patient = _judge_range(dict(parsed.patient, local_id=patient_local_id), production)
    patient_pk, study_pk, series_pk, new_series, nhs, study_uid = _lineage(
        index, conn, parsed, trust, patient, placeholder
    )
    stamp = now()

    replaced_key: str | None = None
    if old is not None:
        if old.series_pk != series_pk:
            raise PatientMismatchError(
                "the replacing instance names another series than the stored one",
                _patient_of_series(conn, int(old.series_pk)),
            )
        replaced_key = str(old.blob_key)
        conn.execute(delete(t.instance_metadata).where(t.instance_metadata.c.instance_pk == old.pk))
        conn.execute(delete(t.instance).where(ic.pk == old.pk))
        conn.execute(
            update(t.series).where(se.pk == series_pk).values(num_instances=se.num_instances - 1)
        )
        conn.execute(
            update(t.study)
            .where(sc.pk == study_pk)
            .values(num_instances=sc.num_instances - 1, size_bytes=sc.size_bytes - old.size_bytes)
        )

    instance_pk = _INSERT_INSTANCE.insert_pk(
        conn,
        dict(
            parsed.instance,
            series_pk=series_pk,
            size_bytes=parsed.size,
            sha256=parsed.sha256,
            blob_key=blob_key,
            frames=json.dumps(parsed.frames, separators=(",", ":"))
            if parsed.frames is not None
            else None,
            trust_code=trust,
            received_via=provenance.channel.value,
            calling_ae=provenance.calling_ae,
            called_ae=provenance.called_ae,
            remote_address=provenance.remote_address,
            received_by=principal.describe(),
            source_path=provenance.source_path,
            received_at=stamp,
        ),
    )
    _INSERT_METADATA.run(
        conn,
        {"instance_pk": instance_pk, "series_pk": series_pk, "json_z": parsed.metadata_json},
    )
    _COUNT_IN_SERIES.run(conn, {"series_pk_": series_pk})
    # The UPDATE locks the study row (PostgreSQL: FOR NO KEY UPDATE strength, no deadlock with
    # writers holding KEY SHARE from a new series) and returns the modalities under that lock.
    totals = _STUDY_TOTALS[new_series].first(
        conn, {"study_pk_": study_pk, "size_": parsed.size, "stamp_": stamp}
    )
    if totals is None:
        raise NoResultFound(f"study row {study_pk} vanished inside its own transaction")
    modalities = totals.modalities or ""
    modality = parsed.series.get("modality")
    if modality and f"\\{modality}\\" not in f"\\{modalities}\\":
        conn.execute(
            update(t.study)
            .where(sc.pk == study_pk)
            .values(modalities=f"{modalities}\\{modality}" if modalities else modality)
        )

    _INSERT_EVENT.run(
        conn,
        {
            "at": stamp,
            "kind": "instance.replaced" if replaced_key else "instance.stored",
            "principal": principal.describe(),
            "detail": None,
            "trust_code": trust,
            "patient_pk": patient_pk,
            "study_uid": study_uid,
            "series_uid": parsed.series_uid,
            "sop_instance_uid": parsed.sop_instance_uid,
        },
    )
    return RecordedInstance(
        patient_pk, study_pk, series_pk, instance_pk, replaced_key, trust, patient_local_id, nhs
    )
