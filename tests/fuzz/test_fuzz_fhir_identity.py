"""FHIR search and read parameters and the identity API's parameters from hostile clients, against
the demo archive (four trusts, linked records, reports): never a 500, never a hang, nothing
stored changes. The parameter names come from the app's own routes, so a parameter added to a
route is fuzzed without touching this file."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from solent.app import Archive, build_archive
from solent.demo import load_demo
from solent.domain.principal import SYSTEM
from solent.protocols.http import create_app
from solent.settings import load_settings
from tests.conftest import http_headers
from tests.fuzz.conftest import fuzz_settings

pytestmark = pytest.mark.timeout(900)
PREFIXES = ("/fhir/", "/api/identity/")
TEXT = st.characters(codec="utf-8", exclude_categories=("Cs",))
#: A request that takes longer than this is a hang for this test (not a speed target).
HANG_S = 10.0
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
    ]
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


def _routes() -> list[tuple[str, list[str]]]:
    """(path, query parameter names) of every GET route under /fhir and /api/identity, from
    the app's OpenAPI document."""
    with tempfile.TemporaryDirectory(prefix="solent-fuzz-routes-") as scratch:
        archive = build_archive(load_settings(environ={}, data_dir=Path(scratch)))
        try:
            doc = create_app(archive).openapi()
        finally:
            archive.close()
    out = []
    for path, ops in doc["paths"].items():
        if path.startswith(PREFIXES) and "get" in ops:
            params = ops["get"].get("parameters", [])
            out.append((path, [p["name"] for p in params if p["in"] == "query"]))
    return sorted(out)


ROUTES = _routes()


def test_the_fuzzed_routes_are_the_ones_meant() -> None:
    paths = {p for p, _ in ROUTES}
    assert {"/fhir/Patient", "/fhir/ImagingStudy", "/fhir/DiagnosticReport"} <= paths
    assert {"/api/identity/person", "/api/identity/links", "/api/identity/history"} <= paths
    assert any(names for _, names in ROUTES)


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
