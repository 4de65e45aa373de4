"""Small synthetic instances for migration tests and the migration benchmark.

Each instance is a tiny CT image (or a bigger one for throughput), Explicit VR Little Endian,
with the patient's NHS number in Other Patient IDs Sequence (issuer NHS) as UK PACS hold it.
"""

from __future__ import annotations

import hashlib
import io
import json
import urllib.request
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


@dataclass
class Patient:
    patient_id: str
    name: str
    birth_date: str
    sex: str
    nhs_number: str | None = None


@dataclass
class Study:
    patient: Patient
    study_date: str
    uid: str = field(default_factory=generate_uid)
    series: list[list[str]] = field(default_factory=list)  # SOP Instance UIDs per series
    series_uids: list[str] = field(default_factory=list)

    def add_series(self, n: int) -> list[str]:
        sops = [generate_uid() for _ in range(n)]
        self.series.append(sops)
        self.series_uids.append(generate_uid())
        return sops

    def instances(self) -> list[tuple[str, str]]:
        """(series UID, SOP Instance UID) of every instance."""
        return [
            (s, sop) for s, sops in zip(self.series_uids, self.series, strict=True) for sop in sops
        ]


def instance_bytes(
    study: Study, series_uid: str, sop_uid: str, *, seed: int = 0, size: int = 8
) -> bytes:
    p = study.patient
    ds = Dataset()
    ds.PatientID = p.patient_id
    ds.PatientName = p.name
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = p.sex
    if p.nhs_number:
        item = Dataset()
        item.PatientID = p.nhs_number
        item.IssuerOfPatientID = "NHS"
        ds.OtherPatientIDsSequence = [item]
    ds.StudyInstanceUID = study.uid
    ds.StudyDate = study.study_date
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = study.series_uids.index(series_uid) + 1
    ds.Modality = "CT"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = 1
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    digest = hashlib.sha256(f"{sop_uid}/{seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def upload(base_url: str, data: bytes) -> None:
    """POST one instance to Orthanc's REST API."""
    req = urllib.request.Request(base_url + "/instances", data=data, method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        json.loads(r.read())


def upload_study(base_url: str, study: Study, *, seed: int = 0, size: int = 8) -> None:
    for series_uid, sop in study.instances():
        upload(base_url, instance_bytes(study, series_uid, sop, seed=seed, size=size))
