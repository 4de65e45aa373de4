"""FHIR R4 reads and the IHE launch on an in-process app: resources validate, errors are
OperationOutcomes or readable pages, identifiers resolve within the right trust."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from solent.app import Archive
from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
from solent.protocols.fhir.resources import local_system
from solent.protocols.hl7.handler import Hl7Handler
from solent.protocols.http import create_app
from solent.services.identity import IdentityService
from tests.conftest import admin_headers, http_headers
from tests.interop.hl7_support import write_ct
from tests.unit.security_fixtures import add_user

STUDY = "2.25.4242"
A04 = (
    "MSH|^~\\&|PAS|ZZA|PACS|ZZX|20250101||ADT^A04^ADT_A01|F1|P|2.4\r"
    "PID|1||A1^^^ZZA^MR~9990000026^^^NHS^NH||DOE^JANE||19800101|F" + "|" * 24 + "NSTS01\r"
)
ORU = (
    "MSH|^~\\&|RIS|ZZA|PACS|ZZX|20250101||ORU^R01^ORU_R01|F2|P|2.4\r"
    "PID|1||A1^^^ZZA^MR||DOE^JANE||19800101|F\r"
    + "|".join(
        ["OBR", "1", "", "ACC1", "XR^Chest^L", "", "", "20250101120000"]
        + [""] * 10
        + ["ACC1"]
        + [""] * 5
        + ["XR", "F"]
    )
    + "\r"
    "OBX|1|TX|XR||No abnormality.||||||F\r"
)


@pytest.fixture
def client(archive: Archive, tmp_path: Path) -> Iterator[TestClient]:
    handler = Hl7Handler(archive.services)
    for msg in (A04, ORU):
        assert "MSA|AA" in handler.handle(msg)
    path = write_ct(
        tmp_path / "ct.dcm",
        patient_id="A1",
        issuer="ZZA",
        name="DOE^JANE",
        birth_date="19800101",
        sex="F",
        accession="ACC1",
        study_uid=STUDY,
        study_date="20250101",
    )
    who = Principal(PrincipalKind.IMPORTER, "test", "ZZA")
    assert archive.ingestor.ingest_file(path, who, Provenance(Channel.IMPORT)).ok
    with TestClient(create_app(archive), headers=http_headers(archive)) as c:
        yield c


def test_patient_read_and_search(client: TestClient) -> None:
    bundle = client.get("/fhir/Patient", params={"identifier": f"{local_system('ZZA')}|A1"})
    assert bundle.status_code == 200
    assert bundle.headers["content-type"].startswith("application/fhir+json")
    patient = bundle.json()["entry"][0]["resource"]
    assert patient["birthDate"] == "1980-01-01"
    assert patient["gender"] == "female"
    read = client.get(f"/fhir/Patient/{patient['id']}").json()
    assert read == patient
    by_id = client.get("/fhir/Patient", params={"_id": patient["id"]}).json()
    assert by_id["total"] == 1


def test_imaging_study_and_report(client: TestClient) -> None:
    found = client.get("/fhir/ImagingStudy", params={"identifier": f"urn:oid:{STUDY}"}).json()
    (entry,) = found["entry"]
    study = entry["resource"]
    assert study["series"][0]["modality"]["code"] == "CT"
    assert client.get(f"/fhir/ImagingStudy/{study['id']}").json() == study
    reports = client.get(
        "/fhir/DiagnosticReport",
        params={"patient.identifier": "https://fhir.nhs.uk/Id/nhs-number|9990000026"},
    ).json()
    (report,) = [e["resource"] for e in reports["entry"]]
    assert report["status"] == "final"
    assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{study['id']}"}]
    assert client.get(f"/fhir/DiagnosticReport/{report['id']}").json()["id"] == report["id"]


def test_dates_that_are_no_calendar_dates_are_left_out_not_a_server_error(
    archive: Archive, client: TestClient, tmp_path: Path
) -> None:
    """Before: an image whose birth and study dates were 8 digits but no date (19801399) made
    every FHIR search that found its patient or study answer 500 (the model refused it)."""
    path = write_ct(
        tmp_path / "odd.dcm",
        patient_id="A9",
        issuer="ZZA",
        name="ODD^DATES",
        birth_date="19801399",
        sex="F",
        accession="ACC9",
        study_uid="2.25.4343",
        study_date="20251399",
    )
    who = Principal(PrincipalKind.IMPORTER, "test", "ZZA")
    assert archive.ingestor.ingest_file(path, who, Provenance(Channel.IMPORT)).ok
    r = client.get("/fhir/Patient", params={"identifier": f"{local_system('ZZA')}|A9"})
    assert r.status_code == 200, r.text
    [entry] = r.json()["entry"]
    assert entry["resource"]["name"][0]["family"] == "ODD" and "birthDate" not in entry["resource"]
    r = client.get("/fhir/ImagingStudy", params={"identifier": "urn:oid:2.25.4343"})
    assert r.status_code == 200, r.text
    assert "started" not in r.json()["entry"][0]["resource"]


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/fhir/Patient", {}, 400),
        ("/fhir/Patient", {"identifier": "A1"}, 400),
        ("/fhir/ImagingStudy", {"patient.identifier": "https://fhir.nhs.uk/Id/nhs-number|1"}, 400),
        ("/fhir/Patient/999999", {}, 404),
        ("/fhir/ImagingStudy/x", {}, 404),
    ],
)
def test_fhir_errors_are_operation_outcomes(
    client: TestClient, path: str, params: dict[str, str], status: int
) -> None:
    r = client.get(path, params=params)
    assert r.status_code == status
    assert r.json()["resourceType"] == "OperationOutcome"


def test_launch_scopes_accessions_to_the_trust(client: TestClient) -> None:
    study = {"requestType": "STUDY", "accessionNumber": "ACC1"}
    r = client.get("/trusts/ZZA/IHEInvokeImageDisplay", params=study, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == f"/viewer/#/study/{STUDY}"  # straight into the viewer
    assert client.get("/trusts/ZZB/IHEInvokeImageDisplay", params=study).status_code == 404
    assert client.get("/IHEInvokeImageDisplay", params=study).status_code == 400
    assert client.get("/trusts/ZZQ/IHEInvokeImageDisplay", params=study).status_code == 404
    patient = {"requestType": "PATIENT", "patientID": "A1^^^ZZB"}
    assert client.get("/trusts/ZZA/IHEInvokeImageDisplay", params=patient).status_code == 400
    r = client.get(
        "/IHEInvokeImageDisplay",
        params={"requestType": "PATIENT", "patientID": "A1^^^ZZA"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/viewer/#/patient/ZZA/A1"


def _second_study(archive: Archive, tmp_path: Path, study_uid: str, date: str) -> None:
    path = write_ct(
        tmp_path / f"{study_uid}.dcm",
        patient_id="A1",
        issuer="ZZA",
        name="DOE^JANE",
        birth_date="19800101",
        sex="F",
        accession="ACC2",
        study_uid=study_uid,
        study_date=date,
    )
    who = Principal(PrincipalKind.IMPORTER, "test", "ZZA")
    assert archive.ingestor.ingest_file(path, who, Provenance(Channel.IMPORT)).ok


def test_launch_of_several_studies_opens_the_newest_with_the_rest_listed(
    client: TestClient, archive: Archive, tmp_path: Path
) -> None:
    older, newer = "2.25.4240", "2.25.4249"
    _second_study(archive, tmp_path, older, "20200101")
    _second_study(archive, tmp_path, newer, "20260101")
    r = client.get(
        "/trusts/ZZA/IHEInvokeImageDisplay",
        params={"requestType": "STUDY", "studyUID": f"{older},{STUDY},{newer}"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert r.headers["location"] == f"/viewer/#/study/{newer}?launch={newer},{STUDY},{older}"
    # The same launch by accession numbers (the second names two studies), for the viewer.
    r = client.get(
        "/api/viewer/launch",
        params={"trust": "ZZA", "requestType": "STUDY", "accessionNumber": "ACC1,ACC2"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["href"] == f"#/study/{newer}?launch={newer},{STUDY},{older}"
    assert [(s["study_uid"], s["date"], s["trust"]) for s in body["studies"]] == [
        (newer, "20260101", "ZZA"),
        (STUDY, "20250101", "ZZA"),
        (older, "20200101", "ZZA"),
    ]


def test_viewer_launch_answers_as_the_iid_endpoint(client: TestClient) -> None:
    """/api/viewer/launch: the same trust scoping and refusals, as JSON {"detail"}."""
    study = {"requestType": "STUDY", "accessionNumber": "ACC1"}
    r = client.get("/api/viewer/launch", params={**study, "trust": "ZZA"})
    assert r.status_code == 200 and r.json()["href"] == f"#/study/{STUDY}"
    for params, status in (
        ({**study, "trust": "ZZB"}, 404),  # accessions belong to the launching trust
        (study, 400),  # no trust: an accession number has no issuer
        ({**study, "trust": "ZZQ"}, 404),
        ({"requestType": "PATIENT", "patientID": "A1^^^ZZB", "trust": "ZZA"}, 400),
        ({"requestType": "SERIES", "trust": "ZZA"}, 400),
    ):
        r = client.get("/api/viewer/launch", params=params)
        assert r.status_code == status, (params, r.text)
        assert r.headers["content-type"] == "application/json" and r.json()["detail"]
    r = client.get("/api/viewer/launch", params={"requestType": "PATIENT", "patientID": "A1^^^ZZA"})
    assert r.json()["href"] == "#/patient/ZZA/A1"
    assert [s["study_uid"] for s in r.json()["studies"]] == [STUDY]


def test_a_browser_without_a_token_is_sent_to_the_viewer_to_sign_in(client: TestClient) -> None:
    """An EPR opens the IID URL in a plain browser: no Authorization header, a page load.
    Every other caller without a token still gets 401."""
    anonymous = TestClient(client.app)
    page = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    query = "requestType=STUDY&accessionNumber=ACC1"
    r = anonymous.get(
        f"/trusts/ZZA/IHEInvokeImageDisplay?{query}", headers=page, follow_redirects=False
    )
    assert r.status_code == 303, r.text
    assert r.headers["location"] == f"/viewer/#/launch/ZZA?{query}"
    r = anonymous.get(
        "/IHEInvokeImageDisplay?requestType=PATIENT&patientID=A1^^^ZZA",
        headers=page,
        follow_redirects=False,
    )
    assert r.headers["location"] == "/viewer/#/launch?requestType=PATIENT&patientID=A1%5E%5E%5EZZA"
    refused = (
        anonymous.get(f"/trusts/ZZA/IHEInvokeImageDisplay?{query}"),  # Accept: */*
        anonymous.get(
            f"/trusts/ZZA/IHEInvokeImageDisplay?{query}",
            headers={**page, "Authorization": "Bearer nope"},
        ),
        anonymous.post(f"/trusts/ZZA/IHEInvokeImageDisplay?{query}", headers=page),
        anonymous.get(f"/api/viewer/launch?trust=ZZA&{query}", headers=page),
        anonymous.get(f"/trusts/ZZA/other?{query}", headers=page),
    )
    for r in refused:
        assert r.status_code == 401, (r.request.url, r.status_code)
        assert r.json()["detail"].startswith("authentication required")


def test_sensitive_patient_shows_no_contact_details(client: TestClient, archive: Archive) -> None:
    handler = Hl7Handler(archive.services)
    a08 = (
        "MSH|^~\\&|PAS|ZZA|PACS|ZZX|20250101||ADT^A08^ADT_A01|F3|P|2.4\r"
        "PID|1||A1^^^ZZA^MR~9990000026^^^NHS^NH||DOE^JANE||19800101|F|||1 SECRET ROAD^^TOWN||"
        "01632 960777" + "|" * 19 + "NSTS01\r"
    )
    assert "MSA|AA" in handler.handle(a08)
    query = {"identifier": f"{local_system('ZZA')}|A1"}
    before = client.get("/fhir/Patient", params=query).json()["entry"][0]["resource"]
    assert before["address"] == [{"text": "1 SECRET ROAD, TOWN"}]
    r = client.post(
        "/api/identity/sensitive",
        json={"issuer": "ZZA", "patient_id": "A1", "sensitive": True},
        headers=admin_headers(archive),
    )
    assert r.status_code == 200, r.text
    after = client.get("/fhir/Patient", params=query).json()["entry"][0]["resource"]
    assert "address" not in after and "telecom" not in after
    (record,) = client.get(
        "/api/identity/person", params={"issuer": "ZZA", "patient_id": "A1"}
    ).json()["records"]
    assert "address" not in record and "phone" not in record
    attrs = IdentityService(archive.index).current_patient_attributes(STUDY)
    assert attrs["PatientAddress"] is None and attrs["PatientTelephoneNumbers"] is None


def test_after_an_unlink_each_trust_finds_its_own_record_by_the_nhs_number(
    archive: Archive, tmp_path: Path
) -> None:
    """§2.4 A37 separates ZZA's A1 from ZZB's B1 though both carry 9990000026 traced: a ZZB
    clinician searching FHIR by the number gets ZZB's record, its study and its report (not
    nothing, and not ZZA's record); a ZZA clinician gets ZZA's."""
    handler = Hl7Handler(archive.services, link_senders=("ZZX",))
    zzb_a04 = A04.replace("|ZZA|", "|ZZB|").replace("A1^^^ZZA", "B1^^^ZZB").replace("F1", "B-1")
    zzb_oru = (
        ORU.replace("|ZZA|", "|ZZB|").replace("A1^^^ZZA", "B1^^^ZZB").replace("F2", "B-2")
    ).replace("ACC1", "ACCB")
    unlink = (
        "MSH|^~\\&|EMPI|ZZX|PACS|ZZX|20250315090000||ADT^A37^ADT_A37|X-1|P|2.4\r"
        "PID|1||A1^^^ZZA^MR\rPID|2||B1^^^ZZB^MR\r"
    )
    for msg in (A04, zzb_a04, unlink, zzb_oru):
        assert "MSA|AA" in handler.handle(msg), msg
    path = write_ct(
        tmp_path / "b.dcm",
        patient_id="B1",
        issuer="ZZB",
        name="DOE^JANE",
        birth_date="19800101",
        sex="F",
        accession="ACCB",
        study_uid="2.25.4343",
        study_date="20250102",
    )
    who = Principal(PrincipalKind.IMPORTER, "test", "ZZB")
    assert archive.ingestor.ingest_file(path, who, Provenance(Channel.IMPORT)).ok
    nhs = {"identifier": "https://fhir.nhs.uk/Id/nhs-number|9990000026"}
    subject = {"patient.identifier": nhs["identifier"]}
    with TestClient(create_app(archive)) as c:
        for trust, local_id in (("ZZA", "A1"), ("ZZB", "B1")):
            headers = add_user(archive, f"clin-{trust}", trust, "clinician")
            r = c.get("/fhir/Patient", params=nhs, headers=headers)
            assert r.status_code == 200, r.text
            found = [
                i["value"]
                for e in r.json()["entry"]
                for i in e["resource"]["identifier"]
                if i["system"] == local_system(trust)
            ]
            assert found == [local_id], (trust, r.json())
        r = c.get("/fhir/ImagingStudy", params=subject, headers=headers)
        assert [e["resource"]["identifier"][0]["value"] for e in r.json()["entry"]] == [
            "urn:oid:2.25.4343"
        ]
        r = c.get("/fhir/DiagnosticReport", params=subject, headers=headers)
        assert [e["resource"]["status"] for e in r.json()["entry"]] == ["final"]
