"""Identity as seen from the caller's trust (issue 15), on every door, with the demo data.

DEMO^ALICE is A100001 at ZZA (CT, CR) and B7730021 at ZZB (MR), linked by one verified NHS
number. A ZZA clinician sees her ZZB MR under A100001/ZZA with B7730021/ZZB and the NHS number
in Other Patient IDs Sequence; a ZZB clinician sees it as stored; a ZZC clinician (no record of
her, break-glass) sees the stored identity. A query by a Patient ID without issuer finds the
whole history from either ID, and never a patient the caller may not see.
"""

from __future__ import annotations

import io
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import evt
from pynetdicom.presentation import build_role

from solent.app import Archive, build_archive
from solent.demo import ALICE
from solent.domain.attributes import Level
from solent.domain.matching import parse_query
from solent.domain.principal import Principal, PrincipalKind
from solent.domain.records import NodeRow
from solent.protocols.dimse import scu
from solent.protocols.dimse.find_scp import response_identifier
from solent.protocols.dimse.listener import DimseListener
from solent.protocols.dimse.net import configure_pynetdicom, make_ae
from solent.protocols.fhir.resources import local_system
from solent.services.retrieve import RetrieveKeys
from solent.settings import load_settings
from tests.unit.security_fixtures import add_user, demo, demo_client, demo_template, study_of

__all__ = ["demo", "demo_client", "demo_template"]

DICOM_JSON = "application/dicom+json"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _value(obj: dict[str, Any], tag: str) -> Any:
    values = obj.get(tag, {}).get("Value") or [None]
    return values[0]


def _ids(obj: dict[str, Any]) -> tuple[str, str]:
    return _value(obj, "00100020"), _value(obj, "00100021")


def _other_ids(obj: dict[str, Any]) -> set[tuple[str, str]]:
    items = obj.get("00101002", {}).get("Value") or []
    return {(_value(i, "00100020"), _value(i, "00100021")) for i in items}


def _qido(client: TestClient, headers: dict[str, str], **params: str) -> list[dict[str, Any]]:
    r = client.get("/dicomweb/studies", params=params, headers=headers)
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()
    return rows


def _users(demo: Archive) -> dict[str, dict[str, str]]:
    return {
        "ZZA": add_user(demo, "drza", "ZZA", "clinician"),
        "ZZB": add_user(demo, "drzb", "ZZB", "clinician"),
        "ZZC": add_user(demo, "drzc", "ZZC", "clinician"),
    }


def _break_glass(client: TestClient, headers: dict[str, str], study: str) -> None:
    body = {"reason": "transfer", "explanation": "transferred in, no records", "study_uid": study}
    assert client.post("/api/break-glass", headers=headers, json=body).status_code == 201


def _part10(body: bytes, content_type: str) -> list[pydicom.Dataset]:
    """The application/dicom parts of a multipart/related body."""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    assert boundary is not None
    parts = body.split(b"--" + boundary.group(1).encode())[1:-1]
    return [pydicom.dcmread(io.BytesIO(p.split(b"\r\n\r\n", 1)[1][:-2])) for p in parts]


def test_qido_shows_a_linked_study_under_the_callers_own_record(
    demo: Archive, demo_client: TestClient
) -> None:
    h = _users(demo)
    mr = study_of(demo, "ZZB", "B7730021")
    ct = study_of(demo, "ZZA", "A100001")

    [seen] = _qido(demo_client, h["ZZA"], StudyInstanceUID=mr)
    assert _ids(seen) == ("A100001", "ZZA")
    assert _other_ids(seen) == {("B7730021", "ZZB"), (ALICE, "NHS")}

    [stored] = _qido(demo_client, h["ZZB"], StudyInstanceUID=mr)
    assert _ids(stored) == ("B7730021", "ZZB")
    assert _other_ids(stored) == {(ALICE, "NHS")}

    [ct_at_zzb] = _qido(demo_client, h["ZZB"], StudyInstanceUID=ct)  # and the other way round
    assert _ids(ct_at_zzb) == ("B7730021", "ZZB")
    assert ("A100001", "ZZA") in _other_ids(ct_at_zzb)


