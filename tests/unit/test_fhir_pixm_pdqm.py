"""R5/R6 over FHIR on an in-process app: IHE PIXm ($ihe-pix, ITI-83) and PDQm (Patient search
by demographics, ITI-78), answered as the caller may see, errors as PIXm asks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from solent.app import Archive, build_archive
from solent.domain.principal import Principal, PrincipalKind
from solent.protocols.fhir.resources import local_system
from solent.protocols.hl7.handler import Hl7Handler
from solent.protocols.http import create_app
from solent.security.auditformats import dicom_xml, fhir_audit_event
from solent.services.identity import Change, PatientKey
from solent.settings import load_settings
from tests.conftest import http_headers
from tests.unit.security_fixtures import add_user

NHS = "https://fhir.nhs.uk/Id/nhs-number"
NUMBER = "9994001051"
SPLIT = "9994001078"  # the pair the unlink test separates


def _adt(trust: str, control: str, local_id: str, name: str, nhs: str | None = None) -> str:
    ids = f"{local_id}^^^{trust}^MR" + (f"~{nhs}^^^NHS^NH" if nhs else "")
    status = "|" * 24 + "NSTS01" if nhs else ""
    return (
        f"MSH|^~\\&|PAS|{trust}|PACS|ZZX|20250101||ADT^A28^ADT_A05|{control}|P|2.4\r"
        f"PID|1||{ids}||{name}||19620417|F{status}\r"
    )


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """One archive for the module (building one costs ~2 s); tests use their own patients
    where they change links, and users of their own names."""
    a = build_archive(load_settings(environ={}, data_dir=tmp_path_factory.mktemp("pixm") / "var"))
    for code in ("ZZA", "ZZB", "ZZC"):
        a.index.add_trust(code, f"Trust {code}")
    handler = Hl7Handler(a.services)
    for msg in (
        _adt("ZZA", "F1", "A1", "MOBILE^MARY", NUMBER),
        _adt("ZZB", "F2", "B1", "MOBILE^MARY", NUMBER),
        _adt("ZZB", "F3", "B2", "MOBILE^MAUD"),
        _adt("ZZA", "F4", "A9", "SPLIT^SUE", SPLIT),
        _adt("ZZB", "F5", "B9", "SPLIT^SUE", SPLIT),
    ):
        assert "MSA|AA" in handler.handle(msg)
    yield a
    a.close()


@pytest.fixture(scope="module")
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive), headers=http_headers(archive)) as c:
        yield c


def _pix(client: TestClient, source: str, *targets: str, **kw: Any) -> Any:
    params: list[tuple[str, str]] = [("sourceIdentifier", source)]
    params += [("targetSystem", t) for t in targets]
    return client.get("/fhir/Patient/$ihe-pix", params=params, **kw)


def _targets(body: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted(
        (p["valueIdentifier"]["system"], p["valueIdentifier"]["value"])
        for p in body.get("parameter", [])
        if p["name"] == "targetIdentifier"
    )


def test_pixm_cross_references_in_force(client: TestClient, archive: Archive) -> None:
    r = _pix(client, f"{local_system('ZZA')}|A1")
    assert r.status_code == 200
    body = r.json()
    assert body["resourceType"] == "Parameters"
    assert _targets(body) == [(NHS, NUMBER), (local_system("ZZB"), "B1")]
    (b1,) = [p["valueReference"]["reference"] for p in body["parameter"] if p["name"] == "targetId"]
    assert client.get(f"/fhir/{b1}").json()["identifier"][0]["value"] == "B1"
    # targetSystem narrows; by NHS number (its OID form too) ZZA's MRN.
    assert _targets(_pix(client, f"{local_system('ZZA')}|A1", local_system("ZZB")).json()) == [
        (local_system("ZZB"), "B1")
    ]
    oid = _pix(client, f"urn:oid:2.16.840.1.113883.2.1.4.1|{NUMBER}", local_system("ZZA"))
    assert _targets(oid.json()) == [(local_system("ZZA"), "A1")]


def test_pixm_after_unlink(client: TestClient, archive: Archive) -> None:
    source = f"{local_system('ZZA')}|A9"
    assert _targets(_pix(client, source).json()) == [(NHS, SPLIT), (local_system("ZZB"), "B9")]
    system = Principal(PrincipalKind.SYSTEM, "test", None)
    archive.identity.unlink(PatientKey("ZZA", "A9"), PatientKey("ZZB", "B9"), Change(system))
    # After an unlink (A37) ZZB's record is no longer the same person: not returned.
    assert _targets(_pix(client, source).json()) == [(NHS, SPLIT)]
    assert _pix(client, source, local_system("ZZB")).json() == {"resourceType": "Parameters"}


PIXM_ERRORS = [
    ("https://example.org/unknown|A1", (), 400, "code-invalid"),
    (f"{local_system('ZZQ')}|A1", (), 400, "code-invalid"),
    (f"{local_system('ZZA')}|NOBODY", (), 404, "not-found"),
    (f"{local_system('ZZA')}|A1", ("https://example.org/unknown",), 403, "code-invalid"),
    (f"{local_system('ZZA')}|A1", (local_system("ZZQ"),), 403, "code-invalid"),
    ("no-bar", (), 400, "required"),
]


def test_pixm_errors_are_operation_outcomes(client: TestClient) -> None:
    """PIXm 2.3.83.4.2.3: unknown source domain 400, unknown source 404, unknown target 403."""
    for source, targets, status, code in PIXM_ERRORS:
        r = _pix(client, source, *targets)
        assert r.status_code == status, (source, targets, r.text)
        body = r.json()
        assert body["resourceType"] == "OperationOutcome"
        assert body["issue"][0]["code"] == code


def test_pixm_other_trust_answers_like_unknown(client: TestClient, archive: Archive) -> None:
    zzc = add_user(archive, "zzc-pix", "ZZC", "clinician", password=None)
    hidden = _pix(client, f"{local_system('ZZA')}|A1", headers=zzc)
    unknown = _pix(client, f"{local_system('ZZA')}|NOBODY", headers=zzc)
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.json() == unknown.json()


def test_pdqm_search_by_demographics(client: TestClient, archive: Archive) -> None:
    def ids(params: dict[str, str], **kw: Any) -> list[str]:
        r = client.get("/fhir/Patient", params=params, **kw)
        assert r.status_code == 200, r.text
        return sorted(e["resource"]["identifier"][0]["value"] for e in r.json().get("entry", []))

    assert ids({"family": "mob"}) == ["A1", "B1", "B2"]  # starts with, any case
    assert ids({"family": "mob", "given": "mary"}) == ["A1", "B1"]
    assert ids({"family:exact": "MOBILE", "given:exact": "MA"}) == []
    assert ids({"given": "mau", "birthdate": "1962-04-17", "gender": "female"}) == ["B2"]
    assert ids({"family": "mobile", "gender": "male"}) == []
    assert ids({"family": "mobile", "identifier": f"{NHS}|{NUMBER}"}) == ["A1", "B1"]
    assert ids({"family": "mobile", "active": "false"}) == []
    # A ZZA user sees Mary (ZZA's patient, and her linked ZZB record), not Maud (ZZB's only).
    zza = add_user(archive, "zza-clinician", "ZZA", "clinician", password=None)
    assert ids({"family": "mobile"}, headers=zza) == ["A1", "B1"]
    zzc = add_user(archive, "zzc-clinician", "ZZC", "clinician", password=None)
    assert ids({"family": "mobile"}, headers=zzc) == []
    # The query is audited naming each patient returned.
    trail = archive.audit.search(patient_id="B2", patient_issuer="ZZB", action="query")
    record = next(r for r in trail if '"transaction":"ITI-78"' in (r["detail"] or ""))
    # ... as an ATNA query event of that IHE transaction, in both export formats.
    assert 'csd-code="ITI-78" codeSystemName="IHE Transactions"' in dicom_xml(record)
    assert {"system": "urn:ihe:event-type-code", "code": "ITI-78"}.items() <= next(
        s for s in fhir_audit_event(record)["subtype"] if s["code"] == "ITI-78"
    ).items()


def test_pdqm_bad_parameters_are_400(client: TestClient) -> None:
    for params in (
        {"birthdate": "17/04/1962"},
        {"gender": "m"},
        {"family": "mobile", "identifier": "https://example.org/x|1"},
        {"family": "mobile", "family:exact": "MOBILE"},
    ):
        r = client.get("/fhir/Patient", params=params)
        assert r.status_code == 400, params
        assert r.json()["resourceType"] == "OperationOutcome"


def test_capability_statement_names_pdqm_and_pixm(client: TestClient) -> None:
    (patient,) = [
        r
        for r in client.get("/fhir/metadata").json()["rest"][0]["resource"]
        if r["type"] == "Patient"
    ]
    names = {p["name"] for p in patient["searchParam"]}
    assert {"family", "given", "birthdate", "gender", "identifier", "_id"} <= names
    assert patient["operation"][0]["name"] == "ihe-pix"
    assert {"code": "update"} in patient["interaction"] and patient["conditionalUpdate"]


def _patient(local_id: str, trust: str, family: str, status: str = "01") -> dict[str, Any]:
    verification = {
        "url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus",
        "valueCodeableConcept": {
            "coding": [
                {
                    "system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland",
                    "code": status,
                }
            ]
        },
    }
    return {
        "resourceType": "Patient",
        "identifier": [
            {"system": local_system(trust), "value": local_id},
            {"system": NHS, "value": FED, "extension": [verification]},
        ],
        "name": [{"use": "official", "family": family, "given": ["FRAN"]}],
        "gender": "female",
        "birthDate": "1962-04-17",  # as _adt sends it: no conflict
    }


FED = "9994001086"


def test_iti_104_feed_creates_and_updates_own_trusts_record(
    client: TestClient, archive: Archive
) -> None:
    zza = add_user(archive, "zza-pas", "ZZA", "integration", password=None)
    url = f"/fhir/Patient?identifier={local_system('ZZA')}|A104"
    r = client.put(url, json=_patient("A104", "ZZA", "FEEDER"), headers=zza)
    assert r.status_code == 201, r.text
    assert r.json()["name"][0]["family"] == "FEEDER"
    assert r.headers["location"].endswith(f"/fhir/Patient/{r.json()['id']}")
    again = client.put(url, json=_patient("A104", "ZZA", "FEEDWELL"), headers=zza)
    assert again.status_code == 200 and again.json()["id"] == r.json()["id"]
    assert again.json()["name"][0]["family"] == "FEEDWELL"
    # Traced NHS number: linked with ZZB's record fed over HL7 with the same number.
    handler = Hl7Handler(archive.services)
    assert "MSA|AA" in handler.handle(_adt("ZZB", "F104", "B104", "FEEDWELL^FRAN", FED))
    found = _pix(client, f"{local_system('ZZA')}|A104", local_system("ZZB")).json()
    assert _targets(found) == [(local_system("ZZB"), "B104")]
    # R6: an untraced update (status 03) does not overwrite the PDS-sourced name.
    local = client.put(url, json=_patient("A104", "ZZA", "LOCALNAME", "03"), headers=zza)
    assert local.status_code == 200 and local.json()["name"][0]["family"] == "FEEDWELL"


def test_iti_104_feed_refusals(client: TestClient, archive: Archive) -> None:
    zza = add_user(archive, "zza-pas2", "ZZA", "integration", password=None)
    clinician = add_user(archive, "zza-doc", "ZZA", "clinician", password=None)
    zzb_url = f"/fhir/Patient?identifier={local_system('ZZB')}|B105"
    zza_url = f"/fhir/Patient?identifier={local_system('ZZA')}|A105"
    cases = [
        (zzb_url, _patient("B105", "ZZB", "OTHER"), zza, 403),  # another trust's record
        (zza_url, _patient("A105", "ZZA", "DOC"), clinician, 403),  # not an identity source
        (zza_url, _patient("A999", "ZZA", "MISMATCH"), zza, 400),  # body names another ID
        (zza_url, {"resourceType": "Patient", "gender": "nonsense"}, zza, 400),
        (zza_url, {**_patient("A105", "ZZA", "GONE"), "active": False}, zza, 422),
        (f"/fhir/Patient?identifier={NHS}|{FED}", _patient("A105", "ZZA", "X"), zza, 400),
    ]
    for url, body, headers, status in cases:
        r = client.put(url, json=body, headers=headers)
        assert r.status_code == status, (url, body, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    # Nothing was created by any of them.
    assert archive.identity.resolve("ZZA", "A105") is None
    assert archive.identity.resolve("ZZB", "B105") is None


def test_iti_104_feed_hostile_bodies_are_operation_outcomes(
    client: TestClient, archive: Archive
) -> None:
    """Each answered with its OperationOutcome (never a 500), and nothing stored: a body nested
    too deep to read, a telephone without a number, an unknown gender, a partial birth date,
    values wider than the record keeps, an identifier given twice or unfit for a record, and
    a body that is not FHIR JSON."""
    zza = add_user(archive, "zza-pas3", "ZZA", "integration", password=None)
    system = local_system("ZZA")
    url = f"/fhir/Patient?identifier={system}|A106"
    good = _patient("A106", "ZZA", "HOSTILE")
    deep = b'{"resourceType":"Patient","extension":' + b"[" * 5000 + b"]" * 5000 + b"}"
    json_type = {**zza, "Content-Type": "application/fhir+json"}
    raw_cases = [
        (url, deep, json_type, 400),
        (url, b'{"x":' + b"[" * 5000 + b'"\\u0000"' + b"]" * 5000 + b"}", json_type, 400),
        (url, json.dumps(good).encode(), {**zza, "Content-Type": "text/plain"}, 415),
    ]
    cases = [
        (url, {**good, "telecom": [{"system": "phone"}]}, 201),  # no number: none recorded
        (url, {**good, "gender": "banana"}, 400),
        (url, {**good, "birthDate": "1962"}, 400),
        (url, {**good, "birthDate": "1962-02-30"}, 400),  # no day: was a 500
        (url, {**good, "birthDate": "2999-01-01"}, 400),  # in the future: was stored
        (url, {**good, "name": [{"family": "X" * 400}]}, 422),
        # DICOM PN delimiters in a part: stored as family O, given BRIEN before.
        (url, {**good, "name": [{"family": "O^BRIEN", "given": ["FRAN"]}]}, 400),
        (url, {**good, "name": [{"family": "HOSTILE", "given": ["A=B"]}]}, 400),
        (url, {**good, "name": [{"family": "HOST\\ILE"}]}, 400),
        (url, {**good, "name": [{"family": "HOST\u0007ILE"}]}, 400),
        (url, {**good, "telecom": [{"system": "phone", "value": "1" * 300}]}, 422),
        (url + f"&identifier={system}|A107", good, 400),
        (f"/fhir/Patient?identifier={system}|A%01B", _patient("A\x01B", "ZZA", "X"), 400),
        (f"/fhir/Patient?identifier={system}|{'7' * 65}", _patient("7" * 65, "ZZA", "X"), 400),
    ]
    for target, body, headers, status in raw_cases:
        r = client.put(target, content=body, headers=headers)
        assert r.status_code == status, (body[:60], r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    assert archive.identity.resolve("ZZA", "A106") is None
    for target, patient, status in cases:
        r = client.put(target, json=patient, headers=zza)
        assert r.status_code == status, (target, r.text)
        if status != 201:
            assert r.json()["resourceType"] == "OperationOutcome"
    found = archive.identity.resolve("ZZA", "A106")
    assert found is not None
    record = archive.identity.record(found.patient_pk)
    assert record is not None and record["record"]["name"] == "HOSTILE^FRAN"
    assert record["contact"]["phone"] is None
    assert archive.identity.resolve("ZZA", "A107") is None
    assert archive.identity.resolve("ZZA", "7" * 65) is None


def test_pixm_source_identifier_given_twice_is_400(client: TestClient) -> None:
    r = client.get(
        "/fhir/Patient/$ihe-pix",
        params=[("sourceIdentifier", f"{local_system('ZZA')}|A1")] * 2,
    )
    assert r.status_code == 400
    assert r.json()["issue"][0]["diagnostics"] == "sourceIdentifier may be given once"


def test_pdqm_and_pdq_refuse_criteria_no_record_holds(client: TestClient, archive: Archive) -> None:
    """A family name longer than a PN component is refused (400 / AE 102), not run as a
    LIKE pattern SQLite cannot compile (which closed the HL7 connection unanswered)."""
    for family in ("M" * 65, "MOBILE^MARY"):  # the latter matched across the name's parts
        r = client.get("/fhir/Patient", params={"family": family})
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    handler = Hl7Handler(archive.services)
    for control, fields, where in (
        ("Q1", "@PID.5.1.1^" + "M" * 60000, "QPD^1^3"),
        ("Q2", "@PID.7^notadate", "QPD^1^3"),
        ("Q3", "@PID.8^BANANA", "QPD^1^3"),  # was searched as O
        ("Q4", "@PID.5.1.1^MOBILE~@PID.5.1.1^NOBODY", "QPD^1^3^2^1"),  # the last one won
    ):
        rsp = handler.handle(
            f"MSH|^~\\&|EPR|ZZA|PACS|ZZX|20250401||QBP^Q22^QBP_Q21|{control}|P|2.5\r"
            f"QPD|IHE PDQ Query|{control}|{fields}\rRCP|I\r"
        )
        segments = {s[:3]: s.split("|") for s in rsp.split("\r") if s}
        assert segments["MSA"][1:3] == ["AE", control], rsp[:300]
        assert segments["ERR"][2:4] == [where, "102^Data type error^HL70357"]


def test_adt_demographics_wider_than_the_record_are_refused_ae(archive: Archive) -> None:
    """A PID-5 name over 324 characters or a PID-13 phone over 200 was stored whole on SQLite
    (and failed the write on PostgreSQL): now AE naming the field, the record unchanged."""
    handler = Hl7Handler(archive.services)
    for control, pid in (
        ("W0", "PID|1||W100^^^ZZA^MR||O\\S\\BRIEN^W||19800101|M"),  # family O, given BRIEN
        ("W1", f"PID|1||W100^^^ZZA^MR||{'N' * 400}^W||19800101|M"),
        ("W2", f"PID|1||W100^^^ZZA^MR||WIDE^W||19800101|M|||||{'1' * 300}"),
    ):
        ack = handler.handle(
            f"MSH|^~\\&|PAS|ZZA|PACS|ZZX|20250401||ADT^A28^ADT_A05|{control}|P|2.5\r{pid}\r"
        )
        assert f"MSA|AE|{control}|" in ack, ack
        assert "longer than" in ack or "separate the parts of a name" in ack
    assert archive.identity.resolve("ZZA", "W100") is None


def test_a_query_in_its_own_delimiters_is_echoed_in_the_answers(archive: Archive) -> None:
    """MSH-2 may declare other delimiters (``#!~\\&``): the RSP (declaring ``^~\\&``) echoed
    QPD-3 as ``A1!!!ZZA!MR``, one opaque component to the sender reading it back."""
    rsp = Hl7Handler(archive.services).handle(
        "MSH#!~\\&#EPR#ZZA#PACS#ZZX#20250401##QBP!Q23!QBP_Q21#E3#P#2.5\r"
        "QPD#IHE PIX Query#E3#A1!!!ZZA!MR#\rRCP#I\r"
    )
    segments = {s[:3]: s for s in rsp.split("\r") if s}
    assert segments["MSH"].startswith("MSH|^~\\&|")
    assert segments["MSA"].startswith("MSA|AA|E3")
    assert segments["QPD"] == "QPD|IHE PIX Query|E3|A1^^^ZZA^MR|"
    assert "B1^^^ZZB^MR" in segments["PID"]
