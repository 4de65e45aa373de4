"""FHIR search and read parameters, the identity API's parameters and POST bodies, and IHE Invoke
Image Display (IID) launch parameters from hostile clients, against the demo archive (four
trusts, linked records, reports): never a 500, never a hang, a readable body on every refusal,
and nothing stored changes on a 4xx (or on any read). The parameter names and body schemas come
from the app's own routes (its OpenAPI document), so a parameter or field added to a route is
fuzzed without touching this file."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from solent.app import Archive, build_archive
from solent.demo import load_demo
from solent.domain.principal import SYSTEM
from solent.index import schema as t
from solent.protocols.http import create_app
from solent.settings import load_settings
from tests.conftest import admin_headers, http_headers
from tests.fuzz.conftest import fuzz_settings

pytestmark = pytest.mark.timeout(900)
PREFIXES = ("/fhir/", "/api/identity/", "/IHEInvokeImageDisplay", "/trusts/", "/iid/")
#: Tables a refused request may write to: the audit trail (refusals are audited).
AUDIT_TABLES = {"audit_log", "audit_head"}
#: What a launch may redirect to: the viewer, or the study list (issue 11: visible studies only).
IID_TARGETS = ("/viewer/", "/iid/studies")
TEXT = st.characters(codec="utf-8", exclude_categories=("Cs",))
#: A request that takes longer than this is a hang for this test (not a speed target): 10 s
#: was once exceeded (11 s, a first call) on a 2-core machine running two suites at once.
HANG_S = 30.0
SYSTEMS = [
    "https://fhir.nhs.uk/Id/nhs-number",
    "https://solent-pacs.nhs.example/Id/ZZA/patient-id",
    "https://solent-pacs.nhs.example/Id/ZZB/accession",
    "urn:dicom:uid",
    "",
    "|",
]
PIECES = st.sampled_from(
    [
        "9990000018",
        "9990000026",
        "999 000 0018",
        "A100001",
        "ZZA",
        "ZZB",
        "Patient/1",
        "Patient/",
        "Patient/-1",
        "Patient/" + "9" * 30,
        "1",
        "0",
        "-1",
        str(2**63),
        "9" * 40,
        "1e309",
        "²",
        "٣",
        "|",
        "||",
        "*",
        "%",
        "_",
        "'",
        "\\",
        "\x00",
        " ",
        "..",
        "1.2.840.10008",
        "urn:oid:1.2.3",
        "20250101",
        "open",
        "resolved",
        "received",
        "held",
        "STUDY",
        "PATIENT",
        "study",
        "^^^NHS",
        "^^^ZZA",
        "^^^ZZB^ISO",
        "9990000026^^^NHS",
        "B7730444^^^ZZB",
        "A100001^^^ZZA",
        "1.2.3\\4.5.6",
        "1.2.3,4.5.6",
        "true",
        "false",
        "null",
        "{}",
        "[]",
    ]
)


#: Identifiers the demo holds, so that bodies also reach the records and the changes themselves.
REAL = st.sampled_from(
    ["ZZA", "ZZB", "ZZC", "ZZD", "A100001", "B7730021", "B7730444", "C-55501", "D000777"]
)

RECORDS = st.sampled_from(
    [("ZZA", "A100001"), ("ZZB", "B7730021"), ("ZZB", "B7730444"), ("ZZC", "C-55501")]
)


@st.composite
def value(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["token", "pieces", "text", "long"]))
    if kind == "token":
        system = draw(st.sampled_from(SYSTEMS))
        return f"{system}|{''.join(draw(st.lists(PIECES, min_size=1, max_size=3)))}"
    if kind == "pieces":
        return "".join(draw(st.lists(PIECES, max_size=5)))
    if kind == "long":
        return draw(PIECES) * draw(st.integers(50, 400))
    return draw(st.text(TEXT, max_size=80))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Archive]]:
    archive = build_archive(load_settings(environ={}, data_dir=tmp_path_factory.mktemp("f") / "v"))
    load_demo(archive)
    with TestClient(create_app(archive), raise_server_exceptions=False) as c:
        c.headers.update(http_headers(archive))
        yield c, archive
    archive.close()


def _openapi() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="solent-fuzz-routes-") as scratch:
        archive = build_archive(load_settings(environ={}, data_dir=Path(scratch)))
        try:
            doc: dict[str, Any] = create_app(archive).openapi()
        finally:
            archive.close()
    return doc


OPENAPI = _openapi()


def _routes() -> list[tuple[str, list[str]]]:
    """(path, query parameter names) of every GET route under /fhir, /api/identity and the IID
    launch, from the app's OpenAPI document."""
    out = []
    for path, ops in OPENAPI["paths"].items():
        if path.startswith(PREFIXES) and "get" in ops:
            params = ops["get"].get("parameters", [])
            out.append((path, [p["name"] for p in params if p["in"] == "query"]))
    return sorted(out)


