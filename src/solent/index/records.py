"""The one write transaction of ingest: patient, study, series, instance, metadata, event."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from solent.dicom.parse import ParsedInstance
from solent.domain.principal import Principal, Provenance
from solent.index import schema as t
from solent.index.sql import Index, now


class PatientMismatchError(Exception):
    """The study or series is already filed under another patient record."""


@dataclass(frozen=True, slots=True)
class RecordedInstance:
    patient_pk: int
    study_pk: int
    series_pk: int
    instance_pk: int
    replaced_blob_key: str | None


def _insert_ignore(index: Index, table: Any, values: dict[str, Any], keys: list[str]) -> Any:
    ins = (sqlite_insert if index.dialect == "sqlite" else pg_insert)(table).values(**values)
    return ins.on_conflict_do_nothing(index_elements=keys)


def _patient_pk(
    index: Index, conn: Connection, issuer: str, p: dict[str, Any], placeholder: bool
) -> int:
    c = t.patient.c
    found = conn.execute(
        select(c.pk).where(c.issuer == issuer, c.local_id == p["local_id"])
    ).first()
    if found:
        # The trust's record may already carry demographics (from earlier studies or HL7);
        # images only fill what is still empty, never overwrite.
        if p["nhs_number"] is not None:
            conn.execute(
                update(t.patient)
                .where(c.pk == found.pk, c.nhs_number.is_(None))
                .values(
                    nhs_number=p["nhs_number"],
                    nhs_number_valid=p["nhs_number_valid"],
                    updated_at=now(),
                )
            )
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
    return int(
        conn.execute(
            select(c.pk).where(c.issuer == issuer, c.local_id == p["local_id"])
        ).scalar_one()
    )


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
) -> RecordedInstance:
    patient = dict(parsed.patient, local_id=patient_local_id)
    patient_pk = _patient_pk(index, conn, trust, patient, placeholder)
    stamp = now()

    sc = t.study.c
    study_row = conn.execute(
        select(sc.pk, sc.patient_pk).where(sc.study_uid == parsed.study_uid)
    ).first()
    if study_row is None:
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
    if study_row.patient_pk != patient_pk:
        raise PatientMismatchError(
            "this Study Instance UID is already filed under another patient record; "
            "the instance was not stored (check Patient ID / issuing trust)"
        )
    study_pk = int(study_row.pk)

    se = t.series.c
    series_row = conn.execute(
        select(se.pk, se.study_pk).where(se.series_uid == parsed.series_uid)
    ).first()
    new_series = series_row is None
    if series_row is None:
        conn.execute(
            _insert_ignore(
                index,
                t.series,
                dict(parsed.series, study_pk=study_pk, num_instances=0, created_at=stamp),
                ["series_uid"],
            )
        )
        series_row = conn.execute(
            select(se.pk, se.study_pk).where(se.series_uid == parsed.series_uid)
        ).one()
        # Another writer may have created it between our two statements (PostgreSQL).
        new_series = (
            conn.execute(select(se.num_instances).where(se.pk == series_row.pk)).scalar_one() == 0
        )
    if series_row.study_pk != study_pk:
        raise PatientMismatchError(
            "this Series Instance UID already belongs to another study; the instance was not stored"
        )
    series_pk = int(series_row.pk)

    ic = t.instance.c
    replaced_key: str | None = None
    if replace:
        old = conn.execute(
            select(ic.pk, ic.blob_key, ic.size_bytes, ic.series_pk).where(
                ic.sop_instance_uid == parsed.sop_instance_uid
            )
        ).first()
        if old is not None:
            if old.series_pk != series_pk:
                raise PatientMismatchError(
                    "the replacing instance names another series than the stored one"
                )
            replaced_key = str(old.blob_key)
            conn.execute(
                delete(t.instance_metadata).where(t.instance_metadata.c.instance_pk == old.pk)
            )
            conn.execute(delete(t.instance).where(ic.pk == old.pk))
            conn.execute(
                update(t.series)
                .where(se.pk == series_pk)
                .values(num_instances=se.num_instances - 1)
            )
            conn.execute(
                update(t.study)
                .where(sc.pk == study_pk)
                .values(
                    num_instances=sc.num_instances - 1, size_bytes=sc.size_bytes - old.size_bytes
                )
            )

    res = conn.execute(
        insert(t.instance).values(
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
            )
        )
    )
    instance_pk = int(res.inserted_primary_key[0])  # type: ignore[index]
    conn.execute(
        insert(t.instance_metadata).values(
            instance_pk=instance_pk, series_pk=series_pk, json_z=parsed.metadata_json
        )
    )
    conn.execute(
        update(t.series).where(se.pk == series_pk).values(num_instances=se.num_instances + 1)
    )

    modality = parsed.series.get("modality")
    study_update: dict[str, Any] = {
        "num_instances": sc.num_instances + 1,
        "size_bytes": sc.size_bytes + parsed.size,
        "updated_at": stamp,
    }
    if new_series:
        study_update["num_series"] = sc.num_series + 1
    q = select(sc.modalities).where(sc.pk == study_pk)
    if index.dialect == "postgresql":
        q = q.with_for_update()
    modalities = conn.execute(q).scalar_one() or ""
    if modality and f"\\{modality}\\" not in f"\\{modalities}\\":
        study_update["modalities"] = f"{modalities}\\{modality}" if modalities else modality
    conn.execute(update(t.study).where(sc.pk == study_pk).values(**study_update))

    index.append_event(
        conn,
        "instance.replaced" if replaced_key else "instance.stored",
        principal,
        trust_code=trust,
        patient_pk=patient_pk,
        study_uid=parsed.study_uid,
        series_uid=parsed.series_uid,
        sop_instance_uid=parsed.sop_instance_uid,
    )
    return RecordedInstance(patient_pk, study_pk, series_pk, instance_pk, replaced_key)
