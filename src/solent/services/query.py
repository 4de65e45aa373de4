"""Read-side service for the JSON API. Every call names the acting principal."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from solent.domain.principal import Principal
from solent.index import schema as t
from solent.index.sql import Index


class QueryService:
    def __init__(self, index: Index) -> None:
        self.index = index

    def stats(self, principal: Principal) -> dict[str, int]:
        return self.index.stats()

    def list_studies(
        self,
        principal: Principal,
        *,
        nhs_number: str | None = None,
        issuer: str | None = None,
        local_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        p, s = t.patient.c, t.study.c
        q = (
            select(
                s.study_uid,
                s.study_date,
                s.study_time,
                s.accession_number,
                s.study_description,
                s.modalities,
                s.num_series,
                s.num_instances,
                s.trust_code,
                p.issuer,
                p.local_id,
                p.name,
                p.birth_date,
                p.sex,
                p.nhs_number,
                p.nhs_number_valid,
                p.nhs_number_verified,
            )
            .select_from(t.study.join(t.patient, s.patient_pk == p.pk))
            .order_by(s.study_date.desc(), s.pk.desc())
            .limit(limit)
            .offset(offset)
        )
        if nhs_number:
            q = q.where(p.nhs_number == nhs_number)
        if issuer:
            q = q.where(p.issuer == issuer)
        if local_id:
            q = q.where(p.local_id == local_id)
        with self.index.read() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def list_patients(
        self, principal: Principal, *, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        p = t.patient.c
        q = (
            select(
                p.issuer,
                p.local_id,
                p.name,
                p.birth_date,
                p.sex,
                p.nhs_number,
                p.nhs_number_valid,
                p.nhs_number_verified,
                p.placeholder,
            )
            .order_by(p.issuer, p.local_id)
            .limit(limit)
            .offset(offset)
        )
        with self.index.read() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]
