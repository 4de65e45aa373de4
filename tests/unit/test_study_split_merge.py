"""R57: a PACS manager splits a study (some series into a new study of the same patient) or
merges two studies of one patient, through the JSON API, at once and reversibly. Afterwards
QIDO lists the studies with their true counts, outgoing DICOM says the new Study Instance UID
and keeps the stored one in Original Attributes Sequence, late images of a moved series follow
it, each step is audited, in the record's history and on the change feed; and what cannot be
done is refused with a readable reason."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

from solent.app import Archive
from solent.index import schema as t
from tests.unit.security_fixtures import add_user, cli_env, demo, demo_client, demo_template
from tests.unit.stow_support import ct_instance, rejection_note, stow_body
from tests.unit.test_study_move import (
    _corrected,
    _feed,
    _first_instance,
    _metadata,
    _move,
    _originals,
    _patient_of,
    _stow,
    _totals,
    _value,
)

__all__ = ["demo", "demo_client", "demo_template"]

STUDY_UID, ACCESSION = "0020000D", "00080050"
NUM_SERIES, NUM_INSTANCES = "00201206", "00201208"
BOB = ("ZZB", "B7730444")


def _ct(study: str, series: str, accession: str = "") -> bytes:
    """One of Bob's CT images in ``study``/``series``, with ``accession``."""
    ds = pydicom.dcmread(BytesIO(ct_instance(*BOB[::-1], study, series=series, name="DEMO^BOB")))
    ds.AccessionNumber = accession
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _counts(client: TestClient, heads: dict[str, str]) -> dict[str, tuple[int, int]]:
    """Bob's studies as QIDO lists them: UID -> (series, instances)."""
    r = client.get(
        "/dicomweb/studies",
        params={"PatientID": BOB[1], "IssuerOfPatientID": BOB[0], "includefield": "all"},
        headers=heads,
    )
    assert r.status_code == 200, r.text
    return {
        _value(s, STUDY_UID): (int(_value(s, NUM_SERIES)), int(_value(s, NUM_INSTANCES)))
        for s in r.json()
    }


def _events(archive: Archive, kind: str) -> list[dict[str, Any]]:
    ev = t.identity_event.c
    with archive.index.read() as conn:
        rows = conn.execute(select(t.identity_event).where(ev.kind == kind)).mappings()
        return [dict(r) for r in rows]


def _audits(archive: Archive, who: str, change: str) -> list[dict[str, Any]]:
    found = archive.audit.search(actor_name=who, limit=200)
    return [a for a in found if change in (a["detail"] or "") and a["outcome"] == "success"]


def _reverse(client: TestClient, heads: dict[str, str], edit: int) -> Any:
    url = f"/api/identity/study-edits/{edit}/reverse"
    return client.post(url, json={"reason": "undo"}, headers=heads)


