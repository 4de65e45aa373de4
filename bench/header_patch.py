"""Per-instance cost of the outgoing identity patch over the 300-slice 512x512 bench CT.

`python -m bench header_patch [--slices N]`: for each slice, the patient's current identity
(another issuer's ID, the NHS number with its qualifiers, as the index hands it out) is put
into the stored file three ways and timed:

- ``reencode-header``: pydicom reads the header, patches it, writes it (what WADO-RS did);
- ``reencode-dataset``: pydicom reads and writes the whole dataset (what C-GET/C-MOVE did);
- ``splice``: the stored bytes with the re-encoded patient elements spliced in (now both).

Files are read into memory first: only the patch is timed, not the disk.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from typing import Any

import pydicom

from bench.compare_data import base_series
from solent.services.outgoing_identity import FixedIdentity

STAMP = "20260102030405"
ATTRIBUTES: dict[str, Any] = {
    "PatientID": "B7654321",
    "IssuerOfPatientID": "ZZB",
    "PatientName": "CARTER^JAMES^PAUL",
    "PatientBirthDate": "19620417",
    "PatientSex": "M",
    "OtherPatientIDsSequence": [
        {
            "PatientID": "9990000026",
            "IssuerOfPatientID": "NHS",
            "TypeOfPatientID": "TEXT",
            "IssuerOfPatientIDQualifiersSequence": [
                {
                    "UniversalEntityID": "2.16.840.1.113883.2.1.4.1",
                    "UniversalEntityIDType": "ISO",
                    "IdentifierTypeCode": "NH",
                }
            ],
        }
    ],
}


def reencode_header(identity: FixedIdentity, data: bytes) -> int:
    fp = io.BytesIO(data)
    ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
    offset = fp.tell()
    identity.patch_dataset("study", ds)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return len(out.getvalue()) + len(data) - offset


def reencode_dataset(identity: FixedIdentity, data: bytes) -> int:
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    identity.patch_dataset("study", ds)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return len(out.getvalue())


def splice(identity: FixedIdentity, data: bytes) -> int:
    spliced = identity.patch_part10("study", data, complete=True)
    assert spliced is not None
    return len(spliced.head) + len(data) - spliced.tail_offset


def _time(
    files: list[bytes], fn: Callable[[FixedIdentity, bytes], int]
) -> tuple[float, float, float]:
    """(median, mean, first) milliseconds per instance, one identity (request) per pass."""
    identity = FixedIdentity(ATTRIBUTES, STAMP)
    times = []
    for data in files:
        t0 = time.perf_counter()
        fn(identity, data)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), statistics.fmean(times), times[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench header_patch", description=__doc__)
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args(argv)
    d = base_series(300, 512)
    files = [(d / f"{i:04d}.dcm").read_bytes() for i in range(min(args.slices, 300))]
    mb = sum(len(f) for f in files) / 1e6
    print(f"{len(files)} instances, {mb:.1f} MB; ms per instance (median / mean / first)")
    for name, fn in (
        ("reencode-header", reencode_header),
        ("reencode-dataset", reencode_dataset),
        ("splice", splice),
    ):
        med, mean, first = _time(files, fn)
        print(f"  {name:<17} {med:7.3f} / {mean:7.3f} / {first:7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
