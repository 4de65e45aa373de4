"""Each study's retention date (R42) computed from what the archive holds now, across every
trust: a later study of the same person at another trust keeps an old study longer once the
records are linked; ADT's date of death (PID-29) and visit dates count; a legal hold keeps a
study off the expired list; an expired study becomes a retention deletion only when a records
manager proposes it, and is withdrawn only when a second one approves (R44). Nothing is ever
deleted by the engine itself."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from solent.app import Archive, build_archive
from solent.cli import main
from solent.domain.outcomes import Outcome
from solent.domain.principal import (
    REGIONAL_IDENTITY_SOURCE,
    Channel,
    Principal,
    PrincipalKind,
    Provenance,
)
from solent.domain.retention_rules import add_years
from solent.errors import NotFound
from solent.protocols.hl7.handler import Hl7Handler
from solent.services.identity import Change, Demographics, PatientKey
from solent.services.retention import RetentionConflict
from solent.settings import load_settings
from tests.unit.security_fixtures import add_user, cli_env, client

__all__ = ["client"]

EMPI = Change(
    Principal(PrincipalKind.NODE, "hl7:EMPI", None, frozenset({REGIONAL_IDENTITY_SOURCE}))
)
RM_ONE = Principal(PrincipalKind.USER, "rm.one", "ZZA", frozenset({"records_manager"}))
OPERATOR = Principal(PrincipalKind.SYSTEM, "cli:test", None)
TODAY = date(2026, 12, 1)  # "expired" is judged against this day, not the clock


@pytest.fixture(autouse=True)
def pinned(archive: Archive) -> None:
    archive.services.retention_schedule.clock = lambda: TODAY


def store(
    archive: Archive,
    tmp: Path,
    trust: str,
    patient: str,
    *,
    study_date: str,
    birth: str = "19600417",
    modality: str = "CT",
    description: str = "CT CHEST",
    n: int = 1,
) -> str:
    """A study of ``n`` instances stored by a modality of ``trust``; returns its UID."""
    study, series = generate_uid(), generate_uid()
    for _ in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = (
            patient,
            "DEMO^RETA",
            birth,
            "F",
        )
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.StudyDate, ds.StudyDescription = modality, study_date, description
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = np.zeros((8, 8), np.uint16).tobytes()
        path = tmp / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        sender = Principal(PrincipalKind.NODE, f"CT_{trust}", trust)
        result = archive.ingestor.ingest_file(
            path, sender, Provenance(Channel.DIMSE, calling_ae=f"CT_{trust}")
        )
        assert result.outcome is Outcome.STORED, result
    return study


def expired_uids(archive: Archive, who: Principal = RM_ONE) -> list[str]:
    listing = archive.services.retention_schedule.expired(who)
    assert listing["next_after"] is None
    return [s["study_uid"] for s in listing["studies"]]


@pytest.fixture(params=["sqlite", "postgresql"])
def either(request: pytest.FixtureRequest, archive: Archive, tmp_path: Path) -> Iterator[Archive]:
    """The embedded archive, and one on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield archive
        return
    url = request.getfixturevalue("fresh_postgres_url")
    pg = build_archive(
        load_settings(environ={"SOLENT_DATABASE_URL": url}, data_dir=tmp_path / "pg")
    )
    try:
        for code in ("ZZA", "ZZB"):
            pg.index.add_trust(code, f"Trust {code}")
        pg.services.retention_schedule.clock = lambda: TODAY
        yield pg
    finally:
        pg.close()


