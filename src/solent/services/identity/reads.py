"""Reads of the index for the records service: history, the work queue, records,
studies and the person view (access is decided by the caller, services/records.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection

from solent.domain import nhs_number as nhs
from solent.domain.principal import Principal
from solent.errors import NotFound
from solent.index import identity as store
from solent.services.identity.links import IdentityLinks
from solent.services.identity.model import (
    _snapshot,
)


class IdentityReads(IdentityLinks):
    # -- reading the trail and the queue -------------------------------------------------------

    def history(self, patient_pk: int) -> list[dict[str, Any]]:
        """Identity events of this record and of identifiers it absorbed, oldest first."""
        with self._index.read() as conn:
            row = store.get_patient(conn, patient_pk)
            if row is None:
                raise NotFound("no such patient record")
            idents = [(row["issuer"], row["local_id"])] + [
                (r["issuer"], r["local_id"]) for r in store.retired_of(conn, [patient_pk])
            ]
            return store.events_for(conn, [patient_pk], idents)

    def work_queue(self, *, status: str | None = "open") -> list[dict[str, Any]]:
        with self._index.read() as conn:
            return store.work_items(conn, status=status)

    def add_work_item(
        self, kind: str, detail: str, *, conn: Connection | None = None, **fields: Any
    ) -> int:
        return self._write(
            conn, lambda c: store.add_work_item(c, kind=kind, detail=detail, **fields)
        )

    def event(self, event_pk: int) -> dict[str, Any] | None:
        """One identity event (who changed which record, before and after)."""
        with self._index.read() as conn:
            return store.get_event(conn, event_pk)

    def issuers_of(self, patient_pks: Iterable[int]) -> set[str]:
        """The trusts that issued these records (records that no longer exist: none)."""
        with self._index.read() as conn:
            return {str(r["issuer"]) for r in store.get_patients(conn, list(patient_pks))}

    def resolve_work_item(self, pk: int, principal: Principal) -> None:
        if not self._index.write(lambda c: store.resolve_work_item(c, pk, principal.describe())):
            raise NotFound(f"no open work item {pk}")

    # -- reads for the FHIR and launch adapters ---------------------------------------------

    def record(self, patient_pk: int) -> dict[str, Any] | None:
        """One record with its retired identifiers, linked records and contact details."""
        with self._index.read() as conn:
            row = store.get_patient(conn, patient_pk)
            if row is None:
                return None
            return {
                "record": row,
                "retired": store.retired_of(conn, [patient_pk]),
                "linked": sorted(self._component(conn, patient_pk) - {patient_pk}),
                "contact": store.get_contact(conn, patient_pk),
                "related": self._related_view(conn, row),
            }

    def records_by_nhs_number(self, number: str) -> list[int]:
        """Records carrying this valid NHS number (traced or not: what each trust says)."""
        with self._index.read() as conn:
            return [
                int(r["pk"])
                for r in store.patients_by_nhs(conn, nhs.normalise(number))
                if r["nhs_number_valid"]
            ]

    def studies(self, pks: Iterable[int]) -> list[dict[str, Any]]:
        """Studies of these records, newest first, each with its own record's identifiers."""
        with self._index.read() as conn:
            return store.studies_of(conn, pks)

    def study(self, study_uid: str) -> dict[str, Any] | None:
        with self._index.read() as conn:
            return store.study_by_uid(conn, study_uid)

    def study_summary(self, study_pk: int) -> dict[str, Any] | None:
        """One study as ``studies`` lists it (with its record's identifiers)."""
        with self._index.read() as conn:
            row = store.study_by_pk(conn, study_pk)
            if row is None:
                return None
            for s in store.studies_of(conn, [int(row["patient_pk"])]):
                if s["study_pk"] == study_pk:
                    return s
            return None

    def studies_by_accession(self, accession: str, issuer: str) -> list[dict[str, Any]]:
        with self._index.read() as conn:
            return store.studies_by_accession(conn, accession, issuer)

    def series(self, study_pk: int) -> list[dict[str, Any]]:
        with self._index.read() as conn:
            return store.series_of(conn, study_pk)

    # -- the person view -------------------------------------------------------------------

    def _related_view(self, conn: Connection, row: dict[str, Any]) -> list[dict[str, Any]]:
        """R58: the record's relationships, never links: its mother as its trust's PID-21
        named her, and the babies of the same trust whose PID-21 names this record (another
        trust's baby is that trust's to show). Identifiers only."""
        pk = int(row["pk"])
        out: list[dict[str, Any]] = [
            {
                "relationship": rel["relationship"],
                "issuer": rel["related_issuer"],
                "patient_id": rel["related_local_id"],
            }
            for rel in store.relations_of(conn, [pk])
        ]
        children = [other for kind, other in self._relatives(conn, pk) if kind == "child"]
        for child in store.get_patients(conn, children):
            if child["issuer"] == row["issuer"]:
                out.append(
                    {
                        "relationship": "child",
                        "issuer": child["issuer"],
                        "patient_id": child["local_id"],
                    }
                )
        return out

    def person(self, pks: Iterable[int]) -> dict[str, Any]:
        """Records, retired identifiers, studies and open work items of a set of records."""
        keys = set(pks)
        with self._index.read() as conn:
            records = []
            for row in store.get_patients(conn, keys):
                contact = store.get_contact(conn, int(row["pk"]))
                rec = {**_snapshot(row), "patient_pk": int(row["pk"])}
                rec["nhs_number_range"] = nhs.range_label(row["nhs_number"])  # R2
                rec["nhs_number_status"] = contact["nhs_number_status"] if contact else None
                if contact and not contact["sensitive"]:
                    rec["address"], rec["phone"] = contact["address"], contact["phone"]
                rec["related"] = self._related_view(conn, row)
                records.append(rec)
            retired = [
                {
                    "issuer": r["issuer"],
                    "local_id": r["local_id"],
                    "reason": r["reason"],
                    "patient_pk": int(r["patient_pk"]),
                }
                for r in store.retired_of(conn, keys)
            ]
            studies = store.studies_of(conn, keys)
            items = store.work_items(conn, status="open", patient_pks=keys)
        return {
            "records": records,
            "retired_identifiers": retired,
            "studies": studies,
            "work_items": items,
        }
