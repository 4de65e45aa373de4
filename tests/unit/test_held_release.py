"""A held instance is decided by a regional identity administrator (issue 11): listed and
shown, released through ingest only once its UIDs belong to the person it names, or discarded
with a reason. Everyone else gets the answer an unknown id gets; each decision leaves one audit
record; nothing is filed under the wrong patient."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from solent.app import Archive
from solent.domain.principal import SYSTEM
from solent.index import schema as t
from solent.services.check import check_archive
from solent.services.held import HeldService
from solent.services.identity import Change, Demographics, PatientKey
from tests.unit.security_fixtures import add_user, demo, demo_client, demo_template, study_of
from tests.unit.stow_support import ct_instance, stow_body

__all__ = ["demo", "demo_client", "demo_template"]

BOB = PatientKey("ZZB", "B7730444")  # trust A's patient, holding the study
DORA = PatientKey("ZZD", "D0001")  # the record trust B's sender names
UNKNOWN = 987654


def _stow(client: TestClient, headers: dict[str, str], part: bytes) -> int:
    body, content_type = stow_body(part)
    r = client.post("/dicomweb/studies", content=body, headers={**headers, **content_type})
    return r.status_code


def _held_rows(archive: Archive) -> list[dict[str, Any]]:
    with archive.index.read() as conn:
        return [dict(r) for r in conn.execute(select(t.held_instance)).mappings()]


def _stored(archive: Archive) -> tuple[object, ...]:
    """Everything a decision could change: index rows, work items, blobs."""
    with archive.index.read() as conn:
        counts = tuple(
            conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (t.patient, t.study, t.series, t.instance)
        )
        items = sorted(
            (r.pk, r.status)
            for r in conn.execute(select(t.data_quality.c.pk, t.data_quality.c.status))
        )
    return counts, items, _held_rows(archive), sorted(k for k, _ in archive.store.iter_keys())


def _audits(archive: Archive, actor: str) -> list[dict[str, Any]]:
    return archive.audit.search(actor_name=actor, limit=1000)


def _hold(archive: Archive, client: TestClient) -> tuple[dict[str, str], str, str, str]:
    """ZZD's clinician files Dora (a study of her own), then sends an instance naming her
    into Bob's study at ZZB, which ZZD may not see: held. Returns its headers and UIDs."""
    sender = add_user(archive, "drzd", "ZZD", "clinician")
    assert _stow(client, sender, ct_instance(DORA.local_id, "ZZD", generate_uid())) == 200
    bob_study = study_of(archive, BOB.issuer, BOB.local_id)
    series, sop = generate_uid(), generate_uid()
    part = ct_instance(DORA.local_id, "ZZD", bob_study, series=series, sop=sop)
    assert _stow(client, sender, part) == 200  # answered as stored
    return sender, bob_study, series, sop


def test_only_regional_administrators_see_or_decide_held_instances(
    demo: Archive, demo_client: TestClient
) -> None:
    _, bob_study, _, sop = _hold(demo, demo_client)
    (row,) = _held_rows(demo)
    pk = row["pk"]
    before = _stored(demo)
    callers = {
        "outsider": add_user(demo, "draz", "ZZA", "clinician"),
        "clinician": add_user(demo, "drzb", "ZZB", "clinician"),
        "trust-admin": add_user(demo, "adminzb", "ZZB", "pacs_admin"),
        "sender-admin": add_user(demo, "adminzd", "ZZD", "pacs_admin"),
        "auditor": add_user(demo, "audit1", "ZZB", "auditor"),
    }
    for who, heads in callers.items():
        assert demo_client.get("/api/identity/held", headers=heads).json() == [], who
        for method, path, body in (
            ("GET", "/api/identity/held/{}", None),
            ("POST", "/api/identity/held/{}/release", None),
            ("POST", "/api/identity/held/{}/discard", {"reason": "duplicate"}),
        ):
            hidden = demo_client.request(method, path.format(pk), json=body, headers=heads)
            missing = demo_client.request(method, path.format(UNKNOWN), json=body, headers=heads)
            assert hidden.status_code == missing.status_code == 404, (who, path, hidden.text)
            assert hidden.text == missing.text.replace(str(UNKNOWN), str(pk)), (who, path)
            for secret in (BOB.local_id, bob_study, sop, DORA.local_id):
                assert secret not in hidden.text
    assert _stored(demo) == before
    assert demo.store.exists(str(row["path"]))


