"""The /frames fast path answers exactly as the FastAPI route it bypasses (issue 14): the same
status, headers and bytes for frames and for every error, the same refusal audited once."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient

from solent.app import Archive
from solent.index import reads
from solent.protocols.dicomweb import frames_fast, wado_rs
from solent.protocols.http import create_app
from tests.unit.security_fixtures import add_user, demo, demo_template, study_of

__all__ = ["demo", "demo_template"]

NATIVE = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
BOUNDARY = re.compile(r"boundary=([0-9a-f]+)")


@pytest.fixture
def clients(demo: Archive) -> Iterator[tuple[TestClient, TestClient]]:
    """(with the fast path, without it: FastAPI's route) on the same archive."""
    fast_app, route_app = create_app(demo), create_app(demo)
    stack = route_app.router.middleware_stack
    assert isinstance(stack, frames_fast.FramesFastPath)
    route_app.router.middleware_stack = stack.app  # type: ignore[assignment]
    with (
        TestClient(fast_app, raise_server_exceptions=False) as fast,
        TestClient(route_app, raise_server_exceptions=False) as route,
    ):
        yield fast, route


def _normalised(r: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body with the (random) multipart boundary replaced."""
    found = BOUNDARY.search(r.headers.get("content-type", ""))
    body: bytes = r.content
    headers = [(k.lower(), v) for k, v in r.headers.items() if k.lower() != "date"]
    if found:
        b = found.group(1)
        body = body.replace(b.encode(), b"BOUNDARY")
        headers = [(k, v.replace(b, "BOUNDARY")) for k, v in headers]
    return r.status_code, headers, body


def _instance(demo: Archive, study: str) -> tuple[str, str, Any]:
    inst = reads.find_instances(demo.index, study, with_frames=True)[0]
    return inst.series_uid, inst.sop_instance_uid, inst


def _zzb_clinician_and_instance(demo: Archive) -> tuple[Any, str, str, str, Any]:
    """A ZZB clinician's headers and the first instance of a demo study held at ZZB: (headers,
    study, series, SOP instance UID, the stored instance)."""
    h = add_user(demo, "drzb", "ZZB", "clinician")
    study = study_of(demo, "ZZB", "B7730444")
    series, sop, inst = _instance(demo, study)
    return h, study, series, sop, inst


def test_fast_path_is_taken_and_equals_the_route(
    demo: Archive, clients: tuple[TestClient, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, route = clients
    h, study, series, sop, inst = _zzb_clinician_and_instance(demo)
    base = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    taken: list[str] = []
    answer = frames_fast._answer

    def counted(handler: Any, *args: Any) -> Any:
        taken.append(handler.__name__)
        return answer(handler, *args)

    monkeypatch.setattr(frames_fast, "_answer", counted)
    total = inst.number_of_frames
    cases: list[tuple[str, dict[str, str]]] = [
        (f"{base}/frames/1", {"Accept": NATIVE}),
        (f"{base}/frames/1", {"Accept": ANY}),
        (f"{base}/frames/1", {}),
        (f"{base}/frames/1,1", {"Accept": NATIVE}),  # several frames: streamed
        (f"{base}/frames/{total + 1}", {"Accept": NATIVE}),  # out of range
        (f"{base}/frames/0", {"Accept": NATIVE}),
        (f"{base}/frames/1;2", {"Accept": NATIVE}),
        (f"{base}/frames/1", {"Accept": "image/png"}),  # not acceptable
        (f"{base}/frames/1", {"Accept": 'multipart/related; type="image/jls"'}),
        (f"/dicomweb/studies/1.2.3/series/{series}/instances/{sop}/frames/1", {}),  # unknown
        (f"/dicomweb/studies/x..y/series/{series}/instances/{sop}/frames/1", {}),  # not a UID
    ]
    for path, extra in cases:
        a, b = fast.get(path, headers={**h, **extra}), route.get(path, headers={**h, **extra})
        assert _normalised(a) == _normalised(b), (path, extra, a.text[:300], b.text[:300])
    assert taken.count("frames_at_once") == len(cases)  # every one came the fast way
    etag = fast.get(f"{base}/frames/1", headers={**h, "Accept": NATIVE}).headers["etag"]
    for client in (fast, route):
        r = client.get(f"{base}/frames/1", headers={**h, "Accept": NATIVE, "If-None-Match": etag})
        assert r.status_code == 304 and r.content == b""
    # Without credentials the security middleware answers, before any route.
    path = f"{base}/frames/1"
    assert _normalised(fast.get(path)) == _normalised(route.get(path))
    assert fast.get(path).status_code == 401


def test_single_frame_body_is_the_stored_frame(
    demo: Archive, clients: tuple[TestClient, TestClient]
) -> None:
    fast, _route = clients
    h, study, series, sop, inst = _zzb_clinician_and_instance(demo)
    with demo.store.open(inst.blob_key) as fp:
        ds = pydicom.dcmread(fp)
    frame_bytes = len(ds.PixelData) // (inst.number_of_frames or 1)
    expected = ds.PixelData[:frame_bytes]
    url = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1"
    r = fast.get(url, headers={**h, "Accept": NATIVE})
    assert r.status_code == 200, r.text
    boundary = BOUNDARY.search(r.headers["content-type"])
    assert boundary is not None
    b = boundary.group(1)
    assert r.headers["content-type"] == (
        f'multipart/related; type="application/octet-stream"; boundary={b}'
    )
    head = (
        f"--{b}\r\nContent-Type: application/octet-stream; "
        "transfer-syntax=1.2.840.10008.1.2.1\r\n\r\n"
    ).encode()
    assert r.content == head + expected + f"\r\n--{b}--\r\n".encode()
    assert int(r.headers["content-length"]) == len(r.content)
    assert r.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert r.headers["vary"] == "Accept" and "content-encoding" not in r.headers


def test_a_study_the_caller_may_not_see_is_an_unknown_one(
    demo: Archive, clients: tuple[TestClient, TestClient]
) -> None:
    """Not visible: 404 with the words of "unknown", and one refusal audited per request."""
    fast, route = clients
    h = add_user(demo, "drza", "ZZA", "clinician")  # Bob is at ZZB only
    bob = study_of(demo, "ZZB", "B7730444")
    series, sop, _inst = _instance(demo, bob)
    hidden = f"/dicomweb/studies/{bob}/series/{series}/instances/{sop}/frames/1"
    unknown = f"/dicomweb/studies/1.2.3.4/series/{series}/instances/{sop}/frames/1"

    def refusals() -> int:
        return sum(1 for r in demo.audit.search() if r["action"] == "permission-denied")

    before = refusals()
    a = fast.get(hidden, headers={**h, "Accept": NATIVE})
    assert refusals() == before + 1
    b = route.get(hidden, headers={**h, "Accept": NATIVE})
    assert refusals() == before + 2
    again = fast.get(hidden, headers={**h, "Accept": NATIVE})
    assert refusals() == before + 3  # a refusal is never remembered
    c = fast.get(unknown, headers={**h, "Accept": NATIVE})
    assert a.status_code == b.status_code == again.status_code == c.status_code == 404
    assert _normalised(a) == _normalised(b) == _normalised(again)
    assert a.json()["detail"] == c.json()["detail"].replace("1.2.3.4", bob)


def test_other_paths_go_to_the_router(
    demo: Archive, clients: tuple[TestClient, TestClient]
) -> None:
    fast, route = clients
    h, study, series, sop, _inst = _zzb_clinician_and_instance(demo)
    base = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1"
    for path, method in ((base + "/rendered", "GET"), (base + "/", "GET"), (base, "POST")):
        a = fast.request(method, path, headers=h, follow_redirects=False)
        b = route.request(method, path, headers=h, follow_redirects=False)
        assert _normalised(a)[:2] == _normalised(b)[:2], path
    assert frames_fast.FRAMES_PATH.match(base) is not None
    assert frames_fast.FRAMES_PATH.match(base + "/rendered") is None
    # The pixel data's bulk data URI shares the frames' answer (through the router).
    instance = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    bulk = fast.get(f"{instance}/bulkdata/7FE00010", headers={**h, "Accept": NATIVE})
    frame = fast.get(base, headers={**h, "Accept": NATIVE})
    assert bulk.status_code == frame.status_code == 200, bulk.text
    assert _normalised(bulk)[2] == _normalised(frame)[2]


def test_repeat_frames_are_answered_at_once_and_recorded_once(
    demo: Archive, clients: tuple[TestClient, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first frame of a study goes through the thread (access check, VIEW record); the
    next ones are answered in the event loop with the same bytes and no record; a frame not
    in the page cache, or any other case, goes through the thread again."""
    fast, _route = clients
    h, study, series, sop, _inst = _zzb_clinician_and_instance(demo)
    url = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1"
    threaded: list[str] = []
    real = wado_rs.retrieve_frames

    def in_thread(*args: Any) -> Any:
        threaded.append(args[-1])
        return real(*args)

    monkeypatch.setattr(wado_rs, "retrieve_frames", in_thread)

    def views() -> int:
        return sum(
            1
            for r in demo.audit.search()
            if r["action"] == "view" and r["actor_name"] == "drzb" and r["study_uid"] == study
        )

    answers = [_normalised(fast.get(url, headers={**h, "Accept": NATIVE})) for _ in range(3)]
    assert threaded == ["1"] and views() == 1
    assert answers[0] == answers[1] == answers[2] and answers[0][0] == 200
    monkeypatch.setattr(type(demo.store), "cached_range_into", lambda *_: False)  # not cached
    assert _normalised(fast.get(url, headers={**h, "Accept": NATIVE})) == answers[0]
    assert threaded == ["1", "1"] and views() == 1
