"""Orthanc as a real PACS on the other side: it C-STOREs into Solent, Solent C-MOVEs to it,
and it queries Solent."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from bench.orthanc import ORTHANC_AET, OrthancServer

from tests.conftest import RunningServer, require, require_corpus, shared_dir

pytestmark = pytest.mark.timeout(300)
CORPUS = shared_dir() / "dicom-corpus"


def rest(orthanc: OrthancServer, method: str, path: str, body: Any = None) -> Any:
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(orthanc.base_url + path, data=data, method=method)
    with urllib.request.urlopen(req, timeout=60) as r:
        text = r.read()
    return json.loads(text) if text else None


@pytest.fixture
def orthanc(server: RunningServer) -> Iterator[OrthancServer]:
    require(shutil.which("Orthanc") is not None, "the `Orthanc` program")
    # Orthanc's one modality ("bench") is Solent: AE title, address and DICOM port.
    with OrthancServer(client_aet="SOLENT", client_port=int(server.ports["dicom"])) as o:
        server.cli(
            "ae",
            "add",
            ORTHANC_AET,
            "--host",
            "127.0.0.1",
            "--port",
            str(o.dicom_port),
            "--trust",
            "ZZA",
        )
        yield o


def stats(server: RunningServer) -> dict[str, int]:
    return json.loads(server.cli("stats", "--json").stdout)  # type: ignore[no-any-return]


def test_orthanc_stores_into_solent_and_queries_it(
    server: RunningServer, orthanc: OrthancServer
) -> None:
    require_corpus()
    path = CORPUS / "ts_jpegls_lossless_mr_small.dcm"
    uploaded = rest(orthanc, "POST", "/instances", path.read_bytes())
    job = rest(
        orthanc,
        "POST",
        "/modalities/bench/store",
        {"Resources": [uploaded["ID"]], "Synchronous": True},
    )
    assert job["FailedInstancesCount"] == 0, job
    assert stats(server)["instances"] == 1
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    query = rest(
        orthanc,
        "POST",
        "/modalities/bench/query",
        {
            "Level": "Study",
            "Query": {
                "PatientID": str(ds.PatientID),
                "StudyInstanceUID": "",
                "ModalitiesInStudy": "",
            },
        },
    )
    answers = rest(orthanc, "GET", f"/queries/{query['ID']}/answers?expand&simplify")
    assert [a["StudyInstanceUID"] for a in answers] == [ds.StudyInstanceUID]


def test_solent_c_moves_to_orthanc(server: RunningServer, orthanc: OrthancServer) -> None:
    require_corpus()
    path = CORPUS / "ts_rle_mr_small.dcm"
    server.cli(
        "ae",
        "add",
        "SOLENT",
        "--host",
        "127.0.0.1",
        "--port",
        str(server.ports["dicom"]),
        "--trust",
        "ZZA",
    )
    sent = server.cli("send", "SOLENT", str(path), check=False)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    # Orthanc asks Solent to C-MOVE the study to Orthanc itself.
    rest(
        orthanc,
        "POST",
        "/modalities/bench/move",
        {
            "Level": "Study",
            "Resources": [{"StudyInstanceUID": ds.StudyInstanceUID}],
            "TargetAet": ORTHANC_AET,
            "Synchronous": True,
        },
    )
    found = rest(
        orthanc,
        "POST",
        "/tools/find",
        {"Level": "Instance", "Query": {"SOPInstanceUID": ds.SOPInstanceUID}},
    )
    assert len(found) == 1
    got = rest_bytes(orthanc, f"/instances/{found[0]}/file")
    assert got.endswith(path.read_bytes()[-4096:])  # the stored RLE bytes, not a re-encoding
    # And `solent retrieve` (C-MOVE SCU) asks Solent to send it to Orthanc again.
    moved = server.cli(
        "retrieve",
        "SOLENT",
        "--move-to",
        ORTHANC_AET,
        "-k",
        f"StudyInstanceUID={ds.StudyInstanceUID}",
        check=False,
    )
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "1 completed, 0 failed" in moved.stdout


def rest_bytes(orthanc: OrthancServer, path: str) -> bytes:
    with urllib.request.urlopen(orthanc.base_url + path, timeout=60) as r:
        return bytes(r.read())
