# ruff: noqa: E501 - the scenario messages are quoted verbatim from regional-requirements.md
"""Part 2 of regional-requirements.md (scenarios 2.1-2.7 and their negative tests) against a
real `solent serve`: real MLLP traffic from python-hl7's client, results read back through the
JSON API, FHIR and the IHE launch endpoint.

One server serves the module (starting one costs seconds); each test uses its own patients
except the 2.2 -> 2.7 story, whose tests build on each other in file order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from solent.app import build_archive
from solent.dicom.identity_patch import apply_identity
from solent.index.hl7_senders import add_sender
from solent.services.identity import IdentityService
from solent.settings import load_settings
from tests.conftest import RunningServer, require_tool, start_server
from tests.interop.hl7_support import (
    NHS_SYSTEM,
    Api,
    findscu,
    ingest,
    msa,
    prepare_data_dir,
    send,
    write_ct,
)

ZZA_CT = "2.25.201905020000000000000000000000000001"
ZZB_CT = "2.25.161918240158374290112345678901234567"
LOCAL = "https://solent-pacs.nhs.example/Id/{}/patient-id"

A04_ZZA = """
MSH|^~\\&|PAS|ZZA|PACS|ZZX|20190501090000||ADT^A04^ADT_A01|ZZA0000000001|P|2.4|||||GBR||EN
EVN|A04|20190501090000
PID|1||A123456^^^ZZA^MR~9990000026^^^NHS^NH||CARTER^JAMES^PAUL^^MR||19620417|M|||1 OLD ROAD^^OLDTOWN^^XX3 3XX^GBR^H||01632 960999^PRN^PH|||||||||||||||||||NSTS01
"""
A04_ZZB = """
MSH|^~\\&|PAS|ZZB|PACS|ZZX|20200101090000||ADT^A04^ADT_A01|ZZB0000000001|P|2.4|||||GBR||EN
EVN|A04|20200101090000
PID|1||B7654321^^^ZZB^MR~9990000026^^^NHS^NH||CARTER^JAMES^PAUL^^MR||19620417|M|||12 EXAMPLE STREET^^EXAMPLETOWN^^XX1 1XX^GBR^H||01632 960001^PRN^PH|||||||||||||||||||NSTS01
"""
A40 = """
MSH|^~\\&|PAS|ZZB|PACS|ZZX|20250314101500||ADT^A40^ADT_A39|ZZB0000001234|P|2.4|||||GBR||EN
EVN|A40|20250314101500|||PASCLERK7^CLERK^PAT||ZZB
PID|1||B7654321^^^ZZB^MR~9990000026^^^NHS^NH||CARTER^JAMES^PAUL^^MR||19620417|M|||12 EXAMPLE STREET^^EXAMPLETOWN^^XX1 1XX^GBR^H||01632 960001^PRN^PH|||||||||||||||||||NSTS01
MRG|BTMP000812^^^ZZB^MR||||||UNKNOWN^MALE
"""
A08 = """
MSH|^~\\&|PAS|ZZA|PACS|ZZX|20250320093000||ADT^A08^ADT_A01|ZZA0000098765|P|2.4|||||GBR||EN
EVN|A08|20250320093000|||PASCLERK2^CLERK^SAM||ZZA
PID|1||A123456^^^ZZA^MR~9990000026^^^NHS^NH||CARTER^JAMES^PAUL^^MR||19620417|M|||5 NEW ROAD^^NEWTOWN^^XX2 2XX^GBR^H||01632 960123^PRN^PH|||||||||||||||||||NSTS01
PD1|||EXAMPLE SURGERY^^Y99999|G9999998^GP^ALEX^^^DR
PV1|1|N
"""
ORM = """
MSH|^~\\&|RIS|ZZB|PACS|ZZX|20250314113000||ORM^O01^ORM_O01|ZZBRIS0000123|P|2.4|||||GBR||EN
PID|1||B7654321^^^ZZB^MR~9990000026^^^NHS^NH||CARTER^JAMES^PAUL^^MR||19620417|M|||12 EXAMPLE STREET^^EXAMPLETOWN^^XX1 1XX^GBR^H||01632 960001^PRN^PH|||||||||||||||||||NSTS01
PV1|1|E|ED^RESUS^01^ZZB||||||||||||||||ZZBV00045678^^^ZZB^VN
ORC|NW|ZZB-OCS-556677^EPR_B|ZZB25000123^RIS_B||SC||^^^20250314113500^^S||20250314113000|||C1234567^CONSULTANT^CLARE^^^DR|||||ZZB
OBR|1|ZZB-OCS-556677^EPR_B|ZZB25000123^RIS_B|CCHAPC^CT chest abdomen pelvis with contrast^NICIP|||20250314113500||||||RTC 40mph. ?thoracoabdominal injury|||C1234567^CONSULTANT^CLARE^^^DR||ZZB25000123|RP25000123|SPS25000123||||CT|||^^^20250314113500^^S
ZDS|2.25.161918240158374290112345678901234567^PACS^Application^DICOM
"""
ORU = """
MSH|^~\\&|RIS|ZZB|PACS|ZZX|20250314153000||ORU^R01^ORU_R01|{control}|P|2.4|||||GBR||EN
PID|1||B7654321^^^ZZB^MR~9990000026^^^NHS^NH||CARTER^JAMES^PAUL^^MR||19620417|M|||12 EXAMPLE STREET^^EXAMPLETOWN^^XX1 1XX^GBR^H||01632 960001^PRN^PH|||||||||||||||||||NSTS01
PV1|1|E|ED^RESUS^01^ZZB||||||||||||||||ZZBV00045678^^^ZZB^VN
ORC|RE|ZZB-OCS-556677^EPR_B|{accession}^RIS_B||CM
OBR|1|ZZB-OCS-556677^EPR_B|{accession}^RIS_B|CCHAPC^CT chest abdomen pelvis with contrast^NICIP|||20250314114200|||||||||C1234567^CONSULTANT^CLARE^^^DR||{accession}||||20250314152900||CT|{status}|||||||R7654321&REPORTER&RITA&&&DR
OBX|1|TX|CCHAPC^CT chest abdomen pelvis with contrast^NICIP||CT CHEST ABDOMEN PELVIS WITH CONTRAST||||||F
OBX|2|TX|CCHAPC^CT chest abdomen pelvis with contrast^NICIP||Clinical details: RTC. ?thoracoabdominal injury.||||||F
OBX|3|TX|CCHAPC^CT chest abdomen pelvis with contrast^NICIP||Findings: Comparison made with CT 02/05/2019 (ZZA). No pneumothorax. Undisplaced fracture left 7th rib. No solid organ injury.||||||F
OBX|4|TX|CCHAPC^CT chest abdomen pelvis with contrast^NICIP||Conclusion: {conclusion}||||||F
"""
A24 = """
MSH|^~\\&|EMPI|ZZX|PACS|ZZX|20250314120000||ADT^A24^ADT_A24|{control}|P|2.4|||||GBR||EN
EVN|A24|20250314120000
PID|1||{a}^^^ZZA^MR||CARTER^JAMES^PAUL^^MR||19620417|M
PID|2||{b}^^^ZZB^MR||CARTER^JAMES^PAUL^^MR||19620417|M
"""
A37 = A24.replace("A24^ADT_A24", "A37^ADT_A37").replace("EVN|A24", "EVN|A37")
A47 = """
MSH|^~\\&|PAS|ZZA|PACS|ZZX|20250316100000||ADT^A47^ADT_A30|{control}|P|2.4|||||GBR||EN
EVN|A47|20250316100000|||||ZZA
PID|1||{new}^^^ZZA^MR||CARTER^JAMES^PAUL^^MR||19620417|M
MRG|{old}^^^ZZA^MR
"""


def adt(
    trust: str,
    control: str,
    local_id: str,
    *,
    event: str = "A28",
    nhs: str | None = None,
    status: str = "NSTS01",
    dob: str = "19620417",
    sex: str = "M",
    name: str = "CARTER^JAMES^PAUL^^MR",
) -> str:
    ids = f"{local_id}^^^{trust}^MR" + (f"~{nhs}^^^NHS^NH" if nhs else "")
    pid32 = "|" * 19 + status if nhs else ""
    return (
        f"MSH|^~\\&|PAS|{trust}|PACS|ZZX|20250101000000||ADT^{event}^ADT_A01|{control}|P|2.4\n"
        f"EVN|{event}|20250101000000\n"
        f"PID|1||{ids}||{name}||{dob}|{sex}|||1 ROAD^^TOWN^^XX1 1XX^GBR^H||01632 960555{pid32}\n"
    )


def a40(trust: str, control: str, target: str, source: str, *, nhs: str = "") -> str:
    ids = f"{target}^^^{trust}^MR" + (f"~{nhs}^^^NHS^NH" if nhs else "")
    return (
        f"MSH|^~\\&|PAS|{trust}|PACS|ZZX|20250314101500||ADT^A40^ADT_A39|{control}|P|2.4\n"
        f"EVN|A40|20250314101500\n"
        f"PID|1||{ids}||SMITH^JOHN||19500101|M|||||||||||||||||||||||||NSTS01\n"
        f"MRG|{source}||||||UNKNOWN^MALE\n"
    )


@dataclass
class Site:
    server: RunningServer
    api: Api
    data_dir: Path
    files: Path

    @property
    def port(self) -> int:
        return int(self.server.ports["hl7"])

    def send(self, *messages: str) -> list[str]:
        return send(self.port, *messages)

    def ct(self, file_name: str, **kw: str) -> Path:
        return write_ct(self.files / f"{file_name}.dcm", **kw)  # type: ignore[arg-type]

    def store(self, trust: str, *paths: Path) -> None:
        ingest(self.data_dir, trust, *paths)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("hl7-site")
    data = root / "var"
    prepare_data_dir(data)
    server = start_server(data)
    files = root / "files"
    files.mkdir()
    try:
        yield Site(
            server, Api(server.base_url, server.headers(), server.admin_headers()), data, files
        )
    finally:
        server.stop()


def uid(n: int) -> str:
    return f"2.25.{900000 + n}"


# -- 2.1 NHS number check digit on the HL7 interface ------------------------------------------


@pytest.mark.parametrize(
    ("local_id", "given", "stored", "valid", "queued"),
    [
        ("C2101", "9434765919", "9434765919", True, False),
        ("C2102", "943 476 5919", "9434765919", True, False),
        ("C2103", "9434765918", "9434765918", False, True),
        ("C2104", "9991234560", "9991234560", False, True),
        ("C2105", "1234567890", "1234567890", False, True),
        ("C2106", "0000000000", "0000000000", False, True),
        ("C2107", "999000001", None, None, True),
        ("C2108", "943-476-5919", "9434765919", True, False),
    ],
)
def test_2_1_nhs_number_check_digit(
    site: Site, local_id: str, given: str, stored: str | None, valid: bool | None, queued: bool
) -> None:
    (ack,) = site.send(adt("ZZC", f"C21-{local_id}", local_id, nhs=given))
    assert msa(ack)[0] == "AA"
    (record,) = site.api.person(issuer="ZZC", patient_id=local_id)["records"]
    assert record["nhs_number"] == stored
    assert record["nhs_number_valid"] is valid
    assert record["nhs_number_verified"] is bool(valid)
    items = [
        w
        for w in site.api.work_items()
        if w["local_id"] == local_id and w["kind"] == "invalid-nhs-number"
    ]
    assert bool(items) is queued


# -- 2.2 A40 merge of a temporary ED identity ------------------------------------------------


def test_2_2_merge_temporary_identity(site: Site) -> None:
    zza = site.ct(
        "zza2019",
        patient_id="A123456",
        issuer="ZZA",
        name="CARTER^JAMES^PAUL",
        birth_date="19620417",
        accession="ZZA19004411",
        study_uid=ZZA_CT,
        study_date="20190502",
        nhs_number="9990000026",
    )
    zzb = site.ct(
        "zzb-trauma",
        patient_id="BTMP000812",
        issuer="ZZB",
        name="UNKNOWN^MALE",
        birth_date="19650101",
        accession="ZZB25000123",
        study_uid=ZZB_CT,
        study_date="20250314",
    )
    site.store("ZZA", zza)
    site.store("ZZB", zzb)
    assert [msa(a)[0] for a in site.send(A04_ZZA, A04_ZZB)] == ["AA", "AA"]
    assert site.api.study_uids(issuer="ZZB", patient_id="BTMP000812") == [ZZB_CT]

    (ack,) = site.send(A40)
    assert msa(ack)[:2] == ["AA", "ZZB0000001234"]

    # 2: the CT filed under BTMP000812/ZZB now resolves to B7654321/ZZB.
    view = site.api.person(issuer="ZZB", patient_id="B7654321")
    by_uid = {s["study_uid"]: s for s in view["studies"]}
    assert by_uid[ZZB_CT]["local_id"] == "B7654321"
    assert by_uid[ZZB_CT]["issuer"] == "ZZB"
    assert by_uid[ZZB_CT]["name"] == "CARTER^JAMES^PAUL"
    # 3: linked by the verified NHS number to ZZA's A123456: a ZZA clinician sees both CTs,
    # newest first, each under its own trust's identifiers.
    zza_view = site.api.person(issuer="ZZA", patient_id="A123456")
    assert [s["study_uid"] for s in zza_view["studies"]] == [ZZB_CT, ZZA_CT]
    assert {(s["issuer"], s["local_id"]) for s in zza_view["studies"]} == {
        ("ZZB", "B7654321"),
        ("ZZA", "A123456"),
    }
    # 4: BTMP000812 stays searchable as a retired identifier, with an audit trail.
    retired_view = site.api.person(issuer="ZZB", patient_id="BTMP000812")
    assert ZZB_CT in [s["study_uid"] for s in retired_view["studies"]]
    assert {"issuer": "ZZB", "local_id": "BTMP000812", "reason": "merge"}.items() <= (
        retired_view["retired_identifiers"][0].items()
    )
    history = site.api.json("/api/identity/history", issuer="ZZB", patient_id="B7654321")
    merges = [e for e in history if e["kind"] == "merge"]
    assert len(merges) == 1
    assert merges[0]["actor"] == "node:hl7:PAS@ZZB"
    assert merges[0]["before"]["source"]["local_id"] == "BTMP000812"
    assert merges[0]["before"]["studies"] == [ZZB_CT]
    assert (merges[0]["message_control_id"], merges[0]["message_type"]) == (
        "ZZB0000001234",
        "ADT^A40",
    )
    fhir = site.api.json("/fhir/Patient", identifier=LOCAL.format("ZZB") + "|B7654321")
    idents = fhir["entry"][0]["resource"]["identifier"]
    assert {"use": "old", "value": "BTMP000812"}.items() <= next(
        i for i in idents if i.get("use") == "old"
    ).items()

    # 2 (DICOM after the change): what outgoing DICOM carries for the trauma CT.
    archive = build_archive(load_settings(environ={}, data_dir=site.data_dir), migrate=False)
    try:
        attrs = IdentityService(archive.index).current_patient_attributes(ZZB_CT)
        audit = archive.audit.search(patient_issuer="ZZB", patient_id="B7654321")
    finally:
        archive.close()
    assert attrs["PatientID"] == "B7654321"
    assert attrs["IssuerOfPatientID"] == "ZZB"
    assert attrs["PatientName"] == "CARTER^JAMES^PAUL"
    assert attrs["PatientBirthDate"] == "19620417"
    assert attrs["OtherPatientIDsSequence"][0]["PatientID"] == "9990000026"
    assert any(r["action"] == "patient-record" for r in audit)
    import pydicom

    ds = pydicom.dcmread(zzb)
    assert apply_identity(ds, attrs)
    assert ds.PatientID == "B7654321"
    original = ds.OriginalAttributesSequence[0]
    assert original.ModifiedAttributesSequence[0].PatientID == "BTMP000812"
    assert original.ReasonForTheAttributeModification == "CORRECT"

    # 5: a replay is acknowledged AA and changes nothing.
    (again,) = site.send(A40)
    assert msa(again)[0] == "AA"
    after = site.api.json("/api/identity/history", issuer="ZZB", patient_id="B7654321")
    assert after == history


def test_2_2_negative_merge_across_issuers_is_refused(site: Site) -> None:
    site.store(
        "ZZB",
        site.ct(
            "n1",
            patient_id="BTMP9001",
            issuer="ZZB",
            name="UNKNOWN^MALE",
            birth_date="19650101",
            accession="N1",
            study_uid=uid(1),
            study_date="20250101",
        ),
    )
    msg = a40("ZZB", "ZZB-N1", "B9001", "BTMP9001^^^ZZA^MR")
    (ack,) = site.send(msg)
    code, _, text = msa(ack)
    assert code == "AE"
    assert "different trusts" in text
    assert any(w["kind"] == "merge-issuer-mismatch" for w in site.api.work_items())
    assert site.api.study_uids(issuer="ZZB", patient_id="BTMP9001") == [uid(1)]
    assert site.api.get("/api/identity/person", issuer="ZZB", patient_id="B9001").status_code == 404


def test_2_2_negative_bad_nhs_number_merges_but_never_links(site: Site) -> None:
    site.send(adt("ZZA", "ZZA-N2", "A9002", nhs="9991112227", dob="19500101"))
    site.store(
        "ZZB",
        site.ct(
            "n2",
            patient_id="BTMP9002",
            issuer="ZZB",
            name="UNKNOWN^MALE",
            birth_date="19650101",
            accession="N2",
            study_uid=uid(2),
            study_date="20250101",
        ),
    )
    (ack,) = site.send(a40("ZZB", "ZZB-N2", "B9002", "BTMP9002^^^ZZB^MR", nhs="9991112228"))
    assert msa(ack)[0] == "AA"
    view = site.api.person(issuer="ZZB", patient_id="B9002")
    assert [r["local_id"] for r in view["records"]] == ["B9002"]
    assert [s["study_uid"] for s in view["studies"]] == [uid(2)]
    assert any(
        w["kind"] == "invalid-nhs-number" and w["local_id"] == "B9002"
        for w in site.api.work_items()
    )


def test_2_2_negative_merge_before_registration_creates_the_target(site: Site) -> None:
    site.store(
        "ZZB",
        site.ct(
            "n3",
            patient_id="BTMP9003",
            issuer="ZZB",
            name="UNKNOWN^MALE",
            birth_date="19650101",
            accession="N3",
            study_uid=uid(3),
            study_date="20250101",
        ),
    )
    (ack,) = site.send(a40("ZZB", "ZZB-N3", "B9003", "BTMP9003^^^ZZB^MR"))
    assert msa(ack)[0] == "AA"
    assert site.api.study_uids(issuer="ZZB", patient_id="B9003") == [uid(3)]
    (ack,) = site.send(adt("ZZB", "ZZB-N3-A04", "B9003", event="A04", name="SMITH^JOHN"))
    assert msa(ack)[0] == "AA"
    (record,) = site.api.person(issuer="ZZB", patient_id="B9003")["records"]
    assert record["name"] == "SMITH^JOHN"


def test_2_2_negative_reversed_merge_is_held(site: Site) -> None:
    site.send(adt("ZZB", "ZZB-N4-A04", "B9004", event="A04", name="JONES^ANN", sex="F"))
    site.store(
        "ZZB",
        site.ct(
            "n4",
            patient_id="BTMP9004",
            issuer="ZZB",
            name="UNKNOWN^FEMALE",
            birth_date="19650101",
            accession="N4",
            study_uid=uid(4),
            study_date="20250101",
        ),
    )
    swapped = (
        "MSH|^~\\&|PAS|ZZB|PACS|ZZX|20250314101500||ADT^A40^ADT_A40|ZZB-N4|P|2.4\n"
        "EVN|A40|20250314101500\n"
        "PID|1||BTMP9004^^^ZZB^MR||UNKNOWN^FEMALE||19650101|F\n"
        "MRG|B9004^^^ZZB^MR||||||JONES^ANN\n"
    )
    (ack,) = site.send(swapped)
    code, _, text = msa(ack)
    assert code == "AE"
    assert "held for review" in text
    assert any(w["kind"] == "merge-held-reversed" for w in site.api.work_items())
    held = site.api.admin_json("/api/identity/hl7/messages", status="held")
    assert [m["control_id"] for m in held] == ["ZZB-N4"]
    assert site.api.study_uids(issuer="ZZB", patient_id="BTMP9004") == [uid(4)]
    assert site.api.person(issuer="ZZB", patient_id="B9004")["studies"] == []


# -- 2.3 A08 demographic update --------------------------------------------------------------


def test_2_3_update_changes_only_the_sending_trusts_record(site: Site) -> None:
    (ack,) = site.send(A08)
    assert msa(ack)[:2] == ["AA", "ZZA0000098765"]
    view = site.api.person(nhs_number="9990000026")
    records = {(r["issuer"], r["local_id"]): r for r in view["records"]}
    assert records[("ZZA", "A123456")]["address"].startswith("5 NEW ROAD")
    assert records[("ZZA", "A123456")]["phone"] == "01632 960123"
    # ZZB's own record is not touched by a ZZA message.
    assert records[("ZZB", "B7654321")]["address"].startswith("12 EXAMPLE STREET")
    foreign = A08.replace("A123456^^^ZZA^MR", "B7654321^^^ZZB^MR").replace(
        "ZZA0000098765", "ZZA0000098766"
    )
    (ack,) = site.send(foreign)
    code, _, text = msa(ack)
    assert code == "AE"
    assert "only update its own records" in text


def test_2_3_conflicting_date_of_birth_unlinks_and_queues(site: Site) -> None:
    site.send(
        adt("ZZA", "ZZA-C1", "A9101", nhs="9990000018", dob="19800101"),
        adt("ZZB", "ZZB-C1", "B9101", nhs="9990000018", dob="19800101"),
    )
    linked = site.api.person(issuer="ZZA", patient_id="A9101")["records"]
    assert {r["local_id"] for r in linked} == {"A9101", "B9101"}
    (ack,) = site.send(adt("ZZA", "ZZA-C2", "A9101", event="A08", nhs="9990000018", dob="19800102"))
    assert msa(ack)[0] == "AA"
    after = site.api.person(issuer="ZZA", patient_id="A9101")["records"]
    assert [r["local_id"] for r in after] == ["A9101"]
    assert any(
        w["kind"] == "demographic-conflict" and w["local_id"] == "A9101"
        for w in site.api.work_items()
    )


# -- 2.4 link, unlink, identifier change -----------------------------------------------------


def test_2_4_link_unlink_and_identifier_change(site: Site) -> None:
    site.send(adt("ZZA", "ZZA-L1", "A9201"), adt("ZZB", "ZZB-L1", "B9201"))
    site.store(
        "ZZA",
        site.ct(
            "l1a",
            patient_id="A9201",
            issuer="ZZA",
            name="CARTER^JAMES^PAUL",
            birth_date="19620417",
            accession="L1A",
            study_uid=uid(11),
            study_date="20200101",
        ),
    )
    site.store(
        "ZZB",
        site.ct(
            "l1b",
            patient_id="B9201",
            issuer="ZZB",
            name="CARTER^JAMES^PAUL",
            birth_date="19620417",
            accession="L1B",
            study_uid=uid(12),
            study_date="20210101",
        ),
    )
    assert site.api.study_uids(issuer="ZZA", patient_id="A9201") == [uid(11)]

    (ack,) = site.send(A24.format(control="EMPI-L1", a="A9201", b="B9201"))
    assert msa(ack)[0] == "AA"
    view = site.api.person(issuer="ZZA", patient_id="A9201")
    # Each record stays distinct and keeps its own trust's identifiers.
    assert {(s["study_uid"], s["issuer"], s["local_id"]) for s in view["studies"]} == {
        (uid(11), "ZZA", "A9201"),
        (uid(12), "ZZB", "B9201"),
    }
    links = site.api.json("/api/identity/links", issuer="ZZA", patient_id="A9201")
    assert [(x["local_id"], x["linked_by"]) for x in links] == [("B9201", "hl7:A24")]

    (ack,) = site.send(A37.format(control="EMPI-L2", a="A9201", b="B9201"))
    assert msa(ack)[0] == "AA"
    assert site.api.study_uids(issuer="ZZA", patient_id="A9201") == [uid(11)]
    assert site.api.study_uids(issuer="ZZB", patient_id="B9201") == [uid(12)]

    (ack,) = site.send(A47.format(control="ZZA-L3", new="A9210", old="A9201"))
    assert msa(ack)[0] == "AA"
    assert site.api.study_uids(issuer="ZZA", patient_id="A9210") == [uid(11)]
    old = site.api.person(issuer="ZZA", patient_id="A9201")
    assert old["records"][0]["local_id"] == "A9210"
    assert old["retired_identifiers"][0]["local_id"] == "A9201"
    history = site.api.json("/api/identity/history", issuer="ZZA", patient_id="A9210")
    kinds = [e["kind"] for e in history]
    assert {"link", "unlink", "renumber"} <= set(kinds)
    # No other patient was affected.
    assert site.api.study_uids(issuer="ZZB", patient_id="B9201") == [uid(12)]

    # Negative: renumbering onto an existing record would merge two people.
    site.send(adt("ZZA", "ZZA-L4", "A9299"))
    (ack,) = site.send(A47.format(control="ZZA-L5", new="A9299", old="A9210"))
    assert msa(ack)[0] == "AE"
    # Negative: links only from registered trusts or the consortium EMPI.
    bad = A24.format(control="X-1", a="A9210", b="B9201").replace("|EMPI|ZZX|", "|EMPI|ZZQ|")
    (ack,) = site.send(bad)
    assert msa(ack)[0] == "AR"
    # Reversal of the identifier change through the admin API.
    renumber = next(e for e in history if e["kind"] == "renumber")
    r = site.api.admin.post(f"/api/identity/events/{renumber['pk']}/reverse")
    assert r.status_code == 200, r.text
    assert site.api.study_uids(issuer="ZZA", patient_id="A9201") == [uid(11)]


# -- 2.5 orders ------------------------------------------------------------------------------


def test_2_5_orders_keyed_by_accession_and_issuer(site: Site) -> None:
    (ack,) = site.send(ORM)
    assert msa(ack)[:2] == ["AA", "ZZBRIS0000123"]
    orders = site.api.person(issuer="ZZB", patient_id="B7654321")["orders"]
    (order,) = [o for o in orders if o["accession_number"] == "ZZB25000123"]
    assert order["accession_issuer"] == "ZZB"
    assert order["patient_id"] == "B7654321"
    assert order["nhs_number"] == "9990000026"
    assert order["study_instance_uid"] == ZZB_CT
    assert order["modality"] == "CT"
    assert order["scheduled_start_date"] == "20250314"
    assert order["requested_procedure_id"] == "RP25000123"
    assert order["placer_order"] == "ZZB-OCS-556677"
    assert order["matched_study_uid"] == ZZB_CT
    # The same accession string from ZZA's RIS is a separate order.
    zza = (
        ORM.replace("|RIS|ZZB|", "|RIS|ZZA|")
        .replace("B7654321^^^ZZB^MR", "A123456^^^ZZA^MR")
        .replace("ZZBRIS0000123", "ZZARIS0000001")
        .replace("ZDS|2.25.161918240158374290112345678901234567", "ZDS|2.25.555")
    )
    (ack,) = site.send(zza)
    assert msa(ack)[0] == "AA"
    zza_orders = site.api.person(issuer="ZZA", patient_id="A123456")["orders"]
    keys = {(o["accession_number"], o["accession_issuer"], o["patient_id"]) for o in zza_orders}
    assert ("ZZB25000123", "ZZA", "A123456") in keys
    assert ("ZZB25000123", "ZZB", "B7654321") in keys
    # OMI^O23 (SWF.b) with IPC; then a cancel.
    omi = (
        "MSH|^~\\&|RIS|ZZB|PACS|ZZX|20250315090000||OMI^O23^OMI_O23|ZZBRIS0000200|P|2.5.1\n"
        "PID|1||B7654321^^^ZZB^MR||CARTER^JAMES^PAUL||19620417|M\n"
        "ORC|NW|P200^EPR_B|F200^RIS_B||SC\n"
        "TQ1|1||||||20250316100000\n"
        "OBR|1|P200^EPR_B|F200^RIS_B|CXR^Chest X-ray^NICIP\n"
        "IPC|ZZB25000200^RIS_B|RP200|2.25.777|SPS200|DX\n"
    )
    (ack,) = site.send(omi)
    assert msa(ack)[0] == "AA"
    cancel = omi.replace("ORC|NW", "ORC|CA").replace("ZZBRIS0000200", "ZZBRIS0000201")
    (ack,) = site.send(cancel)
    assert msa(ack)[0] == "AA"
    orders = site.api.person(issuer="ZZB", patient_id="B7654321")["orders"]
    (dx,) = [o for o in orders if o["accession_number"] == "ZZB25000200"]
    assert (dx["modality"], dx["study_instance_uid"], dx["status"]) == (
        "DX",
        "2.25.777",
        "DISCONTINUED",
    )
    # The worklist item reaches ZZB's CT scanner (DICOM MWL C-FIND) with ZZB's identifiers.
    require_tool("findscu")
    items = findscu(
        int(site.server.ports["dicom"]),
        site.files / "mwl",
        "ZZBCT1",
        "AccessionNumber=ZZB25000123",
        "PatientID",
        "IssuerOfPatientID",
        "StudyInstanceUID",
        "ScheduledProcedureStepSequence[0].Modality=CT",
        "OtherPatientIDsSequence[0].PatientID",
        model="-W",
    )
    # Only ZZB's order: ZZA's with the same accession string is not on ZZB's scanner's list.
    assert [(d.PatientID, d.IssuerOfPatientID, d.StudyInstanceUID) for d in items] == [
        ("B7654321", "ZZB", ZZB_CT)
    ]
    # R17: the NHS number rides in Other Patient IDs Sequence, issuer-qualified.
    (nhs_item,) = items[0].OtherPatientIDsSequence
    assert (nhs_item.PatientID, nhs_item.IssuerOfPatientID) == ("9990000026", "NHS")
    qualifier = nhs_item.IssuerOfPatientIDQualifiersSequence[0]
    assert (qualifier.UniversalEntityID, qualifier.IdentifierTypeCode) == (
        "2.16.840.1.113883.2.1.4.1",
        "NH",
    )
    # Negative: an order without a modality is refused with a reason.
    (ack,) = site.send(
        omi.replace("|SPS200|DX", "|SPS200|").replace("ZZBRIS0000200", "ZZBRIS0000202")
    )
    code, _, text = msa(ack)
    assert code == "AE"
    assert "modality" in text


# -- 2.6 reports -----------------------------------------------------------------------------


def test_2_6_reports_versions_and_unmatched_queue(site: Site) -> None:
    final = ORU.format(
        control="ZZBRIS0000456",
        accession="ZZB25000123",
        status="F",
        conclusion="Isolated undisplaced left 7th rib fracture.",
    )
    (ack,) = site.send(final)
    assert msa(ack)[:2] == ["AA", "ZZBRIS0000456"]
    (v1,) = site.api.json("/api/identity/reports", accession="ZZB25000123", issuer="ZZB")
    assert (v1["version"], v1["status"], v1["superseded"]) == (1, "F", False)
    assert "Undisplaced fracture left 7th rib" in v1["text"]
    nhs = f"{NHS_SYSTEM}|9990000026"
    (entry,) = site.api.json("/fhir/DiagnosticReport", **{"patient.identifier": nhs})["entry"]
    assert entry["resource"]["status"] == "final"
    study_ref = entry["resource"]["imagingStudy"][0]["reference"]
    study = site.api.json(f"/fhir/{study_ref}")
    assert study["identifier"][0]["value"] == f"urn:oid:{ZZB_CT}"

    # A replay makes no new version; a corrected report makes version 2.
    site.send(final)
    corrected = ORU.format(
        control="ZZBRIS0000457",
        accession="ZZB25000123",
        status="C",
        conclusion="Undisplaced left 7th and 8th rib fractures.",
    )
    (ack,) = site.send(corrected)
    assert msa(ack)[0] == "AA"
    versions = site.api.json("/api/identity/reports", accession="ZZB25000123", issuer="ZZB")
    assert [(v["version"], v["status"], v["superseded"]) for v in versions] == [
        (1, "F", True),
        (2, "C", False),
    ]
    (entry,) = site.api.json("/fhir/DiagnosticReport", **{"patient.identifier": nhs})["entry"]
    assert entry["resource"]["status"] == "corrected"
    # Visible beside the images in the person view, from any trust's identifiers.
    view = site.api.person(issuer="ZZA", patient_id="A123456")
    trauma = next(s for s in view["studies"] if s["study_uid"] == ZZB_CT)
    assert [r["version"] for r in trauma["reports"]] == [1, 2]

    # An unknown accession is kept in the unmatched queue, not dropped.
    unknown = ORU.format(
        control="ZZBRIS0000999", accession="ZZB99999999", status="F", conclusion="Normal."
    )
    (ack,) = site.send(unknown)
    assert msa(ack)[0] == "AA"
    unmatched = site.api.json("/api/identity/reports/unmatched")
    assert [(r["accession_number"], r["accession_issuer"]) for r in unmatched] == [
        ("ZZB99999999", "ZZB")
    ]


# -- 2.7 DICOM patient identity across two trusts --------------------------------------------


def test_2_7_queries_and_launch(site: Site) -> None:
    # Q1 / Q2 (via the JSON API; QIDO-RS and C-FIND call the same identity service).
    assert site.api.study_uids(nhs_number="9990000026") == [ZZB_CT, ZZA_CT]
    assert site.api.study_uids(issuer="ZZA", patient_id="A123456") == [ZZB_CT, ZZA_CT]
    # Q1 through QIDO-RS and C-FIND: both studies, shown as the caller's trust (ZZA) knows the
    # person (issue 15), the ZZB study's own identifiers in Other Patient IDs Sequence.
    r = site.api.get("/dicomweb/studies", PatientID="9990000026", IssuerOfPatientID="NHS")
    assert r.status_code == 200, r.text
    found = {
        (s["0020000D"]["Value"][0], s["00100020"]["Value"][0], s["00100021"]["Value"][0])
        for s in r.json()
    }
    assert found == {(ZZB_CT, "A123456", "ZZA"), (ZZA_CT, "A123456", "ZZA")}
    (zzb,) = [s for s in r.json() if s["0020000D"]["Value"][0] == ZZB_CT]
    own = {(i["00100020"]["Value"][0], i["00100021"]["Value"][0]) for i in zzb["00101002"]["Value"]}
    assert ("B7654321", "ZZB") in own
    require_tool("findscu")
    rows = findscu(
        int(site.server.ports["dicom"]),
        site.files / "find-q1",
        "ZZAPACSWS",
        "QueryRetrieveLevel=STUDY",
        "PatientID=9990000026",
        "IssuerOfPatientID=NHS",
        "StudyInstanceUID",
    )
    assert {(d.StudyInstanceUID, d.PatientID, d.IssuerOfPatientID) for d in rows} == found
    # Q3: a local ID without its issuer is refused.
    r = site.api.get("/api/identity/person", patient_id="A123456")
    assert r.status_code == 400
    # QIDO takes the policy choice R24/Q3 allows: a bare PatientID is scoped to the caller's
    # trust (ZZA here): ZZA's A123456 and the record linked to it, from either ID (issue 15).
    for pid in ("A123456", "B7654321"):
        r = site.api.get("/dicomweb/studies", PatientID=pid)
        assert r.status_code == 200, r.text
        assert {s["0020000D"]["Value"][0] for s in r.json()} == {ZZA_CT, ZZB_CT}
    # Q4: IID launch by NHS number from ZZA's EPR opens both studies, newest first.
    r = site.api.client.get(
        "/trusts/ZZA/IHEInvokeImageDisplay",
        params={
            "requestType": "PATIENT",
            "patientID": "9990000026^^^&2.16.840.1.113883.2.1.4.1&ISO",
            "viewerType": "IHE_BIR",
            "diagnosticQuality": "true",
        },
    )
    assert r.status_code == 303
    # Straight into the viewer at the patient, whose timeline lists both, newest first.
    assert r.headers["location"] == "/viewer/#/patient/NHS/9990000026"
    timeline = site.api.json("/api/viewer/patients/ZZA/A123456/timeline")
    assert [s["study_uid"] for s in timeline["studies"]] == [ZZB_CT, ZZA_CT]
    # Q5: accession numbers are scoped to the launching trust.
    params = {"requestType": "STUDY", "accessionNumber": "ZZB25000123"}
    assert (
        site.api.client.get("/trusts/ZZA/IHEInvokeImageDisplay", params=params).status_code == 404
    )
    r = site.api.client.get("/trusts/ZZB/IHEInvokeImageDisplay", params=params)
    assert r.status_code == 303
    assert r.headers["location"] == f"/viewer/#/study/{ZZB_CT}"
    # Q6: FHIR ImagingStudy by the person's NHS number.
    bundle = site.api.json(
        "/fhir/ImagingStudy", **{"patient.identifier": f"{NHS_SYSTEM}|9990000026"}
    )
    studies = [e["resource"] for e in bundle["entry"]]
    assert [s["identifier"][0]["value"] for s in studies] == [
        f"urn:oid:{ZZB_CT}",
        f"urn:oid:{ZZA_CT}",
    ]
    for s in studies:
        accession = s["identifier"][1]
        trust = "ZZB" if s["identifier"][0]["value"].endswith(ZZB_CT) else "ZZA"
        assert accession["system"].endswith(f"/{trust}/accession")
        kinds = {e["connectionType"]["code"] for e in s["contained"]}
        assert kinds == {"dicom-wado-rs", "ihe-iid"}
    metadata = site.api.json("/fhir/metadata")
    assert metadata["resourceType"] == "CapabilityStatement"


def test_2_7_negative_collision_untraced_and_conflict(site: Site) -> None:
    # ID collision: ZZC's A123456 is someone else and stays separate.
    site.send(
        adt("ZZC", "ZZC-Q1", "A123456", nhs="9990000018", name="OTHER^PERSON", dob="19900101")
    )
    site.store(
        "ZZC",
        site.ct(
            "zzc",
            patient_id="A123456",
            issuer="ZZC",
            name="OTHER^PERSON",
            birth_date="19900101",
            accession="ZZC1",
            study_uid=uid(21),
            study_date="20240101",
        ),
    )
    assert uid(21) not in site.api.study_uids(issuer="ZZA", patient_id="A123456")
    # Q3: a bare PatientID from a ZZA caller never returns ZZC's unrelated A123456.
    r = site.api.get("/dicomweb/studies", PatientID="A123456")
    assert r.status_code == 200, r.text
    assert uid(21) not in r.text
    assert site.api.study_uids(issuer="ZZC", patient_id="A123456") == [uid(21)]
    # Untraced NHS number: not linked, shown unverified, queued.
    (ack,) = site.send(adt("ZZD", "ZZD-Q1", "D0001", nhs="9990000026", status="NSTS02"))
    assert msa(ack)[0] == "AA"
    records = site.api.person(nhs_number="9990000026")["records"]
    assert ("ZZD", "D0001") not in {(r["issuer"], r["local_id"]) for r in records}
    (d1,) = site.api.person(issuer="ZZD", patient_id="D0001")["records"]
    assert d1["nhs_number_verified"] is False
    assert any(
        w["kind"] == "nhs-number-not-verified" and w["local_id"] == "D0001"
        for w in site.api.work_items()
    )
    fhir = site.api.json("/fhir/Patient", identifier=LOCAL.format("ZZD") + "|D0001")
    nhs_id = next(
        i for i in fhir["entry"][0]["resource"]["identifier"] if i["system"] == NHS_SYSTEM
    )
    assert nhs_id["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "02"
    # Conflicting demographics: traced but a different date of birth: no link, queued.
    (ack,) = site.send(adt("ZZD", "ZZD-Q2", "D0002", nhs="9990000026", dob="19700101"))
    assert msa(ack)[0] == "AA"
    records = site.api.person(nhs_number="9990000026")["records"]
    assert ("ZZD", "D0002") not in {(r["issuer"], r["local_id"]) for r in records}
    assert any(
        w["kind"] == "demographic-conflict" and w["local_id"] == "D0002"
        for w in site.api.work_items()
    )


def test_2_7_unlink_then_only_own_study(site: Site) -> None:
    """Last in the file: it undoes the story's cross-trust link (A37 of 2.4)."""
    (ack,) = site.send(A37.format(control="EMPI000000778", a="A123456", b="B7654321"))
    assert msa(ack)[:2] == ["AA", "EMPI000000778"]
    assert site.api.study_uids(issuer="ZZA", patient_id="A123456") == [ZZA_CT]
    assert site.api.study_uids(issuer="ZZB", patient_id="B7654321") == [ZZB_CT]
    bundle = site.api.json(
        "/fhir/ImagingStudy",
        **{"patient.identifier": LOCAL.format("ZZA") + "|A123456"},
    )
    assert [e["resource"]["identifier"][0]["value"] for e in bundle["entry"]] == [
        f"urn:oid:{ZZA_CT}"
    ]
    # A24 re-links them (reversible both ways).
    (ack,) = site.send(A24.format(control="EMPI000000779", a="A123456", b="B7654321"))
    assert msa(ack)[0] == "AA"
    assert site.api.study_uids(issuer="ZZA", patient_id="A123456") == [ZZB_CT, ZZA_CT]


