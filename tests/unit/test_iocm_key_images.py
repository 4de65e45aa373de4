"""R30 and scenario 2.8, last bullet: key images that point at instances an IOCM rejection note
withdraws are flagged, not silently kept or silently dropped. The study's key-image list marks
them ``withdrawn`` with the note's reason; their author finds them in
``GET /api/viewer/key-images/withdrawn`` and can clear them; the rejection's audit record
names them and their authors."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

from solent.app import Archive
from solent.index import schema as t
from tests.unit.security_fixtures import add_user, demo, demo_client, demo_template
from tests.unit.stow_support import ct_instance, presentation_state, rejection_note, stow_body

__all__ = ["demo", "demo_client", "demo_template"]


def stow(client: TestClient, headers: dict[str, str], *parts: bytes) -> None:
    body, content_type = stow_body(*parts)
    r = client.post("/dicomweb/studies", content=body, headers={**headers, **content_type})
    assert r.status_code == 200, r.text


def mark(
    client: TestClient, headers: dict[str, str], study: str, series: str, sop: str, note: str
) -> dict[str, Any]:
    r = client.post(
        f"/api/viewer/studies/{study}/key-images",
        json={"series_uid": series, "sop_uid": sop, "frame": 1, "note": note},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def listed(client: TestClient, headers: dict[str, str], study: str) -> dict[int, Any]:
    r = client.get(f"/api/viewer/studies/{study}/key-images", headers=headers)
    assert r.status_code == 200, r.text
    return {k["id"]: k["withdrawn"] for k in r.json()["key_images"]}


def flagged(client: TestClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    r = client.get("/api/viewer/key-images/withdrawn", headers=headers)
    assert r.status_code == 200, r.text
    return list(r.json()["key_images"])


def test_key_images_on_withdrawn_instances_are_flagged_to_their_authors(
    demo: Archive, demo_client: TestClient
) -> None:
    radiographer = add_user(demo, "rad.zza", "ZZA", "clinician")
    author = add_user(demo, "dr.zza", "ZZA", "radiologist")
    colleague = add_user(demo, "dr2.zza", "ZZA", "radiologist")
    stranger = add_user(demo, "dr.zzd", "ZZD", "radiologist")
    study, wrong, right = generate_uid(), generate_uid(), generate_uid()
    wrong_sop, right_sop = generate_uid(), generate_uid()
    stow(
        demo_client,
        radiographer,
        ct_instance("X1001", "ZZA", study, series=wrong, sop=wrong_sop),
        ct_instance("X1001", "ZZA", study, series=right, sop=right_sop),
    )
    on_wrong = mark(demo_client, author, study, wrong, wrong_sop, "For Conference: mass")
    on_right = mark(demo_client, colleague, study, right, right_sop, "For Conference: nodes")
    assert on_wrong["withdrawn"] is None
    assert listed(demo_client, author, study) == {on_wrong["id"]: None, on_right["id"]: None}
    assert flagged(demo_client, author) == []

    note, note_uid = rejection_note("X1001", "ZZA", study, {wrong: [wrong_sop]})
    stow(demo_client, radiographer, note)

    shown = listed(demo_client, colleague, study)
    assert shown[on_right["id"]] is None
    assert shown[on_wrong["id"]]["code"] == "113038"
    assert shown[on_wrong["id"]]["reason"] == "Incorrect Modality Worklist Entry"
    assert shown[on_wrong["id"]]["note_uid"] == note_uid

    mine = flagged(demo_client, author)
    assert [(k["id"], k["study_uid"], k["patient"]["key"]) for k in mine] == [
        (on_wrong["id"], study, "ZZA|X1001")
    ]
    assert mine[0]["withdrawn"]["code"] == "113038" and mine[0]["note"] == "For Conference: mass"
    assert flagged(demo_client, colleague) == []  # their mark is on an instance still there
    assert flagged(demo_client, stranger) == []

    # The rejection's own audit record names the flagged mark and its author.
    with demo.index.read() as conn:
        deletes = [
            json.loads(r["detail"]) if isinstance(r["detail"], str) else r["detail"]
            for r in conn.execute(select(t.audit_log)).mappings()
            if r["action"] == "delete" and r["study_uid"] == study
        ]
    assert [d["key_images_flagged"] for d in deletes] == [
        [{"id": on_wrong["id"], "sop_uid": wrong_sop, "by": "dr.zza"}]
    ]

    # A role that reads no clinical data is told so, not given an empty list.
    admin = add_user(demo, "admin.zza", "ZZA", "pacs_admin")
    assert demo_client.get("/api/viewer/key-images/withdrawn", headers=admin).status_code == 403


def test_a_flagged_mark_stays_listed_until_its_author_clears_it(
    demo: Archive, demo_client: TestClient
) -> None:
    radiographer = add_user(demo, "rad.zza", "ZZA", "clinician")
    author = add_user(demo, "dr.zza", "ZZA", "radiologist")
    colleague = add_user(demo, "dr2.zza", "ZZA", "radiologist")
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    stow(demo_client, radiographer, ct_instance("X2002", "ZZA", study, series=series, sop=sop))
    kept = mark(demo_client, author, study, series, sop, "For Conference")
    note, _ = rejection_note("X2002", "ZZA", study, {series: [sop]}, code="113037")
    stow(demo_client, radiographer, note)

    # The series is gone (the study holds only the note); the mark is still there, flagged.
    assert flagged(demo_client, author)[0]["withdrawn"]["reason"] == (
        "Rejected for Patient Safety Reasons"
    )
    url = f"/api/viewer/studies/{study}/key-images/{kept['id']}"
    assert demo_client.delete(url, headers=colleague).status_code in (403, 404)
    assert demo_client.delete(url, headers=author).status_code == 204
    assert flagged(demo_client, author) == []


def test_stored_key_image_notes_and_presentation_states_are_flagged(
    demo: Archive, demo_client: TestClient
) -> None:
    """A KOS "For Conference" and a GSPS made on another workstation (stored by STOW-RS) that
    point at a series a rejection note withdraws: the study's key-object list shows which of
    their references are gone and why; the user who stored them finds them in their list; an
    object that points only at images still there is not flagged."""
    radiographer = add_user(demo, "rad.zza", "ZZA", "clinician")
    author = add_user(demo, "dr.zza", "ZZA", "radiologist")
    colleague = add_user(demo, "dr2.zza", "ZZA", "radiologist")
    study, wrong, right = generate_uid(), generate_uid(), generate_uid()
    wrong_sops, right_sop = [generate_uid(), generate_uid()], generate_uid()
    stow(
        demo_client,
        radiographer,
        *(ct_instance("X4004", "ZZA", study, series=wrong, sop=s) for s in wrong_sops),
        ct_instance("X4004", "ZZA", study, series=right, sop=right_sop),
    )
    kos, kos_uid = rejection_note(
        "X4004",
        "ZZA",
        study,
        {wrong: wrong_sops[:1], right: [right_sop]},
        "113005",
        "For Conference",
    )
    gsps, gsps_uid = presentation_state("X4004", "ZZA", study, {wrong: wrong_sops}, "LUNG MDT")
    clean, clean_uid = presentation_state("X4004", "ZZA", study, {right: [right_sop]}, "NODES")
    stow(demo_client, author, kos, gsps)
    stow(demo_client, colleague, clean)

    def objects() -> dict[str, Any]:
        r = demo_client.get(f"/api/viewer/studies/{study}/key-objects", headers=colleague)
        assert r.status_code == 200, r.text
        return {o["sop_uid"]: o for o in r.json()["key_objects"]}

    before = objects()
    assert {
        u: (o["kind"], o["title"], o["references"], o["withdrawn"]) for u, o in before.items()
    } == {
        kos_uid: ("KO", "113005 For Conference", 2, []),
        gsps_uid: ("PR", "LUNG MDT", 2, []),
        clean_uid: ("PR", "NODES", 1, []),
    }
    assert before[kos_uid]["by"] == "user:dr.zza"

    note, note_uid = rejection_note("X4004", "ZZA", study, {wrong: wrong_sops}, "113037")
    stow(demo_client, radiographer, note)

    after = objects()
    assert [w["sop_uid"] for w in after[kos_uid]["withdrawn"]] == wrong_sops[:1]
    assert sorted(w["sop_uid"] for w in after[gsps_uid]["withdrawn"]) == sorted(wrong_sops)
    assert {w["reason"] for w in after[gsps_uid]["withdrawn"]} == {
        "Rejected for Patient Safety Reasons"
    }
    assert {w["note_uid"] for w in after[kos_uid]["withdrawn"]} == {note_uid}
    assert after[clean_uid]["withdrawn"] == []
    assert note_uid not in after  # the rejection note is not a key object

    mine = demo_client.get("/api/viewer/key-images/withdrawn", headers=author).json()
    assert sorted(o["sop_uid"] for o in mine["key_objects"]) == sorted([kos_uid, gsps_uid])
    assert {o["patient"]["key"] for o in mine["key_objects"]} == {"ZZA|X4004"}
    theirs = demo_client.get("/api/viewer/key-images/withdrawn", headers=colleague).json()
    assert theirs == {"key_images": [], "key_objects": []}

    with demo.index.read() as conn:
        details = [
            json.loads(r["detail"]) if isinstance(r["detail"], str) else r["detail"]
            for r in conn.execute(select(t.audit_log)).mappings()
            if r["action"] == "delete" and r["study_uid"] == study
        ]
    assert sorted(o["sop_uid"] for o in details[0]["key_objects_flagged"]) == sorted(
        [kos_uid, gsps_uid]
    )

    # A key object withdrawn itself (a second note naming the GSPS) is no longer listed.
    with demo.index.read() as conn:
        pr_series = conn.execute(
            select(t.series.c.series_uid)
            .join(t.instance, t.instance.c.series_pk == t.series.c.pk)
            .where(t.instance.c.sop_instance_uid == gsps_uid)
        ).scalar_one()
    second, _ = rejection_note("X4004", "ZZA", study, {pr_series: [gsps_uid]}, "113001")
    stow(demo_client, radiographer, second)
    assert gsps_uid not in objects()
    mine = demo_client.get("/api/viewer/key-images/withdrawn", headers=author).json()
    assert [o["sop_uid"] for o in mine["key_objects"]] == [kos_uid]


def test_a_presentation_state_with_unusable_references_is_still_stored(
    demo: Archive, demo_client: TestClient
) -> None:
    """References only serve the flagging: one longer than a UID may be (a writer's bug seen in
    the wild) is left out, the object itself is stored and retrievable as always."""
    radiographer = add_user(demo, "rad.zza", "ZZA", "clinician")
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    stow(demo_client, radiographer, ct_instance("X1003", "ZZA", study, series=series, sop=sop))
    too_long = "1.2." + "9" * 70
    pr, pr_uid = presentation_state("X1003", "ZZA", study, {series: [sop, too_long]})
    stow(demo_client, radiographer, pr)
    found = demo_client.get(
        f"/dicomweb/studies/{study}/instances?SOPInstanceUID={pr_uid}", headers=radiographer
    )
    assert found.status_code == 200 and len(found.json()) == 1
    with demo.index.read() as conn:
        refs = (
            conn.execute(
                select(t.key_object_reference.c.ref_sop_uid).where(
                    t.key_object_reference.c.object_sop_uid == pr_uid
                )
            )
            .scalars()
            .all()
        )
    assert refs == [sop]
