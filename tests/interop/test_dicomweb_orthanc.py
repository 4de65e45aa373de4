"""Orthanc (with its DICOMweb plugin) configured with Solent as a DICOMweb server: it queries
Solent with QIDO-RS and retrieves a study with WADO-RS through its /dicom-web/servers API."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests

from tests.conftest import SOLENT, RunningServer, require, require_tool, start_server

pytestmark = pytest.mark.interop

PLUGIN_CANDIDATES = [
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"),
]
SERIES = [f"series_mr_dcm4che_{i:02d}.dcm" for i in range(1, 5)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dicomweb_plugin() -> Path | None:
    try:
        out = subprocess.run(
            ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=False
        ).stdout
    except FileNotFoundError:
        out = ""
    found = [Path(line) for line in out.splitlines() if ".so" in line]
    for path in [*found, *PLUGIN_CANDIDATES]:
        if path.is_file():
            return path
    return None


def value(doc: dict[str, dict[str, object]], tag: str) -> object:
    v = doc[tag]["Value"]
    return v[0] if isinstance(v, list) else v


@pytest.fixture
def solent(tmp_path: Path, corpus_dir: Path) -> Iterator[RunningServer]:
    data = tmp_path / "srv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLENT_")}
    env["SOLENT_DATA_DIR"] = str(data)
    subprocess.run(
        [str(SOLENT), "trust", "add", "ZZA", "--name", "A"],
        env=env,
        check=True,
        capture_output=True,
    )
    srv = start_server(data)
    folder = tmp_path / "import"
    folder.mkdir()
    for name in SERIES:
        shutil.copy(corpus_dir / name, folder / name)
    srv.cli("import", str(folder), "--trust", "ZZA")
    yield srv
    srv.stop()


@pytest.fixture
def orthanc(tmp_path: Path, solent: RunningServer) -> Iterator[str]:
    binary = require_tool("Orthanc")
    plugin = dicomweb_plugin()
    require(plugin is not None, "the orthanc-dicomweb plugin")
    port = free_port()
    config = {
        "Name": "solent-interop",
        "HttpPort": port,
        "DicomServerEnabled": False,
        "DicomPort": free_port(),
        "StorageDirectory": str(tmp_path / "orthanc-db"),
        "IndexDirectory": str(tmp_path / "orthanc-db"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            # Orthanc sends Solent's bearer token like any other authenticated DICOMweb client.
            "Servers": {
                "solent": {"Url": solent.base_url + "/dicomweb/", "HttpHeaders": solent.headers()}
            },
        },
    }
    cfg = tmp_path / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log = (tmp_path / "orthanc.log").open("w")
    proc = subprocess.Popen([binary, str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/system", timeout=2).ok:
                break
        except requests.ConnectionError:
            time.sleep(0.3)
    else:
        proc.kill()
        raise AssertionError("Orthanc did not start: " + (tmp_path / "orthanc.log").read_text())
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def test_orthanc_queries_and_retrieves_from_solent(
    orthanc: str, solent: RunningServer, corpus_dir: Path
) -> None:
    first = pydicom.dcmread(corpus_dir / SERIES[0], stop_before_pixels=True)
    study = str(first.StudyInstanceUID)
    found = requests.post(
        orthanc + "/dicom-web/servers/solent/qido",
        json={"Uri": "/studies", "Arguments": {"StudyInstanceUID": study}},
        timeout=60,
    )
    assert found.status_code == 200, found.text
    # Orthanc answers in its own JSON flavour: "Value" is a string there.
    assert [value(s, "0020000D") for s in found.json()] == [study]
    series = requests.post(
        orthanc + "/dicom-web/servers/solent/qido",
        json={"Uri": f"/studies/{study}/series"},
        timeout=60,
    ).json()
    assert value(series[0], "0020000E") == str(first.SeriesInstanceUID)
    meta = requests.post(
        orthanc + "/dicom-web/servers/solent/get",
        json={"Uri": f"/studies/{study}/metadata"},
        timeout=60,
    )
    assert meta.status_code == 200 and len(meta.json()) == len(SERIES)
    got = requests.post(
        orthanc + "/dicom-web/servers/solent/retrieve",
        json={"Resources": [{"Study": study}]},
        timeout=120,
    )
    assert got.status_code == 200, got.text
    instances = requests.get(orthanc + "/instances", timeout=30).json()
    assert len(instances) == len(SERIES)
    wanted = {
        str(pydicom.dcmread(corpus_dir / n, stop_before_pixels=True).SOPInstanceUID) for n in SERIES
    }
    seen = set()
    for oid in instances:
        tags = requests.get(f"{orthanc}/instances/{oid}/simplified-tags", timeout=30).json()
        seen.add(tags["SOPInstanceUID"])
        file = requests.get(f"{orthanc}/instances/{oid}/file", timeout=30).content
        ds = pydicom.dcmread(__import__("io").BytesIO(file))
        original = pydicom.dcmread(
            next(
                corpus_dir / n
                for n in SERIES
                if str(pydicom.dcmread(corpus_dir / n, stop_before_pixels=True).SOPInstanceUID)
                == tags["SOPInstanceUID"]
            )
        )
        assert ds.PixelData == original.PixelData
    assert seen == wanted
