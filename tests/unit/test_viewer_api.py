"""The viewer's JSON API (issue 12) over the demo data: search and timeline scoping, identical
404s, audit naming the patient, study with priors, reports with versions, key images."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient

from solent.app import Archive
from solent.demo import ALICE
from solent.domain.principal import SYSTEM
from solent.index import hl7
from tests.unit.security_fixtures import add_user, demo, demo_client, demo_template, study_of

__all__ = ["demo", "demo_client", "demo_template"]


def _keys(body: dict[str, Any]) -> list[str]:
    return [p["key"] for p in body["patients"]]


def test_search_groups_linked_records_and_hides_unrelated_patients(
    demo: Archive, demo_client: TestClient
) -> None:
    h = add_user(demo, "drza", "ZZA", "clinician")
    r = demo_client.get("/api/viewer/search", params={"name": "demo"}, headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    # Alice (ZZA + ZZB linked: one person, her ZZA record first), Erin (ZZA); never Bob (ZZB).
    assert _keys(body) == ["ZZA|A100002", "ZZA|A100001"]  # by their newest matching study
    assert body["total"] == 2
    alice = next(p for p in body["patients"] if p["key"] == "ZZA|A100001")
    assert alice["records"] == [
        {"trust": "ZZA", "patient_id": "A100001"},
        {"trust": "ZZB", "patient_id": "B7730021"},
    ]
    assert alice["nhs_number"] == ALICE and alice["name"] == "DEMO^ALICE"
    assert alice["study_count"] == 3 and alice["latest_study_date"] == "20260610"
    assert all("BOB" not in p["name"] for p in body["patients"])

    by_nhs = demo_client.get("/api/viewer/search", params={"q": ALICE}, headers=h).json()
    assert _keys(by_nhs) == ["ZZA|A100001"] and by_nhs["total"] == 1
    bob = demo_client.get("/api/viewer/search", params={"name": "bob"}, headers=h).json()
    assert bob == {
        "total": 0,
        "offset": 0,
        "limit": 25,
        "capped": False,
        "max_studies": demo.services.viewer.max_results,
        "detail": None,
        "patients": [],
    }
    mr = demo_client.get(
        "/api/viewer/search", params={"name": "demo", "modality": "MR"}, headers=h
    ).json()
    assert _keys(mr) == ["ZZA|A100001"]  # Alice's MR brain at ZZB
    page = demo_client.get(
        "/api/viewer/search", params={"name": "demo", "limit": 1, "offset": 1}, headers=h
    ).json()
    assert page["total"] == 2 and len(page["patients"]) == 1
    assert demo_client.get("/api/viewer/search", headers=h).status_code == 400


def test_timeline_is_cross_trust_scoped_and_audited(demo: Archive, demo_client: TestClient) -> None:
    h = add_user(demo, "drza", "ZZA", "clinician")
    r = demo_client.get("/api/viewer/patients/ZZA/A100001/timeline", headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    studies = body["studies"]
    assert [s["date"] for s in studies] == ["20260610", "20250302", "20240115"]  # newest first
    mr = studies[0]
    assert mr["trust"] == "ZZB" and mr["patient_id"] == "B7730021"
    assert mr["modalities"] == ["MR"] and mr["body_part"] == "BRAIN"
    assert mr["series_count"] == 1 and mr["instance_count"] == 16
    assert mr["access"] == "relationship" and mr["report_status"] is None
    assert body["break_glass"] is None
    assert body["patient"]["key"] == "ZZA|A100001"

    # Opening the timeline leaves a VIEW record naming the patient.
    views = demo.audit.search(actor_name="drza", action="view")
    assert [(v["patient_issuer"], v["patient_id"]) for v in views] == [("ZZA", "A100001")]
    assert '"viewer timeline"' in views[0]["detail"]

    # The same person through the linked ZZB record: visible too.
    assert (
        demo_client.get("/api/viewer/patients/ZZB/B7730021/timeline", headers=h).status_code == 200
    )
    # Bob (ZZB only) and an unknown record answer exactly alike.
    bob = demo_client.get("/api/viewer/patients/ZZB/B7730444/timeline", headers=h)
    unknown = demo_client.get("/api/viewer/patients/ZZB/NOBODY/timeline", headers=h)
    assert bob.status_code == unknown.status_code == 404
    assert bob.json() == unknown.json() == {"detail": "no such patient"}
    assert bob.headers.get("content-length") == unknown.headers.get("content-length")

    recent = demo_client.get("/api/viewer/recent", headers=h).json()
    assert _keys(recent)[0] in ("ZZB|B7730021", "ZZA|A100001")
    assert len(recent["patients"]) == 1  # one person, opened through two records


def _search(client: TestClient, h: dict[str, str], **params: Any) -> dict[str, Any]:
    r = client.get("/api/viewer/search", params=params, headers=h)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_search_fields(demo: Archive, demo_client: TestClient) -> None:
    """Accession, date range, trust alone, hospital number with and without its trust."""
    h = add_user(demo, "drza", "ZZA", "clinician")
    alice = demo_client.get("/api/viewer/patients/ZZA/A100001/timeline", headers=h).json()
    erin = demo_client.get("/api/viewer/patients/ZZA/A100002/timeline", headers=h).json()
    studies = {"ZZA|A100001": alice["studies"], "ZZA|A100002": erin["studies"]}
    zzb = next(s for s in alice["studies"] if s["trust"] == "ZZB")
    assert _keys(_search(demo_client, h, accession=zzb["accession"])) == ["ZZA|A100001"]
    assert _keys(_search(demo_client, h, accession="NO-SUCH-ACC")) == []
    day = erin["studies"][0]["date"]
    on_day = {k for k, rows in studies.items() if any(s["date"] == day for s in rows)}
    found = _search(demo_client, h, name="demo", date_from=day, date_to=day)
    assert set(_keys(found)) == on_day and "ZZA|A100002" in on_day
    after = max(s["date"] for rows in studies.values() for s in rows)
    assert _keys(_search(demo_client, h, name="demo", date_from=str(int(after) + 1))) == []
    # The trust alone: persons with a record at ZZB that drza may see (Alice, not Bob).
    assert _keys(_search(demo_client, h, trust="ZZB")) == ["ZZA|A100001"]
    assert _keys(_search(demo_client, h, patient_id="B7730021", trust="ZZB")) == ["ZZA|A100001"]
    assert _keys(_search(demo_client, h, patient_id="B7730444", trust="ZZB")) == []  # Bob
    assert _keys(_search(demo_client, h, patient_id="A100001")) == ["ZZA|A100001"]  # own trust
    assert _keys(_search(demo_client, h, patient_id="B7730021")) == []  # not a ZZA number


def test_search_paging_is_honest_past_the_cap(demo: Archive, demo_client: TestClient) -> None:
    h = add_user(demo, "drza", "ZZA", "clinician")
    everyone = _search(demo_client, h, name="demo")
    assert everyone["capped"] is False and everyone["total"] == 2
    pages = [_search(demo_client, h, name="demo", limit=1, offset=o) for o in (0, 1, 2)]
    assert [_keys(p) for p in pages] == [[k] for k in _keys(everyone)] + [[]]
    assert {p["total"] for p in pages} == {2}

    # Alice has 3 studies, Erin 1+: with 2 studies read at most, the count is a floor.
    demo.services.viewer.max_results = 2
    capped = _search(demo_client, h, name="demo")
    assert capped["capped"] is True and capped["max_studies"] == 2
    assert capped["detail"] == "more than 2 studies match: refine your search"
    narrow = _search(demo_client, h, name="demo", patient_id="A100002")
    assert narrow["capped"] is False and narrow["detail"] is None


def test_break_glass_shows_in_the_timeline(demo: Archive, demo_client: TestClient) -> None:
    h = add_user(demo, "drza", "ZZA", "clinician")
    r = demo_client.post(
        "/api/break-glass",
        headers=h,
        json={
            "reason": "emergency",
            "explanation": "unconscious in ED, prior imaging needed",
            "issuer": "ZZB",
            "patient_id": "B7730444",
        },
    )
    assert r.status_code == 201, r.text
    body = demo_client.get("/api/viewer/patients/ZZB/B7730444/timeline", headers=h).json()
    assert body["break_glass"]["grant_id"] == r.json()["grant"]
    assert [s["access"] for s in body["studies"]] == ["break-glass"]
    # The study view's banner shows the grant's expiry too.
    study = body["studies"][0]["study_uid"]
    seen = demo_client.get(f"/api/viewer/studies/{study}", headers=h).json()
    assert seen["break_glass"] == body["break_glass"] and seen["study"]["access"] == "break-glass"
    assert seen["break_glass"]["expires_at"] > datetime.now(UTC).isoformat()


def test_study_priors_reports_and_key_images(demo: Archive, demo_client: TestClient) -> None:
    h = add_user(demo, "drza", "ZZA", "clinician")
    other = add_user(demo, "drzb", "ZZA", "radiologist")
    rows = demo.query.list_studies(SYSTEM, issuer="ZZA", local_id="A100001")
    ct = next(r["study_uid"] for r in rows if r["modalities"] == "CT")
    accession = next(r["accession_number"] for r in rows if r["modalities"] == "CT")

    r = demo_client.get(f"/api/viewer/studies/{ct}", headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["study"]["study_uid"] == ct and body["study"]["modalities"] == ["CT"]
    assert [(s["modality"], s["instance_count"], s["frames"]) for s in body["series"]] == [
        ("CT", 24, 24)
    ]
    # The prior to hang first is the relevant one (R19): the chest X-ray shares the CT chest's
    # body region; the newer MR brain does not, and comes after it.
    priors = body["priors"]
    assert [(p["date"], p["relevance"]) for p in priors] == [
        ("20250302", "region"),
        ("20260610", None),
    ]
    assert ct not in {p["study_uid"] for p in body["priors"]}
    assert body["patient"]["key"] == "ZZA|A100001"

    # Two versions of a report arrive (preliminary, then final).
    for status, text in (("P", "Prelim: no PE."), ("F", "Final: no PE. Small nodule RUL.")):
        demo.index.write(
            lambda c, s=status, x=text: hl7.add_report_version(
                c,
                {
                    "accession_number": accession,
                    "accession_issuer": "ZZA",
                    "status": s,
                    "patient_issuer": "ZZA",
                    "patient_id": "A100001",
                    "procedure": "CT CHEST",
                    "text": x,
                    "interpreter": "DR^RAD",
                    "observed_at": "20240116101500",
                },
            )
        )
    rep = demo_client.get(f"/api/viewer/studies/{ct}/reports", headers=h).json()["reports"]
    assert len(rep) == 1 and rep[0]["status"] == "final" and rep[0]["author"] == "DR^RAD"
    assert rep[0]["text"].startswith("Final")
    assert [(v["version"], v["status"]) for v in rep[0]["versions"]] == [
        (1, "preliminary"),
        (2, "final"),
    ]
    timeline = demo_client.get("/api/viewer/patients/ZZA/A100001/timeline", headers=h).json()
    assert next(s for s in timeline["studies"] if s["study_uid"] == ct)["report_status"] == "final"

    # Key images: mark, list, refuse a foreign instance, delete (author only).
    meta = demo_client.get(f"/dicomweb/studies/{ct}/instances", headers=h).json()
    series_uid = meta[0]["0020000E"]["Value"][0]
    sop = meta[0]["00080018"]["Value"][0]
    r = demo_client.post(
        f"/api/viewer/studies/{ct}/key-images",
        headers=h,
        json={"series_uid": series_uid, "sop_uid": sop, "frame": 1, "note": "nodule"},
    )
    assert r.status_code == 201, r.text
    mark = r.json()
    assert mark["by"] == "drza" and mark["note"] == "nodule" and mark["frame"] == 1
    listed = demo_client.get(f"/api/viewer/studies/{ct}/key-images", headers=h).json()
    assert listed == {"key_images": [mark]}
    bad = demo_client.post(
        f"/api/viewer/studies/{ct}/key-images",
        headers=h,
        json={"series_uid": series_uid, "sop_uid": "1.2.3.4", "frame": 1, "note": ""},
    )
    assert bad.status_code == 400
    frame = demo_client.post(
        f"/api/viewer/studies/{ct}/key-images",
        headers=h,
        json={"series_uid": series_uid, "sop_uid": sop, "frame": 2, "note": ""},
    )
    assert frame.status_code == 400
    url = f"/api/viewer/studies/{ct}/key-images/{mark['id']}"
    assert demo_client.delete(url, headers=other).status_code == 403
    assert demo_client.delete(url, headers=h).status_code == 204
    assert demo_client.get(f"/api/viewer/studies/{ct}/key-images", headers=h).json() == {
        "key_images": []
    }
    kinds = [
        (x["action"], x["study_uid"], x["patient_id"])
        for x in demo.audit.search(actor_name="drza")
        if x["action"] in ("store", "delete")
    ]
    assert sorted(kinds) == [("delete", ct, "A100001"), ("store", ct, "A100001")]


def test_study_of_unrelated_patient_is_404_like_unknown(
    demo: Archive, demo_client: TestClient
) -> None:
    h = add_user(demo, "drza", "ZZA", "clinician")
    bob = study_of(demo, "ZZB", "B7730444")
    for suffix in ("", "/reports", "/key-images"):
        hidden = demo_client.get(f"/api/viewer/studies/{bob}{suffix}", headers=h)
        unknown = demo_client.get(f"/api/viewer/studies/1.2.3.999{suffix}", headers=h)
        assert hidden.status_code == unknown.status_code == 404
        assert hidden.json() == unknown.json() == {"detail": "no such study"}
    alice_zzb = study_of(demo, "ZZB", "B7730021")
    r = demo_client.get(f"/api/viewer/studies/{alice_zzb}", headers=h)
    assert r.status_code == 200
    views = [
        (v["patient_issuer"], v["patient_id"], v["study_uid"])
        for v in demo.audit.search(actor_name="drza", action="view")
        if v["outcome"] == "success"
    ]
    assert views == [("ZZB", "B7730021", alice_zzb)]
