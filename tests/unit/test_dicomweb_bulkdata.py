"""Every BulkDataURI the metadata names resolves to the element's bytes, wherever it lies.

Found probing with the shared corpus (vr_private_tags_gdcm_494apg9k.dcm): GE files carry a
private (7FE1,xxxx) group after Pixel Data, and its BulkDataURIs answered 404 because the
resolver read the file only up to Pixel Data.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite

from solent.app import Archive
from solent.protocols.http import create_app
from tests.conftest import http_headers
from tests.unit.stow_support import ct_instance, stow_body

OCTETS = 'multipart/related; type="application/octet-stream"'


def _with_bulk_everywhere() -> tuple[Dataset, dict[str, bytes]]:
    """A CT instance with binary values before and after Pixel Data, at the top level and in
    (private) sequence items; and the bytes each BulkDataURI path must give."""
    ds = _read(ct_instance("BULK1", "ZZA", "1.2.826.0.1.3680043.8.498.771"))
    ds.private_block(0x0009, "SOLENT TEST", create=True).add_new(0x10, "OB", b"\x01" * 2000)
    ds.private_block(0x7FE1, "GEMS_Ultrasound_MovieGroup_001", create=True)
    item = Dataset()
    item.add_new(0x7FE10010, "LO", "GEMS_Ultrasound_MovieGroup_001")
    item.add_new(0x7FE11002, "OB", b"\x02" * 3000)
    ds.add_new(0x7FE11001, "SQ", [item])
    ds.add_new(0x7FE11003, "OB", b"\x03" * 1500)
    ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 1200)  # Data Set Trailing Padding
    return ds, {
        "00091010": b"\x01" * 2000,
        "7FE11001/0/7FE11002": b"\x02" * 3000,
        "7FE11003": b"\x03" * 1500,
        "FFFCFFFC": b"\x00" * 1200,
    }


def _read(data: bytes) -> Dataset:
    return dcmread(DicomBytesIO(data))


def _bytes(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    dcmwrite(fp, ds, enforce_file_format=True)
    return fp.getvalue()


def _uris(doc: dict[str, Any]) -> Iterator[str]:
    for value in doc.values():
        if "BulkDataURI" in value:
            yield value["BulkDataURI"]
        if value.get("vr") == "SQ":
            for item in value.get("Value", []):
                yield from _uris(item)


def _single_part(r: Any) -> bytes:
    boundary = r.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"').encode()
    part = r.content.split(b"--" + boundary)[1]
    return bytes(part.partition(b"\r\n\r\n")[2][:-2])


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive), raise_server_exceptions=False) as c:
        yield c


def test_every_bulkdata_uri_of_the_metadata_resolves(archive: Archive, client: TestClient) -> None:
    ds, expected = _with_bulk_everywhere()
    headers = http_headers(archive)
    body, ctype = stow_body(_bytes(ds))
    stored = client.post("/dicomweb/studies", content=body, headers={**headers, **ctype})
    assert stored.status_code == 200, stored.text
    base = (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    (doc,) = client.get(base + "/metadata", headers=headers).json()
    uris = {u.split("/bulkdata/")[-1]: u for u in _uris(doc)}
    assert set(uris) == {*expected, "7FE00010"}
    for path, value in expected.items():
        r = client.get(f"{base}/bulkdata/{path}", headers={**headers, "Accept": OCTETS})
        assert r.status_code == 200, (path, r.text)
        assert _single_part(r) == value, path
    # A path into nothing is still a clear 404, after Pixel Data as before it.
    for missing in ("7FE11001/1/7FE11002", "7FE11005", "00091011"):
        r = client.get(f"{base}/bulkdata/{missing}", headers={**headers, "Accept": OCTETS})
        assert r.status_code == 404 and "does not exist" in r.text, (missing, r.text)
    # Item numbers count from 0; -1 is no item (not Python's "the last one").
    r = client.get(f"{base}/bulkdata/7FE11001/-1/7FE11002", headers={**headers, "Accept": OCTETS})
    assert r.status_code == 400 and "is not TAG[/item/TAG...]" in r.text, r.text
