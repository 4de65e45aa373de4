"""Identifier cross-reference and demographic queries (R5, R6: IHE PIX ITI-9 / PIXm ITI-83,
PDQ ITI-21 / PDQm ITI-78): the one door HL7 and FHIR queries go through.

A patient identification domain is a trust (its ODS code issues local IDs) or ``NHS`` (the
NHS number). Each method takes the caller, keeps only the records the one access rule lets it
see (a trust's registered HL7 sender sees what that trust may see, as a DICOM node or a user of
the trust does) and writes the audit record of the query naming the patients it returned.
What the caller may not see answers exactly like an identifier nobody holds.

Cross-references follow the links in force (an A37 unlink removes one; the regional rule in
``identity.links``). An NHS number is returned, and names a person, only when a record carries
it valid and traced on PDS (NSTS01, R3): an untraced number is not evidence of who the patient is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from solent.domain import nhs_number as nhs
from solent.domain.person_name import part_problem
from solent.domain.principal import Principal
from solent.errors import InvalidInput
from solent.index import demographics as store
from solent.index.sql import Index
from solent.services.access import AccessService, Permission
from solent.services.audit import AuditAction, AuditOutcome, AuditTrail, PatientRef
from solent.services.identity import IdentityService

NHS_DOMAIN = nhs.NHS_ISSUER
#: Most people one demographic query returns (a PDQ consumer narrows its search instead).
MAX_PEOPLE = 100
NAME_PART = 64  # a DICOM PN component group's length


@dataclass(frozen=True, slots=True)
class DomainId:
    """An identifier within a patient identification domain (a trust's ODS code, or NHS)."""

    domain: str
    value: str
    #: The record carrying it (FHIR targetId); not part of the identifier's identity.
    patient_pk: int | None = field(default=None, compare=False)


class UnknownDomains(InvalidInput):
    """Domains the archive does not know, with their place in the request (1-based), so an
    adapter can point at them (HL7 ERR-2, an OperationOutcome)."""

    def __init__(self, domains: Sequence[tuple[int, str]]) -> None:
        self.domains = list(domains)
        names = ", ".join(d or "(empty)" for _, d in self.domains)
        super().__init__(
            f"unknown patient identification domain(s): {names}; known: NHS and the "
            "registered trusts' ODS codes"
        )


class UnknownSourceDomain(UnknownDomains):
    """The domain of the identifier a PIX query names is unknown."""


@dataclass(frozen=True, slots=True)
class DemographicQuery:
    """PDQ / PDQm search criteria; every one given must hold. ``family`` and ``given`` are
    prefixes unless ``exact_names``."""

    family: str | None = None
    given: str | None = None
    birth_date: str | None = None  # YYYYMMDD
    sex: str | None = None  # M, F, O, U
    identifier: DomainId | None = None
    exact_names: bool = False

    def is_empty(self) -> bool:
        return not any((self.family, self.given, self.birth_date, self.sex, self.identifier))

    def check(self) -> None:
        """Refuse (InvalidInput) criteria no record can hold: a name part longer than a PN
        component (64), a birth date that is not a day (YYYYMMDD), an identifier longer than
        64. A name pattern thousands of characters long also fails SQLite's LIKE."""
        for what, value in (("family name", self.family), ("given name", self.given)):
            if value is not None and len(value) > NAME_PART:
                raise InvalidInput(f"{what} {value[:20]!r}...: at most {NAME_PART} characters")
            problem = part_problem(value) if value is not None else None
            if value is not None and problem is not None:  # "DEMO^A" matched given name A...
                raise InvalidInput(f"{what} {value[:20]!r} {problem}")
        if self.birth_date is not None and not (
            len(self.birth_date) == 8 and self.birth_date.isascii() and self.birth_date.isdigit()
        ):
            raise InvalidInput(f"birth date {self.birth_date[:20]!r}: a day, YYYYMMDD")
        if self.identifier is not None and len(self.identifier.value) > 64:
            raise InvalidInput("identifier: at most 64 characters")

    def as_detail(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: v
            for k, v in (
                ("family", self.family),
                ("given", self.given),
                ("birth_date", self.birth_date),
                ("sex", self.sex),
            )
            if v
        }
        if self.identifier is not None:
            out["identifier"] = f"{self.identifier.value}^^^{self.identifier.domain}"
        return out


@dataclass
class PersonFound:
    """One person a demographic query matched: the record whose demographics are shown (the
    caller's trust's own where it holds one), the matched records, and the person's
    identifiers in the domains asked for."""

    shown: dict[str, Any]
    #: The records matched, each as ``IdentityService.record`` gives it (retired IDs,
    #: contact), its links narrowed to the records the caller may see.
    matched: list[dict[str, Any]]
    identifiers: list[DomainId]
    contact: dict[str, Any] | None = field(default=None)
    group: set[int] = field(default_factory=set)  # the person's records the caller may see


class PatientQueryService:
    def __init__(
        self, index: Index, identity: IdentityService, access: AccessService, audit: AuditTrail
    ) -> None:
        self._index = index
        self._identity = identity
        self._access = access
        self._trail = audit

    # -- domains --------------------------------------------------------------------------

    def domains(self) -> set[str]:
        """Every patient identification domain: NHS and each registered trust."""
        return {NHS_DOMAIN, *(t.code for t in self._index.list_trusts())}

    def check_domains(self, wanted: Iterable[str]) -> list[str]:
        """``wanted`` as given; raises UnknownDomains naming each unknown one by position."""
        wanted = list(wanted)
        known = self.domains()
        unknown = [(n, d) for n, d in enumerate(wanted, 1) if d not in known]
        if unknown:
            raise UnknownDomains(unknown)
        return wanted

    # -- PIX ------------------------------------------------------------------------------

    def cross_reference(
        self,
        principal: Principal,
        source: DomainId,
        domains: Sequence[str] = (),
        *,
        transaction: str,
    ) -> list[DomainId]:
        """The person's other identifiers (not ``source`` itself), in ``domains`` (all when
        empty). Raises UnknownSourceDomain / UnknownDomains, and NotVisible for an identifier
        nobody holds or whose record the caller may not see (alike)."""
        detail: dict[str, Any] = {
            "transaction": transaction,
            "source": f"{source.value}^^^{source.domain}",
            "domains": list(domains),
        }
        self._access.require(principal, Permission.READ, f"{transaction} identifier query")
        if source.domain not in self.domains():
            self._failed(principal, detail)
            raise UnknownSourceDomain([(1, source.domain)])
        try:
            self.check_domains(domains)
        except UnknownDomains:
            self._failed(principal, detail)
            raise
        group = self._visible_group(principal, source, detail)
        rows = self._records(group)
        found = [i for i in _identifiers(rows) if i != source]
        if domains:
            found = [i for i in found if i.domain in domains]
        named = _named(rows, source)
        self._trail.record(
            principal,
            AuditAction.QUERY,
            patient=named,
            detail={**detail, "results": [f"{i.value}^^^{i.domain}" for i in found]},
        )
        return found

    def _visible_group(
        self, principal: Principal, source: DomainId, detail: dict[str, Any]
    ) -> set[int]:
        """The records of the person ``source`` names that the caller may see."""
        candidates: set[int] = set()
        if source.domain == NHS_DOMAIN:
            groups = self._identity.groups_by_nhs_number(source.value)
            candidates = next(
                (g for g in groups if self._access.visible_among(principal, g)),
                groups[0] if groups else set(),
            )
        else:
            found = self._identity.resolve(source.domain, source.value)
            if found is not None:
                if self._access.visible_among(principal, [found.patient_pk]):
                    candidates = self._identity.linked_patient_pks(found.patient_pk)
                else:
                    candidates = {found.patient_pk}
        visible = self._access.visible_among(principal, candidates)
        if not visible:
            if candidates:
                self._trail.record(
                    principal,
                    AuditAction.PERMISSION_DENIED,
                    AuditOutcome.DENIED,
                    patient=_named(self._records(candidates), source),
                    detail={"attempted": AuditAction.QUERY.value, **detail},
                )
            else:
                self._failed(principal, detail)
            raise self._access.not_found(principal, "patient")
        return visible

    def _failed(self, principal: Principal, detail: dict[str, Any]) -> None:
        self._trail.record(principal, AuditAction.QUERY, AuditOutcome.FAILURE, detail=detail)

    def _records(self, pks: Iterable[int]) -> list[dict[str, Any]]:
        out = []
        for pk in sorted(pks):
            found = self._identity.record(pk)
            if found is not None:
                out.append({**found["record"], "contact": found["contact"]})
        return out

    def _full(self, pks: Iterable[int], group: set[int]) -> list[dict[str, Any]]:
        out = []
        for pk in pks:
            found = self._identity.record(pk)
            if found is not None:
                found["linked"] = [p for p in found["linked"] if p in group]
                out.append(found)
        return out

    # -- PDQ ------------------------------------------------------------------------------

    def find_people(
        self,
        principal: Principal,
        query: DemographicQuery,
        domains: Sequence[str] = (),
        *,
        transaction: str,
        limit: int = MAX_PEOPLE,
    ) -> list[PersonFound]:
        """The people matching ``query`` the caller may see, at most ``limit``; with
        ``domains``, only people holding an identifier in one of them. One audit record per
        person returned (one without a patient when none)."""
        self._access.require(principal, Permission.READ, f"{transaction} demographic query")
        detail = {"transaction": transaction, "criteria": query.as_detail(), "domains": domains}
        if query.is_empty():
            raise InvalidInput("give at least one of family, given, birth date, sex, identifier")
        query.check()
        if query.identifier is not None and query.identifier.domain not in self.domains():
            self._failed(principal, detail)
            raise UnknownSourceDomain([(1, query.identifier.domain)])
        try:
            self.check_domains(domains)
        except UnknownDomains:
            self._failed(principal, detail)
            raise
        wanted = _filter(query)
        visible = self._access.visible_patients(principal)
        with self._index.read() as conn:
            rows = store.search_patients(conn, wanted, visible, limit * 4)
        if query.given is not None:
            rows = [r for r in rows if _given_matches(r["name"], query.given, query.exact_names)]
        people = self._people(principal, rows, domains, limit)
        refs = [_ref(p.shown) for p in people]
        self._trail.record_patients(
            principal, AuditAction.QUERY, refs, detail={**detail, "results": len(people)}
        )
        return people

    def _people(
        self, principal: Principal, rows: list[dict[str, Any]], domains: Sequence[str], limit: int
    ) -> list[PersonFound]:
        people: list[PersonFound] = []
        placed: dict[int, PersonFound] = {}
        for row in rows:
            pk = int(row["pk"])
            if pk in placed:
                placed[pk].matched += self._full([pk], placed[pk].group)
                continue
            if len(people) >= limit:
                continue
            group = self._access.visible_among(
                principal, self._identity.linked_patient_pks(pk) or {pk}
            )
            records = self._records(group | {pk})
            ids = _identifiers(records)
            if domains:
                ids = [i for i in ids if i.domain in domains]
                if not ids:
                    continue
            ids.sort(key=lambda i: i.domain != principal.trust)  # the caller's own first
            own = [r for r in records if r["issuer"] == principal.trust]
            shown = own[0] if own else next(r for r in records if int(r["pk"]) == pk)
            contact = shown["contact"]
            person = PersonFound(shown, self._full([pk], group), ids, contact, group)
            people.append(person)
            for member in group:
                placed[member] = person
        return people


def _filter(query: DemographicQuery) -> store.DemographicFilter:
    issuer = local_id = number = None
    if query.identifier is not None:
        if query.identifier.domain == NHS_DOMAIN:
            number = nhs.normalise(query.identifier.value)
        else:
            issuer, local_id = query.identifier.domain, query.identifier.value
    return store.DemographicFilter(
        family=query.family,
        family_exact=query.exact_names,
        given=query.given,
        birth_date=query.birth_date,
        sex=query.sex,
        issuer=issuer,
        local_id=local_id,
        nhs_number=number,
    )


def _given_matches(name: str | None, given: str, exact: bool) -> bool:
    """A given (or middle) name of the PN starts with ``given`` (equals it when exact)."""
    parts = [p.upper() for p in (name or "").split("=")[0].split("^")[1:3] if p]
    want = given.upper().replace("*", "")
    words = [w for p in parts for w in p.split()]
    return any(w == want if exact else w.startswith(want) for w in words)


def _identifiers(rows: Iterable[dict[str, Any]]) -> list[DomainId]:
    """Each record's local ID, then the NHS numbers held valid and traced (R3), once each."""
    rows = list(rows)
    out = [DomainId(r["issuer"], r["local_id"], int(r["pk"])) for r in rows]
    numbers = {
        r["nhs_number"]
        for r in rows
        if r["nhs_number"] and r["nhs_number_valid"] and r["nhs_number_verified"]
    }
    out += [DomainId(NHS_DOMAIN, n) for n in sorted(numbers)]
    return out


def _named(rows: list[dict[str, Any]], source: DomainId) -> PatientRef | None:
    """The record to name in the audit record: the one asked for, else the oldest."""
    if not rows:
        return None
    chosen = next(
        (r for r in rows if (r["issuer"], r["local_id"]) == (source.domain, source.value)),
        rows[0],
    )
    return _ref(chosen)


def _ref(row: dict[str, Any]) -> PatientRef:
    return PatientRef(row["issuer"], row["local_id"], row["nhs_number"])