def test_garbage_and_unsupported_messages_get_ar(site: Site) -> None:
    (ack,) = site.send("this is not HL7")
    assert msa(ack)[0] == "AR"
    (ack,) = site.send(
        "MSH|^~\\&|X|ZZA|PACS|ZZX|20250101||SIU^S12^SIU_S12|ZZA-SIU-1|P|2.4\nSCH|1\n"
    )
    code, _, text = msa(ack)
    assert code == "AR"
    assert "unsupported" in text
    (ack,) = site.send(adt("ZZQ", "ZZQ-1", "Q1"))
    code, _, text = msa(ack)
    assert code == "AR"
    # ZZQ is neither a registered HL7 sender (issue 6) nor a trust: refused at the gate.
    assert "ZZQ" in text and "not registered" in text


# -- R5/R6: PIX (ITI-9) and PDQ (ITI-21) queries over MLLP --------------------------------------


@pytest.fixture(scope="module")
def epr(site: Site) -> Site:
    """Each trust's EPR registered as an HL7 sender speaking for its trust (`solent hl7 sender
    add EPR ZZA`: the facility's trust): queries read as that trust. The module's "*"
    registrations are regional (no trust), which reads nothing."""
    archive = build_archive(load_settings(environ={}, data_dir=site.data_dir), migrate=False)
    try:
        for trust in ("ZZA", "ZZB", "ZZC"):
            add_sender(archive.index, "EPR", trust, ("127.0.0.1",), trust)
    finally:
        archive.close()
    return site