def test_a_split_gives_series_a_new_study_of_the_same_record_and_is_reversible(
    demo: Archive, demo_client: TestClient
) -> None:
    admin = add_user(demo, "adminzb", "ZZB", "pacs_admin")
    sender = add_user(demo, "modzb", "ZZB", "integration")
    reader = add_user(demo, "drzb", "ZZB", "clinician")
    study, kept, out1, out2 = (generate_uid() for _ in range(4))
    parts = [_ct(study, kept, "ACC-1") for _ in range(2)]
    parts += [_ct(study, out1, "ACC-1"), _ct(study, out2, "ACC-1"), _ct(study, out2, "ACC-1")]
    assert _stow(demo_client, sender, *parts) == 200

    body = {"series_uids": [out1, out2], "accession_number": "ACC-2", "reason": "two exams"}
    r = demo_client.post(f"/api/identity/studies/{study}/split", json=body, headers=admin)
    assert r.status_code == 200, r.text
    edit = r.json()
    new = edit["to_study_uid"]
    assert edit["kind"] == "split" and edit["status"] == "done" and new != study
    assert sorted(edit["series_uids"]) == sorted([out1, out2])
    assert edit["accession"]["after"]["accession_number"] == "ACC-2"
    assert _patient_of(demo, new) == BOB

    # QIDO lists both, each with its own counts.
    counts = _counts(demo_client, reader)
    assert counts[study] == (1, 2) and counts[new] == (2, 3)
    assert _totals(demo, study) == (1, 2) and _totals(demo, new) == (2, 3)
    # WADO: the new study's instances say its UID and accession; the stored ones are kept.
    docs = _metadata(demo_client, reader, new)
    assert len(docs) == 3
    for obj in docs:
        assert (_value(obj, STUDY_UID), _value(obj, ACCESSION)) == (new, "ACC-2")
        assert (_value(_originals(obj), STUDY_UID), _value(_originals(obj), ACCESSION)) == (
            study,
            "ACC-1",
        )
    ds = _first_instance(demo_client, reader, new)
    assert ds.StudyInstanceUID == new and ds.SeriesInstanceUID in (out1, out2)
    assert ds.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0].StudyInstanceUID == study
    for obj in _metadata(demo_client, reader, study):  # what stayed goes out as stored
        assert (_value(obj, STUDY_UID), _value(obj, ACCESSION)) == (study, "ACC-1")
        assert not _corrected(obj) & {STUDY_UID, ACCESSION}

    # Audited once under Bob's record; in its history; on the change feed.
    (audit,) = _audits(demo, "adminzb", "study split")
    assert audit["patient_id"] == BOB[1] and new in audit["detail"]
    (event,) = _events(demo, "study-split")
    assert event["local_id"] == BOB[1]
    assert "study.split" in _feed(demo, study)

    # A late image of a moved series, still naming the old study, lands in the new one.
    assert _stow(demo_client, sender, _ct(study, out1, "ACC-1")) == 200
    assert _counts(demo_client, reader)[new] == (2, 4)

    back = _reverse(demo_client, admin, edit["id"])
    assert back.status_code == 200, back.text
    assert back.json()["reverses"] == edit["id"] and back.json()["status"] == "done"
    assert _counts(demo_client, reader).get(new) is None
    assert _counts(demo_client, reader)[study] == (3, 6)
    assert demo_client.get(f"/dicomweb/studies/{new}/metadata", headers=reader).status_code == 404
    for obj in _metadata(demo_client, reader, study):
        assert (_value(obj, STUDY_UID), _value(obj, ACCESSION)) == (study, "ACC-1")
    listed = demo_client.get(f"/api/identity/studies/{study}/edits", headers=admin).json()
    assert [e["reversed_by"] for e in listed] == [back.json()["id"], None]
    again = _reverse(demo_client, admin, edit["id"])
    assert again.status_code == 409 and "reversed already" in again.text


def test_a_split_whose_study_was_merged_since_is_reversed_after_the_merge(
    demo: Archive, demo_client: TestClient
) -> None:
    admin = add_user(demo, "adminzb", "ZZB", "pacs_admin")
    sender = add_user(demo, "modzb", "ZZB", "integration")
    reader = add_user(demo, "drzb", "ZZB", "clinician")
    study, kept, out = generate_uid(), generate_uid(), generate_uid()
    assert _stow(demo_client, sender, _ct(study, kept), _ct(study, out)) == 200
    body = {"series_uids": [out], "reason": "two exams"}
    split = demo_client.post(f"/api/identity/studies/{study}/split", json=body, headers=admin)
    new = split.json()["to_study_uid"]
    body = {"into_study_uid": study, "reason": "one exam after all"}
    merge = demo_client.post(f"/api/identity/studies/{new}/merge", json=body, headers=admin)
    assert merge.status_code == 200, merge.text
    assert _counts(demo_client, reader)[study] == (2, 2)

    refused = _reverse(demo_client, admin, split.json()["id"])
    assert refused.status_code == 409 and "reverse the later edit first" in refused.text
    assert _reverse(demo_client, admin, merge.json()["id"]).status_code == 200
    assert _counts(demo_client, reader)[new] == (1, 1)
    assert _reverse(demo_client, admin, split.json()["id"]).status_code == 200
    counts = _counts(demo_client, reader)
    assert new not in counts and counts[study] == (2, 2)