def _schema(ref_or_schema: dict[str, Any]) -> dict[str, Any]:
    ref = ref_or_schema.get("$ref")
    if ref is None:
        return ref_or_schema
    found: dict[str, Any] = OPENAPI["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return found


def _post_routes() -> list[tuple[str, dict[str, Any] | None]]:
    """(path, JSON body schema or None) of every POST route under /api/identity."""
    out = []
    for path, ops in OPENAPI["paths"].items():
        if path.startswith("/api/identity/") and "post" in ops:
            body = ops["post"].get("requestBody", {}).get("content", {}).get("application/json")
            out.append((path, _schema(body["schema"]) if body else None))
    return sorted(out, key=lambda r: r[0])


ROUTES = _routes()
POST_ROUTES = _post_routes()
IID_PARAMS = sorted(
    {p["name"] for p in OPENAPI["paths"]["/IHEInvokeImageDisplay"]["get"]["parameters"]}
    - {"authorization"}
)


def test_the_fuzzed_routes_are_the_ones_meant() -> None:
    paths = {p for p, _ in ROUTES}
    assert {"/fhir/Patient", "/fhir/ImagingStudy", "/fhir/DiagnosticReport"} <= paths
    assert {"/api/identity/person", "/api/identity/links", "/api/identity/history"} <= paths
    assert any(names for _, names in ROUTES)
    assert {"/IHEInvokeImageDisplay", "/trusts/{trust}/IHEInvokeImageDisplay"} <= paths
    posts = {p for p, _ in POST_ROUTES}
    assert {"/api/identity/link", "/api/identity/unlink", "/api/identity/sensitive"} <= posts
    assert {"requestType", "patientID", "studyUID", "accessionNumber"} <= set(IID_PARAMS)


@fuzz_settings(share=0.25)
@given(
    route=st.sampled_from(ROUTES),
    path_value=value(),
    params=st.data(),
)
def test_fhir_and_identity_parameters_never_fail_with_500(
    demo: tuple[TestClient, Archive],
    route: tuple[str, list[str]],
    path_value: str,
    params: st.DataObject,
) -> None:
    c, archive = demo
    path, names = route
    names_or_junk = st.one_of(st.sampled_from(names or ["_id"]), st.text(TEXT, max_size=12))
    query = params.draw(st.lists(st.tuples(names_or_junk, value()), max_size=5))
    url = path
    if "{" in path:
        head, _, rest = path.partition("{")
        url = head + quote(path_value, safe="")
        url += rest.partition("}")[2]
    before = archive.index.stats()
    started = time.monotonic()
    r = c.get(url, params=query)
    elapsed = time.monotonic() - started
    assert r.status_code < 500, (url, query, r.status_code, r.text[:500])
    assert r.status_code in (200, 303, 400, 401, 403, 404, 406, 409, 413, 429), (
        url,
        query,
        r.status_code,
    )
    assert elapsed < HANG_S, (url, query, elapsed)
    after = archive.index.stats()
    assert after == before  # reads change nothing stored
    assert archive.query.list_studies(SYSTEM)  # the archive still answers


def _stored(archive: Archive) -> dict[str, list[str]]:
    """Every row of every table but the audit trail (a refusal is audited, nothing else)."""
    out: dict[str, list[str]] = {}
    with archive.index.read() as conn:
        for table in t.metadata.sorted_tables:
            if table.name not in AUDIT_TABLES:
                out[table.name] = sorted(repr(tuple(r)) for r in conn.execute(select(table)))
    return out


def _readable(r: Any) -> bool:
    """A refusal says why: a body with words, not an empty page or a bare server error."""
    text = r.text.strip()
    return bool(text) and "Internal Server Error" not in text and any(c.isalpha() for c in text)


def _containers(kids: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(kids, max_size=3), st.dictionaries(st.text(TEXT, max_size=8), kids, max_size=3)
    )


JSON_JUNK = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        value(),
    ),
    _containers,
    max_leaves=8,
)


def _json_junk() -> st.SearchStrategy[Any]:
    return JSON_JUNK