def _qbp(facility: str, control: str, trigger: str, qpd: str, app: str = "EPR") -> str:
    structure = "QBP_Q21"
    return (
        f"MSH|^~\\&|{app}|{facility}|PACS|ZZX|20250401090000||QBP^{trigger}^{structure}|{control}|P|2.5\n"
        f"{qpd}\nRCP|I\n"
    )


def _pix(site: Site, facility: str, control: str, source: str, domains: str = "") -> str:
    (rsp,) = site.send(
        _qbp(facility, control, "Q23", f"QPD|IHE PIX Query|{control}|{source}|{domains}")
    )
    return rsp


def _segments(rsp: str, name: str) -> list[list[str]]:
    return [s.split("|") for s in rsp.split("\r") if s.startswith(f"{name}|")]


def _pid3(rsp: str) -> list[str]:
    (pid,) = _segments(rsp, "PID")
    return pid[3].split("~")


NHS_CX = "^^^NHS&2.16.840.1.113883.2.1.4.1&ISO^NH"
PIXLEY_A = adt(
    "ZZA", "PIX-A1", "A500001", nhs="9994001019", name="PIXLEY^ANNA", dob="19700101", sex="F"
)


@pytest.mark.usefixtures("epr")
def test_r5_pix_query_answers_in_each_trusts_identifiers(site: Site) -> None:
    nhs = "9994001019"  # traced at ZZA and ZZB: one person
    acks = site.send(
        PIXLEY_A,
        adt("ZZB", "PIX-B1", "B500001", nhs=nhs, name="PIXLEY^ANNA", dob="19700101", sex="F"),
        adt("ZZA", "PIX-A2", "A500002", name="SOLO^SAM"),  # no other identity anywhere
    )
    assert [msa(a)[0] for a in acks] == ["AA", "AA", "AA"]

    rsp = _pix(site, "ZZA", "PIXQ1", "A500001^^^ZZA^MR")
    assert rsp.split("\r")[0].split("|")[8] == "RSP^K23^RSP_K23"
    assert msa(rsp)[:2] == ["AA", "PIXQ1"]
    assert _segments(rsp, "QAK")[0][1:3] == ["PIXQ1", "OK"]
    assert _segments(rsp, "QPD")[0][3] == "A500001^^^ZZA^MR"  # the query echoed
    assert sorted(_pid3(rsp)) == sorted(["B500001^^^ZZB^MR", nhs + NHS_CX])
    assert _segments(rsp, "PID")[0][5] == "~^^^^^^S"  # IHE: no name across domains

    # What domains returned (QPD-4): ZZB's number only; from ZZB's EPR, ZZA's MRN by NHS number.
    assert _pid3(_pix(site, "ZZA", "PIXQ2", "A500001^^^ZZA^MR", "^^^ZZB")) == ["B500001^^^ZZB^MR"]
    by_nhs = _pix(site, "ZZB", "PIXQ3", f"{nhs}^^^NHS^NH", "^^^ZZA")
    assert _pid3(by_nhs) == ["A500001^^^ZZA^MR"]

    # Known patient, nothing in the domain asked for: AA / NF and no PID.
    none = _pix(site, "ZZA", "PIXQ4", "A500002^^^ZZA^MR", "^^^ZZB")
    assert msa(none)[0] == "AA"
    assert _segments(none, "QAK")[0][2] == "NF"
    assert _segments(none, "PID") == []

    # The query is audited, naming the patient and the transaction (ATNA query event).
    trail = site.api.json("/api/audit", patient_id="A500001", issuer="ZZA", action="query")
    assert any('"transaction":"ITI-9"' in (r["detail"] or "") for r in trail)


