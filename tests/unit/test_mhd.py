"""IHE MHD Document Responder (R27; R25's manifest): an EPR or a tertiary centre that speaks
only FHIR finds each study of the patient as a DocumentReference (ITI-67) and retrieves its
DICOM KOS manifest (ITI-68), which names every instance held today and where to fetch it."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy import select

from solent.app import Archive
from solent.demo import ALICE
from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
from solent.index import schema as t
from solent.protocols.http import create_app
from tests.unit.security_fixtures import add_user, demo, demo_template
from tests.unit.stow_support import rejection_note

__all__ = ["demo", "demo_template"]

ALICE_NHS = f"https://fhir.nhs.uk/Id/nhs-number|{ALICE}"
DICOM = "application/dicom"


@pytest.fixture
def zza(demo: Archive) -> Iterator[TestClient]:
    headers = add_user(demo, "drza-mhd", "ZZA", "clinician")
    with TestClient(create_app(demo), headers=headers) as c:
        yield c


def _documents(client: TestClient, **params: str) -> list[dict[str, Any]]:
    r = client.get("/fhir/DocumentReference", params=params)
    assert r.status_code == 200, r.text
    Bundle.model_validate(r.json())  # the DocumentReferences validate too
    return [e["resource"] for e in r.json().get("entry", [])]


def _kos(client: TestClient, url: str) -> pydicom.Dataset:
    r = client.get(url, headers={"Accept": DICOM})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == DICOM
    return pydicom.dcmread(io.BytesIO(r.content))


def _listed(kos: pydicom.Dataset) -> dict[str, str]:
    """SOP Instance UID -> Retrieve URL of its series, from the evidence sequence."""
    (study,) = kos.CurrentRequestedProcedureEvidenceSequence
    return {
        ref.ReferencedSOPInstanceUID: series.RetrieveURL
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }


def _instances(archive: Archive, study_uid: str) -> set[str]:
    i, se, st = t.instance.c, t.series.c, t.study.c
    q = (
        select(i.sop_instance_uid)
        .select_from(t.instance.join(t.series, i.series_pk == se.pk).join(t.study))
        .where(st.study_uid == study_uid)
    )
    with archive.index.read() as conn:
        return set(conn.execute(q).scalars())


def test_every_study_of_the_person_is_a_document_with_its_kos_manifest(
    demo: Archive, zza: TestClient
) -> None:
    docs = _documents(zza, **{"patient.identifier": ALICE_NHS})
    studies = zza.get("/fhir/ImagingStudy", params={"patient.identifier": ALICE_NHS}).json()
    assert {d["id"] for d in docs} == {e["resource"]["id"] for e in studies["entry"]}
    custodians = {d["custodian"]["identifier"]["value"] for d in docs}
    assert custodians == {"ZZA", "ZZB"}  # Alice's studies at both trusts, linked by NHS number
    for doc in docs:
        assert doc["status"] == "current"
        assert doc["type"]["coding"][0]["code"] == "18748-4"
        kos_content, study_content = doc["content"]
        assert kos_content["format"]["code"] == "1.2.840.10008.5.1.4.1.1.88.59"
        kos = _kos(zza, kos_content["attachment"]["url"])
        assert kos.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"
        assert doc["masterIdentifier"]["value"] == f"urn:oid:{kos.SOPInstanceUID}"
        assert kos.ConceptNameCodeSequence[0].CodeValue == "113030"  # Manifest
        listed = _listed(kos)
        assert set(listed) == _instances(demo, kos.StudyInstanceUID)
        assert all(
            url.endswith(f"/dicomweb/studies/{kos.StudyInstanceUID}/series/" + url.split("/")[-1])
            for url in listed.values()
        )
        # ZZA's caller sees Alice under ZZA's own record, the other trust's in Other IDs.
        assert (kos.PatientID, kos.IssuerOfPatientID) == ("A100001", "ZZA")
        others = {(o.PatientID, o.IssuerOfPatientID) for o in kos.OtherPatientIDsSequence}
        assert (ALICE, "NHS") in others
        assert study_content["attachment"]["url"].endswith(f"/fhir/ImagingStudy/{doc['id']}")
        # A FHIR-only client gets the same bytes as a Binary resource.
        as_binary = zza.get(
            kos_content["attachment"]["url"], headers={"Accept": "application/fhir+json"}
        )
        assert as_binary.json()["resourceType"] == "Binary"
        assert (
            pydicom.dcmread(io.BytesIO(base64.b64decode(as_binary.json()["data"]))).SOPInstanceUID
            == kos.SOPInstanceUID
        )
    assert zza.get(f"/fhir/DocumentReference/{docs[0]['id']}").json()["id"] == docs[0]["id"]
    assert _documents(zza, **{"patient.identifier": ALICE_NHS, "status": "superseded"}) == []


def test_a_withdrawn_instance_leaves_the_manifest_which_gets_a_new_uid(
    demo: Archive, zza: TestClient, tmp_path: Path
) -> None:
    docs = _documents(zza, **{"patient.identifier": ALICE_NHS})
    (doc, *_) = [d for d in docs if d["custodian"]["identifier"]["value"] == "ZZA"]
    url = doc["content"][0]["attachment"]["url"]
    before = _kos(zza, url)
    assert _kos(zza, url).SOPInstanceUID == before.SOPInstanceUID  # stable while unchanged
    (evidence,) = before.CurrentRequestedProcedureEvidenceSequence
    series = evidence.ReferencedSeriesSequence[0]
    gone = series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    note, _ = rejection_note(
        "A100001",
        "ZZA",
        before.StudyInstanceUID,
        {series.SeriesInstanceUID: [gone]},
        code="113001",
        meaning="Rejected for Quality Reasons",
    )
    (tmp_path / "note.dcm").write_bytes(note)
    who = Principal(PrincipalKind.IMPORTER, "test", "ZZA")
    assert demo.ingestor.ingest_file(tmp_path / "note.dcm", who, Provenance(Channel.IMPORT)).ok
    after = _kos(zza, url)
    assert gone not in _listed(after)
    assert after.SOPInstanceUID != before.SOPInstanceUID  # republished (R25)
    again = zza.get(f"/fhir/DocumentReference/{doc['id']}").json()
    assert again["masterIdentifier"]["value"] == f"urn:oid:{after.SOPInstanceUID}"


def test_another_trust_without_a_relationship_finds_and_fetches_nothing(
    demo: Archive, zza: TestClient
) -> None:
    (doc, *_) = _documents(zza, **{"patient.identifier": ALICE_NHS})
    headers = add_user(demo, "drzc-mhd", "ZZC", "clinician")
    with TestClient(create_app(demo), headers=headers) as zzc:
        assert _documents(zzc, **{"patient.identifier": ALICE_NHS}) == []
        for path, accept in (
            (f"/fhir/Binary/{doc['id']}", DICOM),
            (f"/fhir/DocumentReference/{doc['id']}", "application/fhir+json"),
        ):
            r = zzc.get(path, headers={"Accept": accept})
            assert r.status_code == 404
            assert r.json()["resourceType"] == "OperationOutcome"


def test_each_manifest_read_is_audited_and_bad_requests_are_outcomes(
    demo: Archive, zza: TestClient
) -> None:
    (doc, *_) = _documents(zza, **{"patient.identifier": ALICE_NHS})
    _kos(zza, doc["content"][0]["attachment"]["url"])
    with demo.index.read() as conn:
        rows = (
            conn.execute(select(t.audit_log).where(t.audit_log.c.actor_name == "drza-mhd"))
            .mappings()
            .all()
        )
    reads = [json.loads(r["detail"] or "{}").get("read") for r in rows]
    assert "fhir DocumentReference" in reads
    assert any(r["action"] == "view" and r["study_uid"] for r in rows)
    assert zza.get("/fhir/DocumentReference").status_code == 400
    # Two patients named: refused, not the documents of whichever one was read last.
    both = zza.get(
        "/fhir/DocumentReference",
        params=[("patient.identifier", ALICE_NHS), ("patient", "999999")],
    )
    assert both.status_code == 400 and both.json()["resourceType"] == "OperationOutcome"
    twice = zza.get("/fhir/DocumentReference", params=[("patient", "1"), ("patient", "2")])
    assert twice.status_code == 400
    assert zza.get("/fhir/Binary/not-a-number", headers={"Accept": DICOM}).status_code == 404
    refused = zza.get("/fhir/Binary/1", headers={"Accept": "image/jpeg"})
    assert refused.status_code == 406
    assert refused.json()["resourceType"] == "OperationOutcome"
