"""Every DIMSE service that reads or changes patient data, generated from the presentation
contexts the listener supports, called about Bob (records at ZZB only) with pynetdicom on
loopback — issue 11, "one guarded door":

* by a node of ZZD (no relationship): the answer is what the same request gets for a patient
  who does not exist (statuses, match and sub-operation counts, comments), with no match and
  no instance sent, and a C-STORE naming Bob changes nothing of his record;
* by a node of ZZB (his trust): the data, and exactly one new audit record naming Bob;
* Storage Commitment (N-ACTION naming his SOP Instance UID): ZZD's node is told "no such
  object instance", as for a UID nobody has; ZZB's node is told it is committed.

A service the listener starts to support without a place in ``LEVELS``/``OTHER`` fails
``test_every_service_is_classified``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import evt
from pynetdicom.presentation import build_role
from sqlalchemy import select

from solent.app import Archive, build_archive
from solent.domain.principal import SYSTEM
from solent.index import schema
from solent.protocols.dimse import commitment, find_scp, mpps_scp, retrieve_scp, worklist_scp
from solent.protocols.dimse.listener import (
    QUERY_SOP_CLASSES,
    RETRIEVE_SOP_CLASSES,
    VERIFICATION,
    DimseListener,
)
from solent.protocols.dimse.net import STORAGE_SOP_CLASSES, make_ae
from solent.protocols.hl7.handler import Hl7Handler
from solent.protocols.hl7.senders import SenderGate
from solent.settings import load_settings
from tests.unit.security_fixtures import demo_template

__all__ = ["demo_template"]

PR_MOVE, PR_GET = "1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.1.3"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Services that read patient data -> the Query/Retrieve levels each is called at.
LEVELS: dict[str, tuple[str, ...]] = {
    find_scp.PATIENT_ROOT_FIND: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    find_scp.STUDY_ROOT_FIND: ("STUDY", "SERIES", "IMAGE"),
    worklist_scp.MODALITY_WORKLIST_FIND: ("WORKLIST",),
    PR_MOVE: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    PR_GET: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    retrieve_scp.STUDY_ROOT_MOVE: ("STUDY", "SERIES", "IMAGE"),
    retrieve_scp.STUDY_ROOT_GET: ("STUDY", "SERIES", "IMAGE"),
}
#: Supported services that read or change no patient's data (and why).
OTHER = {VERIFICATION: "C-ECHO"}
#: Services that tell whether named instances are stored: test_commitment_answers_like_nobody.
COMMITS = {commitment.STORAGE_COMMITMENT}
#: Services that record a trust's performed procedure steps, each visible to that trust's
#: nodes only: tests/interop/test_mpps_dimse.py (another trust's node gets 0x0112).
STEPS = {mpps_scp.MODALITY_PERFORMED_PROCEDURE_STEP}
FINDS = {find_scp.PATIENT_ROOT_FIND, find_scp.STUDY_ROOT_FIND}
GETS = {PR_GET, retrieve_scp.STUDY_ROOT_GET}
CASES = [(uid, level) for uid in sorted(LEVELS) for level in LEVELS[uid]] + [
    (CT_STORAGE, "STORE")  # every storage SOP class goes through the same ingest
]
OUTSIDER, INSIDER, DEST = "ZZD_WS", "ZZB_WS", "ZZB_DEST"


@dataclass(frozen=True)
class Target:
    patient_id: str
    study: str
    series: str
    sop: str
    sop_class: str
    nhs: str


NOBODY = Target(
    "B0000000", "2.25.99999999901", "2.25.99999999902", "2.25.99999999903", CT_STORAGE, ""
)


@dataclass
class Server:
    archive: Archive
    port: int
    bob: Target
    received: list[str]


def _bob(archive: Archive) -> Target:
    identity = archive.identity
    found = identity.resolve("ZZB", "B7730444")
    assert found is not None
    record = identity.record(found.patient_pk)
    assert record is not None
    study = identity.studies({found.patient_pk})[0]
    series = identity.series(int(study["study_pk"]))[0]
    inst = archive.services.retrieve.instances(
        SYSTEM, study["study_uid"], series["series_uid"], channel="test setup"
    )
    return Target(
        "B7730444",
        study["study_uid"],
        series["series_uid"],
        inst[0].sop_instance_uid,
        inst[0].sop_class_uid,
        str(record["record"]["nhs_number"]),
    )


def _order_for_bob(archive: Archive) -> None:
    s = archive.services
    orm = (
        "MSH|^~\\&|RIS|ZZB|PACS|ZZX|20250314113000||ORM^O01^ORM_O01|ZB-O1|P|2.4\r"
        "PID|1||B7730444^^^ZZB^MR||DEMO^BOB||19710101|M\r"
        "ORC|NW|P1|ZZB0001||SC||^^^20250314113500^^S\r"
        "OBR|1|P1|ZZB0001|XR^Chest XR|||20250314113500|||||||||||ZZB0001|RP1|SPS1||||CR\r"
    )
    reply = Hl7Handler(s, gate=SenderGate(s.directory, s.audit)).handle(orm, "127.0.0.1:1")
    assert "|AA|" in reply, reply


@pytest.fixture(scope="module")
def server(demo_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("dimse-matrix") / "var"
    shutil.copytree(demo_template, data)
    archive = build_archive(load_settings(environ={}, data_dir=data, dicom_port=0))
    received: list[str] = []
    dest = make_ae("DEST")
    for uid in STORAGE_SOP_CLASSES:
        dest.add_supported_context(uid, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    scp = dest.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    ops = ["store", "query", "retrieve"]
    archive.index.add_node(OUTSIDER, "127.0.0.1", 104, "ZZD", ops)
    archive.index.add_node(INSIDER, "127.0.0.1", 104, "ZZB", ops)
    archive.index.add_node(DEST, "127.0.0.1", scp.server_address[1], "ZZB", ["store"])
    _order_for_bob(archive)
    listener = DimseListener(archive.services)
    port = listener.start()
    try:
        yield Server(archive, port, _bob(archive), received)
    finally:
        listener.stop()
        scp.shutdown()
        archive.close()


def _identifier(uid: str, level: str, t: Target) -> Dataset:
    ds = Dataset()
    if level == "WORKLIST":
        ds.PatientID = t.patient_id
        ds.PatientName = ""
        ds.AccessionNumber = ""
        ds.ScheduledProcedureStepSequence = []
        return ds
    ds.QueryRetrieveLevel = level
    if level == "PATIENT" or uid in (find_scp.PATIENT_ROOT_FIND, PR_MOVE, PR_GET):
        ds.PatientID = t.patient_id
        ds.IssuerOfPatientID = "ZZB"
    if level != "PATIENT":
        ds.StudyInstanceUID = t.study
    if level in ("SERIES", "IMAGE"):
        ds.SeriesInstanceUID = t.series
    if level == "IMAGE":
        ds.SOPInstanceUID = t.sop
    if uid in FINDS or level == "WORKLIST":
        ds.PatientName = ""  # return keys: what the answer would say about the patient
        if "PatientID" not in ds:
            ds.PatientID = ""
    return ds


def _instance(t: Target, study: str) -> Dataset:
    """A small CT image naming ``t`` (ID, issuer ZZB, name, birth date, NHS number)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CT_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = CT_STORAGE
    ds.PatientID, ds.IssuerOfPatientID = t.patient_id, "ZZB"
    ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "DEMO^BOB", "19710101", "M"
    if t.nhs:
        item = Dataset()
        item.PatientID, item.IssuerOfPatientID = t.nhs, "NHS"
        ds.OtherPatientIDsSequence = [item]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.Modality, ds.StudyDate = "CT", "20250314"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.zeros((8, 8), np.uint16).tobytes()
    return ds