@pytest.mark.usefixtures("epr")
@pytest.mark.parametrize(
    ("source", "domains", "where"),
    [
        ("A599999^^^ZZA^MR", "", "QPD^1^3^1^1"),  # nobody holds this identifier
        ("A500001^^^ZZQ^MR", "", "QPD^1^3^1^4"),  # unknown assigning authority
        ("A500001^^^ZZA^MR", "^^^ZZB~^^^ZZQ", "QPD^1^4^2"),  # unknown domain asked for
    ],
)
def test_r5_pix_query_errors_per_iti_9(site: Site, source: str, domains: str, where: str) -> None:
    site.send(PIXLEY_A)
    rsp = _pix(site, "ZZA", f"PIXE{where[-5:]}", source, domains)
    assert msa(rsp)[0] == "AE"
    assert _segments(rsp, "QAK")[0][2] == "AE"
    (err,) = _segments(rsp, "ERR")
    assert err[2] == where
    assert err[3].startswith("204^")
    assert _segments(rsp, "PID") == []


@pytest.mark.usefixtures("epr")
def test_r5_pix_query_of_another_trusts_sender_and_after_unlink(site: Site) -> None:
    nhs = "9994001027"
    site.send(
        adt("ZZA", "PIX-U1", "A500011", nhs=nhs, name="UNLINK^UMA", dob="19800101", sex="F"),
        adt("ZZB", "PIX-U2", "B500011", nhs=nhs, name="UNLINK^UMA", dob="19800101", sex="F"),
    )
    # ZZC has no relationship with the patient: answered exactly like an unknown identifier.
    foreign = _pix(site, "ZZC", "PIXU1", "A500011^^^ZZA^MR")
    unknown = _pix(site, "ZZC", "PIXU2", "A599911^^^ZZA^MR")
    assert msa(foreign)[0] == msa(unknown)[0] == "AE"
    assert _segments(foreign, "ERR")[0][2:4] == _segments(unknown, "ERR")[0][2:4]

    # The EMPI (a regional identity source, no trust) may change every trust's records but
    # reads none of them.
    (empi,) = site.send(
        _qbp("ZZX", "PIXU6", "Q23", "QPD|IHE PIX Query|PIXU6|A500011^^^ZZA^MR|", app="EMPI")
    )
    assert _segments(empi, "ERR")[0][2:4] == _segments(unknown, "ERR")[0][2:4]

    assert "B500011^^^ZZB^MR" in _pid3(_pix(site, "ZZA", "PIXU3", "A500011^^^ZZA^MR"))
    (ack,) = site.send(A37.format(control="PIX-A37", a="A500011", b="B500011"))
    assert msa(ack)[0] == "AA"
    # After the A37 ZZB's record is no longer the same person: only ZZA's own NHS number.
    assert _pid3(_pix(site, "ZZA", "PIXU4", "A500011^^^ZZA^MR")) == [nhs + NHS_CX]
    gone = _pix(site, "ZZA", "PIXU5", "A500011^^^ZZA^MR", "^^^ZZB")
    assert _segments(gone, "QAK")[0][2] == "NF"


