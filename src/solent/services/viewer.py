"""What the web viewer reads: worklist search, a person's cross-trust timeline, one study with
its priors, reports with their versions, key images, recently opened patients. (Stored key
objects and presentation states, flagged when withdrawn: services/key_objects.py.)

Every method takes the caller, decides through AccessService and leaves an audit record naming
the patient. A patient or study the caller may not see raises the same NotFound as one that
does not exist (same message), so the JSON API answers both with the same 404.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from solent.dicom.rejection_note import REJECTION_TITLES
from solent.domain.attributes import Level
from solent.domain.matching import parse_query
from solent.domain.nhs_number import is_valid, normalise
from solent.domain.principal import Principal
from solent.domain.prior_relevance import Procedure, hanging_order
from solent.errors import InvalidInput, NotFound
from solent.index import identity as records
from solent.index import viewer as store
from solent.index.access import visible_patient_pks
from solent.index.sql import Index
from solent.services.access import AccessDenied, AccessService, Permission
from solent.services.audit import AuditAction, AuditOutcome, AuditTrail, PatientRef
from solent.services.identity import IdentityService
from solent.services.procedures import ProcedureCoding
from solent.services.query import QueryService

NO_PATIENT = "no such patient"
NO_STUDY = "no such study"
REPORT_STATUS = {"F": "final", "P": "preliminary", "A": "preliminary", "C": "amended"}
MAX_NOTE = 2000


@dataclass(frozen=True, slots=True)
class SearchCriteria:
    q: str | None = None
    nhs_number: str | None = None
    name: str | None = None
    patient_id: str | None = None
    trust: str | None = None
    accession: str | None = None
    date_from: str | None = None
    date_to: str | None = None
    modality: str | None = None


@dataclass(frozen=True, slots=True)
class Person:
    """The visible records of one person (linked records grouped), the key record first."""

    pks: tuple[int, ...]
    rows: tuple[dict[str, Any], ...]

    @property
    def key(self) -> dict[str, Any]:
        return self.rows[0]

    def ref(self) -> PatientRef:
        r = self.key
        return PatientRef(r["issuer"], r["local_id"], r["nhs_number"])


class ViewerService:
    def __init__(
        self,
        index: Index,
        access: AccessService,
        audit: AuditTrail,
        query: QueryService,
        identity: IdentityService,
        *,
        max_results: int = 1000,
        coding: ProcedureCoding | None = None,
    ) -> None:
        self._index = index
        self._access = access
        self._audit = audit
        self._query = query
        self._identity = identity
        self.max_results = max_results
        self._coding = coding or ProcedureCoding(index)

    # -- access helpers -----------------------------------------------------------------------

    def visible_pks(self, principal: Principal, pks: Iterable[int]) -> set[int]:
        """Which of these patient records the caller may see."""
        keys = set(pks)
        visible = self._access.visible_patients(principal)
        if visible is None or not keys:
            return keys
        from sqlalchemy import select

        from solent.index import schema as t

        with self._index.read() as conn:
            q = select(t.patient.c.pk).where(t.patient.c.pk.in_(keys), t.patient.c.pk.in_(visible))
            return {int(pk) for pk in conn.scalars(q)}

    def _relationship_pks(self, principal: Principal, pks: set[int]) -> set[int]:
        """Records visible without break-glass (the legitimate relationship alone)."""
        scope = self._access.scope(principal)
        if scope.unrestricted:
            return pks
        from sqlalchemy import select

        from solent.index import schema as t

        rule = visible_patient_pks(scope.trusts, None, datetime.now(UTC), self._index.dialect)
        with self._index.read() as conn:
            q = select(t.patient.c.pk).where(t.patient.c.pk.in_(pks), t.patient.c.pk.in_(rule))
            return {int(pk) for pk in conn.scalars(q)}

    def person_of(self, principal: Principal, patient_pk: int) -> Person:
        """The visible records linked to this record; this record is the key."""
        group = self.visible_pks(principal, self._identity.linked_patient_pks(patient_pk))
        with self._index.read() as conn:
            rows = {int(r["pk"]): dict(r) for r in records.get_patients(conn, group)}
        others = sorted(
            (pk for pk in rows if pk != patient_pk),
            key=lambda k: (rows[k]["issuer"], rows[k]["local_id"]),
        )
        ordered = [patient_pk, *others] if patient_pk in rows else others
        return Person(tuple(ordered), tuple(rows[pk] for pk in ordered))

    def _check_patient(self, principal: Principal, issuer: str, local_id: str, what: str) -> int:
        """The pk of a visible record; NotFound (identical) for unknown and not visible."""
        try:
            self._access.check_patient(principal, issuer, local_id, AuditAction.VIEW, purpose=what)
        except (AccessDenied, NotFound) as exc:
            if isinstance(exc, AccessDenied) and not self._access.permits(
                principal, Permission.READ
            ):
                raise
            raise NotFound(NO_PATIENT) from None
        found = self._identity.resolve(issuer, local_id)
        if found is None:
            raise NotFound(NO_PATIENT)
        return found.patient_pk

    def check_study(
        self, principal: Principal, study_uid: str, purpose: str | None = None
    ) -> PatientRef:
        """The patient of a visible study; NotFound (identical) for unknown and not visible."""
        try:
            return self._access.check_study(principal, study_uid, AuditAction.VIEW, purpose=purpose)
        except (AccessDenied, NotFound) as exc:
            if isinstance(exc, AccessDenied) and not self._access.permits(
                principal, Permission.READ
            ):
                raise
            raise NotFound(NO_STUDY) from None

    # -- JSON shapes ----------------------------------------------------------------------------

    def _entry(self, person: Person, studies: list[dict[str, Any]]) -> dict[str, Any]:
        key = person.key
        dates = [s["study_date"] for s in studies if s.get("study_date")]
        return {
            "key": f"{key['issuer']}|{key['local_id']}",
            "name": key["name"],
            "birth_date": key["birth_date"],
            "sex": key["sex"],
            "nhs_number": key["nhs_number"] if key.get("nhs_number_valid") else None,
            "records": [{"trust": r["issuer"], "patient_id": r["local_id"]} for r in person.rows],
            "study_count": len(studies),
            "latest_study_date": max(dates) if dates else None,
        }

    def _timeline(
        self, principal: Principal, person: Person
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(raw study rows, timeline study entries) of a person, newest first."""
        rows = self._identity.studies(person.pks)
        related = self._relationship_pks(principal, set(person.pks))
        with self._index.read() as conn:
            parts = store.body_parts(conn, [int(r["study_pk"]) for r in rows])
            reports = store.current_reports(conn, [report_key(r) for r in rows])
        entries = []
        for r in rows:
            accession, issuer = report_key(r)
            code = reports.get((accession, issuer)) if accession else None
            entries.append(
                {
                    "study_uid": r["study_uid"],
                    "trust": r["trust_code"],
                    "patient_id": r["local_id"],
                    "date": r["study_date"],
                    "time": r["study_time"],
                    "modalities": [m for m in (r["modalities"] or "").split("\\") if m],
                    "body_part": parts.get(int(r["study_pk"])),
                    "description": r["study_description"],
                    "accession": r["accession_number"],
                    "series_count": int(r["num_series"] or 0),
                    "instance_count": int(r["num_instances"] or 0),
                    "report_status": REPORT_STATUS.get(code) if code else None,
                    "access": "relationship" if int(r["patient_pk"]) in related else "break-glass",
                }
            )
        return rows, entries

    # -- search ---------------------------------------------------------------------------------

    def search(
        self, principal: Principal, criteria: SearchCriteria, *, offset: int, limit: int
    ) -> dict[str, Any]:
        """Persons with studies matching the criteria, one entry per person (linked records
        grouped), only what the caller may see. Audited by the query engine (one QUERY)."""
        self._access.require(principal, Permission.READ, "searching patients")
        keys = _query_keys(criteria, principal.trust)
        if not keys:
            raise InvalidInput("give at least one search criterion")
        fuzzy = "PatientName" in keys and not any(ch in keys["PatientName"] for ch in "^*?")
        query = parse_query(Level.STUDY, keys, linked=True, fuzzy_names=fuzzy)
        result = self._query.find(
            principal,
            query,
            limit=None,
            max_results=self.max_results,
            channel="viewer search",
            keys=keys,
        )
        matched: list[tuple[str, str]] = []
        for row in result.rows:
            k = (str(row["IssuerOfPatientID"]), str(row["PatientID"]))
            if k not in matched:
                matched.append(k)
        persons = self._persons(principal, matched)
        page = persons[offset : offset + limit]
        # More matching studies than the server reads: the persons counted are those of the
        # first ``max_results`` studies only, so ``total`` is a floor and later pages would be
        # missing people. Say so (the worklist asks to refine the search).
        capped = result.capped
        return {
            "total": len(persons),
            "offset": offset,
            "limit": limit,
            "capped": capped,
            "max_studies": self.max_results,
            "detail": (
                f"more than {self.max_results} studies match: refine your search"
                if capped
                else None
            ),
            "patients": [self._entry(p, self._identity.studies(p.pks)) for p in page],
        }

    def _persons(self, principal: Principal, keys: list[tuple[str, str]]) -> list[Person]:
        """Group records into persons, in the order of ``keys`` (the caller's trust's record
        is a person's key when the person has one)."""
        with self._index.read() as conn:
            pks = store.patient_pks(conn, keys)
        seen: set[int] = set()
        out: list[Person] = []
        for k in keys:
            pk = pks.get(k)
            if pk is None or pk in seen:
                continue
            person = self.person_of(principal, pk)
            own = [r for r in person.rows if r["issuer"] == principal.trust]
            if own and own[0]["pk"] != pk:
                person = self.person_of(principal, int(own[0]["pk"]))
            if not person.pks:
                continue
            seen.update(person.pks)
            out.append(person)
        return out

    def recent(self, principal: Principal) -> dict[str, Any]:
        """The caller's recently opened patients that they may still see."""
        self._access.require(principal, Permission.READ, "listing recent patients")
        with self._index.read() as conn:
            keys = store.recent(conn, principal.name)
        persons = self._persons(principal, keys)
        self._audit.record(
            principal,
            AuditAction.QUERY,
            detail={"api": "viewer recent", "results": len(persons)},
        )
        return {"patients": [self._entry(p, self._identity.studies(p.pks)) for p in persons]}

    # -- timeline and study ---------------------------------------------------------------------

    def timeline(self, principal: Principal, issuer: str, local_id: str) -> dict[str, Any]:
        pk = self._check_patient(principal, issuer, local_id, "viewer timeline")
        person = self.person_of(principal, pk)
        _rows, studies = self._timeline(principal, person)
        grant = self._grant(principal, person)
        self._index.write(
            lambda c: store.touch_recent(
                c, principal.name, person.key["issuer"], person.key["local_id"]
            ),
            relaxed=True,
        )
        self._audit.record(
            principal,
            AuditAction.VIEW,
            patient=person.ref(),
            detail={"api": "viewer timeline", "studies": len(studies), "records": len(person.pks)},
        )
        return {"patient": self._entry(person, studies), "studies": studies, "break_glass": grant}

    def _grant(self, principal: Principal, person: Person) -> dict[str, Any] | None:
        """The caller's live break-glass grant covering the person (its expiry for the banner)."""
        with self._index.read() as conn:
            found = store.live_grant(conn, principal.name, person.pks, datetime.now(UTC))
        return None if found is None else {"grant_id": found[0], "expires_at": iso(found[1])}

    def study(self, principal: Principal, study_uid: str) -> dict[str, Any]:
        patient = self.check_study(principal, study_uid, "viewer study")
        found = self._identity.resolve(patient.issuer, patient.local_id)
        if found is None:
            raise NotFound(NO_STUDY)
        person = self.person_of(principal, found.patient_pk)
        rows, studies = self._timeline(principal, person)
        index = next((i for i, s in enumerate(studies) if s["study_uid"] == study_uid), None)
        if index is None:
            raise NotFound(NO_STUDY)
        with self._index.read() as conn:
            series = store.series_with_frames(conn, int(rows[index]["study_pk"]))
        self._audit.record(
            principal,
            AuditAction.VIEW,
            patient=patient,
            study_uid=study_uid,
            detail={"api": "viewer study", "series": len(series)},
        )
        return {
            "study": studies[index],
            "patient": self._entry(person, studies),
            "series": [
                {
                    "series_uid": s["series_uid"],
                    "modality": s["modality"],
                    "number": s["series_number"],
                    "description": s["series_description"],
                    "body_part": s["body_part"],
                    "instance_count": int(s["num_instances"] or 0),
                    "frames": int(s["frames"] or 0),
                }
                for s in series
            ],
            "priors": self._priors(rows, studies, index),
            "break_glass": self._grant(principal, person),
        }

    def _priors(
        self, rows: list[dict[str, Any]], studies: list[dict[str, Any]], index: int
    ) -> list[dict[str, Any]]:
        """The person's other studies, the one to hang beside the current first (R19): by the
        mapped procedure code and its body regions (Body Part Examined where the table gives
        none), not by descriptions that differ between trusts; each says why (``relevance``)."""
        codes = self._coding.study_codes(rows)
        procedures = []
        for row, entry in zip(rows, studies, strict=True):
            mapped, _how = codes[str(row["study_uid"])]
            regions = mapped.regions if mapped and mapped.regions else frozenset()
            if not regions and entry["body_part"]:
                regions = frozenset({str(entry["body_part"]).upper()})
            procedures.append(
                Procedure(
                    str(row["study_uid"]),
                    row["study_date"],
                    frozenset(entry["modalities"]),
                    mapped.key if mapped else None,
                    regions,
                )
            )
        by_uid = {
            str(r["study_uid"]): (e, p) for r, e, p in zip(rows, studies, procedures, strict=True)
        }
        out = []
        for prior, why in hanging_order(procedures[index], procedures):
            entry, proc = by_uid[prior.study_uid]
            out.append({**entry, "procedure_code": proc.code, "relevance": why})
        return out

    # -- reports --------------------------------------------------------------------------------

    def reports(self, principal: Principal, study_uid: str) -> dict[str, Any]:
        patient = self.check_study(principal, study_uid, "viewer reports")
        row = self._identity.study(study_uid)
        out = []
        if row is not None and row["accession_number"]:
            accession, issuer = report_key(row)
            with self._index.read() as conn:
                versions = store.report_versions(conn, str(accession), issuer)
            if versions:
                current = next((v for v in versions if not v["superseded"]), versions[-1])
                out.append(
                    {
                        "id": int(current["pk"]),
                        "status": _status(current["status"]),
                        "issued": _issued(current),
                        "author": current["interpreter"],
                        "text": current["text"],
                        "versions": [
                            {
                                "version": int(v["version"]),
                                "status": _status(v["status"]),
                                "issued": _issued(v),
                                "text": v["text"],
                            }
                            for v in versions
                        ],
                    }
                )
        self._audit.record(
            principal,
            AuditAction.VIEW,
            patient=patient,
            study_uid=study_uid,
            detail={"api": "viewer reports", "reports": len(out)},
        )
        return {"reports": out}

    # -- key images -----------------------------------------------------------------------------

    def key_images(self, principal: Principal, study_uid: str) -> dict[str, Any]:
        patient = self.check_study(principal, study_uid, "viewer key images")
        with self._index.read() as conn:
            rows = store.key_images(conn, study_uid)
        self._audit.record(
            principal,
            AuditAction.VIEW,
            patient=patient,
            study_uid=study_uid,
            detail={"api": "viewer key images", "results": len(rows)},
        )
        return {"key_images": [key_image_json(r) for r in rows]}

    def add_key_image(
        self,
        principal: Principal,
        study_uid: str,
        *,
        series_uid: str,
        sop_uid: str,
        frame: int,
        note: str,
    ) -> dict[str, Any]:
        patient = self.check_study(principal, study_uid, "viewer key images")
        if len(note) > MAX_NOTE:
            raise InvalidInput(f"the note is longer than {MAX_NOTE} characters")
        values = {
            "study_uid": study_uid,
            "series_uid": series_uid,
            "sop_uid": sop_uid,
            "frame": frame,
            "note": note,
            "created_by": principal.name,
        }

        def op(conn: Any) -> dict[str, Any]:
            frames = store.instance_frames(conn, study_uid, series_uid, sop_uid)
            if frames is None:
                raise InvalidInput("that series and instance are not stored in this study")
            if frame < 1 or frame > max(frames, 1):
                raise InvalidInput(f"frame must be between 1 and {max(frames, 1)}")
            row = store.add_key_image(conn, values)
            AuditTrail.append_in(
                conn,
                _fields(principal, AuditAction.STORE, patient, study_uid, {"key_image": row["pk"]}),
            )
            return row

        return key_image_json(self._index.write(op))

    def delete_key_image(self, principal: Principal, study_uid: str, key_image_id: int) -> None:
        patient = self.check_study(principal, study_uid, "viewer key images")

        def op(conn: Any) -> None:
            row = store.get_key_image(conn, study_uid, key_image_id)
            if row is None:
                raise NotFound(f"no key image {key_image_id} in this study")
            if row["created_by"] != principal.name:
                raise AccessDenied("only the person who marked a key image can remove it")
            store.delete_key_image(conn, key_image_id)
            AuditTrail.append_in(
                conn,
                _fields(
                    principal, AuditAction.DELETE, patient, study_uid, {"key_image": key_image_id}
                ),
            )

        self._index.write(op)