def test_a_patient_id_without_issuer_finds_the_whole_history_never_more(
    demo: Archive, demo_client: TestClient
) -> None:
    h = _users(demo)
    alice = {
        study_of(demo, "ZZB", "B7730021"),
        *(s["study_uid"] for s in demo.query.list_studies(_system(), local_id="A100001")),
    }
    assert len(alice) == 3
    for asked in ("A100001", "B7730021"):  # her ID here, and the ID a linked study printed
        rows = _qido(demo_client, h["ZZA"], PatientID=asked)
        assert {_value(r, "0020000D") for r in rows} == alice, asked
        assert {_ids(r) for r in rows} == {("A100001", "ZZA")}
        rows = _qido(demo_client, h["ZZB"], **{"00100020": asked})
        assert {_value(r, "0020000D") for r in rows} == alice, asked
        assert {_ids(r) for r in rows} == {("B7730021", "ZZB")}
    # Bob is only ever seen at ZZB: his ID finds nothing for ZZA, as if unknown.
    assert _qido(demo_client, h["ZZA"], PatientID="B7730444") == []
    assert _qido(demo_client, h["ZZA"], PatientID="B7730444") == _qido(
        demo_client, h["ZZA"], PatientID="NOSUCHID"
    )
    assert len(_qido(demo_client, h["ZZB"], PatientID="B7730444")) == 1


def test_a_caller_whose_trust_holds_no_record_sees_the_stored_identity(
    demo: Archive, demo_client: TestClient
) -> None:
    h = _users(demo)["ZZC"]
    mr = study_of(demo, "ZZB", "B7730021")
    assert _qido(demo_client, h, StudyInstanceUID=mr) == []  # no relationship yet
    _break_glass(demo_client, h, mr)
    [row] = _qido(demo_client, h, StudyInstanceUID=mr)
    assert _ids(row) == ("B7730021", "ZZB")
    rows = _qido(demo_client, h, PatientID="B7730021")  # the ID it was shown finds her
    assert mr in {_value(r, "0020000D") for r in rows}
    assert ("B7730021", "ZZB") in {_ids(r) for r in rows}
    series = demo_client.get(f"/dicomweb/studies/{mr}/series", headers=h).json()
    meta = demo_client.get(
        f"/dicomweb/studies/{mr}/series/{_value(series[0], '0020000E')}/metadata", headers=h
    ).json()
    assert {_ids(m) for m in meta} == {("B7730021", "ZZB")}
    assert all("04000561" not in m for m in meta)  # nothing corrected: as stored


def test_metadata_wado_rs_and_wado_uri_carry_the_callers_view(
    demo: Archive, demo_client: TestClient
) -> None:
    h = _users(demo)
    mr = study_of(demo, "ZZB", "B7730021")
    [series] = demo_client.get(f"/dicomweb/studies/{mr}/series", headers=h["ZZA"]).json()
    se = _value(series, "0020000E")

    meta = demo_client.get(f"/dicomweb/studies/{mr}/series/{se}/metadata", headers=h["ZZA"])
    assert meta.status_code == 200
    docs = meta.json()
    assert len(docs) == 16
    assert {_ids(m) for m in docs} == {("A100001", "ZZA")}
    assert all(_other_ids(m) >= {("B7730021", "ZZB"), (ALICE, "NHS")} for m in docs)
    original = docs[0]["04000561"]["Value"][0]["04000550"]["Value"][0]
    assert _value(original, "00100020") == "B7730021"  # what was stored, kept
    zzb_meta = demo_client.get(f"/dicomweb/studies/{mr}/series/{se}/metadata", headers=h["ZZB"])
    assert {_ids(m) for m in zzb_meta.json()} == {("B7730021", "ZZB")}
    assert zzb_meta.headers["etag"] != meta.headers["etag"]  # per view, never a shared 304

    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    r = demo_client.get(f"/dicomweb/studies/{mr}/series/{se}", headers={**h["ZZA"], **accept})
    assert r.status_code == 200
    instances = _part10(r.content, r.headers["content-type"])
    assert len(instances) == 16
    for ds in instances:
        assert (ds.PatientID, ds.IssuerOfPatientID) == ("A100001", "ZZA")
        others = {(i.PatientID, i.IssuerOfPatientID) for i in ds.OtherPatientIDsSequence}
        assert others >= {("B7730021", "ZZB"), (ALICE, "NHS")}
        assert ds.pixel_array.any()  # the pixels as stored

    sop = _value(docs[0], "00080018")
    uri = {"requestType": "WADO", "studyUID": mr, "seriesUID": se, "objectUID": sop}
    uri |= {"contentType": "application/dicom", "transferSyntax": "*"}
    seen = demo_client.get("/dicomweb/wado", params=uri, headers=h["ZZA"])
    assert seen.status_code == 200, seen.text
    ds = pydicom.dcmread(io.BytesIO(seen.content))
    assert (ds.PatientID, ds.IssuerOfPatientID) == ("A100001", "ZZA")
    stored = demo_client.get("/dicomweb/wado", params=uri, headers=h["ZZB"])
    assert pydicom.dcmread(io.BytesIO(stored.content)).PatientID == "B7730021"
    assert stored.headers["etag"] != seen.headers["etag"]


