"""Encapsulated documents through WADO-RS: /rendered of an Encapsulated PDF is the PDF itself
(PS3.18 8.3.4), what the viewer shows a scanned request form or an outside report with."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from solent.app import Archive
from solent.protocols.http import create_app
from tests.conftest import http_headers
from tests.unit.stow_support import encapsulated_pdf, stow_body, structured_report

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n" + b"x"  # odd length: padded
STUDY = "1.2.826.0.1.3680043.8.498.9901"


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive), raise_server_exceptions=False) as c:
        yield c


def _store(client: TestClient, headers: dict[str, str], data: bytes) -> str:
    body, ctype = stow_body(data)
    r = client.post("/dicomweb/studies", content=body, headers={**headers, **ctype})
    assert r.status_code == 200, r.text
    return str(r.json()["00081199"]["Value"][0]["00081190"]["Value"][0])


def test_rendered_encapsulated_pdf_is_the_document(archive: Archive, client: TestClient) -> None:
    headers = http_headers(archive)
    url = _store(client, headers, encapsulated_pdf("DOC1", "ZZA", STUDY, PDF))
    rendered = url + "/rendered"
    r = client.get(rendered, headers={**headers, "Accept": "application/pdf"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pdf"
    assert r.content == PDF  # without DICOM's padding byte
    assert r.headers["x-content-type-options"] == "nosniff"
    # Any type, and the accept parameter (a link cannot set Accept), give it too.
    assert client.get(rendered, headers={**headers, "Accept": "*/*"}).content == PDF
    q = client.get(rendered + "?accept=application/pdf", headers=headers)
    assert q.status_code == 200 and q.content == PDF
    # A PDF is no image: asking for JPEG only is refused with what it is available as.
    jpeg = client.get(rendered, headers={**headers, "Accept": "image/jpeg"})
    assert jpeg.status_code == 406 and "application/pdf" in jpeg.text
    # Revalidation: the same ETag answers 304.
    etag = r.headers["etag"]
    again = client.get(
        rendered, headers={**headers, "Accept": "application/pdf", "If-None-Match": etag}
    )
    assert again.status_code == 304
    # Only a reader of the study gets it: without a token, 401.
    assert client.get(rendered, headers={"Accept": "application/pdf"}).status_code == 401


def test_rendered_of_other_instances_is_unchanged(archive: Archive, client: TestClient) -> None:
    headers = http_headers(archive)
    sr = _store(
        client, headers, structured_report("DOC2", "ZZA", STUDY, title="Report", finding="x")
    )
    # An SR holds no image: still a clear 400, and a PDF is not offered for it.
    r = client.get(sr + "/rendered", headers={**headers, "Accept": "image/jpeg"})
    assert r.status_code == 400 and "no image" in r.text
    r = client.get(sr + "/rendered", headers={**headers, "Accept": "application/pdf"})
    assert r.status_code == 406
    # The SR's content tree is in its metadata, for the viewer to show.
    (doc,) = client.get(sr + "/metadata", headers=headers).json()
    assert doc["0040A730"]["Value"][0]["0040A160"]["Value"] == ["x"]


def test_a_pdf_of_another_study_is_not_found(archive: Archive, client: TestClient) -> None:
    headers = http_headers(archive)
    url = _store(client, headers, encapsulated_pdf("DOC3", "ZZA", STUDY, PDF))
    other = url.replace(STUDY, generate_uid())
    r = client.get(other + "/rendered", headers={**headers, "Accept": "application/pdf"})
    assert r.status_code == 404
