"""DICOMweb while the blob store is unavailable (S3 down, issue 16): a transient failure is
answered as one, 503 with a readable body, so clients and the balancer try again later.

STOW-RS whose every part failed only because the store could not take it used to answer 409
Conflict (what PS3.18 means for a request that cannot be stored as it is), which a client does
not retry. WADO-RS used to answer 200 and then cut the body short after the headers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from solent.app import Archive
from solent.errors import StorageError
from solent.protocols.http import create_app
from tests.conftest import http_headers
from tests.unit.stow_support import ct_instance, stow_body

OUT_OF_RESOURCES = 0xA700


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive), raise_server_exceptions=False) as c:
        yield c


def _down(*_args: Any, **_kwargs: Any) -> Any:
    raise StorageError("cannot write blob to S3: Could not connect to the endpoint URL")


def test_stow_while_the_store_is_down_is_503_with_the_reasons(
    archive: Archive, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = http_headers(archive)
    study = generate_uid()
    parts = [ct_instance("H1", "ZZA", study), ct_instance("H1", "ZZA", study)]
    for name in ("put_file", "place_file", "put_bytes"):
        monkeypatch.setattr(archive.store, name, _down)
    body, ctype = stow_body(*parts)
    r = client.post(f"/dicomweb/studies/{study}", content=body, headers={**headers, **ctype})
    assert r.status_code == 503, (r.status_code, r.text[:300])
    assert int(r.headers["Retry-After"]) > 0
    failed = r.json()["00081198"]["Value"]
    assert [f["00081197"]["Value"][0] for f in failed] == [OUT_OF_RESOURCES] * 2
    monkeypatch.undo()
    r = client.post(f"/dicomweb/studies/{study}", content=body, headers={**headers, **ctype})
    assert r.status_code == 200, r.text[:300]


def test_stow_refused_for_what_it_is_stays_409(archive: Archive, client: TestClient) -> None:
    """Not every all-failed request is transient: a duplicate with other bytes is a conflict."""
    headers = http_headers(archive)
    study, sop = generate_uid(), generate_uid()
    body, ctype = stow_body(ct_instance("H1", "ZZA", study, sop=sop))
    assert client.post("/dicomweb/studies", content=body, headers={**headers, **ctype}).is_success
    other, ctype = stow_body(ct_instance("H1", "ZZA", study, sop=sop, name="OTHER^NAME"))
    r = client.post("/dicomweb/studies", content=other, headers={**headers, **ctype})
    assert r.status_code == 409, (r.status_code, r.text[:300])


def test_wado_while_the_store_is_down_is_a_readable_503(
    archive: Archive, client: TestClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    headers = http_headers(archive)
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    body, ctype = stow_body(ct_instance("H1", "ZZA", study, series=series, sop=sop))
    assert client.post("/dicomweb/studies", content=body, headers={**headers, **ctype}).is_success

    def unreadable(*_args: Any, **_kwargs: Any) -> Any:
        raise StorageError("cannot read blob from S3: Read timeout on endpoint URL")

    for name in ("open", "open_range", "cached_range_into"):
        monkeypatch.setattr(archive.store, name, unreadable)
    dicom = {"Accept": 'multipart/related; type="application/dicom"'}
    for url in (
        f"/dicomweb/studies/{study}",
        f"/dicomweb/studies/{study}/series/{series}/instances/{sop}",
        f"/dicomweb/wado?requestType=WADO&studyUID={study}&seriesUID={series}"
        f"&objectUID={sop}&contentType=application/dicom",
    ):
        r = client.get(url, headers={**headers, **dicom})
        assert r.status_code == 503, (url, r.status_code, r.content[:200])
        assert "temporarily unavailable" in r.json()["detail"], url
