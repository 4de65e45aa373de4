"""Audit of queries, per-image views and retrieves, and the HL7 sender gate (issue 6), below the
protocols: the records' content and their cost (one per request, views coalesced)."""

from __future__ import annotations

import json

import pytest

from solent.app import Archive
from solent.domain.attributes import Level
from solent.domain.matching import parse_query
from solent.domain.principal import Principal, PrincipalKind
from solent.errors import InvalidInput
from solent.index.hl7_senders import add_sender, find_sender, list_senders, remove_sender
from solent.protocols.hl7.er7 import Message, MessageRejected
from solent.protocols.hl7.senders import SenderGate, peer_host
from solent.services.audit import AuditAction, patient_of_rows
from tests.unit.security_fixtures import demo, demo_template, study_of

__all__ = ["demo", "demo_template"]

RAD = Principal(PrincipalKind.USER, "radzb", "ZZB", frozenset({"radiologist"}), "10.1.2.3")


def test_query_service_audits_each_find_with_keys_count_and_patient(demo: Archive) -> None:
    keys: dict[str, str | list[str] | None] = {"PatientID": "B7730021", "StudyDate": None}
    result = demo.query.find(
        RAD, parse_query(Level.STUDY, keys), limit=None, max_results=100, channel="test", keys=keys
    )
    (row,) = demo.audit.search(actor_name="radzb", action="query")
    assert (row["patient_issuer"], row["patient_id"]) == ("ZZB", "B7730021")  # scoped to ZZB
    detail = json.loads(row["detail"])
    assert detail == {
        "channel": "test",
        "keys": {"PatientID": "B7730021"},
        "level": "STUDY",
        "matches": len(result.rows),
    }
    # A refused query (PatientID without an issuer, caller without a trust) is audited too.
    nobody = Principal(PrincipalKind.USER, "nobody", None)
    with pytest.raises(InvalidInput):
        demo.query.find(
            nobody, parse_query(Level.STUDY, {"PatientID": "X"}), limit=None, max_results=10
        )
    (refused,) = demo.audit.search(actor_name="nobody", action="query")
    assert refused["outcome"] == "failure" and "error" in json.loads(refused["detail"])


def test_patient_of_rows_names_one_patient_or_none() -> None:
    a = {"IssuerOfPatientID": "ZZA", "PatientID": "A1", "NHSNumber": "9434765919"}
    b = {"IssuerOfPatientID": "ZZB", "PatientID": "B1"}
    found = patient_of_rows([a, a])
    assert found is not None and found.nhs_number == "9434765919"
    assert patient_of_rows([a, b]) is None
    assert patient_of_rows([]) is None


def test_views_are_coalesced_per_caller_study_and_channel(demo: Archive) -> None:
    uid = study_of(demo, "ZZB", "B7730021")
    seqs = [
        demo.audit.record_coalesced(RAD, AuditAction.VIEW, study_uid=uid, channel="rendered")
        for _ in range(50)
    ]
    assert seqs[0] is not None and seqs[1:] == [None] * 49
    assert demo.audit.record_coalesced(RAD, "view", study_uid=uid, channel="frames") is not None
    other = Principal(PrincipalKind.USER, "drza", "ZZA", frozenset({"clinician"}))
    assert demo.audit.record_coalesced(other, "view", study_uid=uid, channel="rendered")
    assert demo.audit.record_coalesced(RAD, "view", study_uid=uid, channel="x", window_s=0)
    assert demo.audit.record_coalesced(RAD, "view", study_uid=uid, channel="x", window_s=0)
    rows = demo.audit.search(study_uid=uid, action="view")
    assert len(rows) == 5 and {r["patient_id"] for r in rows} == {"B7730021"}


def test_retrieve_records_one_per_patient(demo: Archive) -> None:
    alice_a = study_of(demo, "ZZA", "A100001")
    alice_b = study_of(demo, "ZZB", "B7730021")
    bob = study_of(demo, "ZZB", "B7730444")
    seqs = demo.audit.record_studies(
        RAD, AuditAction.RETRIEVE, [alice_b, bob, bob], detail={"channel": "dimse c-get"}
    )
    assert len(seqs) == 2
    rows = demo.audit.search(actor_name="radzb", action="retrieve")
    assert {(r["patient_id"], r["study_uid"]) for r in rows} == {
        ("B7730021", alice_b),
        ("B7730444", bob),
    }
    assert json.loads(rows[0]["detail"])["channel"] == "dimse c-get"
    demo.audit.record_studies(RAD, "retrieve", [alice_a, "1.2.3.4"])
    unknown = [r for r in demo.audit.search(actor_name="radzb") if r["patient_id"] is None]
    assert [json.loads(r["detail"])["studies"] for r in unknown] == [["1.2.3.4"]]


A08 = (
    "MSH|^~\\&|{app}|ZZA|PACS|ZZX|20250320093000||ADT^A08^ADT_A01|C1|P|2.4\r"
    "PID|1||A100001^^^ZZA^MR||DEMO^ALICE\r"
)


def header(app: str) -> object:
    return Message(A08.format(app=app)).header


def test_peer_host_strips_the_port() -> None:
    assert peer_host("127.0.0.1:40000") == "127.0.0.1"
    assert peer_host("::1:40000") == "::1"
    assert peer_host(None) == ""


def test_sender_gate(demo: Archive) -> None:
    index = demo.index
    for row in list_senders(index):  # start from no registration at all
        remove_sender(index, row.application, row.facility)
    add_sender(index, "PAS", "ZZA", ("10.0.0.1", "127.0.0.1"), "ZZA")
    add_sender(index, "*", "ZZA", ("10.0.0.9",), "ZZA")
    found = find_sender(index, "PAS", "ZZA")
    assert found is not None and found.hosts == ("10.0.0.1", "127.0.0.1")
    gate = SenderGate(demo.services.directory, demo.audit)
    assert gate.check(header("PAS"), "127.0.0.1:5000") is not None  # type: ignore[arg-type]
    assert gate.check(header("LAB"), "10.0.0.9:5000") is not None  # type: ignore[arg-type]
    with pytest.raises(MessageRejected, match=r"not registered to send from 10\.0\.0\.2"):
        gate.check(header("PAS"), "10.0.0.2:5000")  # type: ignore[arg-type]
    with pytest.raises(MessageRejected, match="not registered"):
        gate.check(header("LAB"), "127.0.0.1:5000")  # type: ignore[arg-type]
    denied = demo.audit.search(action="permission-denied")
    assert {r["actor_name"] for r in denied} >= {"hl7:PAS^ZZA", "hl7:LAB^ZZA"}
    assert (
        SenderGate(demo.services.directory, demo.audit, allow_unknown=True).check(
            header("LAB"), "1.1.1.1:1"
        )
        is None
    )  # type: ignore[arg-type]