def test_release_is_refused_while_unlinked_then_files_under_the_same_person(
    demo: Archive, demo_client: TestClient
) -> None:
    _sender, bob_study, series, sop = _hold(demo, demo_client)
    root = add_user(demo, "root", None, "pacs_admin")
    (row,) = _held_rows(demo)
    pk = row["pk"]

    # Listed and shown: what was sent, why, the holding record (identifiers), not releasable.
    n = len(_audits(demo, "root"))
    listed = demo_client.get("/api/identity/held", headers=root)
    assert listed.status_code == 200, listed.text
    assert [h["id"] for h in listed.json()] == [pk]
    assert len(_audits(demo, "root")) == n + 1
    assert demo_client.get("/api/identity/held?status=released", headers=root).json() == []
    assert demo_client.get("/api/identity/held?status=bogus", headers=root).status_code == 400
    shown = demo_client.get(f"/api/identity/held/{pk}", headers=root)
    assert shown.status_code == 200, shown.text
    view = shown.json()
    assert view["patient"] == {"issuer": "ZZD", "patient_id": "D0001"}
    assert view["holder"] == {"issuer": "ZZB", "patient_id": "B7730444"}
    assert (view["study_uid"], view["series_uid"], view["sop_uid"]) == (bob_study, series, sop)
    assert view["sender"] == "user:drzd@ZZD" and view["sender_trust"] == "ZZD"
    assert view["status"] == "held" and not view["releasable"]
    assert "not linked" in view["conflict"] and "already filed" in view["reason"]
    assert len(_audits(demo, "root")) == n + 2

    # Unlinked: a different person as far as the archive knows. 409, nothing changes.
    before = _stored(demo)
    refused = demo_client.post(f"/api/identity/held/{pk}/release", headers=root)
    assert refused.status_code == 409, refused.text
    assert "B7730444 of ZZB" in refused.text and "not linked to D0001 of ZZD" in refused.text
    assert _stored(demo) == before
    audits = _audits(demo, "root")
    assert len(audits) == n + 3 and audits[-1]["outcome"] != "success"
    assert "release refused" in audits[-1]["detail"]

    # ZZD's PAS corrects Dora's record: she is Bob. A regional administrator links them.
    demo.identity.update_record(
        DORA, Demographics(name="DEMO^BOB", birth_date="19710101", sex="M"), Change(SYSTEM)
    )
    link = {
        "a": {"issuer": "ZZB", "patient_id": "B7730444"},
        "b": {"issuer": "ZZD", "patient_id": "D0001"},
    }
    assert demo_client.post("/api/identity/link", json=link, headers=root).status_code == 200
    assert demo_client.get(f"/api/identity/held/{pk}", headers=root).json()["releasable"]

    n = len(_audits(demo, "root"))
    released = demo_client.post(f"/api/identity/held/{pk}/release", headers=root)
    assert released.status_code == 200, released.text
    assert released.json()["filed_under"] == {"issuer": "ZZB", "patient_id": "B7730444"}
    (audit,) = _audits(demo, "root")[n:]
    assert (audit["action"], audit["patient_id"], audit["study_uid"]) == (
        "store",
        "B7730444",
        bob_study,
    )
    assert '"release"' in audit["detail"] and sop in audit["detail"]
    (row,) = _held_rows(demo)
    assert (row["status"], row["resolved_by"]) == ("released", "user:root")
    assert row["resolved_at"] is not None and "B7730444/ZZB" in row["resolution"]
    assert not demo.store.exists(str(row["path"]))
    with demo.index.read() as conn:
        item = conn.execute(
            select(t.data_quality.c.status).where(t.data_quality.c.pk == row["work_item"])
        ).scalar_one()
    assert item == "resolved"

    # Filed under Bob's record: his trust's clinician retrieves it; an outsider still cannot.
    reader = add_user(demo, "drzb", "ZZB", "clinician")
    url = f"/dicomweb/studies/{bob_study}/series/{series}/instances/{sop}"
    got = demo_client.get(
        url, headers={**reader, "Accept": "multipart/related; type=application/dicom"}
    )
    assert got.status_code == 200 and sop.encode() in got.content
    found = demo.identity.resolve(BOB.issuer, BOB.local_id)
    assert found is not None
    rows = demo.services.retrieve.instances(SYSTEM, bob_study, series, channel="test")
    assert [r.sop_instance_uid for r in rows] == [sop]
    with demo.index.read() as conn:
        owner = conn.execute(
            select(t.study.c.patient_pk).where(t.study.c.study_uid == bob_study)
        ).scalar_one()
    assert owner == found.patient_pk
    outsider = add_user(demo, "draz", "ZZA", "clinician")
    assert demo_client.get(f"{url}/metadata", headers=outsider).status_code == 404

    # Decided once: a second release or a discard answers 409 and changes nothing.
    before = _stored(demo)
    for path, body in (("release", None), ("discard", {"reason": "again"})):
        again = demo_client.post(f"/api/identity/held/{pk}/{path}", json=body, headers=root)
        assert again.status_code == 409 and "released by user:root" in again.text, again.text
    assert _stored(demo) == before
    # `solent check`: the released copy is gone and nothing is orphaned or missing.
    report = check_archive(demo.index, demo.store)
    assert not report.orphan_blobs and not report.missing_blobs


