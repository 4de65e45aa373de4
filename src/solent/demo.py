"""Synthetic demo data for `make run`: four trusts, linked and unlinked patients, CT/MR/CR.

Everything is generated (phantom images, NHS numbers from the 999 test range), so no real
patient data ever ships with the project.
"""

from __future__ import annotations

import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from solent.app import Archive
from solent.domain import nhs_number
from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance

DEMO_ROOT = "1.2.826.0.1.3680043.10.1455."  # documentation-style UID root for synthetic data
TRUSTS = {
    "ZZA": "Solent Demo Acute Trust (ZZA)",
    "ZZB": "Solent Demo University Hospitals (ZZB)",
    "ZZC": "Solent Demo Community Trust (ZZC)",
    "ZZD": "Solent Demo Children's Hospital (ZZD)",
}
SOP_CT = "1.2.840.10008.5.1.4.1.1.2"
SOP_MR = "1.2.840.10008.5.1.4.1.1.4"
SOP_CR = "1.2.840.10008.5.1.4.1.1.1"


@dataclass(frozen=True)
class DemoPatient:
    trust: str
    local_id: str
    name: str
    birth_date: str
    sex: str
    nhs: str | None


def _nhs(nine: str) -> str:
    value = nhs_number.complete(nine)
    assert value is not None
    return value


ALICE = _nhs("999000001")
CAROL = _nhs("999000003")
BAD_NHS = ALICE[:9] + str((int(ALICE[9]) + 1) % 10)  # one digit off: fails modulus 11

PATIENTS = [
    DemoPatient("ZZA", "A100001", "DEMO^ALICE", "19580312", "F", ALICE),
    DemoPatient("ZZB", "B7730021", "DEMO^ALICE", "19580312", "F", ALICE),
    DemoPatient("ZZB", "B7730444", "DEMO^BOB", "19710101", "M", _nhs("999000002")),
    DemoPatient("ZZC", "C-55501", "DEMO^CAROL^ANNE", "20020615", "F", CAROL),
    DemoPatient("ZZD", "D000777", "DEMO^CAROL^ANNE", "20020615", "F", CAROL),
    DemoPatient("ZZD", "D000778", "DEMO^DAVID", "20150909", "M", None),
    DemoPatient("ZZA", "A100002", "DEMO^ERIN", "19900220", "F", BAD_NHS),
]

# (patient index, modality, description, date, slices)
STUDIES = [
    (0, "CT", "CT CHEST WITH CONTRAST", "20240115", 24),
    (0, "CR", "XR CHEST PA", "20250302", 1),
    (1, "MR", "MR BRAIN", "20260610", 16),
    (2, "CT", "CT ABDOMEN PELVIS", "20260105", 20),
    (3, "MR", "MR KNEE LEFT", "20230920", 12),
    (4, "CR", "XR HAND RIGHT", "20260801", 1),
    (5, "CR", "XR CHEST AP", "20261101", 1),
    (6, "CT", "CT HEAD", "20261120", 16),
]


