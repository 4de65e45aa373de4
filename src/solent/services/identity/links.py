"""Resolution and links: which records are one person (the one link rule)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import Connection

from solent.domain import nhs_number as nhs
from solent.domain.principal import Principal
from solent.errors import InvalidInput, NotFound
from solent.index import identity as store
from solent.index.sql import Index
from solent.services import trust_view
from solent.services.identity.model import (
    NHS_OID,
    Resolved,
    T,
    _conflict,
    _snapshot,
)


class IdentityLinks:
    """Look-ups every other service uses: resolve an identifier, follow links, the
    attributes DICOM carries after a change, and the record a trust knows the person by."""

    def __init__(self, index: Index, *, production: bool = False) -> None:
        self._index = index
        # R2: a live archive (setting ``production``) flags NHS test numbers (999 range) and
        # never links records on them; demo, test and training archives use them on purpose.
        self._production = production

    def _write(self, conn: Connection | None, fn: Callable[[Connection], T]) -> T:
        return fn(conn) if conn is not None else self._index.write(fn)

    # -- lookups other services use ---------------------------------------------------------

    def resolve(
        self, issuer: str, local_id: str, *, conn: Connection | None = None
    ) -> Resolved | None:
        """The record (issuer, local_id) names, following retired identifiers to their record."""

        def op(c: Connection) -> Resolved | None:
            row = store.find_patient(c, issuer, local_id)
            if row:
                return Resolved(int(row["pk"]), row["issuer"], row["local_id"], False)
            retired = store.find_retired(c, issuer, local_id)
            if retired is None:
                return None
            now_row = store.get_patient(c, int(retired["patient_pk"]))
            if now_row is None:
                return None
            return Resolved(int(now_row["pk"]), now_row["issuer"], now_row["local_id"], True)

        if conn is not None:
            return op(conn)
        with self._index.read() as c:
            return op(c)

    def by_nhs_number(self, number: str, *, conn: Connection | None = None) -> set[int]:
        """Records of the person with this NHS number: those carrying it valid and traced, and
        every record linked to them. Untraced records are not included, nor records whose
        date of birth or sex conflicts with the others (they wait in the work queue)."""
        groups = self.groups_by_nhs_number(number, conn=conn)
        return groups[0] if groups else set()

    def groups_by_nhs_number(
        self, number: str, *, conn: Connection | None = None
    ) -> list[set[int]]:
        """The groups of records carrying this NHS number valid and traced (each with the
        records linked to it), the one the number names first. Records that carry the number
        but disagree on DOB/sex, or that an A37 unlinked, form separate groups; the number
        names the largest (ties: the group with the oldest record) until a person resolves
        the conflict. A caller who may not see that group is shown the next it may see."""

        def op(c: Connection) -> list[set[int]]:
            n = nhs.normalise(number)
            if not nhs.is_valid(n):
                return []
            seeds = [
                int(r["pk"])
                for r in store.patients_by_nhs(c, n)
                if r["nhs_number_valid"] and r["nhs_number_verified"]
            ]
            groups: list[set[int]] = []
            for pk in seeds:
                if not any(pk in g for g in groups):
                    groups.append(self._component(c, pk))
            return sorted(groups, key=lambda g: (-len(g), min(g)))

        if conn is not None:
            return op(conn)
        with self._index.read() as c:
            return op(c)

    def linked_patient_pks(self, patient_pk: int, *, conn: Connection | None = None) -> set[int]:
        """This record and every record linked to it (transitively); empty if it is unknown."""
        if conn is not None:
            return self._component(conn, patient_pk)
        with self._index.read() as c:
            return self._component(c, patient_pk)

    def _neighbours(self, conn: Connection, row: dict[str, Any]) -> set[int]:
        same_nhs = self._usable_nhs(row)
        cands = store.patients_by_nhs(conn, row["nhs_number"]) if same_nhs else []
        return _neighbours_of(row, store.link_rows(conn, [int(row["pk"])]), cands)

    @staticmethod
    def _usable_nhs(row: dict[str, Any]) -> bool:
        return bool(row["nhs_number"] and row["nhs_number_valid"] and row["nhs_number_verified"])

    def components(self, conn: Connection, patient_pks: Iterable[int]) -> dict[int, set[int]]:
        """``_component`` of many records at once: the same walk, one round of queries per
        step away from the starting records instead of ~10 queries per record (a page of
        query results of other trusts' linked records took ~0.25 s the other way)."""
        return self._walk(conn, store.get_patients(conn, patient_pks))[0]

    def _walk(
        self, conn: Connection, start: list[dict[str, Any]]
    ) -> tuple[dict[int, set[int]], dict[int, dict[str, Any]]]:
        """(component of each start record, every record met on the way by pk)."""
        known = {int(r["pk"]): r for r in start}
        adjacent: dict[int, set[int]] = {}
        frontier = list(known.values())
        met: dict[int, dict[str, Any]] = {}  # records read already (same NHS number)
        while frontier:
            pks = [int(r["pk"]) for r in frontier]
            links = store.link_rows(conn, pks)
            numbers = {r["nhs_number"] for r in frontier if self._usable_nhs(r)}
            by_nhs: dict[str, list[dict[str, Any]]] = {}
            for cand in store.patients_by_nhs_many(conn, numbers):
                by_nhs.setdefault(cand["nhs_number"], []).append(cand)
                met[int(cand["pk"])] = cand
            for row in frontier:
                pk = int(row["pk"])
                own = [k for k in links if pk in (k["patient_a"], k["patient_b"])]
                same = by_nhs.get(row["nhs_number"], []) if self._usable_nhs(row) else []
                adjacent[pk] = _neighbours_of(row, own, same)
            new = set().union(*(adjacent[pk] for pk in pks)) - set(known)
            frontier = [met[pk] for pk in new if pk in met]
            frontier += store.get_patients(conn, new - set(met))  # reached by explicit links
            known.update({int(r["pk"]): r for r in frontier})
        out: dict[int, set[int]] = {}
        for first in start:
            seen, todo = {int(first["pk"])}, [int(first["pk"])]
            while todo:
                for other in adjacent.get(todo.pop(), set()) - seen:
                    if other in known:  # as _component: a vanished record ends the walk
                        seen.add(other)
                        todo.append(other)
            out[int(first["pk"])] = seen
        return out, known

    def _component(self, conn: Connection, patient_pk: int) -> set[int]:
        start = store.get_patient(conn, patient_pk)
        if start is None:
            return set()
        seen = {patient_pk}
        todo = [start]
        while todo:
            row = todo.pop()
            for other in self._neighbours(conn, row) - seen:
                seen.add(other)
                nxt = store.get_patient(conn, other)
                if nxt is not None:
                    todo.append(nxt)
        return seen

    # -- relationships that are never links (R58) -----------------------------------------------

    def _relatives(self, conn: Connection, patient_pk: int) -> list[tuple[str, int]]:
        """(relationship as seen from this record, the other record) for every recorded
        relationship naming it: ``mother`` (this record's PID-21) and ``child`` (records whose
        PID-21 names this one). Relationships naming a record not in the archive are left out.
        """
        row = store.get_patient(conn, patient_pk)
        if row is None:
            return []
        out: list[tuple[str, int]] = []
        for rel in store.relations_of(conn, [patient_pk]):
            issuer, local_id = rel["related_issuer"], rel["related_local_id"]
            if issuer == nhs.NHS_ISSUER:  # only the mother's NHS number was sent
                found = [int(r["pk"]) for r in store.patients_by_nhs(conn, local_id)]
            else:
                named = self.resolve(issuer, local_id, conn=conn)
                found = [named.patient_pk] if named is not None else []
            out += [(str(rel["relationship"]), pk) for pk in found if pk != patient_pk]
        idents = [(row["issuer"], row["local_id"])] + [
            (r["issuer"], r["local_id"]) for r in store.retired_of(conn, [patient_pk])
        ]
        if row["nhs_number"]:
            idents.append((nhs.NHS_ISSUER, row["nhs_number"]))
        for rel in store.relations_naming(conn, idents):
            if int(rel["patient_pk"]) != patient_pk:
                out.append(("child", int(rel["patient_pk"])))
        return sorted(set(out))

    def related_pks(self, patient_pk: int, *, conn: Connection | None = None) -> set[int]:
        """Records in a relationship with this one (mother, babies): never the same person."""
        if conn is not None:
            return {pk for _, pk in self._relatives(conn, patient_pk)}
        with self._index.read() as c:
            return {pk for _, pk in self._relatives(c, patient_pk)}

    def links_of(self, patient_pk: int) -> list[dict[str, Any]]:
        """The records linked to this one, each with why (nhs-number, hl7:A24, admin)."""
        with self._index.read() as conn:
            me = store.get_patient(conn, patient_pk)
            if me is None:
                raise NotFound("no such patient record")
            component = self._component(conn, patient_pk)
            explicit = {
                int(r["patient_b"] if r["patient_a"] == patient_pk else r["patient_a"]): r
                for r in store.link_rows(conn, [patient_pk])
            }
            out = []
            for row in store.get_patients(conn, component - {patient_pk}):
                link = explicit.get(int(row["pk"]))
                if link is not None and link["status"] == "linked":
                    why = link["source"]
                elif row["nhs_number"] == me["nhs_number"]:
                    why = "nhs-number"
                else:
                    why = "indirect"
                out.append(
                    {
                        **_snapshot(row),
                        "nhs_number_range": nhs.range_label(row["nhs_number"]),  # R2
                        "patient_pk": int(row["pk"]),
                        "linked_by": why,
                    }
                )
            return out

    # -- what DICOM says after a change -----------------------------------------------------

    def current_patient_attributes(
        self,
        study_uid: str | None = None,
        *,
        patient_pk: int | None = None,
        viewing_trust: str | None = None,
    ) -> dict[str, Any]:
        """Patient attributes as the record says now, by DICOM keyword, for outgoing DICOM.

        ``OtherPatientIDsSequence`` is a list of item dicts (the NHS number, issuer NHS, with
        its ISO OID). A value of None means "remove this attribute" (contact details of a
        sensitive patient). Raises NotFound when the study or record is unknown.
        ``viewing_trust``: the person as that trust's linked record shows them (trust_view).
        """
        with self._index.read() as conn:
            pk = patient_pk
            if study_uid is not None:
                study = store.study_by_uid(conn, study_uid)
                if study is None:
                    raise NotFound(f"no study {study_uid}")
                pk = int(study["patient_pk"])
            if pk is None:
                raise InvalidInput("give a study UID or a patient record")
            row = store.get_patient(conn, pk)
            if row is None:
                raise NotFound("no such patient record")
            contact = store.get_contact(conn, pk)
            seen = self.record_seen_from(pk, viewing_trust, conn=conn)
            if seen is not None and not (contact and contact["sensitive"]):
                contact = store.get_contact(conn, int(seen["pk"]))
        attrs: dict[str, Any] = {
            "PatientID": row["local_id"],
            "IssuerOfPatientID": row["issuer"],
            "PatientName": row["name"] or "",
            "PatientBirthDate": row["birth_date"] or "",
            "PatientSex": row["sex"] or "",
            "OtherPatientIDsSequence": [],
        }
        if row["nhs_number"] and row["nhs_number_valid"]:
            attrs["OtherPatientIDsSequence"] = [
                {
                    "PatientID": row["nhs_number"],
                    "IssuerOfPatientID": nhs.NHS_ISSUER,
                    "TypeOfPatientID": "TEXT",
                    "IssuerOfPatientIDQualifiersSequence": [
                        {
                            "UniversalEntityID": NHS_OID,
                            "UniversalEntityIDType": "ISO",
                            "IdentifierTypeCode": "NH",
                        }
                    ],
                }
            ]
        if contact and contact["sensitive"]:
            attrs["PatientAddress"] = None
            attrs["PatientTelephoneNumbers"] = None
        if seen is not None:
            return trust_view.seen_attributes(attrs, row, seen)
        return attrs

    def subject_seen_by(self, principal: Principal, study: Mapping[str, Any]) -> dict[str, Any]:
        """The record a study (a ``studies`` row) is shown under to ``principal``: its trust's
        linked record where it holds one (trust_view), else the study's own.
        Keys: patient_pk, issuer, local_id."""
        own = {
            "patient_pk": int(study["patient_pk"]),
            "issuer": study["issuer"],
            "local_id": study["local_id"],
        }
        seen = self.record_seen_from(own["patient_pk"], principal.trust)
        if seen is None:
            return own
        return {
            "patient_pk": int(seen["pk"]),
            "issuer": seen["issuer"],
            "local_id": seen["local_id"],
        }

    def record_seen_from(
        self, patient_pk: int, trust: str | None, *, conn: Connection | None = None
    ) -> dict[str, Any] | None:
        """``trust``'s record linked to this one, shown instead of it to that trust's
        callers (services/trust_view.py); None when there is none or it is ``trust``'s own."""

        def op(c: Connection) -> dict[str, Any] | None:
            row = store.get_patient(c, patient_pk)
            if not trust or row is None or row["issuer"] == trust:
                return None  # the caller's own record (the common case): no link walk
            return trust_view.record_seen_from(c, patient_pk, trust, self._component(c, patient_pk))

        if conn is not None:
            return op(conn)
        with self._index.read() as c:
            return op(c)

    def records_seen_from(
        self, patient_pks: Iterable[int], trust: str | None, *, conn: Connection
    ) -> dict[int, dict[str, Any]]:
        """``record_seen_from`` of many records in a few queries (a page of query results):
        pk -> ``trust``'s record shown instead, for those that have one."""
        if not trust:
            return {}
        return self.records_seen_from_rows(store.get_patients(conn, patient_pks), trust, conn=conn)

    def records_seen_from_rows(
        self, records: Iterable[dict[str, Any]], trust: str | None, *, conn: Connection
    ) -> dict[int, dict[str, Any]]:
        """``records_seen_from`` of records already read (``store`` rows)."""
        if not trust:
            return {}
        rows = [r for r in records if r["issuer"] != trust]
        if not rows:
            return {}
        comps, linked = self._walk(conn, rows)
        out: dict[int, dict[str, Any]] = {}
        for row in rows:
            pk = int(row["pk"])
            others = [linked[o] for o in sorted(comps.get(pk, set()) - {pk}) if o in linked]
            found = trust_view.pick_seen(row, trust, others)
            if found is not None:
                out[pk] = found
        return out


def _neighbours_of(
    row: dict[str, Any], links: list[dict[str, Any]], same_nhs: list[dict[str, Any]]
) -> set[int]:
    """The records one step from ``row``: its explicit "linked" decisions and the records
    of other trusts sharing its traced NHS number without a conflict, less "unlinked" ones.
    ``links`` are the link rows naming ``row``; ``same_nhs`` the records with its number
    (empty when its number is not valid and traced)."""
    pk = int(row["pk"])
    blocked = set()
    out = set()
    for link in links:
        other = int(link["patient_b"] if link["patient_a"] == pk else link["patient_a"])
        if link["status"] == "linked":
            out.add(other)
        else:
            blocked.add(other)
    for cand in same_nhs:
        opk = int(cand["pk"])
        if (
            opk != pk
            and opk not in blocked
            and cand["issuer"] != row["issuer"]
            and cand["nhs_number_valid"]
            and cand["nhs_number_verified"]
            and _conflict(row, cand) is None
        ):
            out.add(opk)
    return out - blocked