@st.composite
def body_for(draw: st.DrawFn, schema: dict[str, Any] | None) -> Any:
    """A body shaped like ``schema`` with hostile values, or any JSON at all."""
    if schema is None or draw(st.integers(0, 4)) == 0:
        return draw(_json_junk())
    schema = _schema(schema)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        out: dict[str, Any] = {}
        if {"issuer", "patient_id"} <= set(schema.get("properties", {})) and draw(st.booleans()):
            out["issuer"], out["patient_id"] = draw(RECORDS)  # a record the demo holds
        for name, prop in schema.get("properties", {}).items():
            if name in out or draw(st.integers(0, 9)) == 0:
                continue  # a record already chosen, or a field left out
            out[name] = draw(body_for(prop))
        if draw(st.integers(0, 9)) == 0:
            out[draw(value())] = draw(_json_junk())  # a field nobody asked for
        return out
    if kind == "boolean":
        return draw(st.one_of(st.booleans(), _json_junk()))
    if kind == "integer":
        return draw(st.one_of(st.integers(-(2**70), 2**70), value()))
    return draw(st.one_of(value(), REAL))


@fuzz_settings(share=0.15)
@given(route=st.sampled_from(POST_ROUTES), path_value=value(), data=st.data())
def test_identity_post_bodies_never_fail_with_500_nor_change_anything_when_refused(
    demo: tuple[TestClient, Archive],
    route: tuple[str, dict[str, Any] | None],
    path_value: str,
    data: st.DataObject,
) -> None:
    """As a regional administrator (the steward rule lets the change through to the identity
    service) or as the reading test user (refused): any body -> 2xx or a readable 4xx."""
    c, archive = demo
    path, schema = route
    url = path
    if "{" in path:
        head, _, rest = path.partition("{")
        url = head + quote(path_value, safe="") + rest.partition("}")[2]
    headers = dict(admin_headers(archive)) if data.draw(st.booleans()) else {}
    raw = data.draw(st.integers(0, 9)) == 0
    body = data.draw(body_for(schema))
    before = _stored(archive)
    started = time.monotonic()
    if raw:  # not JSON at all
        r = c.post(url, content=json.dumps(body)[:-1].encode(), headers=headers)
    else:
        r = c.post(url, json=body, headers=headers)
    elapsed = time.monotonic() - started
    assert r.status_code < 500, (url, body, r.status_code, r.text[:500])
    assert r.status_code in (200, 201, 400, 401, 403, 404, 409, 413, 415), (url, body, r.text)
    assert elapsed < HANG_S, (url, body, elapsed)
    if r.status_code >= 400:
        assert _readable(r), (url, body, r.status_code, r.text[:200])
        assert _stored(archive) == before, (url, body, r.status_code, r.text[:200])


@fuzz_settings(share=0.15)
@given(trust=st.one_of(st.sampled_from(["ZZA", "ZZB", "ZZD", "NOPE"]), value()), data=st.data())
def test_iid_launch_parameters_never_fail_with_500(
    demo: tuple[TestClient, Archive], trust: str, data: st.DataObject
) -> None:
    """IHE Invoke Image Display, with and without a trust in the path: any parameters -> a
    redirect into the viewer (or the visible study list) or a readable 4xx; nothing stored
    changes."""
    c, archive = demo
    names = st.one_of(st.sampled_from(IID_PARAMS), st.text(TEXT, max_size=12))
    query = data.draw(st.lists(st.tuples(names, value()), max_size=6))
    if data.draw(st.booleans()):
        kind = data.draw(st.sampled_from(["STUDY", "PATIENT", "study", "", "SERIES"]))
        query.append(("requestType", kind))
    url = "/IHEInvokeImageDisplay"
    if data.draw(st.booleans()):
        url = f"/trusts/{quote(trust, safe='')}/IHEInvokeImageDisplay"
    before = _stored(archive)
    started = time.monotonic()
    r = c.get(url, params=query, follow_redirects=False)
    elapsed = time.monotonic() - started
    assert r.status_code in (200, 303, 400, 401, 403, 404, 406, 409, 413), (
        url,
        query,
        r.status_code,
        r.text[:500],
    )
    assert elapsed < HANG_S, (url, query, elapsed)
    if r.status_code == 303:
        assert r.headers["location"].startswith(IID_TARGETS), (url, query, r.headers)
    if r.status_code >= 400:
        assert _readable(r), (url, query, r.status_code, r.text[:200])
    assert _stored(archive) == before, (url, query)
