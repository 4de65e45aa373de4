"""Helpers of the HL7/identity scenario tests: a real `solent serve` with four trusts, real
MLLP traffic through python-hl7's client, synthetic CT studies, JSON API and FHIR reads."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
from hl7.client import MLLPClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from solent.app import build_archive
from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
from solent.index.hl7_senders import add_sender
from solent.settings import load_settings

TRUSTS = ("ZZA", "ZZB", "ZZC", "ZZD")
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"


def er7(text: str) -> str:
    """The scenario messages are written one segment a line; HL7 separates with CR."""
    return "\r".join(line.strip() for line in text.strip().splitlines() if line.strip()) + "\r"


def send(port: int, *messages: str) -> list[str]:
    """Send messages over one MLLP connection (python-hl7 client); returns the ACK texts."""
    acks = []
    with MLLPClient("127.0.0.1", port) as client:
        for m in messages:
            raw = client.send_message(er7(m))
            acks.append(raw.decode("utf-8").strip("\x0b\x1c\r"))
    return acks


def msa(ack: str) -> list[str]:
    """MSA fields of an ACK: [code, control id, text]."""
    for seg in ack.split("\r"):
        if seg.startswith("MSA|"):
            return ([*seg.split("|")[1:], "", "", ""])[:3]
    raise AssertionError(f"no MSA segment in ACK: {ack!r}")


#: DICOM clients registered by prepare_data_dir: a ZZA workstation and ZZB's CT scanner.
NODES = {"ZZAPACSWS": "ZZA", "ZZBCT1": "ZZB"}


def prepare_data_dir(data_dir: Path, trusts: tuple[str, ...] = TRUSTS) -> None:
    archive = build_archive(load_settings(environ={}, data_dir=data_dir))
    try:
        for code in trusts:
            archive.index.add_trust(code, f"Trust {code}")
        for aet, trust in NODES.items():
            if trust in trusts:
                archive.index.add_node(aet, "127.0.0.1", 104, trust, ["store", "query"])
        for facility in (*trusts, "ZZX"):  # HL7 senders must be registered (issue 6)
            add_sender(archive.index, "*", facility, ("127.0.0.1",), None)
    finally:
        archive.close()


def findscu(port: int, out: Path, aet: str, *keys: str, model: str = "-S") -> list[Dataset]:
    """C-FIND with DCMTK's findscu (TCP_NODELAY=1); returns the response identifiers."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    args = ["findscu", model, "-X", "-od", str(out), "-aet", aet, "-aec", "SOLENT"]
    args += ["127.0.0.1", str(port)]
    for k in keys:
        args += ["-k", k]
    env = {**os.environ, "TCP_NODELAY": "1"}
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def write_ct(
    path: Path,
    *,
    patient_id: str,
    issuer: str,
    name: str,
    birth_date: str,
    sex: str = "M",
    accession: str,
    study_uid: str,
    study_date: str,
    nhs_number: str | None = None,
) -> Path:
    """A one-slice CT carrying the identity attributes of the scenarios (PS3.17 YYYY.7.8)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(prefix="2.25.")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid(prefix="2.25.")
    ds.Modality = "CT"
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.StudyDescription = "CT chest abdomen pelvis"
    ds.AccessionNumber = accession
    acc_issuer = Dataset()
    acc_issuer.LocalNamespaceEntityID = issuer
    ds.IssuerOfAccessionNumberSequence = [acc_issuer]
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = issuer
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    if nhs_number:
        other = Dataset()
        other.PatientID = nhs_number
        other.IssuerOfPatientID = "NHS"
        other.TypeOfPatientID = "TEXT"
        ds.OtherPatientIDsSequence = [other]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(64, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def ingest(data_dir: Path, trust: str, *paths: Path) -> None:
    """Store files through the one ingest pipeline, against the running server's archive."""
    archive = build_archive(load_settings(environ={}, data_dir=data_dir), migrate=False)
    try:
        who = Principal(PrincipalKind.IMPORTER, "test", trust)
        for p in paths:
            result = archive.ingestor.ingest_file(p, who, Provenance(Channel.IMPORT))
            assert getattr(result, "ok", True), result
    finally:
        archive.close()


class Api:
    """JSON API and FHIR reads of a running server."""

    def __init__(
        self, base_url: str, headers: dict[str, str], admin: dict[str, str] | None = None
    ) -> None:
        self.client = httpx.Client(base_url=base_url, headers=headers, timeout=30)
        #: A regional administrator: the HL7 journal and identity changes (issue 11: the
        #: reading test user holds no admin role).
        self.admin = httpx.Client(base_url=base_url, headers=admin or headers, timeout=30)

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.client.get(path, params=params)

    def json(self, path: str, **params: Any) -> Any:
        r = self.get(path, **params)
        assert r.status_code == 200, f"{path} {params}: {r.status_code} {r.text}"
        return r.json()

    def admin_json(self, path: str, **params: Any) -> Any:
        r = self.admin.get(path, params=params)
        assert r.status_code == 200, f"{path} {params}: {r.status_code} {r.text}"
        return r.json()

    def person(self, **params: str) -> dict[str, Any]:
        out: dict[str, Any] = self.json("/api/identity/person", **params)
        return out

    def study_uids(self, **params: str) -> list[str]:
        return [s["study_uid"] for s in self.person(**params)["studies"]]

    def work_items(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.json("/api/identity/data-quality")
        return out