def test_discard_needs_a_reason_removes_the_copy_and_keeps_the_row(
    demo: Archive, demo_client: TestClient
) -> None:
    _, bob_study, _, _ = _hold(demo, demo_client)
    root = add_user(demo, "root", None, "pacs_admin")
    (row,) = _held_rows(demo)
    pk, copy = row["pk"], str(row["path"])
    before = _stored(demo)
    for body in ({}, {"reason": ""}, {"reason": "   "}):
        r = demo_client.post(f"/api/identity/held/{pk}/discard", json=body, headers=root)
        assert r.status_code in (400, 422), (body, r.text)
    assert _stored(demo) == before

    n = len(_audits(demo, "root"))
    reason = "sent to the wrong study by the modality; re-sent correctly"
    r = demo_client.post(f"/api/identity/held/{pk}/discard", json={"reason": reason}, headers=root)
    assert r.status_code == 200, r.text
    (audit,) = _audits(demo, "root")[n:]
    assert (audit["action"], audit["patient_id"], audit["study_uid"]) == (
        "delete",
        "D0001",
        bob_study,
    )
    assert reason in audit["detail"]
    (row,) = _held_rows(demo)
    assert (row["status"], row["resolution"], row["resolved_by"]) == (
        "discarded",
        reason,
        "user:root",
    )
    assert not demo.store.exists(copy)
    assert demo_client.get("/api/identity/held", headers=root).json() == []
    assert [
        h["id"] for h in demo_client.get("/api/identity/held?status=discarded", headers=root).json()
    ] == [pk]
    again = demo_client.post(f"/api/identity/held/{pk}/release", headers=root)
    assert again.status_code == 409 and "discarded" in again.text
    # `solent check` no longer counts the discarded copy as kept: one put back is an orphan.
    demo.store.put_bytes(copy, b"left behind")
    report = check_archive(demo.index, demo.store, repair=True)
    assert report.orphan_blobs == [copy]
    assert not demo.store.exists(copy)


def test_the_filing_transaction_checks_the_link_again(
    demo: Archive, demo_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Patient safety backstop: were the decision before filing stale (records unlinked
    meanwhile), the check inside the filing transaction refuses it and nothing stays."""
    _hold(demo, demo_client)
    root = add_user(demo, "root", None, "pacs_admin")
    (row,) = _held_rows(demo)
    stale = ((BOB.issuer, BOB.local_id), "")
    monkeypatch.setattr(HeldService, "_target", lambda self, conn, row: stale)
    before = _stored(demo)
    r = demo_client.post(f"/api/identity/held/{row['pk']}/release", headers=root)
    assert r.status_code == 409 and "no longer linked to D0001 of ZZD" in r.text, r.text
    assert _stored(demo) == before
