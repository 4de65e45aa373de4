"""Every answer under /fhir is FHIR on the wire: errors from any layer (no such resource type,
a method not taken, a malformed parameter, no token) are OperationOutcomes with their status,
and a client asking only for XML gets 406 rather than JSON it cannot read."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.operationoutcome import OperationOutcome

from solent.app import Archive
from solent.protocols.http import create_app
from tests.unit.security_fixtures import add_user, demo, demo_template

__all__ = ["demo", "demo_template"]


@pytest.fixture
def app_client(demo: Archive) -> Iterator[tuple[TestClient, dict[str, str]]]:
    headers = add_user(demo, "drza-wire", "ZZA", "clinician")
    with TestClient(create_app(demo)) as c:
        yield c, headers


def _outcome(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    OperationOutcome.model_validate(body)
    return str(body["issue"][0]["code"])


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/fhir/Observation?patient=1", 404, "not-found"),  # before: {"detail": ...}
        ("POST", "/fhir/Patient", 405, "not-supported"),
        ("GET", "/fhir/Patient?identifier=" + "x" * 300, 400, "invalid"),
    ],
)
def test_errors_of_every_layer_are_operation_outcomes(
    app_client: tuple[TestClient, dict[str, str]], method: str, path: str, status: int, code: str
) -> None:
    client, headers = app_client
    assert _outcome(client.request(method, path, headers=headers), status) == code


def test_no_token_is_an_operation_outcome_with_its_challenge(
    app_client: tuple[TestClient, dict[str, str]],
) -> None:
    client, _ = app_client
    r = client.get("/fhir/Patient/1")
    assert _outcome(r, 401) == "login"
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_xml_only_is_not_acceptable_and_json_is(
    app_client: tuple[TestClient, dict[str, str]],
) -> None:
    client, headers = app_client
    # Before: 200 with JSON, which an XML client cannot parse.
    assert _outcome(client.get("/fhir/metadata?_format=xml", headers=headers), 406)
    xml = {**headers, "Accept": "application/fhir+xml"}
    assert _outcome(client.get("/fhir/metadata", headers=xml), 406)
    for fmt in ("json", "application/fhir+json"):
        assert client.get(f"/fhir/metadata?_format={fmt}", headers=xml).status_code == 200
    browser = {**headers, "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    assert client.get("/fhir/metadata", headers=browser).status_code == 200
    # Not FHIR: untouched.
    r = client.get("/api/viewer/studies/1.2.3/reports", headers=headers)
    assert r.headers["content-type"].startswith("application/json")