def test_a_merge_puts_every_series_in_one_study_and_its_reversal_brings_the_other_back(
    demo: Archive, demo_client: TestClient
) -> None:
    admin = add_user(demo, "adminzb", "ZZB", "pacs_admin")
    sender = add_user(demo, "modzb", "ZZB", "integration")
    reader = add_user(demo, "drzb", "ZZB", "clinician")
    a, b, a1, b1, b2 = (generate_uid() for _ in range(5))
    stowed = [_ct(a, a1, "ACC-A"), _ct(b, b1, "ACC-B"), _ct(b, b2, "ACC-B"), _ct(b, b2, "ACC-B")]
    assert _stow(demo_client, sender, *stowed) == 200

    before = demo_client.get(f"/dicomweb/studies/{a}/metadata", headers=reader)
    assert len(before.json()) == 1
    body = {"into_study_uid": a, "reason": "one exam sent as two"}
    r = demo_client.post(f"/api/identity/studies/{b}/merge", json=body, headers=admin)
    assert r.status_code == 200, r.text
    edit = r.json()
    assert edit["kind"] == "merge" and edit["to_study_uid"] == a
    assert sorted(edit["series_uids"]) == sorted([b1, b2])

    counts = _counts(demo_client, reader)
    assert b not in counts and counts[a] == (3, 4)
    fresh = {**reader, "If-None-Match": before.headers["etag"]}  # no stale 304
    assert len(demo_client.get(f"/dicomweb/studies/{a}/metadata", headers=fresh).json()) == 4
    assert demo_client.get(f"/dicomweb/studies/{b}/metadata", headers=reader).status_code == 404
    for obj in _metadata(demo_client, reader, a):
        assert (_value(obj, STUDY_UID), _value(obj, ACCESSION)) == (a, "ACC-A")
        if _value(obj, "0020000E") != a1:
            assert _value(_originals(obj), STUDY_UID) == b
    (audit,) = _audits(demo, "adminzb", "studies merged")
    assert audit["patient_id"] == BOB[1]
    assert _events(demo, "studies-merged")
    assert "study.merged" in _feed(demo, b)

    # Late images still naming the merged study: of a moved series, and of a new series.
    late_series = generate_uid()
    assert _stow(demo_client, sender, _ct(b, b1, "ACC-B"), _ct(b, late_series, "ACC-B")) == 200
    counts = _counts(demo_client, reader)
    assert b not in counts and counts[a] == (4, 6)

    back = _reverse(demo_client, admin, edit["id"])
    assert back.status_code == 200, back.text
    counts = _counts(demo_client, reader)
    assert counts[b] == (2, 4) and counts[a] == (2, 2)  # the new series stays where it went
    for obj in _metadata(demo_client, reader, b):  # b is back as it was, accession and all
        assert (_value(obj, STUDY_UID), _value(obj, ACCESSION)) == (b, "ACC-B")
    assert _audits(demo, "adminzb", "studies merged")[-1]["detail"].count(b) >= 1


def test_what_cannot_be_split_or_merged_is_refused_with_the_reason(
    demo: Archive, demo_client: TestClient
) -> None:
    admin = add_user(demo, "adminzb", "ZZB", "pacs_admin")
    outsider = add_user(demo, "adminzd", "ZZD", "pacs_admin")
    reader = add_user(demo, "drzb", "ZZB", "clinician")
    sender = add_user(demo, "modzb", "ZZB", "integration")
    a, b, a1, a2, b1 = (generate_uid() for _ in range(5))
    assert _stow(demo_client, sender, _ct(a, a1), _ct(a, a2), _ct(b, b1)) == 200
    alice = ct_instance("B7730021", "ZZB", (c := generate_uid()), name="DEMO^ALICE")
    assert _stow(demo_client, sender, alice) == 200

    def split(series: list[str], heads: dict[str, str] = admin) -> Any:
        body = {"series_uids": series, "reason": "r"}
        return demo_client.post(f"/api/identity/studies/{a}/split", json=body, headers=heads)

    def merge(study: str, into: str, heads: dict[str, str] = admin) -> Any:
        body = {"into_study_uid": into, "reason": "r"}
        return demo_client.post(f"/api/identity/studies/{study}/merge", json=body, headers=heads)

    everything = split([a1, a2])
    assert everything.status_code == 409 and "all the series" in everything.text
    assert split([b1]).status_code == 404  # not a series of this study
    assert split([]).status_code == 400
    itself = merge(a, a)
    assert itself.status_code == 409 and "into itself" in itself.text
    others = merge(b, c)
    assert others.status_code == 409 and "move the study to the right record first" in others.text
    # Other trusts' administrators get the unknown-study answer; other roles the role refusal.
    assert split([a1], outsider).status_code == 404 and merge(b, a, outsider).status_code == 404
    assert split([a1], reader).status_code == 403 and merge(b, a, reader).status_code == 403
    assert _counts(demo_client, reader)[a] == (2, 2)  # nothing changed

    # While a move of a study waits for a second person, it is neither split nor merged.
    waiting = _move(demo_client, admin, a, "ZZC", "C-55501")
    assert waiting.json()["status"] == "requested", waiting.text
    pending = split([a1])
    assert pending.status_code == 409 and "waiting for approval" in pending.text
    assert merge(b, a).status_code == 409
    assert _patient_of(demo, a) == BOB and _totals(demo, a) == (2, 2)


