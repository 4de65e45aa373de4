"""Two copies of one instance compared, file against file: content digest, image quality,
same acquisition or not, and which patient attributes their headers disagree on.

Pure reading, no state: ``quarantine`` makes the decisions (R54) with these answers.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import uid as uids

from solent.domain import nhs_number as nhs


def content_digest(path: Path) -> str:
    """The SHA-256 a migration compares copies of one instance by (R54: pixel-data hashes).

    With pixel data: the hash of the Pixel Data value, so a copy whose header was relabelled
    (an IEP copy under another patient ID) is the same acquisition, while other pixels under
    the same SOP Instance UID are a collision. Without (or unreadable): the dataset after the
    File Meta group (copies that came by different routes differ in their meta header only).
    """
    try:
        ds = pydicom.dcmread(path, force=True, specific_tags=["PixelData"])
        pixels = ds.get("PixelData")  # by keyword: the value
    except Exception:  # a file pydicom cannot read (hostile nesting, bad lengths): its bytes
        pixels = None  # are what it is; ingest refuses it and says why, the run goes on
    if isinstance(pixels, bytes) and pixels:
        return hashlib.sha256(pixels).hexdigest()
    with path.open("rb") as fp:
        head = fp.read(144)
        start = 0
        if len(head) >= 144 and head[128:132] == b"DICM":
            # (0002,0000) File Meta Information Group Length: UL, value at bytes 140..143.
            start = 144 + int.from_bytes(head[140:144], "little")
        fp.seek(start)
        h = hashlib.sha256()
        while chunk := fp.read(1 << 20):
            h.update(chunk)
        return h.hexdigest()


class spool:
    """A blob as a temporary local file (dataset_digest reads a path; blobs may be in S3)."""

    def __init__(self, fp: Any) -> None:
        self._tmp = tempfile.NamedTemporaryFile(prefix="solent-verify-", delete=False)  # noqa: SIM115
        while chunk := fp.read(1 << 20):
            self._tmp.write(chunk)
        self._tmp.close()

    def __enter__(self) -> Path:
        return Path(self._tmp.name)

    def __exit__(self, *exc: object) -> None:
        Path(self._tmp.name).unlink(missing_ok=True)


# Transfer syntaxes that keep every pixel; any other compressed one may have lost some.
_LOSSLESS = frozenset(
    {
        *uids.UncompressedTransferSyntaxes,
        *uids.RLETransferSyntaxes,
        uids.JPEGLossless,
        uids.JPEGLosslessSV1,
        uids.JPEGLSLossless,
        uids.JPEG2000Lossless,
        uids.JPEG2000MCLossless,
        uids.HTJ2KLossless,
        uids.HTJ2KLosslessRPCL,
    }
)
# Decoded pixels of a lossy copy may differ from the original's by this share of the image's
# range on average and still be the same acquisition; a different image differs far more.
LOSSY_TOLERANCE = 0.02


@dataclass(frozen=True, slots=True)
class Quality:
    """What R54 ranks copies by: lossless over lossy, then original over derived."""

    lossy: bool
    derived: bool
    transfer_syntax: str

    def rank(self) -> tuple[int, int]:
        return (0 if self.lossy else 1, 0 if self.derived else 1)

    def describe(self) -> str:
        name = uids.UID(self.transfer_syntax).name if self.transfer_syntax else "unknown"
        return (
            f"{'lossy' if self.lossy else 'lossless'}, "
            f"{'derived' if self.derived else 'original'}, {name}"
        )


def quality_of(path: Path) -> Quality:
    ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    ts = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    marked = str(ds.get("LossyImageCompression", "")).strip() == "01"
    lossy = marked or (bool(ts) and uids.UID(ts).is_compressed and ts not in _LOSSLESS)
    image_type = ds.get("ImageType") or []
    if isinstance(image_type, str):
        image_type = [image_type]
    first = str(image_type[0]).upper() if len(image_type) else ""
    return Quality(lossy=lossy, derived=first == "DERIVED", transfer_syntax=ts)


def same_image(a: Path, b: Path, *, lossy: bool) -> bool:
    """Whether two copies hold one acquisition's pixels: equal once decoded (a lossless
    re-encoding), or, when either is lossy, close on average. Undecodable means no: a UID
    collision must not pass for a quality variant."""
    try:
        pa = pydicom.dcmread(a, force=True).pixel_array.astype(np.float64)
        pb = pydicom.dcmread(b, force=True).pixel_array.astype(np.float64)
    except Exception:
        return False
    if pa.shape != pb.shape:
        return False
    if np.array_equal(pa, pb):
        return True
    if not lossy:
        return False
    span = max(float(pa.max() - pa.min()), float(pb.max() - pb.min()), 1.0)
    return float(np.mean(np.abs(pa - pb))) <= LOSSY_TOLERANCE * span


# Patient attributes that decide identity (the link rule: NHS number, birth date, sex), and
# the name, which is reported but on its own does not make two copies different patients.
IDENTITY_ATTRIBUTES = ("birth_date", "sex", "nhs_number")


def header_patient(path: Path) -> dict[str, str | None]:
    """The patient a copy's header names: ID, name, birth date, sex, NHS number."""
    ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    number = None
    for other in ds.get("OtherPatientIDsSequence", []):
        if str(other.get("IssuerOfPatientID", "")).upper() == "NHS" and other.get("PatientID"):
            number = nhs.normalise(str(other.PatientID))
    return {
        "patient_id": str(ds.get("PatientID", "")) or None,
        "name": str(ds.get("PatientName", "")) or None,
        "birth_date": str(ds.get("PatientBirthDate", "")) or None,
        "sex": str(ds.get("PatientSex", "")) or None,
        "nhs_number": number,
    }


def header_differences(archived: Path, incoming: Path) -> dict[str, tuple[str | None, str | None]]:
    """Attribute -> (archive's value, this copy's) wherever the two headers disagree."""
    a, b = header_patient(archived), header_patient(incoming)
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}