def _fields(
    principal: Principal,
    action: AuditAction,
    patient: PatientRef,
    study_uid: str,
    detail: dict[str, Any],
) -> dict[str, Any]:
    from solent.services.audit import audit_fields

    return audit_fields(
        principal, action, AuditOutcome.SUCCESS, patient=patient, study_uid=study_uid, detail=detail
    )


def report_key(row: dict[str, Any]) -> tuple[str, str]:
    """(accession, issuer) as the inbox files reports; the accession is "" when absent."""
    return str(row["accession_number"] or ""), str(row.get("accession_issuer") or row["trust_code"])


def _status(code: str) -> str:
    return REPORT_STATUS.get(code, code.lower())


def _issued(row: dict[str, Any]) -> str:
    if row.get("observed_at"):
        return str(row["observed_at"])
    return iso(row["created_at"])


def iso(at: datetime) -> str:
    """UTC ISO 8601 (SQLite hands back naive datetimes of what was stored as UTC)."""
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


def key_image_json(row: dict[str, Any]) -> dict[str, Any]:
    code = row.get("withdrawn_code")
    return {
        "id": int(row["pk"]),
        "series_uid": row["series_uid"],
        "sop_uid": row["sop_uid"],
        "frame": int(row["frame"]),
        "note": row["note"],
        "by": row["created_by"],
        "at": iso(row["created_at"]),
        # R30: the instance was withdrawn by an IOCM rejection note (it no longer displays);
        # the mark stays, flagged, until its author removes it.
        "withdrawn": None
        if not code
        else {
            "code": code,
            "reason": REJECTION_TITLES.get(str(code), str(code)),
            "note_uid": row["withdrawn_note"],
            "at": iso(row["withdrawn_at"]),
        },
    }


