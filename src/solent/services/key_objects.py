"""Key object selections and presentation states as the viewer reads them (R30): those stored
in a study, and those a caller made that point at instances an IOCM rejection note has since
withdrawn (scenario 2.8: "flagged to their authors").

An object pointing at withdrawn images is flagged, never shown as if whole. Access is decided
through the viewer's rules (a study the caller may not see answers like one that does not
exist) and every read leaves an audit record naming the patient.
"""

from __future__ import annotations

from typing import Any

from solent.dicom.rejection_note import REJECTION_TITLES
from solent.domain.principal import Principal
from solent.index import identity as records
from solent.index import key_objects as store
from solent.index import viewer as viewer_store
from solent.index.sql import Index
from solent.services.access import AccessService, Permission
from solent.services.audit import AuditAction, AuditTrail, PatientRef
from solent.services.identity import IdentityService
from solent.services.viewer import ViewerService, iso, key_image_json


class KeyObjectService:
    def __init__(
        self,
        index: Index,
        access: AccessService,
        audit: AuditTrail,
        viewer: ViewerService,
        identity: IdentityService,
    ) -> None:
        self._identity = identity  # never handed out: adapters get this service only
        self._index = index
        self._access = access
        self._audit = audit
        self._viewer = viewer

    def in_study(self, principal: Principal, study_uid: str) -> dict[str, Any]:
        """The key object selections (key image notes) and presentation states stored in a
        study, each with the instances it references that a rejection note has withdrawn."""
        patient = self._viewer.check_study(principal, study_uid, "viewer key objects")
        with self._index.read() as conn:
            rows = store.study_key_objects(conn, study_uid)
        out = _key_objects(rows)
        self._audit.record(
            principal,
            AuditAction.VIEW,
            patient=patient,
            study_uid=study_uid,
            detail={"api": "viewer key objects", "results": len(out)},
        )
        return {"key_objects": out}

    def withdrawn(self, principal: Principal) -> dict[str, Any]:
        """The key images the caller marked, and the key objects and presentation states they
        stored, on instances an IOCM rejection note has since withdrawn, for patients the
        caller may still see. One ``view`` audit record per patient listed (a ``query`` when
        none)."""
        self._access.require(principal, Permission.READ, "listing withdrawn key images")
        with self._index.read() as conn:
            rows = viewer_store.withdrawn_key_images(conn, principal.name)
            refs = store.withdrawn_references_by(conn, store.author_of(principal))
        owners: dict[tuple[str, str], int | None] = {}
        for r in [*rows, *refs]:
            key = _withdrawn_owner(r)
            if key not in owners:
                found = self._identity.resolve(*key) if all(key) else None
                owners[key] = found.patient_pk if found else None
        visible = self._viewer.visible_pks(
            principal, {pk for pk in owners.values() if pk is not None}
        )
        with self._index.read() as conn:
            patients = {int(p["pk"]): p for p in records.get_patients(conn, visible)}
        out: list[dict[str, Any]] = []
        named: dict[int, list[str]] = {}
        for r in rows:
            pk = owners[_withdrawn_owner(r)]
            if pk is None or pk not in visible:
                continue
            p = patients[pk]
            named.setdefault(pk, []).append(str(r["study_uid"]))
            out.append(
                {
                    **key_image_json(r),
                    "study_uid": r["study_uid"],
                    "patient": _patient_brief(p),
                }
            )
        objects: list[dict[str, Any]] = []
        by_object: dict[str, list[dict[str, Any]]] = {}
        for r in refs:
            by_object.setdefault(str(r["object_sop_uid"]), []).append(r)
        for obj_rows in by_object.values():
            shown = [r for r in obj_rows if owners[_withdrawn_owner(r)] in visible]
            if not shown:
                continue
            pk = owners[_withdrawn_owner(shown[0])]
            assert pk is not None
            p = patients[pk]
            named.setdefault(pk, []).append(str(shown[0]["object_study_uid"]))
            entry = _key_objects(shown)[0]
            objects.append({**entry, "patient": _patient_brief(p)})
        for pk, studies in named.items():
            p = patients[pk]
            self._audit.record(
                principal,
                AuditAction.VIEW,
                patient=PatientRef(p["issuer"], p["local_id"], p["nhs_number"]),
                study_uid=studies[0],
                detail={"api": "viewer withdrawn key images", "studies": sorted(set(studies))},
            )
        if not named:
            self._audit.record(
                principal,
                AuditAction.QUERY,
                detail={"api": "viewer withdrawn key images", "results": 0},
            )
        return {"key_images": out, "key_objects": objects}


def _withdrawn_owner(row: Any) -> tuple[str, str]:
    """(issuer, local ID) of the record a withdrawn instance was filed under."""
    return str(row["withdrawn_issuer"] or ""), str(row["withdrawn_patient_id"] or "")


def _patient_brief(p: Any) -> dict[str, Any]:
    return {
        "key": f"{p['issuer']}|{p['local_id']}",
        "name": p["name"],
        "nhs_number": p["nhs_number"],
    }


def _key_objects(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reference rows (one per referenced instance) -> one entry per key object."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = out.setdefault(
            str(r["object_sop_uid"]),
            {
                "study_uid": r["object_study_uid"],
                "sop_uid": r["object_sop_uid"],
                "series_uid": r["object_series_uid"],
                "kind": r["kind"],
                "title": r["title"],
                "by": r["stored_by"],
                "references": 0,
                "withdrawn": [],
            },
        )
        entry["references"] += 1
        if r.get("withdrawn_code"):
            entry["withdrawn"].append(
                {
                    "study_uid": r["ref_study_uid"],
                    "series_uid": r["ref_series_uid"],
                    "sop_uid": r["ref_sop_uid"],
                    "code": r["withdrawn_code"],
                    "reason": REJECTION_TITLES.get(str(r["withdrawn_code"]), r["withdrawn_code"]),
                    "note_uid": r["withdrawn_note"],
                    "at": iso(r["withdrawn_at"]),
                }
            )
    return list(out.values())
