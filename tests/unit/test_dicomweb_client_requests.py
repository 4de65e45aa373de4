"""What major viewers send is understood (issue 15): OHIF's WADO-URI ``transferSyntax=*``, the
PS3.18 ``accept`` query parameter on rendered resources and thumbnails, optional parameters this
server does not know, and a STOW instance without a Study Instance UID (400, nothing stored).
"""

from __future__ import annotations

import io
from typing import Any

import pydicom
from fastapi.testclient import TestClient
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from solent.app import Archive
from solent.demo import DEMO_ROOT
from tests.unit.security_fixtures import add_user, demo, demo_client, demo_template

__all__ = ["demo", "demo_client", "demo_template"]

PNG, JPEG = b"\x89PNG", b"\xff\xd8\xff"
CR = 1  # the demo's second study: ZZA, DEMO^ALICE, XR CHEST PA, one image


def _instance(client: TestClient, h: dict[str, str]) -> tuple[str, str, str]:
    study = f"{DEMO_ROOT}1.{CR + 1}"
    [row] = client.get(f"/dicomweb/studies/{study}/instances", headers=h).json()
    return study, row["0020000E"]["Value"][0], row["00080018"]["Value"][0]


def _wado(client: TestClient, h: dict[str, str], **extra: str) -> Any:
    study, series, sop = _instance(client, h)
    params = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
    return client.get("/dicomweb/wado", params={**params, **extra}, headers=h)


def test_wado_uri_takes_what_ohif_sends(demo: Archive, demo_client: TestClient) -> None:
    h = add_user(demo, "drza", "ZZA", "clinician")
    r = _wado(demo_client, h, contentType="application/dicom", transferSyntax="*")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom"
    ds = pydicom.dcmread(io.BytesIO(r.content))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # as stored
    assert ds.PatientID == "A100001" and ds.pixel_array.any()

    same = _wado(demo_client, h, contentType="application/dicom", transferSyntax="*", foo="1")
    assert same.status_code == 200 and same.content == r.content  # unknown: ignored

    other = _wado(
        demo_client, h, contentType="application/dicom", transferSyntax=str(ImplicitVRLittleEndian)
    )
    assert other.status_code == 200
    decoded = pydicom.dcmread(io.BytesIO(other.content))
    assert decoded.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert (decoded.pixel_array == ds.pixel_array).all()

    jpeg = _wado(demo_client, h, contentType="image/jpeg; q=0.9, image/png")
    assert jpeg.status_code == 200 and jpeg.content.startswith(JPEG)

    bad = _wado(demo_client, h, contentType="application/dicom", transferSyntax="1.2.abc")
    assert bad.status_code == 400 and "transferSyntax" in bad.json()["detail"]
    hidden = _wado(demo_client, h, contentType="application/dicom", anonymize="yes")
    assert hidden.status_code == 400 and "anonymize" in hidden.json()["detail"]


def test_accept_parameter_on_rendered_and_thumbnail(demo: Archive, demo_client: TestClient) -> None:
    h = add_user(demo, "drza", "ZZA", "clinician")
    study, series, sop = _instance(demo_client, h)
    base = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    as_jpeg = {**h, "Accept": "image/jpeg"}

    r = demo_client.get(f"{base}/rendered", params={"accept": "image/png"}, headers=as_jpeg)
    assert r.status_code == 200 and r.content.startswith(PNG)  # the parameter wins
    assert r.headers["content-type"] == "image/png"
    r = demo_client.get(f"{base}/rendered?accept=image%2Fjpeg", headers=h)
    assert r.status_code == 200 and r.content.startswith(JPEG)
    r = demo_client.get(f"{base}/rendered", params={"accept": "image/tiff"}, headers=as_jpeg)
    assert r.status_code == 406 and "image/jpeg" in r.json()["detail"]
    r = demo_client.get(f"{base}/rendered", params={"bogus": "1", "_": "123"}, headers=h)
    assert r.status_code == 200 and r.content.startswith(JPEG)  # unknown: ignored

    for path in (f"{base}/thumbnail", f"/dicomweb/studies/{study}/thumbnail"):
        r = demo_client.get(path, params={"accept": "image/png", "size": "64"}, headers=as_jpeg)
        assert r.status_code == 200 and r.content.startswith(PNG), path
    r = demo_client.get(f"{base}/thumbnail", params={"viewport": "0,0"}, headers=h)
    assert r.status_code == 400  # a known parameter with a bad value still says so


def _multipart(part: bytes, boundary: str = "b0undary") -> tuple[bytes, str]:
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_stow_without_study_instance_uid_is_a_bad_request(
    demo: Archive, demo_client: TestClient
) -> None:
    h = add_user(demo, "drza", "ZZA", "clinician")
    study, _, _ = _instance(demo_client, h)
    r = _wado(demo_client, h, contentType="application/dicom")
    ds = pydicom.dcmread(io.BytesIO(r.content))
    del ds.StudyInstanceUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(f"{DEMO_ROOT}9.9.1")
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    before = demo.index.stats()
    for url in ("/dicomweb/studies", f"/dicomweb/studies/{study}"):
        body, ctype = _multipart(out.getvalue())
        r = demo_client.post(url, content=body, headers={**h, "Content-Type": ctype})
        assert r.status_code == 400, (url, r.status_code, r.text)
        [failed] = r.json()["00081198"]["Value"]
        assert failed["00081197"]["Value"] == [0xC000]
        assert "StudyInstanceUID" in failed["00000902"]["Value"][0]
    assert demo.index.stats() == before  # nothing stored
