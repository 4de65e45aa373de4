"""DICOMweb's short-lived access decisions: a grant is reused for a few seconds, never longer,
never for another principal, and a refusal is never reused."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import update

from solent import ttl_cache
from solent.app import Archive
from solent.domain.principal import Principal, PrincipalKind
from solent.index import schema as t
from solent.services.retrieve import RetrieveService
from solent.services.retrieve_cache import AccessCache, ByteCache
from tests.unit.security_fixtures import add_user, demo, demo_client, demo_template, study_of

__all__ = ["demo", "demo_client", "demo_template"]

JSON = {"Accept": "application/dicom+json"}


class Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


def _service(client: TestClient) -> RetrieveService:
    service = client.app.state.services.retrieve  # type: ignore[attr-defined]
    assert isinstance(service, RetrieveService)
    return service


def _break_glass(client: TestClient, headers: dict[str, str], study: str) -> None:
    body = {
        "reason": "emergency",
        "explanation": "unconscious, no records here",
        "study_uid": study,
    }
    r = client.post("/api/break-glass", headers=headers, json=body)
    assert r.status_code == 201, r.text


def _expire_grants(archive: Archive) -> None:
    """Time runs out on every grant. Real expiry writes nothing, so no cache hears of it: the
    test's stand-in (moving the expiry into the past) must not be announced either."""
    ttl_cache.watch(None)
    archive.index.write(
        lambda conn: conn.execute(
            update(t.break_glass).values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
        )
    )


def test_expired_break_glass_is_not_served_beyond_the_ttl(
    demo: Archive, demo_client: TestClient
) -> None:
    h = add_user(demo, "drza", "ZZA", "clinician")
    bob = study_of(demo, "ZZB", "B7730444")
    url = f"/dicomweb/studies/{bob}/metadata"
    assert demo_client.get(url, headers={**h, **JSON}).status_code == 404
    _break_glass(demo_client, h, bob)
    # A refusal is never remembered: the grant works at once.
    assert demo_client.get(url, headers={**h, **JSON}).status_code == 200
    cache = _service(demo_client).access_cache
    clock = Clock()
    cache.clock = clock
    cache.clear()
    assert demo_client.get(url, headers={**h, **JSON}).status_code == 200  # decision cached
    _expire_grants(demo)
    clock.now += cache.ttl / 2
    # Within the TTL (documented: SOLENT_DICOMWEB_ACCESS_CACHE_SECONDS) the decision stands.
    assert demo_client.get(url, headers={**h, **JSON}).status_code == 200
    clock.now += cache.ttl / 2 + 0.01
    r = demo_client.get(url, headers={**h, **JSON})
    assert r.status_code == 404, r.text
    assert "break-glass" in r.json()["detail"]


def test_another_principal_never_gets_a_cached_decision(
    demo: Archive, demo_client: TestClient
) -> None:
    glass = add_user(demo, "drza", "ZZA", "clinician")
    other = add_user(demo, "drzb", "ZZA", "clinician")
    bob = study_of(demo, "ZZB", "B7730444")
    _break_glass(demo_client, glass, bob)
    url = f"/dicomweb/studies/{bob}/metadata"
    assert demo_client.get(url, headers={**glass, **JSON}).status_code == 200
    # Same trust, same roles, the very next request: still refused (and audited as such).
    assert demo_client.get(url, headers={**other, **JSON}).status_code == 404
    denied = demo.audit.search(patient_issuer="ZZB", patient_id="B7730444")
    assert any(x["action"] == "permission-denied" and x["actor_name"] == "drzb" for x in denied)


