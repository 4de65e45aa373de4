"""FHIR searches as an EPR's imaging tab makes them: narrowed by modality and date, paged with
_count and the Bundle's next links, sorted, referring to the Patient by the URL a Bundle gave.
Every answer parses with fhir.resources, and what was not applied is visible (self link) or,
with ``Prefer: handling=strict``, refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle

from solent.app import Archive
from solent.demo import ALICE
from solent.protocols.fhir.resources import local_system
from solent.protocols.hl7.handler import Hl7Handler
from solent.protocols.hl7.senders import SenderGate
from solent.protocols.http import create_app
from tests.unit.security_fixtures import add_user, demo, demo_template

__all__ = ["demo", "demo_template"]

NHS = f"https://fhir.nhs.uk/Id/nhs-number|{ALICE}"


@pytest.fixture
def zza(demo: Archive) -> Iterator[TestClient]:
    headers = add_user(demo, "drza-fhir", "ZZA", "clinician")
    with TestClient(create_app(demo), headers=headers) as c:
        yield c


def _bundle(client: TestClient, url: str, **params: Any) -> dict[str, Any]:
    r = client.get(url, params=params) if params else client.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    Bundle.model_validate(r.json())  # every entry parses too (Bundle validates its resources)
    body: dict[str, Any] = r.json()
    return body


def _ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def _modalities(bundle: dict[str, Any]) -> list[set[str]]:
    return [{m["code"] for m in e["resource"]["modality"]} for e in bundle.get("entry", [])]


def test_modality_narrows_the_studies(zza: TestClient) -> None:
    everything = _bundle(zza, "/fhir/ImagingStudy", **{"patient.identifier": NHS})
    assert len(_ids(everything)) >= 3 and {"CT", "MR"} <= set().union(*_modalities(everything))
    only_mr = _bundle(zza, "/fhir/ImagingStudy", **{"patient.identifier": NHS, "modality": "MR"})
    # Before: the parameter was ignored and every study (CT, CR, MR) came back.
    assert _modalities(only_mr) == [{"MR"}]
    assert only_mr["total"] == 1
    coded = _bundle(
        zza,
        "/fhir/ImagingStudy",
        **{
            "patient.identifier": NHS,
            "modality": "http://dicom.nema.org/resources/ontology/DCM|CT,CR",
        },
    )
    assert sorted(m for s in _modalities(coded) for m in s) == ["CR", "CT"]


def test_started_narrows_by_date_with_prefixes(zza: TestClient) -> None:
    url = f"/fhir/ImagingStudy?patient.identifier={NHS.replace('|', '%7C')}"
    every = _bundle(zza, url)
    years = sorted(e["resource"]["started"][:4] for e in every["entry"])
    in_2025 = _bundle(zza, url + "&started=ge2025-01-01&started=lt2026")
    assert [e["resource"]["started"][:4] for e in in_2025["entry"]] == ["2025"]
    assert len(years) > 1  # the filter left something out
    before = _bundle(zza, url + "&started=lt2025")
    assert all(e["resource"]["started"] < "2025" for e in before["entry"]) and before["entry"]


def test_count_pages_with_next_links_until_every_study_is_seen(zza: TestClient) -> None:
    every = _bundle(zza, "/fhir/ImagingStudy", **{"patient.identifier": NHS})
    seen: list[str] = []
    page = _bundle(zza, "/fhir/ImagingStudy", **{"patient.identifier": NHS, "_count": "1"})
    pages = 0
    while True:
        pages += 1
        assert page["total"] == len(_ids(every))  # every match, not the page
        assert len(page["entry"]) == 1  # before: _count ignored, every study on one page
        seen += _ids(page)
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not nxt:
            break
        page = _bundle(zza, nxt[0].replace("http://testserver", ""))
    assert seen == _ids(every) and pages == len(seen)
    oldest_first = _bundle(
        zza, "/fhir/ImagingStudy", **{"patient.identifier": NHS, "_sort": "started"}
    )
    assert _ids(oldest_first) == list(reversed(_ids(every)))


def test_parameters_not_applied_are_visible_or_refused(zza: TestClient) -> None:
    lenient = _bundle(zza, "/fhir/ImagingStudy", **{"patient.identifier": NHS, "bodysite": "chest"})
    self_url = next(link["url"] for link in lenient["link"] if link["relation"] == "self")
    assert "patient.identifier=" in self_url and "bodysite" not in self_url
    strict = zza.get(
        "/fhir/ImagingStudy",
        params={"patient.identifier": NHS, "bodysite": "chest"},
        headers={"Prefer": "handling=strict"},
    )
    assert strict.status_code == 400
    assert strict.json()["resourceType"] == "OperationOutcome"
    assert "bodysite" in strict.json()["issue"][0]["diagnostics"]
    bad = zza.get("/fhir/ImagingStudy", params={"patient.identifier": NHS, "_count": "many"})
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"


def test_a_patient_reference_as_a_bundle_gave_it(zza: TestClient) -> None:
    patients = _bundle(zza, "/fhir/Patient", identifier=NHS)
    full_url = patients["entry"][0]["fullUrl"]  # http://testserver/fhir/Patient/<id>
    by_url = _bundle(zza, "/fhir/ImagingStudy", subject=full_url)
    by_ref = _bundle(zza, "/fhir/ImagingStudy", patient=f"Patient/{_ids(patients)[0]}")
    assert _ids(by_url) == _ids(by_ref) and _ids(by_ref)
    reports = zza.get("/fhir/DiagnosticReport", params={"patient": full_url})
    assert reports.status_code == 200 and reports.json()["resourceType"] == "Bundle"


def test_started_carries_the_uk_offset(zza: TestClient) -> None:
    """DICOM times are the scanner's wall clock in England: a June study at 09:30 started at
    09:30+01:00 (BST). Before: "09:30:00Z", an hour later than it happened."""
    every = _bundle(zza, "/fhir/ImagingStudy", **{"patient.identifier": NHS})
    started = {e["resource"]["started"] for e in every["entry"]}
    assert "2026-06-10T09:30:00+01:00" in started  # demo MR, summer
    assert "2024-01-15T09:30:00+00:00" in started  # demo CT, winter


def test_a_count_above_the_page_limit_gets_full_pages(zza: TestClient) -> None:
    """FHIR lets a server return fewer than _count asks: a large _count is no error."""
    page = _bundle(zza, "/fhir/ImagingStudy", **{"patient.identifier": NHS, "_count": "5000"})
    assert page["total"] == len(page["entry"]) >= 3
    self_url = next(link["url"] for link in page["link"] if link["relation"] == "self")
    assert "_count=1000" in self_url  # the page size applied


def test_patient_names_are_given_as_the_pas_recorded_them(zza: TestClient, demo: Archive) -> None:
    """Before: family and given names were title-cased ("McDonald" became "Mcdonald")."""
    s = demo.services
    a08 = (
        "MSH|^~\\&|PAS|ZZA|PACS|ZZX|20250320093000||ADT^A08^ADT_A01|NAME-1|P|2.4\r"
        "EVN|A08|20250320093000\r"
        "PID|1||A100001^^^ZZA^MR||McDonald^Alice^DE LA CRUZ||19580312|F\r"
    )
    handler = Hl7Handler(s, gate=SenderGate(s.directory, s.audit))
    assert "MSA|AA|NAME-1|" in handler.handle(a08, "127.0.0.1:40000")
    patients = _bundle(zza, "/fhir/Patient", identifier=f"{local_system('ZZA')}|A100001")
    (name,) = patients["entry"][0]["resource"]["name"]
    assert name["family"] == "McDonald"
    assert name["given"] == ["Alice", "DE LA CRUZ"]
    assert name["text"] == "Alice DE LA CRUZ McDonald"
