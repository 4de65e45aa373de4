"""Part 2 of regional-requirements.md as the region runs it: each trust's PAS and RIS registered
for its own trust only (`solent hl7 sender add PAS ZZB --host ...`), the consortium EMPI as the
regional identity source, images sent with DCMTK's storescu by each trust's scanner, and every
read made by a clinician of one trust with that user's own token (test_hl7_scenarios.py runs
the same messages with regional feeds and one all-trust reader).

One server for the module; the tests build on each other in file order (the 2.2 -> 2.7 story).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from solent.app import build_archive
from solent.domain.principal import SYSTEM
from solent.index.hl7_senders import add_sender
from solent.protocols.hl7.mllp import Deframer, frame
from solent.settings import load_settings
from tests.conftest import RunningServer, admin_headers, require_tool, start_server
from tests.interop.hl7_support import NHS_SYSTEM, er7, findscu, msa, send, write_ct
from tests.interop.test_hl7_scenarios import A08, A24, A37, A40, ORM, ZZA_CT, ZZB_CT

TRUSTS = ("ZZA", "ZZB", "ZZC")
SCANNERS = {"ZZACT": "ZZA", "ZZBCT": "ZZB"}


@dataclass
class Region:
    server: RunningServer
    files: Path
    readers: dict[str, httpx.Client]  # a clinician of each trust
    admin: httpx.Client

    @property
    def hl7(self) -> int:
        return int(self.server.ports["hl7"])

    def send(self, *messages: str) -> list[str]:
        return send(self.hl7, *messages)

    def storescu(self, aet: str, path: Path) -> None:
        port = str(self.server.ports["dicom"])
        result = subprocess.run(
            ["storescu", "-aet", aet, "-aec", "SOLENT", "127.0.0.1", port, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr

    def qido(self, trust: str, **params: str) -> set[str]:
        r = self.readers[trust].get("/dicomweb/studies", params=params)
        assert r.status_code == 200, r.text
        return {s["0020000D"]["Value"][0] for s in r.json()}

    def fhir(self, trust: str, resource: str, **params: str) -> list[dict[str, Any]]:
        r = self.readers[trust].get(f"/fhir/{resource}", params=params)
        assert r.status_code == 200, r.text
        return [e["resource"] for e in r.json()["entry"]]

    def work_items(self, kind: str) -> list[dict[str, Any]]:
        r = self.admin.get("/api/identity/data-quality")
        assert r.status_code == 200, r.text
        return [w for w in r.json() if w["kind"] == kind]


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    require_tool("storescu")
    root = tmp_path_factory.mktemp("region")
    data = root / "var"
    archive = build_archive(load_settings(environ={}, data_dir=data))
    tokens: dict[str, str] = {}
    try:
        for code in TRUSTS:
            archive.index.add_trust(code, f"Trust {code}")
            for app in ("PAS", "RIS"):  # each feed speaks for its own trust only
                add_sender(archive.index, app, code, ("127.0.0.1",), code)
        add_sender(archive.index, "EMPI", "ZZX", ("127.0.0.1",), None)  # regional
        for aet, trust in SCANNERS.items():
            archive.index.add_node(aet, "127.0.0.1", 104, trust, ["store", "query"])
        users = archive.services.users
        for code in TRUSTS:
            name = f"clin-{code.lower()}"
            users.add(SYSTEM, name, code, ("clinician",), "correct horse battery staple", ())
            tokens[code] = users.issue(name, SYSTEM).token
        admin = admin_headers(archive)
    finally:
        archive.close()
    server = start_server(data)
    files = root / "files"
    files.mkdir()
    base = server.base_url
    readers = {
        code: httpx.Client(base_url=base, headers={"Authorization": f"Bearer {tok}"}, timeout=30)
        for code, tok in tokens.items()
    }
    try:
        yield Region(server, files, readers, httpx.Client(base_url=base, headers=admin))
    finally:
        server.stop()


def test_2_2_and_2_3_images_by_storescu_then_the_feeds(region: Region) -> None:
    zza = write_ct(
        region.files / "zza.dcm",
        patient_id="A123456",
        issuer="ZZA",
        name="CARTER^JAMES^PAUL",
        birth_date="19620417",
        accession="ZZA19004411",
        study_uid=ZZA_CT,
        study_date="20190502",
        nhs_number="9990000026",
    )
    zzb = write_ct(
        region.files / "zzb.dcm",
        patient_id="BTMP000812",
        issuer="ZZB",
        name="UNKNOWN^MALE",
        birth_date="19650101",
        accession="ZZB25000123",
        study_uid=ZZB_CT,
        study_date="20250314",
    )
    region.storescu("ZZACT", zza)
    region.storescu("ZZBCT", zzb)
    # ZZA's PAS traces its record (2.3), then ZZB's merges the ED identity (2.2).
    assert [msa(a)[:2] for a in region.send(A08, A40)] == [
        ["AA", "ZZA0000098765"],
        ["AA", "ZZB0000001234"],
    ]
    nhs = {"PatientID": "9990000026", "IssuerOfPatientID": "NHS"}
    assert region.qido("ZZA", **nhs) == {ZZA_CT, ZZB_CT}
    assert region.qido("ZZB", **nhs) == {ZZA_CT, ZZB_CT}
    assert region.qido("ZZC", **nhs) == set()  # no relationship: like no such patient


def test_2_2_negative_a_trust_feeds_cross_issuer_merge_is_queued(region: Region) -> None:
    bad = A40.replace("MRG|BTMP000812^^^ZZB^MR", "MRG|BTMP000812^^^ZZA^MR").replace(
        "ZZB0000001234", "ZZB0000001235"
    )
    (ack,) = region.send(bad)
    code, control, text = msa(ack)
    assert (code, control) == ("AE", "ZZB0000001235")
    assert "different trusts" in text
    assert any(s.startswith("ERR|") for s in ack.split("\r"))
    assert region.work_items("merge-issuer-mismatch")  # R8: to a person's work queue


def test_2_4_unlink_then_2_5_order_each_trust_sees_its_own(region: Region) -> None:
    (ack,) = region.send(A24.format(control="EMPI000000777", a="A123456", b="B7654321"))
    assert msa(ack)[0] == "AA"
    (ack,) = region.send(A37.format(control="EMPI000000778", a="A123456", b="B7654321"))
    assert msa(ack)[0] == "AA"
    (ack,) = region.send(ORM)
    assert msa(ack)[:2] == ["AA", "ZZBRIS0000123"]
    # ZZB's order for its own B7654321 does not reopen ZZA's record the EMPI separated.
    zza_ids = {"PatientID": "A123456", "IssuerOfPatientID": "ZZA"}
    assert region.qido("ZZB", **zza_ids) == set()
    assert region.qido("ZZA", **zza_ids) == {ZZA_CT}
    # Each trust's clinician finds its own record by the shared NHS number.
    nhs = f"{NHS_SYSTEM}|9990000026"
    for trust, local_id, study in (("ZZA", "A123456", ZZA_CT), ("ZZB", "B7654321", ZZB_CT)):
        (patient,) = region.fhir(trust, "Patient", identifier=nhs)
        assert local_id in {i["value"] for i in patient["identifier"]}
        studies = region.fhir(trust, "ImagingStudy", **{"patient.identifier": nhs})
        assert [s["identifier"][0]["value"] for s in studies] == [f"urn:oid:{study}"]
    # The worklist of ZZB's scanner: ZZB's identifiers and the NHS number (R17).
    (item,) = findscu(
        int(region.server.ports["dicom"]),
        region.files / "mwl",
        "ZZBCT",
        "AccessionNumber=ZZB25000123",
        "PatientID",
        "IssuerOfPatientID",
        "OtherPatientIDsSequence[0].PatientID",
        model="-W",
    )
    assert (item.PatientID, item.IssuerOfPatientID) == ("B7654321", "ZZB")
    assert item.OtherPatientIDsSequence[0].PatientID == "9990000026"


def test_a_reused_control_id_and_a_bare_fs_end_block(region: Region) -> None:
    other = A08.replace("5 NEW ROAD", "7 OTHER ROAD")  # same control ID ZZA0000098765
    (ack,) = region.send(other)
    assert msa(ack)[0] == "AE"
    assert "already used" in msa(ack)[2]
    (patient,) = region.fhir("ZZA", "Patient", identifier=f"{NHS_SYSTEM}|9990000026")
    assert "7 OTHER ROAD" not in str(patient)
    # A sender ending its frame with <FS> alone still gets its ACK.
    fresh = A08.replace("ZZA0000098765", "ZZA0000098770")
    with socket.create_connection(("127.0.0.1", region.hl7), timeout=10) as sock:
        sock.sendall(frame(er7(fresh).encode())[:-1])
        deframer, got = Deframer(), list[bytes]()
        while not got:
            data = sock.recv(65536)
            assert data, "closed without an ACK"
            got = deframer.feed(data)
    assert msa(got[0].decode())[:2] == ["AA", "ZZA0000098770"]