def test_a_later_contact_at_another_trust_keeps_the_study_once_records_link(
    either: Archive, tmp_path: Path
) -> None:
    archive = either
    add_user(archive, "rm.one", "ZZA", "records_manager")
    old = store(archive, tmp_path, "ZZA", "A1", study_date="20120301")
    schedule = archive.services.retention_schedule
    alone = schedule.explain(RM_ONE, old)
    assert (alone["retain_until"], alone["rule"], alone["expired"]) == ("2020-03-01", "adult", True)
    assert alone["inputs"]["age_at_last_contact"] == 51
    assert expired_uids(archive) == [old]
    seen = archive.services.audit.search(OPERATOR, patient_id="A1", action="query")
    reads = [json.loads(str(r["detail"]))["read"] for r in seen if r["actor_name"] == "rm.one"]
    assert reads == ["retention", "retention-expired"]  # each study shown names its patient

    store(archive, tmp_path, "ZZB", "B1", study_date="20210601")
    assert expired_uids(archive) == [old]  # not the same person yet
    archive.identity.link(PatientKey("ZZA", "A1"), PatientKey("ZZB", "B1"), EMPI)
    linked = schedule.explain(RM_ONE, old)
    assert (linked["retain_until"], linked["expired"]) == ("2029-06-01", False)
    assert linked["inputs"]["last_contact"] == "2021-06-01"
    assert linked["inputs"]["last_contact_source"] == "study at ZZB/B1"
    assert expired_uids(archive) == []
    with pytest.raises(RetentionConflict, match="runs until 2029-06-01"):
        schedule.propose(RM_ONE, [old], "retention expired")


def test_a_child_is_kept_to_the_25th_birthday(archive: Archive, tmp_path: Path) -> None:
    add_user(archive, "rm.one", "ZZA", "records_manager")
    study = store(archive, tmp_path, "ZZA", "C1", study_date="20200115", birth="20100520")
    view = archive.services.retention_schedule.explain(RM_ONE, study)
    assert (view["retain_until"], view["rule"]) == ("2035-05-20", "child")
    assert view["inputs"]["age_at_last_contact"] == 9


def test_death_and_visits_from_adt_and_a_cancer_flag(archive: Archive, tmp_path: Path) -> None:
    add_user(archive, "rm.one", "ZZA", "records_manager")
    study = store(archive, tmp_path, "ZZA", "D1", study_date="20000110", birth="19500101")
    schedule = archive.services.retention_schedule
    flag = schedule.set_flag(
        RM_ONE,
        kind="cancer",
        target={"issuer": "ZZA", "patient_id": "D1"},
        note="MDT 2000/17",
        since="1995-05-01",
    )
    view = schedule.explain(RM_ONE, study)
    assert (view["retain_until"], view["rule"], view["expired"]) == ("2025-05-01", "cancer", True)
    assert view["inputs"]["pathways"] == [
        {"kind": "cancer", "since": "1995-05-01", "source": f"flag {flag['id']} on record ZZA/D1"}
    ]
    assert expired_uids(archive) == [study]

    # The PAS reports a discharge (PV1-45) and the death (PID-29): both are inputs now.
    pid = ["PID", "1", "", "D1^^^ZZA^MR", "", "DEMO^RETA", "", "19500101", "F"] + [""] * 21
    pid[29] = "20190202"
    pv1 = ["PV1", "1", "I"] + [""] * 43
    pv1[44], pv1[45] = "20181201", "20181220"
    ack = Hl7Handler(archive.services).handle(
        "MSH|^~\\&|PAS|ZZA|SOLENT|SOLENT|20190203||ADT^A03|c-a03-1|P|2.5\r"
        "EVN|A03|20190203\r" + "|".join(pid) + "\r" + "|".join(pv1) + "\r"
    )
    assert "MSA|AA" in ack, ack
    view = schedule.explain(RM_ONE, study)
    assert view["inputs"]["death_date"] == "2019-02-02"
    assert view["inputs"]["last_contact"] == "2018-12-20"
    assert view["inputs"]["last_contact_source"] == "visit (ADT) at ZZA/D1"
    assert (view["retain_until"], view["rule"], view["expired"]) == (
        "2027-02-02",
        "cancer-death",
        False,
    )
    assert expired_uids(archive) == []
    # The flag removed (audited, kept row), the visit still counts: 8 years after it.
    schedule.remove_flag(RM_ONE, flag["id"], "entered on the wrong record")
    assert schedule.explain(RM_ONE, study)["retain_until"] == "2026-12-20"
    assert schedule.flags(RM_ONE) == []
    assert schedule.flags(RM_ONE, active_only=False)[0]["removed_by"] == "user:rm.one@ZZA"