def test_an_accession_no_dicom_value_or_trust_of_the_caller_can_hold_is_refused(
    demo: Archive, demo_client: TestClient
) -> None:
    """A split's or correction's accession 'A\\B' went out as two Accession Numbers (one with a
    newline as a value no SH holds); an issuer of another trust filed the study among that
    trust's orders, and the 409 answering a number it already uses told the caller so."""
    admin = add_user(demo, "adminzb", "ZZB", "pacs_admin")
    sender = add_user(demo, "modzb", "ZZB", "integration")
    other = add_user(demo, "modzd", "ZZD", "integration")
    a, a1, a2 = (generate_uid() for _ in range(3))
    assert _stow(demo_client, sender, _ct(a, a1, "ACC-1"), _ct(a, a2, "ACC-1")) == 200
    theirs = pydicom.dcmread(BytesIO(ct_instance("D-1001", "ZZD", generate_uid())))
    theirs.AccessionNumber = "D-77"
    out = BytesIO()
    theirs.save_as(out, enforce_file_format=True)
    assert _stow(demo_client, other, out.getvalue()) == 200

    def split(accession: str, issuer: str | None = None) -> Any:
        body = {"series_uids": [a1], "accession_number": accession, "reason": "r"}
        body |= {"accession_issuer": issuer} if issuer else {}
        return demo_client.post(f"/api/identity/studies/{a}/split", json=body, headers=admin)

    def correct(accession: str, issuer: str | None = None) -> Any:
        body = {"accession_number": accession, "accession_issuer": issuer, "reason": "r"}
        return demo_client.post(f"/api/identity/studies/{a}/accession", json=body, headers=admin)

    for value in ("A\\B", "A\nB", "A\x1bB"):
        for refused in (split(value), correct(value)):
            assert refused.status_code == 400 and "backslash" in refused.text, refused.text
    for issuer in ("ZZD", "NOSUCH", "Z" * 64):
        for refused in (split("D-77", issuer), correct("D-77", issuer)):
            assert refused.status_code == 400 and "trust you administer" in refused.text
            assert "another" not in refused.text
    assert _totals(demo, a) == (2, 2)
    assert demo_client.get(f"/api/identity/studies/{a}/edits", headers=admin).json() == []
    # The study's own trust, named or not, is the accession's issuer as before.
    done = split("ACC-2", "ZZB")
    assert done.status_code == 200 and done.json()["accession"]["after"]["issuer"] == "ZZB"


