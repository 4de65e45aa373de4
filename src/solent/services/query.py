"""Read side: the query engine C-FIND and QIDO-RS share, and the JSON API's listings.

Every call names the acting principal. ``find`` is the one place patient identity scoping
(R24) is applied, so no protocol adapter can skip it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from sqlalchemy import Connection, Select, select

from solent.domain.attributes import Level
from solent.domain.matching import Query, Single, scope_patient_identity
from solent.domain.nhs_number import NHS_ISSUER
from solent.domain.principal import Principal
from solent.errors import InvalidInput
from solent.index import query as compiled
from solent.index import schema as t
from solent.index import trust_view_pg
from solent.index.access import VisiblePatients
from solent.index.sql import Index
from solent.services import trust_view
from solent.services.audit import (
    AuditAction,
    AuditOutcome,
    AuditTrail,
    PatientRef,
    audit_fields,
    patient_of_rows,
)
from solent.services.identity import IdentityService


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Matches of one query, in a stable order (studies newest first).

    ``rows`` hold DICOM keyword -> Python value (str, int, list[str] for ModalitiesInStudy, or
    None), for the query level and every level above it (see ``solent.index.query`` for the
    keys per level). ``truncated``: more matches exist after these rows (cut by ``limit`` or
    by ``max_results``). ``capped``: the server's ``max_results`` cut the answer, so the
    adapter should report "too many matches" (C-FIND status, QIDO-RS warning).
    """

    rows: list[dict[str, Any]]
    truncated: bool
    capped: bool

    @property
    def total_capped(self) -> bool:
        """Alias of ``capped`` (the name the adapters' brief used)."""
        return self.capped


class PatientVisibility(Protocol):
    """The access rule (services/access.py AccessService): which patient records a caller sees."""

    def visible_patients(
        self, principal: Principal, *, conn: Connection | None = None
    ) -> VisiblePatients | None:
        """SELECT of visible patient pks; None means unrestricted."""


@dataclass(frozen=True, slots=True)
class _Answer:
    """What one ``find`` read: the query as run, the stored rows, the rows as the caller's
    trust shows them, and the patient the audit record names."""

    query: Query
    result: QueryResult
    shown: QueryResult
    patient: PatientRef | None


