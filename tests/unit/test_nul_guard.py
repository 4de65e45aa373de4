"""A NUL character anywhere in an HTTP request is a 400 with a readable body, on every route:
PostgreSQL keeps no text holding one, so it reached the database and answered 500."""

from __future__ import annotations

from fastapi.testclient import TestClient

from solent.app import Archive
from solent.protocols.http import create_app
from tests.conftest import http_headers


def test_a_nul_in_query_path_or_json_body_is_a_400(archive: Archive) -> None:
    with TestClient(create_app(archive), headers=http_headers(archive)) as client:
        for path in (
            "/dicomweb/studies?PatientName=a%00b",
            "/api/viewer/search?q=%00",
            "/api/viewer/patients/ZZA/A%001/timeline",
        ):
            r = client.get(path)
            assert r.status_code == 400, (path, r.text)
            assert "NUL character" in r.json()["detail"]
        r = client.get("/fhir/Patient", params={"name": "a\x00b"})
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
        body = {"issuer": "ZZA", "patient_id": "a\x00b", "sensitive": True}
        r = client.post("/api/identity/sensitive", json=body)
        assert r.status_code == 400 and "NUL character" in r.json()["detail"]
        # A JSON body without one passes on, read as sent.
        r = client.post("/api/identity/sensitive", json={**body, "patient_id": "A\\u0000"})
        assert r.status_code != 400 or "NUL" not in r.text
        # Without a token, authentication still answers first.
        anonymous = {"Authorization": ""}
        assert client.get("/api/viewer/search?q=%00", headers=anonymous).status_code == 401
