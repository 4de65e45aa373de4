"""MDT prefetch (issue 12): automatic on creation and before the start, warming exactly what the
viewer then asks for (metadata, thumbnails, the preview, frames in the syntax it accepts), run
with the access of whoever it runs as, audited with the meeting; and a participant's reads
carrying the meeting (X-Solent-Purpose)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from solent.app import Archive
from solent.domain.principal import SYSTEM
from solent.services import mdt_prefetch as warm
from solent.services.retrieve_cache import ByteCache
from tests.unit.security_fixtures import add_user, demo, demo_client, demo_template, users

__all__ = ["demo", "demo_client", "demo_template"]

VIEWER = Path(__file__).resolve().parents[2] / "viewer" / "src"
HTJ2K = "1.2.840.10008.1.2.4.201"
# viewer/src/data.ts: what the image loader's Accept asks for (checked below against the file).
TRANSCODED = (
    f'multipart/related; type="image/jphc"; transfer-syntax={HTJ2K}, '
    "multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1; q=0.5"
)
AS_STORED = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def _studies(demo: Archive, issuer: str, local_id: str) -> list[str]:
    return [
        r["study_uid"] for r in demo.query.list_studies(SYSTEM, issuer=issuer, local_id=local_id)
    ]


def _create(demo: Archive, client: TestClient, h: dict[str, str], **extra: Any) -> dict[str, Any]:
    body = {
        "title": "Lung",
        "date": "2026-12-07",
        "team": "Lung MDT",
        "items": [
            {
                "issuer": "ZZA",
                "patient_id": "A100001",
                "study_uids": _studies(demo, "ZZA", "A100001"),
            },
            {
                "issuer": "ZZA",
                "patient_id": "A100002",
                "study_uids": _studies(demo, "ZZA", "A100002"),
            },
        ],
        **extra,
    }
    r = client.post("/api/mdt/meetings", headers=h, json=body)
    assert r.status_code == 201, r.text
    meeting: dict[str, Any] = r.json()
    return meeting


def _sort_key(ds: dict[str, Any]) -> tuple[float, float]:
    """viewer/src/data.ts sortKey, written again here from the TypeScript."""
    ipp = ds.get("00200032", {}).get("Value")
    iop = ds.get("00200037", {}).get("Value")
    pos = 0.0
    if ipp and iop and len(iop) == 6:
        n = [
            iop[1] * iop[5] - iop[2] * iop[4],
            iop[2] * iop[3] - iop[0] * iop[5],
            iop[0] * iop[4] - iop[1] * iop[3],
        ]
        pos = ipp[0] * n[0] + ipp[1] * n[1] + ipp[2] * n[2]
    return pos, float((ds.get("00200013", {}).get("Value") or [0])[0])


def _viewer_reads(client: TestClient, h: dict[str, str], study: str) -> list[tuple[str, str]]:
    """(url, Accept) of what the viewer fetches opening ``study``: thumbnails, series metadata,
    the preview of the first series' middle slice and every frame (viewer/src/*.ts)."""
    base = f"/dicomweb/studies/{study}"
    series = client.get(f"{base}/series", headers={**h, "Accept": "application/dicom+json"})
    rows = sorted(series.json(), key=lambda r: int(r["00200011"]["Value"][0]))
    out = [(f"{base}/thumbnail", "image/*")]
    for n, row in enumerate(rows):
        s = f"{base}/series/{row['0020000E']['Value'][0]}"
        out += [(f"{s}/metadata", "application/dicom+json"), (f"{s}/thumbnail", "image/*")]
        docs = client.get(f"{s}/metadata", headers={**h, "Accept": "application/dicom+json"})
        frames = []
        for ds in sorted(docs.json(), key=_sort_key):
            sop = ds["00080018"]["Value"][0]
            ts = ds.get("00083002", ds.get("00020010", {})).get("Value", [""])[0]
            count = int((ds.get("00280008", {}).get("Value") or [1])[0])
            accept = AS_STORED if ts in warm.VIEWER_DECODES else TRANSCODED
            frames += [(f"{s}/instances/{sop}/frames/{f}", accept) for f in range(1, count + 1)]
        if n == 0 and frames:
            out.append((frames[len(frames) // 2][0] + "/rendered?quality=85", "image/jpeg"))
        out += frames
    return out


def test_the_viewer_mirror_matches_its_sources() -> None:
    """The Python mirror of the viewer's requests is what viewer/src says."""
    data = (VIEWER / "data.ts").read_text()

    def uids(name: str) -> set[str]:
        found = re.search(rf"const {name} = new Set\(\[(.*?)\]\);", data, re.S)
        assert found, name
        return set(re.findall(r"'([0-9.]+)'", found.group(1)))

    assert uids("NATIVE") == warm.VIEWER_NATIVE
    assert uids("BROWSER_DECODES") == warm.VIEWER_DECODES
    assert f"HTJ2K_LOSSLESS = '{HTJ2K}'" in data
    preview = (VIEWER / "preview.ts").read_text()
    assert "/rendered?quality=85`, { headers: { Accept: 'image/jpeg'" in preview
    assert (warm.PREVIEW.quality, warm.PREVIEW.media_type) == (85, "image/jpeg")


def test_creating_a_meeting_warms_what_the_viewer_asks_for(
    demo: Archive, demo_client: TestClient
) -> None:
    coord = add_user(demo, "coord", "ZZA", "mdt_coordinator")
    retrieve = demo.services.retrieve
    frames_before = len(retrieve.frames)
    m = _create(demo, demo_client, coord)
    demo.services.mdt.wait_prefetch(m["id"], 120)
    got = demo_client.get(f"/api/mdt/meetings/{m['id']}", headers=coord).json()
    assert got["prefetch"]["state"] == "done"
    for item in got["items"]:
        assert item["prefetch"]["state"] == "done" and item["prefetch"]["warmed"] > 3, item
    assert len(retrieve.frames) > frames_before  # native frames made as lossless HTJ2K

    reads = [r for s in got["items"][0]["study_uids"] for r in _viewer_reads(demo_client, coord, s)]
    assert any("/rendered?quality=85" in url for url, _ in reads)
    transcoded = [url for url, accept in reads if accept == TRANSCODED]
    assert transcoded, "the demo's native CT/MR frames are asked for as HTJ2K"
    misses = (retrieve.responses.misses, retrieve.frames.misses)
    hits = (retrieve.responses.hits, retrieve.frames.hits)
    for url, accept in reads:
        r = demo_client.get(url, headers={**coord, "Accept": accept})
        assert r.status_code == 200, (url, r.text)
        if accept == TRANSCODED:
            assert r.headers["content-type"].startswith('multipart/related; type="image/jphc"')
            assert f"transfer-syntax={HTJ2K}" in r.content[:400].decode("latin-1")
    # Every response and transcoded frame the viewer asked for was ready: not one miss.
    assert (retrieve.responses.misses, retrieve.frames.misses) == misses
    assert retrieve.responses.hits > hits[0]
    assert retrieve.frames.hits - hits[1] >= len(transcoded)

    # A preview other than the viewer's (quality 90) was not what got warmed.
    preview = next(url for url, _ in reads if url.endswith("?quality=85"))
    other = demo_client.get(
        preview.replace("quality=85", "quality=90"), headers={**coord, "Accept": "image/jpeg"}
    )
    assert other.status_code == 200, other.text
    assert retrieve.responses.misses == misses[0] + 1, (preview, other.headers)


def test_prefetch_runs_as_the_caller_and_is_audited(demo: Archive, demo_client: TestClient) -> None:
    coord = add_user(demo, "coord", "ZZA", "mdt_coordinator")
    drzb = add_user(demo, "drzb", "ZZB", "clinician")  # sees Alice (linked at ZZB), not Erin
    m = _create(demo, demo_client, coord)
    mdt = demo.services.mdt
    mdt.wait_prefetch(m["id"], 120)
    alice, erin = m["items"]
    # Empty caches; then drzb asks for a prefetch: it runs as drzb.
    retrieve = demo.services.retrieve
    retrieve.responses = ByteCache(retrieve.responses.max_bytes, len)
    retrieve.frames = ByteCache(retrieve.frames.max_bytes, len)
    r = demo_client.post(f"/api/mdt/meetings/{m['id']}/prefetch", headers=drzb)
    assert r.status_code == 202 and r.json()["started"] is True
    mdt.wait_prefetch(m["id"], 120)
    items = demo_client.get(f"/api/mdt/meetings/{m['id']}", headers=coord).json()["items"]
    assert [i["prefetch"]["state"] for i in items] == ["done", "not available"]
    assert items[1]["prefetch"]["warmed"] == 0

    for item, warmed in ((alice, True), (erin, False)):
        for study in item["study_uids"]:
            before = retrieve.responses.misses
            r = demo_client.get(
                f"/dicomweb/studies/{study}/thumbnail", headers={**coord, "Accept": "image/*"}
            )
            assert r.status_code == 200
            assert (retrieve.responses.misses == before) is warmed, study

    tag = f"mdt:{m['id']}"
    trail = demo.audit.search(patient_issuer="ZZA", patient_id="A100001", actor_name="drzb")
    prefetched = [x for x in trail if x["action"] == "retrieve" and x["purpose"] == tag]
    assert len(prefetched) == 1 and '"state":"done"' in prefetched[0]["detail"]
    reads = [x for x in trail if x["action"] == "view" and "mdt prefetch" in (x["detail"] or "")]
    assert reads and {x["purpose"] for x in reads} == {tag}
    erin_trail = demo.audit.search(patient_issuer="ZZA", patient_id="A100002", actor_name="drzb")
    assert [x for x in erin_trail if x["outcome"] == "success"] == []
    coord_trail = demo.audit.search(patient_issuer="ZZA", patient_id="A100002", actor_name="coord")
    assert any(x["action"] == "retrieve" and x["purpose"] == tag for x in coord_trail)


def test_warming_before_the_start_runs_once_as_the_coordinator(
    demo: Archive, demo_client: TestClient
) -> None:
    coord = add_user(demo, "coord", "ZZA", "mdt_coordinator")
    bad = demo_client.post(
        "/api/mdt/meetings",
        headers=coord,
        json={"title": "x", "date": "2026-12-07", "team": "t", "time": "25:00", "items": []},
    )
    assert bad.status_code == 400 and "time" in bad.text
    m = _create(demo, demo_client, coord, time="14:30")
    assert m["time"] == "14:30"
    mdt = demo.services.mdt
    mdt.wait_prefetch(m["id"], 120)

    def at(hhmm: str) -> datetime:
        return datetime.fromisoformat(f"2026-12-07T{hhmm}:00").astimezone()

    def due(hhmm: str) -> list[int]:
        mdt.clock = lambda: at(hhmm)
        return mdt.due_prefetches()

    assert due("13:00") == []  # too early
    assert due("14:31") == []  # started already
    assert due("14:05") == [m["id"]]
    mdt.wait_prefetch(m["id"], 120)
    assert due("14:10") == []  # warmed since the lead began
    first = demo.audit.search(actor_name="coord")
    assert [x for x in first if x["action"] == "retrieve" and x["purpose"] == f"mdt:{m['id']}"]

    # A coordinator disabled since warms nothing.
    other = _create(demo, demo_client, coord, time="16:00")
    mdt.wait_prefetch(other["id"], 120)
    users(demo).disable(SYSTEM, "coord")
    assert due("15:45") == []


def test_a_participants_reads_carry_the_meeting(demo: Archive, demo_client: TestClient) -> None:
    coord = add_user(demo, "coord", "ZZA", "mdt_coordinator")
    drza = add_user(demo, "drza", "ZZA", "clinician")
    ris = add_user(demo, "risza", "ZZA", "integration")  # may read, takes part in no meeting
    m = _create(demo, demo_client, coord)
    demo.services.mdt.wait_prefetch(m["id"], 120)
    study = m["items"][0]["study_uids"][0]
    series = demo_client.get(f"/api/viewer/studies/{study}", headers=coord).json()["series"][0]
    url = f"/dicomweb/studies/{study}/series/{series['series_uid']}/metadata"
    tag = f"mdt:{m['id']}"

    for who, h, expected in (("drza", drza, tag), ("risza", ris, None)):
        r = demo_client.get(url, headers={**h, "X-Solent-Purpose": tag})
        assert r.status_code == 200, r.text
        trail = demo.audit.search(actor_name=who, study_uid=study)
        assert trail and {x["purpose"] for x in trail} == {expected}, (who, trail)

    r = demo_client.get(url, headers={**drza, "X-Solent-Purpose": "mdt:lung"})
    assert r.status_code == 400 and "mdt:<meeting id>" in r.json()["detail"]
    r = demo_client.get(url, headers={**drza, "X-Solent-Purpose": "mdt:99999"})  # no such meeting
    assert r.status_code == 200
    assert demo.audit.search(actor_name="drza", study_uid=study)[-1]["purpose"] is None

    # A frame read (one coalesced VIEW per caller, study and channel) carries it too.
    frame = demo_client.get(
        f"/dicomweb/studies/{study}/series/{series['series_uid']}/metadata",
        headers={**drza, "Accept": "application/dicom+json"},
    ).json()[0]["00080018"]["Value"][0]
    f_url = f"/dicomweb/studies/{study}/series/{series['series_uid']}/instances/{frame}/frames/1"
    r = demo_client.get(f_url, headers={**drza, "Accept": AS_STORED, "X-Solent-Purpose": tag})
    assert r.status_code == 200
    views = [
        x
        for x in demo.audit.search(actor_name="drza", study_uid=study)
        if "wado-rs frames" in (x["detail"] or "")
    ]
    assert views and views[-1]["purpose"] == tag
