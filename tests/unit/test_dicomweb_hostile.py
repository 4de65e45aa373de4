"""Hostile or odd DICOMweb requests get a readable 4xx, never a 500, and change nothing.

Found by pointing dicomweb-client and hand-made requests at a running `solent serve` loaded
with the shared corpus: each test here failed (500, or a misleading answer) before its fix.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from solent.app import Archive
from solent.protocols.http import create_app
from tests.conftest import http_headers
from tests.unit.stow_support import ct_instance, stow_body


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive), raise_server_exceptions=False) as c:
        yield c


def _stored_ct(archive: Archive, client: TestClient) -> str:
    """Store one 8x8 CT at ZZA; its instance URL (under /dicomweb)."""
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    body, ctype = stow_body(ct_instance("HOSTILE1", "ZZA", study, series=series, sop=sop))
    r = client.post("/dicomweb/studies", content=body, headers={**http_headers(archive), **ctype})
    assert r.status_code == 200, r.text
    return f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"


def _count(archive: Archive, client: TestClient) -> int:
    r = client.get("/dicomweb/instances", headers=http_headers(archive))
    assert r.status_code == 200, r.text
    return len(r.json())


def test_bulkdata_path_through_a_non_sequence_is_404(archive: Archive, client: TestClient) -> None:
    """`TAG/item/TAG` where TAG is not a sequence (here Pixel Data, bytes; Rows, a number)
    indexed into the value and raised TypeError: a 500 with a traceback in the log."""
    url = _stored_ct(archive, client)
    headers = http_headers(archive)
    for path in ("7FE00010/1/00100010", "00280010/0/00280010", "00100020/0/00100020"):
        r = client.get(f"{url}/bulkdata/{path}", headers=headers)
        assert r.status_code == 404, (path, r.status_code, r.text)
        assert "does not exist" in r.json()["detail"]


def test_rendered_viewport_source_region_is_clipped_to_the_image(
    archive: Archive, client: TestClient
) -> None:
    """A source region far beyond the image made PIL allocate it (padded black) or refuse it
    as a decompression bomb: a 500. It is clipped to the image; one wholly outside is a 400."""
    url = _stored_ct(archive, client)
    headers = http_headers(archive)
    huge = client.get(f"{url}/rendered?viewport=64,64,-5,-5,100000,100000", headers=headers)
    assert huge.status_code == 200, huge.text
    assert huge.headers["content-type"] == "image/jpeg"
    outside = client.get(f"{url}/rendered?viewport=64,64,5000,5000,10,10", headers=headers)
    assert outside.status_code == 400, outside.text
    assert "outside the 8x8 image" in outside.json()["detail"]
    frame = client.get(f"{url}/frames/1/thumbnail?viewport=64,64,0,0,90000,90000", headers=headers)
    assert frame.status_code == 200, frame.text


@pytest.mark.parametrize(
    "query",
    [
        "rendered?window=nan,nan",
        "rendered?window=40,inf",
        "rendered?window=-inf,400,linear",
        "thumbnail?window=nan,400",
    ],
)
def test_rendered_window_must_be_finite(archive: Archive, client: TestClient, query: str) -> None:
    """float() reads "nan" and "inf": such a window rendered a meaningless image with 200."""
    url = _stored_ct(archive, client)
    r = client.get(f"{url}/{query}", headers=http_headers(archive))
    assert r.status_code == 400, (query, r.status_code)
    assert "finite" in r.json()["detail"]


def test_wado_uri_window_must_be_finite(archive: Archive, client: TestClient) -> None:
    url = _stored_ct(archive, client)
    _, _, study, _, series, _, sop = url.strip("/").split("/")
    base = f"/dicomweb/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
    headers = http_headers(archive)
    for window in ("windowCenter=nan&windowWidth=400", "windowCenter=40&windowWidth=inf"):
        r = client.get(f"{base}&{window}", headers=headers)
        assert r.status_code == 400, (window, r.status_code)
        assert "finite" in r.json()["detail"]
    assert client.get(f"{base}&windowCenter=40&windowWidth=400", headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("br", lambda b: b)],
)
def test_stow_with_content_encoding_is_415_and_stores_nothing(
    archive: Archive, client: TestClient, encoding: str, compress: object
) -> None:
    """A compressed body was parsed as plain multipart: 400 "is the boundary right?", which
    sends the integrator looking in the wrong place. RFC 9110 wants 415 naming what is taken;
    nothing is inflated, so a gzip bomb costs nothing."""
    assert callable(compress)
    before = _count(archive, client)
    body, ctype = stow_body(ct_instance("HOSTILE2", "ZZA", generate_uid()))
    r = client.post(
        "/dicomweb/studies",
        content=compress(body),
        headers={**http_headers(archive), **ctype, "Content-Encoding": encoding},
    )
    assert r.status_code == 415, r.text
    assert "Content-Encoding" in r.json()["detail"]
    assert r.headers["accept-encoding"] == "identity"
    assert _count(archive, client) == before
    # The same body sent plainly is stored.
    plain = client.post(
        "/dicomweb/studies", content=body, headers={**http_headers(archive), **ctype}
    )
    assert plain.status_code == 200, plain.text
    assert _count(archive, client) == before + 1


# -- person names: what a RIS types finds what the modality sent (PS3.5 6.2) ----------------

STORED_NAMES = {
    "PN1": "OB^^^^",  # trailing empty components, as many modalities pad them
    "PN2": "SMITH^JOHN^^^",
    "PN3": "Wang^XiaoDong=王^小東",  # an ideographic group after the alphabetic one
    "PN4": "Yamada^Tarou=山田^太郎=やまだ^たろう",
    "PN5": "SMITHSON^JOHN",  # must not match SMITH^JOHN
    "PN6": "OB^X",  # must not match OB
}


QUERIES = {
    "OB": {"PN1"},
    "OB^^^^": {"PN1"},
    "ob": {"PN1"},
    "SMITH^JOHN": {"PN2"},
    "Smith^John^": {"PN2"},
    "Wang^XiaoDong": {"PN3"},
    "Yamada^Tarou": {"PN4"},
    "Yamad?^Tarou": {"PN4"},
    "SMITH^JOH?": {"PN2"},
    "Wang^XiaoDong=王^小東": {"PN3"},
    "OB^X": {"PN6"},
    "OB*": {"PN1", "PN6"},
    "Wang": set(),
}


def test_qido_person_name_matching_ignores_padding_and_other_groups(
    archive: Archive, client: TestClient
) -> None:
    """Exact names found nothing when the stored name had trailing carets (``OB^^^^``) or
    ideographic/phonetic groups (``Wang^XiaoDong=王^小東``): PS3.5 6.2 makes trailing empty
    components insignificant, and a query of the alphabetic name is meant to find them."""
    headers = http_headers(archive)
    for pid, name in STORED_NAMES.items():
        ds = pydicom.dcmread(io.BytesIO(ct_instance(pid, "ZZA", generate_uid())))
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = name
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        body, ctype = stow_body(out.getvalue())
        r = client.post("/dicomweb/studies", content=body, headers={**headers, **ctype})
        assert r.status_code == 200, r.text
    wrong = {}
    for query, expected in QUERIES.items():
        r = client.get("/dicomweb/studies", params={"PatientName": query}, headers=headers)
        assert r.status_code == 200, r.text
        found = {row["00100020"]["Value"][0] for row in r.json()}
        if found != expected:
            wrong[query] = found
    assert not wrong, wrong


def test_head_answers_as_get_without_a_body(archive: Archive, client: TestClient) -> None:
    """HEAD on any DICOMweb resource was 405 (FastAPI routes GET only); RFC 9110 wants it
    wherever GET is, with the same status and headers, and no body."""
    url = _stored_ct(archive, client)
    headers = http_headers(archive)
    study = url.split("/series/")[0]
    for resource in (
        "/dicomweb/studies?PatientID=HOSTILE1",
        study + "/series",
        url,
        url + "/metadata",
        url + "/frames/1",
        url + "/rendered",
        study + "/thumbnail",
        "/dicomweb/studies/1.2.3.4",  # 404 as for GET
        "/dicomweb/studies/1.2.3a",  # 400 as for GET
    ):
        get = client.get(resource, headers=headers)
        head = client.head(resource, headers=headers)
        assert head.status_code == get.status_code, (resource, head.status_code, get.status_code)
        assert head.content == b"", resource
        assert head.headers.get("etag") == get.headers.get("etag"), resource
        ctype = head.headers["content-type"].split(";")[0]
        assert ctype == get.headers["content-type"].split(";")[0], resource
    # Without a token, HEAD is refused like GET.
    assert client.head(url).status_code == 401


def test_qido_answers_406_when_accept_excludes_json(archive: Archive, client: TestClient) -> None:
    """QIDO-RS ignored Accept: a client asking for XML only got JSON with 200."""
    _stored_ct(archive, client)
    headers = http_headers(archive)
    for accept in ("application/dicom+xml", 'multipart/related; type="application/dicom+xml"'):
        r = client.get("/dicomweb/studies", headers={**headers, "Accept": accept})
        assert r.status_code == 406, (accept, r.status_code)
        assert "application/dicom+json" in r.json()["detail"]
    for accept in (
        "application/dicom+json",
        "application/json",
        "application/dicom+xml, application/dicom+json;q=0.5",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",  # a browser
    ):
        r = client.get("/dicomweb/studies", headers={**headers, "Accept": accept})
        assert r.status_code == 200, (accept, r.status_code)
        assert r.headers["content-type"] == "application/dicom+json"