def test_a_merge_into_a_study_merged_away_meanwhile_is_refused_not_made_again(
    demo: Archive, demo_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two stewards merging A into B and B into A at once: both were planned while both
    studies stood, and the second applied made the emptied target again from the other
    study's attributes (B's UID carrying A's accession), both answered 200."""
    from solent.services import study_edit

    admin = add_user(demo, "adminzb", "ZZB", "pacs_admin")
    sender = add_user(demo, "modzb", "ZZB", "integration")
    reader = add_user(demo, "drzb", "ZZB", "clinician")
    a, b, a1, b1 = (generate_uid() for _ in range(4))
    assert _stow(demo_client, sender, _ct(a, a1, "ACC-A"), _ct(b, b1, "ACC-B")) == 200
    request = study_edit.StudyEditService._request
    other: list[Any] = []

    def meanwhile(self: Any, principal: Any, values: dict[str, Any], *, cross: bool) -> Any:
        if not other:  # the other steward's merge lands between planning and applying
            other.append(None)
            other[0] = self.merge(principal, b, a, "the other way")
        return request(self, principal, values, cross=cross)

    monkeypatch.setattr(study_edit.StudyEditService, "_request", meanwhile)
    body = {"into_study_uid": b, "reason": "one exam"}
    late = demo_client.post(f"/api/identity/studies/{a}/merge", json=body, headers=admin)
    assert other[0]["status"] == "done"
    assert late.status_code == 409 and "changed meanwhile" in late.text, late.text
    counts = _counts(demo_client, reader)
    assert b not in counts and counts[a] == (2, 2)
    assert _totals(demo, a) == (2, 2)


def test_two_splits_at_once_never_leave_the_study_without_series(
    demo: Archive, demo_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each split of a two-series study planned while the other series was still in it."""
    from solent.services import study_edit

    admin = add_user(demo, "adminzb", "ZZB", "pacs_admin")
    sender = add_user(demo, "modzb", "ZZB", "integration")
    reader = add_user(demo, "drzb", "ZZB", "clinician")
    a, a1, a2 = (generate_uid() for _ in range(3))
    assert _stow(demo_client, sender, _ct(a, a1), _ct(a, a2)) == 200
    request = study_edit.StudyEditService._request
    other: list[Any] = []

    def meanwhile(self: Any, principal: Any, values: dict[str, Any], *, cross: bool) -> Any:
        if not other:
            other.append(None)
            other[0] = self.split(principal, a, [a2], "the other one")
        return request(self, principal, values, cross=cross)

    monkeypatch.setattr(study_edit.StudyEditService, "_request", meanwhile)
    body = {"series_uids": [a1], "reason": "two exams"}
    late = demo_client.post(f"/api/identity/studies/{a}/split", json=body, headers=admin)
    assert other[0]["status"] == "done"
    assert late.status_code == 409 and "changed meanwhile" in late.text, late.text
    assert _counts(demo_client, reader)[a] == (1, 1)


def test_a_split_of_a_study_merged_away_meanwhile_is_refused_with_409_not_404(
    demo: Archive, demo_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other steward's merge of the study lands between planning the split and applying
    it: the study was there when the split was asked for, so the answer is a conflict that
    says where the study went (it was 404, as if it had never existed), and nothing moved."""
    from solent.services import study_edit

    admin = add_user(demo, "adminzb", "ZZB", "pacs_admin")
    sender = add_user(demo, "modzb", "ZZB", "integration")
    reader = add_user(demo, "drzb", "ZZB", "clinician")
    s, m, s1, s2, m1 = (generate_uid() for _ in range(5))
    assert _stow(demo_client, sender, _ct(s, s1), _ct(s, s2), _ct(m, m1)) == 200
    request = study_edit.StudyEditService._request
    other: list[Any] = []

    def meanwhile(self: Any, principal: Any, values: dict[str, Any], *, cross: bool) -> Any:
        if not other:
            other.append(None)
            other[0] = self.merge(principal, s, m, "one exam")
        return request(self, principal, values, cross=cross)

    monkeypatch.setattr(study_edit.StudyEditService, "_request", meanwhile)
    body = {"series_uids": [s1], "reason": "two exams"}
    late = demo_client.post(f"/api/identity/studies/{s}/split", json=body, headers=admin)
    assert other[0]["status"] == "done"
    assert late.status_code == 409, late.text
    assert late.json()["detail"] == (
        f"study {s} was merged into study {m} meanwhile; nothing changed"
    ), late.text
    counts = _counts(demo_client, reader)
    assert s not in counts and counts[m] == (3, 3)
    assert _events(demo, "study-split") == []


def test_a_rejection_note_naming_the_old_study_withdraws_split_out_instances(
    demo: Archive, demo_client: TestClient
) -> None:
    """The modality still knows the study it made the images in: its IOCM note names that
    study and withdraws them from the study they were split into (and the counts follow)."""
    admin = add_user(demo, "adminzb", "ZZB", "pacs_admin")
    sender = add_user(demo, "modzb", "ZZB", "integration")
    reader = add_user(demo, "drzb", "ZZB", "clinician")
    study, kept, out = generate_uid(), generate_uid(), generate_uid()
    sops = [generate_uid(), generate_uid()]
    parts = [ct_instance(*BOB[::-1], study, series=out, sop=s, name="DEMO^BOB") for s in sops]
    assert _stow(demo_client, sender, _ct(study, kept), *parts) == 200
    body = {"series_uids": [out], "reason": "two exams"}
    r = demo_client.post(f"/api/identity/studies/{study}/split", json=body, headers=admin)
    assert r.status_code == 200, r.text
    new = r.json()["to_study_uid"]

    note, _ = rejection_note(BOB[1], BOB[0], study, {out: sops[:1]})
    assert _stow(demo_client, sender, note) == 200
    counts = _counts(demo_client, reader)
    assert counts[new] == (1, 1) and counts[study] == (2, 2)  # the kept image and the note
    gone = f"/dicomweb/studies/{new}/series/{out}/instances/{sops[0]}/metadata"
    assert demo_client.get(gone, headers=reader).status_code == 404


def test_a_retention_note_naming_a_merged_away_study_waits_for_approval_and_then_withdraws(
    demo: Archive, demo_client: TestClient
) -> None:
    """A 113039 "Data Retention Policy Expired" note still naming the study merged away is
    stored (filed into the study it was merged into) and waits for a second person as any
    retention note does; approved, it withdraws what it lists from where that is now."""
    admin = add_user(demo, "adminzb", "ZZB", "pacs_admin")
    sender = add_user(demo, "modzb", "ZZB", "integration")
    reader = add_user(demo, "drzb", "ZZB", "clinician")
    manager = add_user(demo, "rmzb", "ZZB", "records_manager")
    a, b, a1, b1 = (generate_uid() for _ in range(4))
    sop = generate_uid()
    part = ct_instance(*BOB[::-1], b, series=b1, sop=sop, name="DEMO^BOB")
    assert _stow(demo_client, sender, _ct(a, a1), part) == 200
    body = {"into_study_uid": a, "reason": "one exam sent as two"}
    r = demo_client.post(f"/api/identity/studies/{b}/merge", json=body, headers=admin)
    assert r.status_code == 200, r.text

    note, _ = rejection_note(
        BOB[1], BOB[0], b, {b1: [sop]}, code="113039", meaning="Data Retention Policy Expired"
    )
    body_, content_type = stow_body(note)
    stored = demo_client.post(
        "/dicomweb/studies", content=body_, headers={**sender, **content_type}
    )
    assert stored.status_code == 202, stored.text  # stored, with the "awaits approval" warning
    (pending,) = demo_client.get("/api/retention-deletions", headers=manager).json()
    assert pending["series"] == {b1: [sop]}
    approved = demo_client.post(
        f"/api/retention-deletions/{pending['id']}/approve",
        headers=manager,
        json={"reason": "RM-2026-99"},
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["outcome"]["rejected"] == {b1: [sop]}
    gone = f"/dicomweb/studies/{a}/series/{b1}/instances/{sop}/metadata"
    assert demo_client.get(gone, headers=reader).status_code == 404


def test_the_cli_splits_and_merges(
    demo: Archive,
    demo_client: TestClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from solent.cli import main

    sender = add_user(demo, "modzb", "ZZB", "integration")
    reader = add_user(demo, "drzb", "ZZB", "clinician")
    a, b, a1, a2, b1 = (generate_uid() for _ in range(5))
    assert _stow(demo_client, sender, _ct(a, a1), _ct(a, a2), _ct(b, b1)) == 200
    cli_env(monkeypatch, tmp_path / "demo-var")

    assert main(["identity", "split-study", a, a2, "--accession", "ACC-9", "--reason", "x"]) == 0
    said = capsys.readouterr().out
    assert "(split into study " in said and ": done" in said
    new = said.split("into study ")[1].split(")")[0]
    assert _counts(demo_client, reader)[new] == (1, 1)
    assert main(["identity", "merge-study", b, a, "--reason", "one exam"]) == 0
    assert "(merge into study " in capsys.readouterr().out
    counts = _counts(demo_client, reader)
    assert b not in counts and counts[a] == (2, 2)
    # Refused with the reason, nothing changed.
    assert main(["identity", "merge-study", a, a, "--reason", "x"]) == 1
    assert "into itself" in capsys.readouterr().err
    # The CLI passes no HTTP bounds: the service keeps an accession to what SH holds.
    long = ["identity", "split-study", a, a1, "--accession", "A" * 17, "--reason", "x"]
    assert main(long) == 2 and "at most 16" in capsys.readouterr().err
    for decision in (["reverse-edit", "9" * 20, "--reason", "x"], ["approve-edit", "9" * 20]):
        assert main(["identity", *decision]) == 1
        assert f"no study edit {'9' * 20}" in capsys.readouterr().err