def test_access_cache_keys_on_everything_that_decides_access() -> None:
    clock = Clock()
    cache = AccessCache(5.0, clock)
    who = Principal(PrincipalKind.USER, "drza", "ZZA", frozenset({"clinician"}), "10.0.0.1")
    cache.grant(who, "1.2.3", "view")
    assert cache.granted(who, "1.2.3", "view")
    # Another port/proxy address of the same user shares the decision...
    moved = Principal(who.kind, who.name, who.trust, who.roles, "10.0.0.2")
    assert cache.granted(moved, "1.2.3", "view")
    # ...another name, trust, role set, kind, study or action does not.
    for other in (
        Principal(PrincipalKind.USER, "drzb", "ZZA", who.roles),
        Principal(PrincipalKind.USER, "drza", "ZZB", who.roles),
        Principal(PrincipalKind.USER, "drza", "ZZA", frozenset({"auditor"})),
        Principal(PrincipalKind.NODE, "drza", "ZZA", who.roles),
    ):
        assert not cache.granted(other, "1.2.3", "view")
    assert not cache.granted(who, "1.2.4", "view")
    assert not cache.granted(who, "1.2.3", "retrieve")
    clock.now += 5.0
    assert not cache.granted(who, "1.2.3", "view")
    off = AccessCache(0.0, clock)
    off.grant(who, "1.2.3", "view")
    assert not off.granted(who, "1.2.3", "view")


def test_byte_cache_is_bounded_and_evicts_least_recently_used() -> None:
    cache: ByteCache[bytes] = ByteCache(100, len)
    cache.put("a", b"x" * 20)
    cache.put("b", b"y" * 20)
    assert cache.get("a") == b"x" * 20  # a is now the most recent
    for k in range(4):
        cache.put(k, b"z" * 20)
    assert cache.get("b") is None and cache.get("a") is not None
    cache.put("huge", b"h" * 60)  # more than a quarter of the budget: not kept
    assert cache.get("huge") is None


def test_frames_reuse_the_access_decision_within_the_ttl(
    demo: Archive, demo_client: TestClient
) -> None:
    """A viewer's frame requests: one access decision (index read) per study and caller per
    TTL, not one per frame; after the TTL the next frame is checked again."""
    h = add_user(demo, "drzb", "ZZB", "clinician")
    study = study_of(demo, "ZZB", "B7730444")
    found = demo_client.get(f"/dicomweb/studies/{study}/instances", headers={**h, **JSON})
    assert found.status_code == 200, found.text
    first = found.json()[0]
    series, sop = first["0020000E"]["Value"][0], first["00080018"]["Value"][0]
    url = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1"
    service = _service(demo_client)
    checks: list[str] = []
    real = demo.access.check_study

    def counted(*args: object, **kwargs: object) -> object:
        checks.append(str(args[1]))
        return real(*args, **kwargs)

    demo.access.check_study = counted  # type: ignore[method-assign]
    clock = Clock()
    service.access_cache.clock = clock
    service.access_cache.clear()
    for _ in range(5):
        r = demo_client.get(url, headers={**h, "Accept": "multipart/related; type=*/*"})
        assert r.status_code == 200, r.text
    assert checks == [study]
    clock.now += service.access_cache.ttl + 0.01
    assert (
        demo_client.get(url, headers={**h, "Accept": "multipart/related; type=*/*"}).status_code
        == 200
    )
    assert checks == [study, study]


def test_frames_say_they_vary_with_accept(demo: Archive, demo_client: TestClient) -> None:
    """Frames are cacheable for a year (immutable) and their syntax follows Accept: a browser
    cache must not hand an HTJ2K answer to a request for uncompressed pixels (the viewer warms
    its HTTP cache with frames before its image loader asks for them)."""
    h = add_user(demo, "drzv", "ZZB", "clinician")
    study = study_of(demo, "ZZB", "B7730444")
    first = demo_client.get(f"/dicomweb/studies/{study}/instances", headers={**h, **JSON}).json()[0]
    series, sop = first["0020000E"]["Value"][0], first["00080018"]["Value"][0]
    url = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1"
    native = "multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    htj2k = 'multipart/related; type="image/jphc"; transfer-syntax=1.2.840.10008.1.2.4.201'
    answers = [demo_client.get(url, headers={**h, "Accept": a}) for a in (native, htj2k)]
    for r in answers:
        assert r.status_code == 200, r.text
        assert r.headers["vary"] == "Accept"
    assert "application/octet-stream" in answers[0].text[:400]
    assert "image/jphc" in answers[1].text[:400]
