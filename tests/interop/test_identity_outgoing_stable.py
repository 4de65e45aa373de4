"""The same retrieve gives the same bytes until the record changes (issue 4, ETags/caches).

A real `solent serve`: after an HL7 A08 renames the patient, WADO-RS (instances and metadata)
and C-GET (DCMTK getscu) send the current identity with the old values in Original Attributes,
stamped with the time of the record's change, not the time of the request; a second retrieve a
second later gives the same bytes, and a further change gives a new stamp.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest

from solent.app import build_archive
from solent.settings import load_settings
from tests.conftest import require_tool, start_server
from tests.interop.test_identity_outgoing import Site, _parts

STUDY = "2.25.7710001"
ACCEPT = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    from tests.interop.hl7_support import prepare_data_dir

    require_tool("getscu")
    root = tmp_path_factory.mktemp("identity-stable")
    data = root / "var"
    prepare_data_dir(data)
    archive = build_archive(load_settings(environ={}, data_dir=data))
    try:
        archive.index.add_node("ZZAWS", "127.0.0.1", 104, "ZZA", ["store", "query", "retrieve"])
    finally:
        archive.close()
    server = start_server(data)
    files = root / "files"
    files.mkdir()
    try:
        yield Site(server, data, files)
    finally:
        server.stop()


def _getscu(site: Site, out: Path) -> bytes:
    out.mkdir()
    result = subprocess.run(
        [
            "getscu",
            *("-S", "-aet", "ZZAWS", "-aec", "SOLENT", "-od", str(out)),
            *("-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY}"),
            *("127.0.0.1", str(site.server.ports["dicom"])),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (path,) = list(out.iterdir())
    return path.read_bytes()


def _stamp(part10: bytes) -> str:
    ds = pydicom.dcmread(io.BytesIO(part10))
    return str(ds.OriginalAttributesSequence[-1].AttributeModificationDateTime)


def test_retrieves_repeat_byte_for_byte_until_the_record_changes(site: Site) -> None:
    from tests.interop.test_hl7_scenarios import adt

    assert site.send(adt("ZZA", "ST-1", "A7710", event="A04", name="FIRST^ANN")) == ["AA"]
    site.ct(
        "ZZA",
        "stable",
        patient_id="A7710",
        issuer="ZZA",
        name="FIRST^ANN",
        birth_date="19620417",
        accession="ACC7710",
        study_uid=STUDY,
        study_date="20250102",
    )
    before = datetime.now(UTC).replace(microsecond=0)
    assert site.send(adt("ZZA", "ST-2", "A7710", event="A08", name="SECOND^ANN")) == ["AA"]
    after = datetime.now(UTC)

    def wado() -> bytes:
        r = site.api.client.get(f"/dicomweb/studies/{STUDY}", headers=ACCEPT)
        assert r.status_code == 200
        (part,) = _parts(r.content, r.headers["content-type"])
        return part

    def metadata() -> bytes:
        r = site.api.client.get(f"/dicomweb/studies/{STUDY}/metadata")
        assert r.status_code == 200
        return r.content

    first, first_meta, first_get = wado(), metadata(), _getscu(site, site.files / "get1")
    assert str(pydicom.dcmread(io.BytesIO(first)).PatientName) == "SECOND^ANN"
    stamp = _stamp(first)
    changed_at = datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    assert before <= changed_at <= after, "stamped with the time of the record's change"
    assert _stamp(first_get) == stamp
    time.sleep(1.1)  # a stamp of "now" would differ from here on
    assert wado() == first
    assert metadata() == first_meta
    second_get = _getscu(site, site.files / "get2")
    assert pydicom.dcmread(io.BytesIO(second_get)) == pydicom.dcmread(io.BytesIO(first_get))

    assert site.send(adt("ZZA", "ST-3", "A7710", event="A08", name="THIRD^ANN")) == ["AA"]
    third = wado()
    assert str(pydicom.dcmread(io.BytesIO(third)).PatientName) == "THIRD^ANN"
    assert _stamp(third) > stamp
