"""An integer overflow or absurd integer in a query or path parameter is a 400 with a readable
body, never a 500 (issue 11 part 5): QIDO limit/offset, the JSON API's paging, audit cursors,
FHIR ids and references, identity API ids."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from solent.app import Archive, build_archive
from solent.protocols.http import create_app
from solent.settings import load_settings
from tests.conftest import http_headers

ABSURD = [
    str(2**63),  # one past SQLite's and PostgreSQL's BIGINT
    str(2**64),
    "9" * 40,
    "-" + "9" * 40,
    "1e309",
    "0x7fffffffffffffff",
    "²",  # str.isdigit() says yes, int() says no
    "٣٣",  # Arabic-Indic digits: int() takes them
]

QUERY = [
    ("/dicomweb/studies", "limit"),
    ("/dicomweb/studies", "offset"),
    ("/dicomweb/series", "offset"),
    ("/dicomweb/instances", "limit"),
    ("/api/studies", "limit"),
    ("/api/studies", "offset"),
    ("/api/patients", "offset"),
    ("/api/audit", "after"),
    ("/api/audit", "limit"),
    ("/fhir/Patient", "_id"),
    ("/fhir/Patient", "_count"),
    ("/fhir/ImagingStudy", "_count"),
    ("/fhir/DiagnosticReport", "_count"),
]
QUERY_REFERENCE = [
    ("/fhir/ImagingStudy", "patient", "Patient/{}"),
    ("/fhir/DiagnosticReport", "patient", "Patient/{}"),
]
PATH = [
    "/fhir/Patient/{}",
    "/fhir/ImagingStudy/{}",
    "/fhir/DiagnosticReport/{}",
]
POST_PATH = [
    "/api/identity/events/{}/reverse",
    "/api/identity/data-quality/{}/resolve",
    "/api/break-glass/{}/review",
]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    archive: Archive = build_archive(
        load_settings(environ={}, data_dir=tmp_path_factory.mktemp("overflow") / "var")
    )
    archive.index.add_trust("ZZA", "Trust A")
    with TestClient(create_app(archive), raise_server_exceptions=False) as c:
        c.headers.update(http_headers(archive))
        yield c
    archive.close()


def _readable(body: str) -> bool:
    return bool(body.strip()) and "Internal Server Error" not in body


@pytest.mark.parametrize("value", ABSURD)
@pytest.mark.parametrize(("path", "name"), QUERY)
def test_absurd_integer_query_parameter(
    client: TestClient, path: str, name: str, value: str
) -> None:
    r = client.get(path, params={name: value})
    assert r.status_code < 500, (path, name, value, r.status_code, r.text[:300])
    if name in ("limit", "offset", "after"):
        valid = value.lstrip("-").isascii() and value.lstrip("-").isdigit()
        in_range = valid and -(2**31) < int(value) < 2**31
        if not in_range:
            assert r.status_code == 400, (path, name, value, r.status_code, r.text[:300])
            assert _readable(r.text) and name in r.text, r.text[:300]


@pytest.mark.parametrize("value", ABSURD)
@pytest.mark.parametrize(("path", "name", "template"), QUERY_REFERENCE)
def test_absurd_integer_in_a_reference(
    client: TestClient, path: str, name: str, template: str, value: str
) -> None:
    r = client.get(path, params={name: template.format(value)})
    assert r.status_code < 500, (path, value, r.status_code, r.text[:300])
    assert _readable(r.text)


@pytest.mark.parametrize("value", ABSURD)
@pytest.mark.parametrize("template", PATH)
def test_absurd_resource_id_is_not_found(client: TestClient, template: str, value: str) -> None:
    r = client.get(template.format(value))
    # An id that cannot exist answers like any unknown id.
    assert r.status_code == 404, (template, value, r.status_code, r.text[:300])
    assert _readable(r.text)


@pytest.mark.parametrize("value", [str(2**63), str(2**64), "9" * 40])
@pytest.mark.parametrize("template", POST_PATH)
def test_absurd_id_in_an_action_path(client: TestClient, template: str, value: str) -> None:
    r = client.post(template.format(value), json={"reason": "x", "decision": "approved"})
    assert r.status_code in (400, 403, 404), (template, value, r.status_code, r.text[:300])
    assert _readable(r.text)


def test_every_integer_path_parameter_is_bounded_to_64_bits(client: TestClient) -> None:
    """An unbounded id (an MDT meeting or item, a key image) one past 2**63 - 1 reached
    PostgreSQL and answered 500 (SQLite's driver raised OverflowError, a 400); every integer
    in a path is declared within the databases' range, so validation refuses it first."""
    paths = client.get("/api/openapi.json").json()["paths"]
    unbounded = [
        (path, p["name"])
        for path, methods in paths.items()
        for op in methods.values()
        for p in op.get("parameters", [])
        if p["in"] == "path"
        and p["schema"].get("type") == "integer"
        and p["schema"].get("maximum", 2**64) > 2**63 - 1
    ]
    assert unbounded == []