@dataclass
class Answer:
    statuses: list[tuple[int, int, int, int, str]]  # status, remaining/completed/failed, comment
    matches: list[str]  # PatientID of each C-FIND match
    sent: int  # instances that reached the caller (C-GET) or the destination (C-MOVE)


def _call(server: Server, calling: str, uid: str, level: str, t: Target) -> Answer:
    ae = make_ae(calling)
    ae.add_requested_context(uid)
    got: list[str] = []
    roles = []
    if uid in GETS:
        ae.add_requested_context(t.sop_class if t.sop_class else CT_STORAGE)
        roles = [build_role(t.sop_class, scp_role=True)]

    def on_store(event: Any) -> int:
        got.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    before = len(server.received)
    assoc = ae.associate(
        "127.0.0.1",
        server.port,
        ae_title="SOLENT",
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    ident = _identifier(uid, level, t)
    if uid in GETS:
        answers = list(assoc.send_c_get(ident, uid))
    elif uid in LEVELS and uid not in FINDS and level != "WORKLIST":
        answers = list(assoc.send_c_move(ident, DEST, uid))
    else:
        answers = list(assoc.send_c_find(ident, uid))
    assoc.release()
    statuses = []
    matches = []
    for status, found in answers:
        statuses.append(
            (
                int(status.Status),
                int(status.get("NumberOfCompletedSuboperations", -1)),
                int(status.get("NumberOfFailedSuboperations", -1)),
                int(status.get("NumberOfWarningSuboperations", -1)),
                str(status.get("ErrorComment", "")).replace(t.study, "<study>"),
            )
        )
        if found is not None and int(status.Status) in (0xFF00, 0xFF01):
            matches.append(str(found.get("PatientID", "")))
    return Answer(statuses, matches, len(got) + len(server.received) - before)


def _audit_seq(archive: Archive) -> int:
    rows = archive.audit.search(limit=1_000_000)
    return max((int(r["seq"]) for r in rows), default=0)


def _naming_bob(archive: Archive, after: int) -> list[dict[str, Any]]:
    return [
        r
        for r in archive.audit.search(after_seq=after, limit=1000)
        if (r["patient_issuer"], r["patient_id"]) == ("ZZB", "B7730444")
    ]


def test_every_service_is_classified(server: Server) -> None:
    listener = DimseListener(server.archive.services)  # not started: its contexts only
    supported = {str(cx.abstract_syntax) for cx in listener.ae.supported_contexts}
    unclassified = supported - set(LEVELS) - set(OTHER) - COMMITS - STEPS - set(STORAGE_SOP_CLASSES)
    assert not unclassified, f"DIMSE services without a place in the matrix: {unclassified}"
    assert set(LEVELS) == set(QUERY_SOP_CLASSES) | set(RETRIEVE_SOP_CLASSES)


@pytest.mark.parametrize(("uid", "level"), CASES)
def test_no_relationship_answers_like_nobody(server: Server, uid: str, level: str) -> None:
    bob = server.bob
    if level == "STORE":
        _store_changes_nothing_of_bob(server)
        return
    nobody = replace(NOBODY, sop_class=bob.sop_class)
    hidden = _call(server, OUTSIDER, uid, level, bob)
    missing = _call(server, OUTSIDER, uid, level, nobody)
    assert hidden == missing
    assert hidden.matches == [] and hidden.sent == 0
    for secret in (bob.nhs, "DEMO^BOB", bob.series, bob.sop):
        assert all(secret not in s[4] for s in hidden.statuses)


def _store(server: Server, calling: str, ds: Dataset) -> tuple[int, str]:
    ae = make_ae(calling)
    ae.add_requested_context(CT_STORAGE, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.port, ae_title="SOLENT")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    return int(status.Status), str(status.get("ErrorComment", ""))


def _bob_record(archive: Archive) -> tuple[Any, ...]:
    identity = archive.identity
    found = identity.resolve("ZZB", "B7730444")
    assert found is not None
    return (
        identity.record(found.patient_pk),
        sorted(s["study_uid"] for s in identity.studies({found.patient_pk})),
        sorted(identity.linked_patient_pks(found.patient_pk)),
    )


def _store_changes_nothing_of_bob(server: Server) -> None:
    """ZZD's node sends images naming Bob (his ZZB ID, name, birth date, NHS number): into a
    new study they are filed under ZZD's own record, answered as for a patient nobody has;
    into his existing study they are held for reconciliation (filed under no patient) and
    answered exactly as stored, like a study nobody has. His record, studies and links stay as
    they were, and ZZD still finds nothing of him."""
    archive, bob = server.archive, server.bob
    before = _bob_record(archive)
    hidden = _store(server, OUTSIDER, _instance(bob, generate_uid()))
    missing = _store(server, OUTSIDER, _instance(replace(NOBODY, nhs=""), generate_uid()))
    assert hidden == missing == (0, "")
    into_bobs = _instance(bob, bob.study)
    assert _store(server, OUTSIDER, into_bobs) == (0, "")  # never filed under Bob's study
    with archive.index.read() as conn:
        h = schema.held_instance.c
        held = conn.execute(
            select(h.sop_uid, h.status).where(h.sop_uid == str(into_bobs.SOPInstanceUID))
        ).all()
    assert [tuple(h) for h in held] == [(str(into_bobs.SOPInstanceUID), "held")]
    assert _bob_record(archive) == before
    found = _call(server, OUTSIDER, find_scp.STUDY_ROOT_FIND, "STUDY", bob)
    assert found.matches == []


@pytest.mark.parametrize(("uid", "level"), CASES)
def test_relationship_gets_the_data_and_one_audit_record(
    server: Server, uid: str, level: str
) -> None:
    archive, bob = server.archive, server.bob
    after = _audit_seq(archive)
    if level == "STORE":
        before = _bob_record(archive)[1]
        assert _store(server, INSIDER, _instance(bob, generate_uid()))[0] == 0
        assert len(_bob_record(archive)[1]) == len(before) + 1
    else:
        answer = _call(server, INSIDER, uid, level, bob)
        assert answer.statuses[-1][0] == 0, answer
        if uid in FINDS or level == "WORKLIST":
            assert answer.matches and set(answer.matches) == {"B7730444"}, answer
        else:
            assert answer.sent >= 1, answer
    rows = _naming_bob(archive, after)
    assert len(rows) == 1, [(r["action"], r["actor_name"], r["detail"]) for r in rows]


def _commit(server: Server, calling: str, sop_uid: str, sop_class: str) -> tuple[int, Dataset]:
    """N-ACTION (request storage commitment) of one instance; the N-EVENT-REPORT's event
    type and dataset, as the SCP sends it back on the same association."""
    reports: list[tuple[int, Dataset]] = []

    def on_report(event: Any) -> tuple[int, None]:
        reports.append((int(event.event_type), event.event_information))
        return 0, None

    ae = make_ae(calling)
    ae.add_requested_context(commitment.STORAGE_COMMITMENT)
    assoc = ae.associate(
        "127.0.0.1",
        server.port,
        ae_title="SOLENT",
        ext_neg=[build_role(commitment.STORAGE_COMMITMENT, scp_role=True)],
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
    )
    assert assoc.is_established
    request = Dataset()
    request.TransactionUID = "2.25.4242"
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_uid
    request.ReferencedSOPSequence = [item]
    status, _ = assoc.send_n_action(
        request, 1, commitment.STORAGE_COMMITMENT, commitment.STORAGE_COMMITMENT_INSTANCE
    )
    assert int(status.Status) == 0
    for _ in range(100):
        if reports:
            break
        time.sleep(0.05)
    assoc.release()
    assert len(reports) == 1, reports
    return reports[0]


def _failures(report: Dataset) -> list[int]:
    return [int(i.FailureReason) for i in report.get("FailedSOPSequence", [])]


MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


@pytest.mark.parametrize("sop_class", [CT_STORAGE, MR_STORAGE])
def test_commitment_answers_like_nobody(server: Server, sop_class: str) -> None:
    """Storage commitment was an existence oracle: ZZD's node named Bob's SOP Instance UID and
    was told it is committed (or 0119, "class/instance conflict", which also gives his class
    away). It must answer 0112 as for a UID nobody has; his own trust's node gets it."""
    bob = server.bob
    event, hidden = _commit(server, OUTSIDER, bob.sop, sop_class)
    _, missing = _commit(server, OUTSIDER, NOBODY.sop, sop_class)
    assert event == 2
    assert _failures(hidden) == _failures(missing) == [0x0112]
    assert "ReferencedSOPSequence" not in hidden
    event, seen = _commit(server, INSIDER, bob.sop, bob.sop_class)
    assert event == 1 and [i.ReferencedSOPInstanceUID for i in seen.ReferencedSOPSequence] == [
        bob.sop
    ]
    assert _failures(_commit(server, INSIDER, bob.sop, MR_STORAGE)[1]) == [0x0119]


def test_held_instance_is_committed_like_a_stored_one(server: Server) -> None:
    """An instance ZZD's node sent into Bob's study is held (answered as stored, filed under no
    patient): committing it must answer as for any instance it stored, or commitment would
    tell it that the study UID it used is someone else's."""
    bob = server.bob
    into_bobs = _instance(bob, bob.study)
    stored = _instance(replace(NOBODY, nhs=""), generate_uid())
    assert _store(server, OUTSIDER, into_bobs) == _store(server, OUTSIDER, stored) == (0, "")
    for ds in (into_bobs, stored):
        event, report = _commit(server, OUTSIDER, str(ds.SOPInstanceUID), CT_STORAGE)
        assert event == 1, report
        assert [i.ReferencedSOPInstanceUID for i in report.ReferencedSOPSequence] == [
            ds.SOPInstanceUID
        ]
