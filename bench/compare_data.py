"""The CT series of the Solent-vs-Orthanc comparison (the index population is population.py).

300 slices, 512x512, 16-bit, explicit VR little endian (~157 MB), synthetic (NHS number from the
999 test range, trust ZZA). Every ingest run needs new UIDs (both archives keep the first copy
of an instance), so the series is built once with pydicom into a cache and each *variant* is a
byte-level copy whose UIDs differ in one fixed-width field: a variant costs a file copy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from solent.domain import nhs_number

ROOT = "1.2.826.0.1.3680043.10.1455.7."  # synthetic-data UID root, bench branch
TRUST_NAMES = {
    "ZZA": "Bench Acute Trust",
    "ZZB": "Bench University Hospitals",
    "ZZC": "Bench Community Trust",
    "ZZD": "Bench Children's Hospital",
}
CACHE_VERSION = "1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def cache_dir() -> Path:
    base = Path(os.environ.get("SOLENT_BENCH_CACHE", "/var/tmp/solent-bench-cache"))
    d = base / f"v{CACHE_VERSION}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def nhs_for(n: int) -> str:
    """A valid (modulus 11) NHS number of the 999 test range for patient number ``n``."""
    k = n
    while True:
        value = nhs_number.complete(f"999{k % 1_000_000:06d}")
        if value is not None:
            return value
        k += 500_009


# -- the CT series ------------------------------------------------------------------------


CT_PATIENT_ID = "ZZA0000001"
CT_TRUST = "ZZA"


def _variant_token(variant: int) -> str:
    return f"{7_000_000 + variant}"  # fixed 7 digits for variant < 2_999_999


@dataclass(frozen=True)
class SeriesUIDs:
    study: str
    series: str
    sops: tuple[str, ...]


def series_uids(variant: int, slices: int) -> SeriesUIDs:
    v = _variant_token(variant)
    return SeriesUIDs(
        f"{ROOT}1.{v}",
        f"{ROOT}2.{v}",
        tuple(f"{ROOT}3.{v}.{1000 + i}" for i in range(slices)),
    )


def _ct_pixels(i: int, n: int, size: int) -> bytes:
    """A body-like phantom: an ellipse, two lungs, a spine, noise; stored values (HU+1024)."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    z = (i + 0.5) / n
    r = 0.9 * np.sqrt(max(0.05, 1 - (2 * z - 1) ** 2))
    img = np.full((size, size), -1000.0)
    img[(x / 0.85) ** 2 + (y / (0.7 * r / 0.9 + 0.05)) ** 2 <= 1] = 40
    for cx, a, v in ((-0.35, 0.2, -800.0), (0.35, 0.2, -800.0)):
        img[((x - cx) / a) ** 2 + (y / max(0.35 * r, 0.02)) ** 2 <= 1] = v
    img[(x / 0.12) ** 2 + ((y + 0.45 * r) / 0.08) ** 2 <= 1] = 1000
    img += np.random.default_rng(i).normal(0, 8, img.shape)
    return bytes(np.clip(img + 1024, 0, 4095).astype("<i2").tobytes())


def _ct_slice(uids: SeriesUIDs, i: int, n: int, size: int) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = uids.sops[i]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids.study, uids.series
    ds.FrameOfReferenceUID = uids.series.replace(f"{ROOT}2.", f"{ROOT}4.")
    ds.PatientName, ds.PatientID, ds.IssuerOfPatientID = "BENCH^CT", CT_PATIENT_ID, CT_TRUST
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID = nhs_for(1), "NHS"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.PatientBirthDate, ds.PatientSex = "19600101", "F"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260115"
    ds.StudyTime = ds.SeriesTime = "101500"
    ds.AccessionNumber, ds.StudyID = "ZZA26000001", "1"
    ds.StudyDescription = ds.SeriesDescription = "CT CHEST ABDOMEN PELVIS"
    ds.ReferringPhysicianName = "BENCH^REFERRER"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 2, i + 1
    ds.Manufacturer = "Solent bench generator"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SliceThickness = 1.25
    ds.ImagePositionPatient = [-200.0, -200.0, round(-187.5 + 1.25 * i, 2)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [400 / size, 400 / size]
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.WindowCenter, ds.WindowWidth = -1024, 1, 40, 400
    ds.PixelData = _ct_pixels(i, n, size)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def base_series(slices: int = 300, size: int = 512) -> Path:
    """The variant-0 series in the cache (built once, ~5 s)."""
    d = cache_dir() / f"ct-{slices}x{size}"
    done = d / ".complete"
    if done.exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    uids = series_uids(0, slices)
    for i in range(slices):
        _ct_slice(uids, i, slices, size).save_as(d / f"{i:04d}.dcm", enforce_file_format=True)
    done.touch()
    return d


def _header_end(data: bytes) -> int:
    """Offset of the Pixel Data element: UID bytes are only replaced before it."""
    pos = data.find(b"\xe0\x7f\x10\x00OW")
    return pos if pos > 0 else len(data)


def write_variant(
    variant: int, dest: Path, slices: int = 300, size: int = 512, count: int | None = None
) -> SeriesUIDs:
    """Copy the base series (its first ``count`` slices) to ``dest`` with the UIDs of
    ``variant`` (a new study)."""
    base = base_series(slices, size)
    old, new = _variant_token(0).encode(), _variant_token(variant).encode()
    subs = [(f"1455.7.{k}.".encode() + old, f"1455.7.{k}.".encode() + new) for k in (1, 2, 3, 4)]
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(slices if count is None else min(count, slices)):
        data = (base / f"{i:04d}.dcm").read_bytes()
        end = _header_end(data)
        head = data[:end]
        for a, b in subs:
            head = head.replace(a, b)
        (dest / f"{i:04d}.dcm").write_bytes(head + data[end:])
    return series_uids(variant, slices)