def _query_keys(c: SearchCriteria, caller_trust: str | None) -> dict[str, str]:
    """Worklist criteria as query keys of the shared query engine (C-FIND/QIDO matching)."""
    keys: dict[str, str] = {}
    q = (c.q or "").strip()
    if q:
        digits = q.replace(" ", "").replace("-", "")
        if digits.isdigit() and len(digits) == 10:
            keys["NHSNumber"] = normalise(digits)
        elif any(ch.isdigit() for ch in q):
            keys["PatientID"] = q
        else:
            keys["PatientName"] = _name_pattern(q)
    if c.nhs_number:
        number = normalise(c.nhs_number)
        if not is_valid(number):
            raise InvalidInput("nhs_number is not a valid NHS number (10 digits, modulus 11)")
        keys["NHSNumber"] = number
    if c.name:
        keys["PatientName"] = _name_pattern(c.name)
    if c.patient_id:
        keys["PatientID"] = c.patient_id.strip()
    if c.trust:
        keys["IssuerOfPatientID"] = c.trust.strip().upper()
    if "PatientID" in keys and "IssuerOfPatientID" not in keys and caller_trust:
        keys["IssuerOfPatientID"] = caller_trust
    if c.accession:
        keys["AccessionNumber"] = c.accession.strip()
    if c.date_from or c.date_to:
        keys["StudyDate"] = f"{c.date_from or ''}-{c.date_to or ''}"
    if c.modality:
        keys["ModalitiesInStudy"] = c.modality.strip().upper()
    return keys


def _name_pattern(text: str) -> str:
    """One word matches any name component by prefix (fuzzy); "smith john" or "SMITH^JOHN"
    match names starting with those components."""
    words = [w for w in text.replace(",", " ").split() if w]
    if "^" in text or len(words) > 1:
        value = text.strip() if "^" in text else "^".join(words)
        return value if "*" in value or "?" in value else value + "*"
    return words[0] if words else text