def test_mammography_counts_as_screening_from_acquisition(archive: Archive, tmp_path: Path) -> None:
    add_user(archive, "rm.one", "ZZA", "records_manager")
    study = store(archive, tmp_path, "ZZA", "M1", study_date="20170301", modality="MG")
    view = archive.services.retention_schedule.explain(RM_ONE, study)
    assert (view["retain_until"], view["rule"]) == ("2027-03-01", "screening")
    assert view["inputs"]["pathways"][0]["source"].startswith("derived: modality MG")


def test_held_studies_are_not_expired_and_proposals_need_a_second_person(
    archive: Archive, tmp_path: Path, client: TestClient
) -> None:
    c = client
    rm_one = add_user(archive, "rm.one", "ZZA", "records_manager")
    rm_two = add_user(archive, "rm.two", "ZZA", "records_manager")
    rm_zzb = add_user(archive, "rm.zzb", "ZZB", "records_manager")
    clinician = add_user(archive, "dr.ret", "ZZA", "clinician")
    held = store(archive, tmp_path, "ZZA", "H1", study_date="20100101")
    gone = store(archive, tmp_path, "ZZA", "G1", study_date="20110101", n=2)
    kept = store(archive, tmp_path, "ZZA", "K1", study_date="20240101")

    def listed(headers: dict[str, str]) -> list[str]:
        r = c.get("/api/retention/expired", headers=headers)
        assert r.status_code == 200, r.text
        return [s["study_uid"] for s in r.json()["studies"]]

    assert listed(rm_one) == [held, gone]
    assert listed(rm_zzb) == []  # another trust's records
    assert c.get("/api/retention/expired", headers=clinician).status_code == 403
    assert c.get(f"/api/retention/studies/{held}", headers=rm_zzb).status_code == 404
    assert c.get(f"/api/retention/studies/{kept}", headers=rm_one).json()["expired"] is False

    hold = c.post(
        "/api/legal-holds",
        headers=rm_one,
        json={"reason": "complaint", "reference": "C-9", "targets": [{"study_uid": held}]},
    )
    assert hold.status_code == 201, hold.text
    assert listed(rm_one) == [gone]
    why = c.get(f"/api/retention/studies/{held}", headers=rm_one).json()
    assert why["expired"] is True and why["deletable"] is False
    assert why["legal_holds"] == [{"id": hold.json()[0]["id"], "reference": "C-9"}]
    refused = c.post(
        "/api/retention-deletions", headers=rm_one, json={"study_uids": [held], "reason": "batch"}
    )
    assert refused.status_code == 409 and "legal hold" in refused.json()["detail"]

    proposed = c.post(
        "/api/retention-deletions",
        headers=rm_one,
        json={"study_uids": [gone], "reason": "retention expired, batch 2026-12"},
    )
    assert proposed.status_code == 201, proposed.text
    (deletion,) = proposed.json()
    assert (deletion["status"], deletion["code"], deletion["instances"]) == ("pending", "113039", 2)
    assert listed(rm_one) == []  # proposed: not listed again
    url = f"/api/retention-deletions/{deletion['id']}/approve"
    assert c.post(url, headers=rm_one).status_code == 403  # the proposer may not approve
    assert (
        archive.services.retention_schedule.explain(RM_ONE, gone)["pending_deletion"]
        == (deletion["id"])
    )
    approved = c.post(url, headers=rm_two, json={"reason": "checked"})
    assert approved.status_code == 200, approved.text
    assert sum(len(v) for v in approved.json()["outcome"]["rejected"].values()) == 2
    again = c.post(
        "/api/retention-deletions", headers=rm_one, json={"study_uids": [gone], "reason": "again"}
    )
    assert again.status_code == 404  # withdrawn: only its destruction records remain