def _system() -> Principal:
    from solent.domain.principal import SYSTEM

    return SYSTEM


def _node(trust: str) -> Principal:
    return Principal(PrincipalKind.NODE, f"PACS{trust}", trust, frozenset({"query", "retrieve"}))


def test_c_find_answers_as_the_calling_nodes_trust(demo: Archive) -> None:
    keys = {"PatientID": "B7730021", "StudyInstanceUID": None, "OtherPatientIDsSequence": None}
    query = parse_query(Level.STUDY, {"PatientID": "B7730021", "StudyInstanceUID": None})
    result = demo.query.find(_node("ZZA"), query, limit=None, max_results=100)
    assert len(result.rows) == 3
    for row in result.rows:
        ds = response_identifier(row, list(keys), "STUDY", "SOLENT")
        assert (ds.PatientID, ds.IssuerOfPatientID) == ("A100001", "ZZA")
    mr = next(r for r in result.rows if r["StudyInstanceUID"] == study_of(demo, "ZZB", "B7730021"))
    ds = response_identifier(mr, list(keys), "STUDY", "SOLENT")
    others = {(i.PatientID, i.IssuerOfPatientID) for i in ds.OtherPatientIDsSequence}
    assert others == {("B7730021", "ZZB"), (ALICE, "NHS")}


def test_c_get_and_c_move_send_the_receiving_trusts_view(demo: Archive) -> None:
    """What ``retrieve_scp`` sends: the identity of the destination node's trust."""
    service = demo.services.retrieve
    mr = study_of(demo, "ZZB", "B7730021")
    refs = service.locate(
        _node("ZZA"), RetrieveKeys("STUDY", study_uids=(mr,)), channel="test", destination="T"
    )
    assert len(refs) == 16

    def sent(trust: str | None) -> pydicom.Dataset:
        data = service.encoded_dataset(
            _node("ZZA"), refs[0], service.current_identity(_node("ZZA"), trust)
        )
        return pydicom.dcmread(io.BytesIO(data), force=True)

    to_zza = sent("ZZA")
    assert (to_zza.PatientID, to_zza.IssuerOfPatientID) == ("A100001", "ZZA")
    assert ("B7730021", "ZZB") in {
        (i.PatientID, i.IssuerOfPatientID) for i in to_zza.OtherPatientIDsSequence
    }
    for trust in ("ZZB", "ZZC", None):  # its own trust, a trust with no record, none
        ds = sent(trust)
        assert (ds.PatientID, ds.IssuerOfPatientID) == ("B7730021", "ZZB"), trust
        assert "OriginalAttributesSequence" not in ds


