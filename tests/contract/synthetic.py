"""Small synthetic DICOM instances for backend and durability tests.

Real pydicom-written Part 10 files (explicit VR little endian, 16-bit pixels), so every test
goes through the same parser a modality's files do; the pixel bytes depend on ``seed`` so two
files with one SOP Instance UID can differ in content.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

TEST_ROOT = "1.2.826.0.1.3680043.10.1455.9."  # synthetic test data, never a real patient
SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}


def new_uid() -> str:
    return str(generate_uid(TEST_ROOT))


@dataclass(frozen=True)
class Written:
    path: Path
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sha256: str
    size: int


def write_instance(
    path: Path,
    *,
    patient_id: str = "P0001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    modality: str = "CT",
    seed: int = 0,
    size: int = 16,
    patient_name: str = "TEST^PATIENT",
) -> Written:
    """Write one instance to ``path`` and describe what was written."""
    study_uid = study_uid or new_uid()
    series_uid = series_uid or new_uid()
    sop_instance_uid = sop_instance_uid or new_uid()
    ds = Dataset()
    ds.SOPClassUID = SOP_CLASS[modality]
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = "20260101"
    ds.StudyTime = ds.SeriesTime = "120000"
    ds.AccessionNumber = f"ACC{seed % 100000:05d}"
    ds.StudyID = "1"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = seed % 10000 + 1
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 4096, size=(size, size), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(ds.SOPClassUID)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    return Written(
        path, sop_instance_uid, study_uid, series_uid, hashlib.sha256(data).hexdigest(), len(data)
    )