class QueryService:
    def __init__(self, index: Index, access: PatientVisibility | None = None) -> None:
        self._index = index
        #: Set by the composition root once the access service exists; ``find`` ANDs its rule
        #: into every query so counts and pages never include records the caller may not see.
        self._access = access
        #: Security (issue 6): every ``find`` leaves one QUERY record, whatever the protocol.
        self._trail = AuditTrail(index)

    def use_access(self, access: PatientVisibility) -> None:
        """Set by the composition root once the access service exists (it needs this one)."""
        self._access = access

    def _visible(self, principal: Principal, conn: Connection) -> VisiblePatients | None:
        return None if self._access is None else self._access.visible_patients(principal, conn=conn)

    def _only_visible(self, q: Select[Any], principal: Principal, conn: Connection) -> Select[Any]:
        """Security (issue 6): keep only patient records the access rule lets the caller see."""
        visible = self._visible(principal, conn)
        return q if visible is None else q.where(t.patient.c.pk.in_(visible))

    def stats(self, principal: Principal) -> dict[str, int]:
        return self._index.stats()

    def find(
        self,
        principal: Principal,
        query: Query,
        *,
        limit: int | None,
        offset: int = 0,
        max_results: int,
        channel: str = "query",
        keys: Mapping[str, Any] | None = None,
    ) -> QueryResult:
        """Run a parsed query (``solent.domain.matching.parse_query``) for ``principal``.

        ``limit``/``offset`` page through the matches (QIDO-RS); ``max_results`` is the server's
        cap: at most that many rows come back whatever ``limit`` says. A PatientID without its
        issuer is scoped to ``principal.trust`` or refused with ``InvalidInput`` (R24).

        One audit record per call: ``channel`` (qido-rs, dimse c-find...) and the matching
        ``keys`` the caller sent, the number of matches, and the patient when the query names
        one or all matches are one patient's. The record is appended after the reads, in a
        transaction of its own (``Index.read_then_record``; one message on PostgreSQL):
        nothing is answered unless it committed.
        """
        if max_results < 1:
            raise ValueError("max_results must be at least 1")
        try:
            scoped = scope_patient_identity(query, principal.trust)
        except InvalidInput as exc:
            self._audit(principal, query, channel, keys, None, AuditOutcome.FAILURE, str(exc))
            raise

        def read(conn: Connection) -> tuple[_Answer, dict[str, Any]]:
            identity = IdentityService(self._index)
            run = self._follow_retired(scoped, identity, conn)
            result = self._find(principal, run, limit, offset, max_results, conn)
            patient = self._audited_patient(run, result, identity, conn)
            answer = _Answer(run, result, self._as_seen(principal, run, result, conn), patient)
            fields = {
                **self._audit_fields(
                    principal, run, channel, keys, result, AuditOutcome.SUCCESS, None
                ),
                **self._patient_fields(patient),
            }
            return answer, AuditTrail.naming_patient(conn, fields)

        def record(read: tuple[_Answer, dict[str, Any]]) -> None:
            AuditTrail.append_alone(self._index, read[1], relaxed=True)

        return self._index.read_then_record(read, record)[0].shown

    def _as_seen(
        self, principal: Principal, query: Query, result: QueryResult, conn: Connection
    ) -> QueryResult:
        """Study, series and instance matches show the person as the caller's trust knows
        them (services/trust_view.py), the study's own IDs under ``trust_view.OTHER_IDS``.
        Patient-level matches are the records themselves and stay as they are."""
        trust = principal.trust
        if not trust or query.level is Level.PATIENT or not result.rows:
            return result
        others = {
            (str(r.get("IssuerOfPatientID") or ""), str(r.get("PatientID") or ""))
            for r in result.rows
        }
        others = {k for k in others if k[0] != trust}
        if not others:
            return result
        seen = None
        if conn.dialect.name == "postgresql":  # one statement, None when the page is crowded
            seen = trust_view_pg.records_seen_from(conn, others, trust)
        if seen is None:
            identity = IdentityService(self._index)
            records = trust_view.linkable_records(conn, others)
            # Only records that have a link at all are walked (one query found them).
            shown = identity.records_seen_from_rows(list(records.values()), trust, conn=conn)
            seen = {key: shown[row["pk"]] for key, row in records.items() if row["pk"] in shown}
        if not seen:
            return result
        rows = []
        for row in result.rows:
            key = (str(row.get("IssuerOfPatientID") or ""), str(row.get("PatientID") or ""))
            found = seen.get(key)
            rows.append(row if found is None else trust_view.seen_row(row, found))
        return replace(result, rows=rows)

    def _audit(
        self,
        principal: Principal,
        query: Query,
        channel: str,
        keys: Mapping[str, Any] | None,
        result: QueryResult | None,
        outcome: AuditOutcome,
        error: str | None,
    ) -> None:
        """A refused query's record, in its own transaction."""
        fields = self._audit_fields(principal, query, channel, keys, result, outcome, error)

        def append(conn: Connection) -> None:
            patient = self._named_record(query, IdentityService(self._index), conn)
            AuditTrail.append_in(conn, {**fields, **self._patient_fields(patient)})

        self._index.write(append, relaxed=True)

    @staticmethod
    def _audit_fields(
        principal: Principal,
        query: Query,
        channel: str,
        keys: Mapping[str, Any] | None,
        result: QueryResult | None,
        outcome: AuditOutcome,
        error: str | None,
    ) -> dict[str, Any]:
        detail: dict[str, Any] = {"channel": channel, "level": query.level.value}
        if keys:  # what was asked, bounded: a hostile query cannot bloat the trail
            sent = [(k, v) for k, v in keys.items() if v not in (None, "", [])]
            detail["keys"] = {str(k)[:64]: str(v)[:200] for k, v in sent[:40]}
        if result is not None:
            detail["matches"] = len(result.rows)
            if result.truncated:
                detail["more"] = True
        if error:
            detail["error"] = error[:200]
        return audit_fields(principal, AuditAction.QUERY, outcome, detail=detail)

    @staticmethod
    def _patient_fields(patient: PatientRef | None) -> dict[str, Any]:
        return {
            "patient_issuer": patient.issuer if patient else None,
            "patient_id": patient.local_id if patient else None,
            "nhs_number": patient.nhs_number if patient else None,
        }

    def _audited_patient(
        self, query: Query, result: QueryResult, identity: IdentityService, conn: Connection
    ) -> PatientRef | None:
        """The patient the record names: the one the query names or, failing that, the one
        all matches belong to."""
        patient = self._named_record(query, identity, conn)
        return patient if patient is not None else patient_of_rows(result.rows)

    def _named_record(
        self, query: Query, identity: IdentityService, conn: Connection
    ) -> PatientRef | None:
        """``_named_patient``, less a bare ID the caller's trust holds no record under: that
        is another trust's ID, and only the matches say whose."""
        patient = self._named_patient(query)
        if (
            patient is not None
            and query.identity is not None
            and query.identity.unqualified
            and identity.resolve(patient.issuer, patient.local_id, conn=conn) is None
        ):
            return None
        return patient

    @staticmethod
    def _named_patient(query: Query) -> PatientRef | None:
        """The one record a query names by PatientID + issuer (an NHS number alone names no
        record: the matches do)."""
        ident = query.identity
        if (
            ident is None
            or not isinstance(ident.local_id, Single)
            or ident.issuers is None
            or len(ident.issuers) != 1
            or ident.issuers[0] == NHS_ISSUER
        ):
            return None
        return PatientRef(ident.issuers[0], ident.local_id.value)

    def _find(
        self,
        principal: Principal,
        scoped: Query,
        limit: int | None,
        offset: int,
        max_results: int,
        conn: Connection,
    ) -> QueryResult:
        wanted = max_results if limit is None else min(limit, max_results)
        if wanted <= 0 or scoped.never:
            return QueryResult([], truncated=False, capped=False)
        visible = self._visible(principal, conn)
        rows = compiled.execute(
            conn, scoped, limit=wanted + 1, offset=max(0, offset), visible_patients=visible
        )
        more = len(rows) > wanted
        capped = more and (limit is None or limit > max_results)
        return QueryResult(rows[:wanted], truncated=more, capped=capped)

    def _follow_retired(self, query: Query, identity: IdentityService, conn: Connection) -> Query:
        """A retired identifier (merged away by A40, renumbered by A47) names the record that
        replaced it, so a PatientID+issuer query still finds the patient's studies."""
        named = self._named_patient(query)
        if named is None or query.identity is None:
            return query
        found = identity.resolve(named.issuer, named.local_id, conn=conn)
        if found is None or not found.retired:
            return query
        current = replace(query.identity, local_id=Single(found.local_id), issuers=(found.issuer,))
        return replace(query, identity=current)

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
        with self._index.read() as conn:
            q = self._only_visible(q, principal, conn)
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
        with self._index.read() as conn:
            q = self._only_visible(q, principal, conn)
            return [dict(r) for r in conn.execute(q).mappings()]