def test_fhir_imaging_study_subject_is_the_callers_record(
    demo: Archive, demo_client: TestClient
) -> None:
    h = _users(demo)
    token = f"{local_system('ZZA')}|A100001"
    for trust, expected in (("ZZA", "A100001"), ("ZZB", "B7730021")):
        r = demo_client.get(
            "/fhir/ImagingStudy", params={"patient.identifier": token}, headers=h[trust]
        )
        assert r.status_code == 200, r.text
        studies = [e["resource"] for e in r.json()["entry"]]
        assert len(studies) == 3
        subjects = {(s["subject"]["identifier"]["value"]) for s in studies}
        assert subjects == {expected}, trust
        patient = demo_client.get(f"/fhir/{studies[0]['subject']['reference']}", headers=h[trust])
        assert patient.json()["identifier"][0]["value"] == expected


# -- the DIMSE doors, over a real association ------------------------------------------------


@pytest.fixture
def listening(demo_template: Path, tmp_path: Path) -> Iterator[tuple[Archive, int]]:
    """The demo archive behind a DIMSE listener on loopback; PACSA is a ZZA node."""
    data = tmp_path / "dimse-var"
    shutil.copytree(demo_template, data)
    archive = build_archive(load_settings(environ={}, data_dir=data, dicom_port=0))
    archive.index.add_node("PACSA", "127.0.0.1", 104, "ZZA", ["store", "query", "retrieve"])
    configure_pynetdicom(archive.settings.tmp_dir / "dimse")
    listener = DimseListener(archive.services)
    port = listener.start()
    try:
        yield archive, port
    finally:
        listener.stop()
        archive.close()


def _identity_of(received: list[Dataset]) -> set[tuple[str, str]]:
    return {(str(d.PatientID), str(d.IssuerOfPatientID)) for d in received}


def test_dimse_find_get_and_move_as_the_receiving_trust(listening: tuple[Archive, int]) -> None:
    archive, port = listening
    mr = study_of(archive, "ZZB", "B7730021")
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.PatientID = "B7730021"  # the ZZB ID, no issuer: the person's studies, as ZZA knows her
    ident.IssuerOfPatientID = ""
    ident.StudyInstanceUID = ""
    ident.OtherPatientIDsSequence = Sequence([])
    find = make_ae("PACSA")
    find.add_requested_context(STUDY_FIND)
    assoc = find.associate("127.0.0.1", port, ae_title="SOLENT")
    answers = [
        d
        for s, d in assoc.send_c_find(ident, STUDY_FIND)
        if d is not None and s.Status in (0xFF00, 0xFF01)
    ]
    assoc.release()
    assert len(answers) == 3
    assert _identity_of(answers) == {("A100001", "ZZA")}
    [mr_answer] = [a for a in answers if a.StudyInstanceUID == mr]
    others = {(i.PatientID, i.IssuerOfPatientID) for i in mr_answer.OtherPatientIDsSequence}
    assert others == {("B7730021", "ZZB"), (ALICE, "NHS")}

    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        received.append(event.dataset)
        return 0

    get = make_ae("PACSA")
    get.add_requested_context(STUDY_GET)
    get.add_requested_context(MR_STORAGE, ["1.2.840.10008.1.2.1"])
    assoc = get.associate(
        "127.0.0.1",
        port,
        ae_title="SOLENT",
        ext_neg=[build_role(MR_STORAGE, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = mr
    statuses = [s.Status for s, _ in assoc.send_c_get(ident, STUDY_GET)]
    assoc.release()
    assert statuses[-1] == 0 and len(received) == 16
    assert _identity_of(received) == {("A100001", "ZZA")}  # the caller's trust's view

    for trust, expected in (("ZZA", ("A100001", "ZZA")), ("ZZB", ("B7730021", "ZZB"))):
        received.clear()
        dest = make_ae(f"DEST{trust}")
        dest.add_supported_context(MR_STORAGE, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        dest_port = _free_port()
        server = dest.start_server(
            ("127.0.0.1", dest_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )
        assert server is not None
        try:
            archive.index.add_node(f"DEST{trust}", "127.0.0.1", dest_port, trust, ["store"])
            node = NodeRow("SOLENT", "127.0.0.1", port, "ZZA", True, True, True)
            out = scu.move("PACSA", node, ident, f"DEST{trust}")
            assert (out.status, out.completed) == (0, 16)
        finally:
            server.shutdown()
        # C-MOVE: what the destination's trust knows the person by, whoever asked.
        assert _identity_of(received) == {expected}, trust


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
