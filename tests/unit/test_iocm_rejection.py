"""IOCM rejection notes (R56, scenario 2.8): a Key Object Selection titled "Incorrect Modality
Worklist Entry" (or another CID 7011 reason) withdraws the instances it lists. Once the note is
acknowledged they are gone from every query (QIDO, the viewer's lists) and every retrieve (404),
the study's counts follow, one audit record names them, their blob is kept (and `solent check`
knows it), a re-send of the same SOP Instance UID is refused, and only someone allowed to file
into the study can withdraw from it."""

from __future__ import annotations

from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

from solent.app import Archive
from solent.index import schema as t
from solent.services.check import check_archive
from tests.unit.security_fixtures import add_user, demo, demo_client, demo_template
from tests.unit.stow_support import ct_instance, rejection_note, stow_body

__all__ = ["demo", "demo_client", "demo_template"]


def stow(client: TestClient, headers: dict[str, str], *parts: bytes) -> int:
    body, content_type = stow_body(*parts)
    r = client.post("/dicomweb/studies", content=body, headers={**headers, **content_type})
    return r.status_code


def series_of(client: TestClient, headers: dict[str, str], study: str) -> dict[str, int]:
    r = client.get(f"/dicomweb/studies/{study}/series", headers=headers)
    if r.status_code == 204:
        return {}
    assert r.status_code == 200, r.text
    return {s["0020000E"]["Value"][0]: s["00201209"]["Value"][0] for s in r.json()}


def test_a_rejection_note_withdraws_what_it_lists(demo: Archive, demo_client: TestClient) -> None:
    radiographer = add_user(demo, "rad.zza", "ZZA", "clinician")
    reader = add_user(demo, "dr.zza", "ZZA", "radiologist")
    study, wrong, right = generate_uid(), generate_uid(), generate_uid()
    wrong_sops = [generate_uid(), generate_uid()]
    right_sop = generate_uid()
    parts = [ct_instance("X1001", "ZZA", study, series=wrong, sop=s) for s in wrong_sops]
    parts.append(ct_instance("X1001", "ZZA", study, series=right, sop=right_sop))
    assert stow(demo_client, radiographer, *parts) == 200
    assert series_of(demo_client, reader, study) == {wrong: 2, right: 1}

    # An ordinary key object selection (113000 "Of Interest") withdraws nothing.
    of_interest, _ = rejection_note("X1001", "ZZA", study, {wrong: wrong_sops[:1]}, code="113000")
    assert stow(demo_client, radiographer, of_interest) == 200
    assert series_of(demo_client, reader, study)[wrong] == 2

    # Someone who may not file into this study (another trust): the note is held, nothing goes.
    outsider = add_user(demo, "rad.zzc", "ZZC", "clinician")
    foreign, _ = rejection_note("C0001", "ZZC", study, {wrong: wrong_sops})
    assert stow(demo_client, outsider, foreign) == 200  # held, answered as stored (issue 11)
    assert series_of(demo_client, reader, study)[wrong] == 2

    note, note_uid = rejection_note(
        "X1001", "ZZA", study, {wrong: wrong_sops, right: [generate_uid()]}
    )
    assert stow(demo_client, radiographer, note) == 200
    shown = series_of(demo_client, reader, study)
    assert wrong not in shown and shown[right] == 1
    for sop in wrong_sops:
        base = f"/dicomweb/studies/{study}/series/{wrong}/instances/{sop}"
        for path in (base, f"{base}/metadata", f"{base}/frames/1"):
            assert demo_client.get(path, headers=reader).status_code == 404, path
    found = demo_client.get(f"/dicomweb/instances?SOPInstanceUID={wrong_sops[0]}", headers=reader)
    assert found.status_code == 204 or found.json() == []
    studies = demo_client.get(f"/dicomweb/studies?StudyInstanceUID={study}", headers=reader).json()
    assert studies[0]["00201208"]["Value"] == [3]  # the right slice and two key object notes

    # Kept, named, audited once; `solent check` finds nothing wrong.
    with demo.index.read() as conn:
        kept = conn.execute(select(t.rejected_instance)).mappings().all()
        audit = [
            r
            for r in conn.execute(select(t.audit_log)).mappings()
            if r["action"] == "delete" and r["study_uid"] == study
        ]
    assert sorted(r["sop_uid"] for r in kept) == sorted(wrong_sops)
    assert {(r["code"], r["note_uid"], r["patient_id"]) for r in kept} == {
        ("113038", note_uid, "X1001")
    }
    assert all(demo.store.exists(str(r["blob_key"])) for r in kept)
    assert len(audit) == 1 and "113038" in str(audit[0]["detail"])
    report = check_archive(demo.index, demo.store, repair=True)
    assert report.clean and not report.repaired.get("orphans"), report.as_json()
    assert all(demo.store.exists(str(r["blob_key"])) for r in kept)

    # The same images again (same SOP Instance UIDs): refused, still withdrawn, blob kept.
    again = stow(demo_client, radiographer, parts[0])
    assert again in (409, 202), again
    assert wrong not in series_of(demo_client, reader, study)
    assert all(demo.store.exists(str(r["blob_key"])) for r in kept)
    # Re-sent with new UIDs against the right patient: stored as usual.
    fixed = ct_instance("X1002", "ZZA", generate_uid(), series=generate_uid())
    assert stow(demo_client, radiographer, fixed) == 200