@pytest.mark.usefixtures("epr")
def test_r6_pdq_query_by_demographics(site: Site) -> None:
    nhs = "9994001035"
    site.send(
        adt("ZZA", "PDQ-A1", "A500021", nhs=nhs, name="QUERYTON^PETRA", dob="19550505", sex="F"),
        adt("ZZB", "PDQ-B1", "B500021", nhs=nhs, name="QUERYTON^PETRA", dob="19550505", sex="F"),
        adt("ZZB", "PDQ-B2", "B500022", name="QUERYTON^PAUL", dob="19600606", sex="M"),
    )

    def pdq(facility: str, control: str, fields: str, domains: str = "") -> str:
        qpd = f"QPD|IHE PDQ Query|{control}|{fields}|||||{domains}"
        (rsp,) = site.send(_qbp(facility, control, "Q22", qpd))
        return rsp

    rsp = pdq("ZZA", "PDQ1", "@PID.5.1.1^QUERYTON~@PID.8^F")
    assert rsp.split("\r")[0].split("|")[8] == "RSP^K22^RSP_K22"
    assert _segments(rsp, "QAK")[0][1:5] == ["PDQ1", "OK", "IHE PDQ Query", "1"]
    (pid,) = _segments(rsp, "PID")  # one person, shown as ZZA's record
    assert pid[3].split("~")[0] == "A500021^^^ZZA^MR"
    assert set(pid[3].split("~")) == {"A500021^^^ZZA^MR", "B500021^^^ZZB^MR", nhs + NHS_CX}
    assert (pid[5], pid[7], pid[8]) == ("QUERYTON^PETRA", "19550505", "F")

    # Prefix match with "*", in ZZB's domain only (QPD-8): both ZZB patients, ZZB's MRNs.
    both = pdq("ZZB", "PDQ2", "@PID.5.1.1^QUERY*", "^^^ZZB")
    assert sorted(p[3] for p in _segments(both, "PID")) == ["B500021^^^ZZB^MR", "B500022^^^ZZB^MR"]
    # From ZZB's sender the same person is shown in ZZB's identifiers first.
    (pid,) = _segments(pdq("ZZB", "PDQ7", "@PID.5.1.1^QUERYTON~@PID.5.2^PETRA"), "PID")
    assert pid[3].split("~")[0] == "B500021^^^ZZB^MR"
    # ZZA's sender sees Petra (its patient) but not Paul (ZZB's only).
    assert [p[5] for p in _segments(pdq("ZZA", "PDQ3", "@PID.5.1.1^QUERY*"), "PID")] == [
        "QUERYTON^PETRA"
    ]
    # ZZC's sender: no relationship with either, so no match at all.
    assert _segments(pdq("ZZC", "PDQ4", "@PID.5.1.1^QUERY*"), "QAK")[0][2] == "NF"
    # An unknown domain in QPD-8, an unsupported field: AE pointing at it.
    bad = pdq("ZZA", "PDQ5", "@PID.5.1.1^QUERYTON", "^^^ZZQ")
    assert msa(bad)[0] == "AE" and _segments(bad, "ERR")[0][2] == "QPD^1^8^1"
    odd = pdq("ZZA", "PDQ6", "@PID.5.1.1^QUERYTON~@PID.19^123")
    assert msa(odd)[0] == "AE" and _segments(odd, "ERR")[0][2] == "QPD^1^3^2^1"