def _phantom(size: int, z: float, modality: str) -> np.ndarray:
    """Shepp-Logan-like ellipses; values in Hounsfield-ish units for CT."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    img = np.full((size, size), -1000.0 if modality == "CT" else 0.0)
    r = 0.9 * np.sqrt(max(0.05, 1 - (2 * z - 1) ** 2))
    body = (x / 0.85) ** 2 + (y / (0.7 * r / 0.9 + 0.05)) ** 2 <= 1
    img[body] = 40 if modality == "CT" else 600
    for cx, cy, a, b, v in (
        (-0.35, 0, 0.2, 0.35 * r, -800),
        (0.35, 0, 0.2, 0.35 * r, -800),
        (0, -0.45 * r, 0.12, 0.08, 1000),
    ):
        img[((x - cx) / a) ** 2 + ((y - cy) / max(b, 0.02)) ** 2 <= 1] = (
            v if modality == "CT" else abs(v) * 0.5 + 200
        )
    img += np.random.default_rng(int(z * 1000)).normal(0, 8, img.shape)
    return img


def _dataset(
    p: DemoPatient,
    modality: str,
    desc: str,
    date: str,
    study_uid: str,
    series_uid: str,
    i: int,
    n: int,
) -> Dataset:
    sop_class = {"CT": SOP_CT, "MR": SOP_MR, "CR": SOP_CR}[modality]
    size = 512 if modality == "CR" else 256
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    # Fixed UIDs and bytes: loading again (a first start interrupted by Ctrl-C) stores nothing
    # twice, each instance being a duplicate of itself.
    ds.SOPInstanceUID = f"{series_uid}.{i + 1}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientName, ds.PatientID, ds.IssuerOfPatientID = p.name, p.local_id, p.trust
    ds.PatientBirthDate, ds.PatientSex = p.birth_date, p.sex
    if p.nhs:
        other = Dataset()
        other.PatientID, other.IssuerOfPatientID = p.nhs, "NHS"
        ds.OtherPatientIDsSequence = Sequence([other])
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = "093000"
    ds.AccessionNumber = f"{p.trust}{date[2:]}{zlib.crc32(study_uid.encode()) % 1000:03d}"
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = p.trust
    ds.IssuerOfAccessionNumberSequence = Sequence([issuer])
    ds.StudyID, ds.StudyDescription, ds.SeriesDescription = "1", desc, desc
    ds.ReferringPhysicianName = "DEMO^REFERRER"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, i + 1
    ds.BodyPartExamined = desc.split()[1] if len(desc.split()) > 1 else ""
    ds.Manufacturer = "Solent demo generator"
    z = (i + 0.5) / n
    pixels = _phantom(size, z, modality)
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    if modality == "CT":
        ds.PixelRepresentation, ds.RescaleIntercept, ds.RescaleSlope = 1, -1024, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        stored = np.clip(pixels + 1024, 0, 4095).astype(np.int16)
        ds.SliceThickness = 5
        ds.ImagePositionPatient = [-125.0, -125.0, round(-60 + 5.0 * i, 1)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [250 / size, 250 / size]
    else:
        ds.PixelRepresentation = 0
        stored = np.clip(pixels, 0, 4095).astype(np.uint16)
        ds.WindowCenter, ds.WindowWidth = 600, 1200
        ds.PixelSpacing = [0.8, 0.8]
        if modality == "MR":
            ds.ImagePositionPatient = [-100.0, -100.0, round(4.0 * i, 1)]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.SliceThickness = 4
    ds.PixelData = stored.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


DEMO_INSTANCES = sum(study[4] for study in STUDIES)


def demo_state(archive: Archive) -> str:
    """``absent``, ``partial`` (a first start stopped while loading) or ``complete``: how many
    instances the demo's studies hold, so a restart finishes the demo and never doubles it."""
    from sqlalchemy import func, select

    from solent.index import schema as t

    uids = [f"{DEMO_ROOT}1.{k + 1}" for k in range(len(STUDIES))]
    query = (
        select(func.count())
        .select_from(t.instance.join(t.series).join(t.study))
        .where(t.study.c.study_uid.in_(uids))
    )
    with archive.index.read() as conn:
        held = int(conn.execute(query).scalar_one())
    if held == 0:
        return "absent"
    return "complete" if held >= DEMO_INSTANCES else "partial"


def load_demo(archive: Archive) -> int:
    """Create the four trusts and their studies; returns how many instances were stored."""
    known = {t.code for t in archive.index.list_trusts()}
    for code, name in TRUSTS.items():
        if code not in known:
            archive.index.add_trust(code, name)
    stored = 0
    with tempfile.TemporaryDirectory(dir=archive.settings.tmp_dir) as tmp:
        for k, (pi, modality, desc, date, n) in enumerate(STUDIES):
            p = PATIENTS[pi]
            study_uid = f"{DEMO_ROOT}1.{k + 1}"
            series_uid = f"{DEMO_ROOT}2.{k + 1}"
            principal = Principal(PrincipalKind.SYSTEM, "demo-loader", p.trust)
            for i in range(n):
                ds = _dataset(p, modality, desc, date, study_uid, series_uid, i, n)
                path = Path(tmp) / f"{k}_{i}.dcm"
                ds.save_as(path, enforce_file_format=True)
                result = archive.ingestor.ingest_file(
                    path, principal, Provenance(Channel.DEMO), move=True
                )
                stored += result.ok
    # The demo's NHS numbers count as traced (PDS-verified), so linked records show together.
    for p in PATIENTS:
        if p.nhs and nhs_number.is_valid(p.nhs):
            archive.index.mark_nhs_verified(p.trust, p.local_id)
    register_demo_senders(archive)
    return stored


def register_demo_senders(archive: Archive) -> None:
    """HL7 senders of the demo (issue 6): any application of each demo trust, and the link
    senders (the consortium EMPI), sending from this machine only."""
    from solent.index.hl7_senders import add_sender, find_sender

    links = [s.strip() for s in archive.settings.hl7_link_senders.split(",") if s.strip()]
    for facility in [*TRUSTS, *links]:
        if find_sender(archive.index, "*", facility) is None:
            trust = facility if facility in TRUSTS else None
            add_sender(archive.index, "*", facility, ("127.0.0.1", "::1"), trust)