def test_flags_by_api_and_bad_input(client: TestClient, archive: Archive, tmp_path: Path) -> None:
    c = client
    rm_one = add_user(archive, "rm.one", "ZZA", "records_manager")
    study = store(archive, tmp_path, "ZZA", "F1", study_date="20050101")
    ok = c.post(
        "/api/retention-flags",
        headers=rm_one,
        json={"kind": "transplant", "study_uid": study, "note": "renal transplant 2005"},
    )
    assert ok.status_code == 201, ok.text
    assert c.get(f"/api/retention/studies/{study}", headers=rm_one).json()["rule"] == "transplant"
    bad: list[dict[str, Any]] = [
        {"kind": "dental", "study_uid": study, "note": "what"},
        {"kind": "cancer", "note": "no target"},
        {"kind": "cancer", "study_uid": study, "note": "bad date", "since": "2005-13-01"},
        # 9999-12-31 was kept, and every read of the study's retention then answered 500
        # (year 10029); 0001-01-01 was stored as the unreadable '10101'.
        {"kind": "cancer", "study_uid": study, "note": "in the future", "since": "9999-12-31"},
        {"kind": "cancer", "study_uid": study, "note": "year one", "since": "0001-01-01"},
    ]
    for body in bad:
        r = c.post("/api/retention-flags", headers=rm_one, json=body)
        assert r.status_code in (400, 422), (body, r.text)
    unknown = {"kind": "cancer", "issuer": "ZZB", "patient_id": "NOPE", "note": "other trust"}
    assert c.post("/api/retention-flags", headers=rm_one, json=unknown).status_code == 404
    assert len(c.get("/api/retention-flags", headers=rm_one).json()) == 1
    with pytest.raises(NotFound):
        archive.services.retention_schedule.explain(RM_ONE, generate_uid())
    # A date at the calendar's end already stored (an ADT death date before it was checked)
    # is kept for ever, not a 500 on every read.
    assert add_years(date(9999, 12, 31), 30) == date.max


def test_the_operator_cli_explains_and_flags(
    archive: Archive,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    study = store(archive, tmp_path, "ZZA", "X1", study_date="20050101")
    cli_env(monkeypatch, archive.settings.data_dir)
    flag = ["retention", "flag", "add", "--kind", "cancer", "--issuer", "ZZA", "--patient-id"]
    assert main([*flag, "X1", "--since", "2020-11-30", "--note", "MDT 2020/88"]) == 0
    assert json.loads(capsys.readouterr().out)["set_by"].startswith("system:cli:")
    assert main(["retention", "explain", study]) == 0
    shown = capsys.readouterr().out
    assert f"study {study}: kept until 2050-11-30" in shown
    assert "rule: cancer: 30 years from pathway date 2020-11-30" in shown
    assert main([*flag, "NOPE", "--note", "no such record"]) == 1  # not found, nothing set
    assert main(["retention", "flag", "list"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1


def test_a_merge_carries_the_death_and_the_flags_of_the_record_merged_away(
    archive: Archive, tmp_path: Path
) -> None:
    add_user(archive, "rm.one", "ZZA", "records_manager")
    schedule = archive.services.retention_schedule
    study = store(archive, tmp_path, "ZZA", "S1", study_date="20010101")
    store(archive, tmp_path, "ZZA", "T1", study_date="20000101")
    schedule.set_flag(
        RM_ONE, kind="cjd", target={"issuer": "ZZA", "patient_id": "S1"}, note="CJD register"
    )
    pas = Change(Principal(PrincipalKind.NODE, "hl7:PAS", "ZZA"))
    archive.identity.update_record(
        PatientKey("ZZA", "S1"), Demographics(death_date="20300101"), pas
    )
    archive.identity.merge(PatientKey("ZZA", "T1"), PatientKey("ZZA", "S1"), Demographics(), pas)
    view = schedule.explain(RM_ONE, study)
    assert view["patient"] == {"issuer": "ZZA", "patient_id": "T1"}
    assert view["inputs"]["death_date"] == "2030-01-01"
    assert (view["retain_until"], view["rule"]) == ("2040-01-01", "cjd-death")