def test_r6_pds_demographics_not_overwritten_by_a_local_edit(site: Site) -> None:
    nhs = "9994001043"
    traced = adt("ZZA", "R6-1", "A500031", nhs=nhs, name="TRACED^TINA", dob="19900909", sex="F")
    (ack,) = site.send(traced)
    assert msa(ack)[0] == "AA"
    # The PAS edits the name locally: the NHS number now "trace required" (NSTS03).
    local = adt(
        "ZZA",
        "R6-2",
        "A500031",
        event="A08",
        nhs=nhs,
        status="NSTS03",
        name="LOCAL^TINA",
        dob="19900909",
        sex="F",
    )
    (ack,) = site.send(local)
    assert msa(ack)[0] == "AA"
    (record,) = site.api.person(issuer="ZZA", patient_id="A500031")["records"]
    assert record["name"] == "TRACED^TINA"  # PDS's name kept
    kept = [
        w
        for w in site.api.work_items()
        if w["local_id"] == "A500031" and w["kind"] == "pds-demographics-kept"
    ]
    assert len(kept) == 1 and "LOCAL^TINA" in kept[0]["detail"]
    # A second untraced edit (the number is untraced by now) is still not applied.
    site.send(local.replace("R6-2", "R6-3").replace("LOCAL^TINA", "LOCAL^TINY"))
    assert (
        site.api.person(issuer="ZZA", patient_id="A500031")["records"][0]["name"] == "TRACED^TINA"
    )
    # Traced again on PDS with the new name: applied.
    site.send(traced.replace("R6-1", "R6-4").replace("TRACED^TINA", "RETRACED^TINA"))
    assert (
        site.api.person(issuer="ZZA", patient_id="A500031")["records"][0]["name"] == "RETRACED^TINA"
    )
