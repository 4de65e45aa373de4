"""Study manifests for consumers beyond the viewer (IHE MHD ITI-67/68, R25/R27).

Each study a caller may see is a document: its KOS manifest lists the instances held today.
Access and audit are the records service's (one record per read, as the FHIR reads); the
instance list comes from the index only after that decision.
"""

from __future__ import annotations

from typing import Any

from solent.dicom.manifest import ManifestSubject, kos_manifest, manifest_uid
from solent.domain.principal import Principal
from solent.errors import NotFound
from solent.index import reads
from solent.index.sql import Index
from solent.services.records import Person, RecordService


class ManifestService:
    def __init__(self, records: RecordService, index: Index, ae_title: str) -> None:
        self._records = records
        self._index = index
        self._ae_title = ae_title

    def documents(self, principal: Principal, person: Person) -> list[dict[str, Any]]:
        """The person's studies the caller may see (newest first), each with the UID its
        manifest has now (``manifest_uid``); studies without instances are left out."""
        studies = self._records.person_studies(principal, person, "fhir DocumentReference")
        return [d for d in (self._with_manifest_uid(s) for s in studies) if d is not None]

    def document(self, principal: Principal, study_pk: int) -> dict[str, Any]:
        found = self._with_manifest_uid(self._records.study(principal, study_pk))
        if found is None:
            raise NotFound("no study that you may see")
        return found

    def manifest(self, principal: Principal, study_pk: int, wado_base: str) -> bytes:
        """The study's KOS manifest as the caller's trust knows the patient; instances an
        IOCM note withdrew are not listed, and a study with none left answers NotFound."""
        study = self._records.study(principal, study_pk)
        instances = reads.find_instances(self._index, study["study_uid"])
        if not instances:
            raise NotFound("no study that you may see")
        subject = study["subject"]
        own = (study["local_id"], study["issuer"])
        seen = ManifestSubject(
            patient_id=subject["local_id"],
            issuer=subject["issuer"],
            name=study["name"] or "",
            birth_date=study["birth_date"] or "",
            sex=study["sex"] or "",
            nhs_number=study["nhs_number"],
            own=None if own == (subject["local_id"], subject["issuer"]) else own,
        )
        return kos_manifest(study, seen, instances, retrieve_ae=self._ae_title, wado_base=wado_base)

    def _with_manifest_uid(self, study: dict[str, Any]) -> dict[str, Any] | None:
        instances = reads.find_instances(self._index, study["study_uid"])
        if not instances:
            return None
        return {**study, "manifest_uid": manifest_uid(study["study_uid"], instances)}
