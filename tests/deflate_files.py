"""Deflated Explicit VR Little Endian files for the inflation-limit tests, written as a stream:
a well-formed one, and a "bomb" whose few MiB on disk inflate to ``inflated`` bytes of zeros.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import generate_uid

DEFLATED = "1.2.840.10008.1.2.1.99"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def _dataset(sop_class: str, patient_id: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = "DEFLATE^TEST"
    ds.Modality = "OT"
    return ds


def _explicit_le(ds: Dataset) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = False
    write_dataset(buf, ds)
    return buf.getvalue()


def _meta(ds: Dataset) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = DEFLATED
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.1119.1"
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = False
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, meta)
    return buf.getvalue()


def write_deflated(path: Path, patient_id: str = "DFL-1") -> Dataset:
    """A small, well-formed deflated instance (8x8 secondary capture); returns its dataset."""
    ds = _dataset(SECONDARY_CAPTURE, patient_id)
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(64))
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflater.compress(_explicit_le(ds)) + deflater.flush()
    path.write_bytes(_meta(ds) + body)
    return ds


def write_bomb(path: Path, inflated: int = 1 << 30, patient_id: str = "DFL-BOMB") -> int:
    """An encapsulated-PDF instance whose document is ``inflated`` zero bytes, deflated at
    level 9 (about 1 MiB per GiB on disk). Streams: never holds more than 1 MiB. Returns
    the file size."""
    ds = _dataset(ENCAPSULATED_PDF, patient_id)
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    head = _explicit_le(ds)
    # (0042,0011) Encapsulated Document, OB, 4-byte length: written by hand to stream the value.
    element = b"\x42\x00\x11\x00OB\x00\x00" + inflated.to_bytes(4, "little")
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    with path.open("wb") as fp:
        fp.write(_meta(ds))
        fp.write(deflater.compress(head + element))
        left = inflated
        while left > 0:
            fp.write(deflater.compress(zeros[: min(left, len(zeros))]))
            left -= len(zeros)
        fp.write(deflater.flush())
    return path.stat().st_size
