"""Grow both archives' indexes to the same 10k / 100k small studies.

Solent's index is filled with `solent.index.bulk.fill_synthetic` (bulk INSERTs: Solent's own
ingest of 100k instances would take most of an hour and is not what these rows measure). The
studies it wrote are then read back through `QueryService.list_studies` and each becomes one
small DICOM instance (8x8 pixels, the same UIDs, patient, issuer, NHS number, date, modality,
accession) that Orthanc stores for real over its REST API, several requests in parallel.
Queries therefore run against the same studies on both sides.

The instances are encoded by hand (explicit VR little endian, a fixed list of elements): pydicom
needs ~5 ms per dataset on this machine, which would add minutes at 100k.
"""

from __future__ import annotations

import http.client
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from solent.domain.principal import Principal, PrincipalKind
from solent.index.bulk import SOP_CLASS, SyntheticSummary, fill_synthetic
from solent.index.sql import Index
from solent.services.query import QueryService

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.10.1455.7.0"
PAGE = 2000
BENCH_PRINCIPAL = Principal(PrincipalKind.SYSTEM, "bench", None)


@dataclass(frozen=True)
class StudyRow:
    study_uid: str
    study_date: str
    study_time: str
    accession: str
    description: str
    modality: str
    issuer: str
    local_id: str
    name: str
    birth_date: str
    sex: str
    nhs_number: str


def fill_solent(database_url: str, studies: int, seed: int) -> SyntheticSummary:
    """Append ``studies`` synthetic studies (one series, one instance each) to Solent's index."""
    index = Index(database_url)
    try:
        return fill_synthetic(
            index,
            studies,
            studies_per_patient=2,
            series_per_study=1,
            instances_per_series=1,
            seed=seed,
        )
    finally:
        index.close()


def solent_studies(database_url: str) -> list[StudyRow]:
    """Every study in Solent's index, read through the query service."""
    index = Index(database_url)
    try:
        service = QueryService(index)
        out: list[StudyRow] = []
        offset = 0
        while True:
            page = service.list_studies(BENCH_PRINCIPAL, limit=PAGE, offset=offset)
            out.extend(_row(r) for r in page)
            if len(page) < PAGE:
                return out
            offset += PAGE
    finally:
        index.close()


def _row(r: dict[str, Any]) -> StudyRow:
    return StudyRow(
        r["study_uid"],
        r["study_date"] or "",
        r["study_time"] or "",
        r["accession_number"] or "",
        r["study_description"] or "",
        (r["modalities"] or "OT").split("\\")[0],
        r["issuer"],
        r["local_id"],
        r["name"] or "",
        r["birth_date"] or "",
        r["sex"] or "",
        r["nhs_number"] or "",
    )


# -- a minimal explicit VR little endian encoder ------------------------------------------

_LONG_VRS = {b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR"}


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def instance_bytes(s: StudyRow) -> bytes:
    """One DICOM Part 10 file for a study row: the study's single 8x8 instance."""
    sop_class = SOP_CLASS.get(s.modality, SOP_CLASS["CT"])
    series_uid, sop_uid = s.study_uid + ".1", s.study_uid + ".1.1"
    item = _element(0x0010, 0x0020, b"LO", s.nhs_number.encode()) + _element(
        0x0010, 0x0021, b"LO", b"NHS"
    )
    other_ids = struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item
    e = _element
    data = b"".join(
        [
            e(0x0008, 0x0005, b"CS", b"ISO_IR 100"),
            e(0x0008, 0x0016, b"UI", sop_class.encode()),
            e(0x0008, 0x0018, b"UI", sop_uid.encode()),
            e(0x0008, 0x0020, b"DA", s.study_date.encode()),
            e(0x0008, 0x0021, b"DA", s.study_date.encode()),
            e(0x0008, 0x0030, b"TM", s.study_time.encode()),
            e(0x0008, 0x0050, b"SH", s.accession.encode()),
            e(0x0008, 0x0060, b"CS", s.modality.encode()),
            e(0x0008, 0x0090, b"PN", b"BENCH^REFERRER"),
            e(0x0008, 0x1030, b"LO", s.description.encode()),
            e(0x0008, 0x103E, b"LO", s.description.encode()),
            e(0x0010, 0x0010, b"PN", s.name.encode()),
            e(0x0010, 0x0020, b"LO", s.local_id.encode()),
            e(0x0010, 0x0021, b"LO", s.issuer.encode()),
            e(0x0010, 0x0030, b"DA", s.birth_date.encode()),
            e(0x0010, 0x0040, b"CS", s.sex.encode()),
            e(0x0010, 0x1002, b"SQ", other_ids),
            e(0x0020, 0x000D, b"UI", s.study_uid.encode()),
            e(0x0020, 0x000E, b"UI", series_uid.encode()),
            e(0x0020, 0x0010, b"SH", b"1"),
            e(0x0020, 0x0011, b"IS", b"1"),
            e(0x0020, 0x0013, b"IS", b"1"),
            e(0x0028, 0x0002, b"US", _us(1)),
            e(0x0028, 0x0004, b"CS", b"MONOCHROME2"),
            e(0x0028, 0x0010, b"US", _us(8)),
            e(0x0028, 0x0011, b"US", _us(8)),
            e(0x0028, 0x0100, b"US", _us(16)),
            e(0x0028, 0x0101, b"US", _us(12)),
            e(0x0028, 0x0102, b"US", _us(11)),
            e(0x0028, 0x0103, b"US", _us(0)),
            e(0x7FE0, 0x0010, b"OW", bytes(128)),
        ]
    )
    meta = b"".join(
        [
            e(0x0002, 0x0001, b"OB", b"\x00\x01"),
            e(0x0002, 0x0002, b"UI", sop_class.encode()),
            e(0x0002, 0x0003, b"UI", sop_uid.encode()),
            e(0x0002, 0x0010, b"UI", EXPLICIT_LE.encode()),
            e(0x0002, 0x0012, b"UI", IMPLEMENTATION_UID.encode()),
        ]
    )
    group_length = e(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta)))
    return bytes(128) + b"DICM" + group_length + meta + data


# -- Orthanc -------------------------------------------------------------------------------


def upload_orthanc(
    base_url: str,
    rows: Iterable[StudyRow],
    *,
    threads: int = 6,
    on_done: Callable[[int], None] | None = None,
) -> int:
    """POST one instance per study to Orthanc's /instances; returns how many were stored."""
    host, port = base_url.removeprefix("http://").split(":")
    local = threading.local()

    def post(row: StudyRow) -> int:
        body = instance_bytes(row)
        for attempt in (1, 2):
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection(host, int(port), timeout=120)
            try:
                conn.request(
                    "POST", "/instances", body=body, headers={"Content-Type": "application/dicom"}
                )
                resp = conn.getresponse()
                resp.read()
                break
            except (ConnectionError, http.client.RemoteDisconnected):
                # Orthanc closes idle keep-alive connections after ~1 s: reconnect once.
                conn.close()
                local.conn = None
                if attempt == 2:
                    raise
        if resp.status != 200:
            raise RuntimeError(f"Orthanc refused {row.study_uid}: HTTP {resp.status}")
        return 1

    stored = 0
    with ThreadPoolExecutor(threads) as pool:
        for chunk in _chunks(rows, 500):
            n = sum(pool.map(post, chunk))
            stored += n
            if on_done is not None:
                on_done(n)
    return stored


def _chunks(rows: Iterable[StudyRow], size: int) -> Iterator[list[StudyRow]]:
    chunk: list[StudyRow] = []
    for r in rows:
        chunk.append(r)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
