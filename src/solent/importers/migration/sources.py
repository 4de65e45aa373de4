"""The legacy systems: list what each holds (inventory) and fetch instances of it.

A DIMSE archive is listed with C-FIND (study, series, image level) and read with C-GET, so no
listener or AE registration on Solent's side is needed and every instance arrives on the
association that asked for it. A folder (a CD/DVD export with or without DICOMDIR) is read in
place. The bytes are passed on as received; Solent's ingest stores them unchanged.
"""

from __future__ import annotations

import email.policy
import hashlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from email.parser import BytesParser
from pathlib import Path
from typing import Any, Protocol

import httpx
import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt

from solent.dicom.parse import nhs_number_of
from solent.errors import InvalidInput
from solent.importers.folder import iter_files
from solent.protocols.dimse.net import responses_to_the_waiting_sender
from solent.services.migration import Entry, Item, Source

# Study Root Query/Retrieve Information Model FIND and GET (pynetdicom builds these names at
# import time, which type checkers cannot see).
StudyRootQueryRetrieveInformationModelFind = "1.2.840.10008.5.1.4.1.2.2.1"
StudyRootQueryRetrieveInformationModelGet = "1.2.840.10008.5.1.4.1.2.2.3"

# What a C-GET accepts, each in a presentation context of its own, so the source sends each
# instance in its stored encoding (video syntaxes are left out: they are not archived here).
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1.99",  # deflated
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 multi-component lossless
    "1.2.840.10008.1.2.4.93",  # JPEG 2000 multi-component
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.4.110",  # JPEG XL lossless
    "1.2.840.10008.1.2.4.111",  # JPEG XL JPEG recompression
    "1.2.840.10008.1.2.4.112",  # JPEG XL
    "1.2.840.10008.1.2.8.1",  # deflated image frame compression
    "1.2.840.10008.1.2.5",  # RLE
    "1.2.840.10008.1.2.2",  # explicit VR big endian (retired, still found in archives)
]


class SourceClient(Protocol):
    def inventory(self) -> Iterator[Entry]:
        """Every instance the source holds, with its patient's demographics."""

    def fetch(self, items: list[Item], workdir: Path) -> Iterator[tuple[Item, Path | str]]:
        """Each item's file (or why it could not be fetched); one series per call."""

    def close(self) -> None: ...


def client_for(src: Source) -> SourceClient:
    if src.kind == "folder":
        return FolderSource(Path(src.address))
    if src.kind == "dimse":
        return DimseSource(src)
    if src.kind == "dicomweb":
        return DicomWebSource(src.address)
    raise InvalidInput(f"source kind {src.kind} cannot be read by this version")


def parse_dimse_address(address: str) -> tuple[str, str, int]:
    """``AE@host:port`` -> (AE, host, port)."""
    try:
        ae, rest = address.split("@", 1)
        host, port = rest.rsplit(":", 1)
        number = int(port)
    except ValueError as exc:
        raise InvalidInput("a DIMSE source is AE@host:port, e.g. LEGACY@10.0.0.5:104") from exc
    if not ae or len(ae) > 16 or not host or not 0 < number < 65536:
        raise InvalidInput("a DIMSE source is AE@host:port, e.g. LEGACY@10.0.0.5:104")
    return ae, host, number


def _s(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


def entry_of(ds: Dataset, *, size: int | None = None, locator: str | None = None) -> Entry:
    return Entry(
        patient_id=_s(ds, "PatientID") or "",
        study_uid=_s(ds, "StudyInstanceUID") or "",
        series_uid=_s(ds, "SeriesInstanceUID") or "",
        sop_uid=_s(ds, "SOPInstanceUID") or "",
        patient_name=_s(ds, "PatientName"),
        birth_date=_s(ds, "PatientBirthDate"),
        sex=_s(ds, "PatientSex"),
        nhs_number=nhs_number_of(ds),
        sop_class_uid=_s(ds, "SOPClassUID"),
        study_date=_s(ds, "StudyDate"),
        modality=_s(ds, "Modality"),
        size_bytes=size,
        locator=locator,
    )


DICOMDIR_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage


def _looks_like_dicom(path: Path) -> bool:
    """A Part 10 file ("DICM" after the preamble), or a bare dataset that starts with a
    group 0002 or 0008 element (little endian), as files without preamble do."""
    with suppress(OSError), path.open("rb") as fp:
        head = fp.read(132)
        return head[128:132] == b"DICM" or head[:2] in (b"\x02\x00", b"\x08\x00")
    return False


def unreadable_entry(path: Path) -> Entry:
    """A file that claims to be DICOM but cannot be listed: keyed by its path, not its UIDs."""
    resolved = str(path.resolve())
    key = "unreadable:" + hashlib.sha256(resolved.encode()).hexdigest()[:40]
    return Entry(
        patient_id="",
        study_uid="",
        series_uid="",
        sop_uid=key,
        size_bytes=path.stat().st_size,
        locator=resolved,
    )


class FolderSource:
    """A folder or a DICOMDIR's folder; files are ingested from where they are."""

    def __init__(self, root: Path) -> None:
        if not root.exists():
            raise InvalidInput(f"no such folder: {root}")
        self.root = root

    def inventory(self) -> Iterator[Entry]:
        """Every instance in the folder. A file that is DICOM (the "DICM" marker, or no
        preamble but a first group 0002 or 0008 tag, as old CDs write) but cannot be listed is
        listed under a key of its own, so the transfer tries it, ingest says why it is refused
        and the report names it: nothing on a CD is dropped unseen. Files that are not DICOM
        at all (a viewer, a README) are not instances: skipped."""
        for path in iter_files([self.root]):
            if not _looks_like_dicom(path):
                continue
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                if ds.file_meta.get("MediaStorageSOPClassUID") == DICOMDIR_CLASS:
                    continue  # the DICOMDIR itself: an index of the instances, not one
                entry = entry_of(ds, size=path.stat().st_size, locator=str(path.resolve()))
            except Exception:  # a hostile or broken file must not end the listing
                entry = None
            if entry is None or not (entry.sop_uid and entry.study_uid and entry.series_uid):
                yield unreadable_entry(path)
                continue
            yield entry

    def fetch(self, items: list[Item], workdir: Path) -> Iterator[tuple[Item, Path | str]]:
        for item in items:
            path = Path(item.locator or "")
            yield (item, path) if path.is_file() else (item, f"file gone: {item.locator}")

    def close(self) -> None:
        return None


class DimseSource:
    """C-FIND to list, C-GET to fetch; one association per calling thread."""

    def __init__(self, src: Source, *, timeout: float = 60) -> None:
        self.src = src
        self.called, self.host, self.port = parse_dimse_address(src.address)
        self.timeout = timeout

    def _ae(self) -> AE:
        ae = AE(ae_title=self.src.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        return ae

    def _associate(self, ae: AE, **kw: Any) -> Any:
        assoc = ae.associate(self.host, self.port, ae_title=self.called, **kw)
        if assoc.is_established:
            return responses_to_the_waiting_sender(assoc)  # no C-FIND/C-GET response lost
        if not assoc.is_rejected and not _reachable(self.host, self.port, self.timeout):
            raise ConnectionError(
                f"cannot connect to {self.host}:{self.port} (is the legacy PACS running, are "
                "the host and port right, is a firewall in the way?)"
            )
        raise ConnectionError(
            f"{self.called}@{self.host}:{self.port} refused the association "
            f"(is {self.src.calling_ae} allowed to query/retrieve there?)"
        )

    def inventory(self) -> Iterator[Entry]:
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = self._associate(ae)
        try:
            # A legacy archive may hold one Study Instance UID under several patients (it
            # answers one study row per patient) and one Series Instance UID under several of
            # those: each UID is walked once, and every instance is listed under the patient
            # its own image-level answer names, so the study's two patients are seen as such.
            studies: dict[str, list[Dataset]] = {}
            for study in self._find(assoc, _study_query()):
                uid = _s(study, "StudyInstanceUID")
                if uid:
                    studies.setdefault(uid, []).append(study)
            for uid, rows in studies.items():
                walked: set[str] = set()
                for series in list(self._find(assoc, _series_query(uid))):
                    suid = _s(series, "SeriesInstanceUID")
                    if not suid or suid in walked:
                        continue
                    walked.add(suid)
                    for image in list(self._find(assoc, _image_query(uid, suid))):
                        ds = Dataset()
                        for part in (_patient_row(rows, image), series, image):
                            ds.update(part)
                        if _s(ds, "SOPInstanceUID"):
                            yield entry_of(ds)
        finally:
            assoc.release()

    def _find(self, assoc: Any, query: Dataset) -> Iterator[Dataset]:
        for status, ident in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if status is None or "Status" not in status:  # pynetdicom: aborted, or timed out
                raise ConnectionError(
                    f"{self.called}@{self.host}:{self.port} ended the C-FIND without an answer "
                    f"(it aborted the association or did not answer in {self.timeout:.0f} s): "
                    f"is {self.src.calling_ae} allowed to query there? See the source's log"
                )
            code = int(status.Status)
            if code in (0xFF00, 0xFF01) and ident is not None:
                yield ident
            elif code != 0:
                raise ConnectionError(f"C-FIND failed with status 0x{code:04X}")

    def fetch(self, items: list[Item], workdir: Path) -> Iterator[tuple[Item, Path | str]]:
        """C-GET the instances of one series; each arrives as a file written here.

        Each SOP Class is offered once per transfer syntax (a presentation context accepts
        ONE transfer syntax): the source then has a context for the encoding it stored and
        sends the instance as stored. One context per class listing every syntax would let
        the source pick one syntax per class and transcode (decompress) or refuse the rest.
        Classes are asked for in groups that fit the 128 contexts of an association.
        """
        known = sorted({i.sop_class_uid for i in items if i.sop_class_uid})
        per = max(1, 127 // len(TRANSFER_SYNTAXES))
        for start in range(0, len(known), per):
            group = set(known[start : start + per])
            yield from self._get(
                [i for i in items if i.sop_class_uid in group],
                [(uid, [ts]) for uid in sorted(group) for ts in TRANSFER_SYNTAXES],
                workdir,
            )
        unknown = [i for i in items if not i.sop_class_uid]
        if unknown:  # the source's C-FIND did not say their SOP Class: offer the common ones
            common = [str(cx.abstract_syntax) for cx in StoragePresentationContexts][:120]
            yield from self._get(unknown, [(uid, TRANSFER_SYNTAXES) for uid in common], workdir)

    def _get(
        self, items: list[Item], contexts: list[tuple[str, list[str]]], workdir: Path
    ) -> Iterator[tuple[Item, Path | str]]:
        if not items:
            return
        received: dict[str, Path] = {}

        def on_store(event: Any) -> int:
            sop = str(event.request.AffectedSOPInstanceUID)
            fd, name = tempfile.mkstemp(prefix="get-", suffix=".dcm", dir=workdir)
            try:  # a process whose DIMSE listener made pynetdicom stream to files (net.py)
                spooled = event.dataset_path
            except AttributeError:
                spooled = None
            if spooled:
                os.close(fd)
                shutil.move(str(spooled), name)  # already a Part 10 file, meta and all
            else:
                with open(fd, "wb") as fp:
                    fp.write(event.encoded_dataset(include_meta=True))
            received[sop] = Path(name)
            return 0x0000

        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        for uid, syntaxes in contexts:
            ae.add_requested_context(uid, syntaxes)
        roles = [build_role(uid, scp_role=True) for uid in sorted({uid for uid, _ in contexts})]
        failure = ""
        try:
            assoc = self._associate(ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        except ConnectionError as exc:
            for item in items:
                yield item, str(exc)
            return
        try:
            first = items[0]
            query = Dataset()
            query.QueryRetrieveLevel = "IMAGE"
            query.StudyInstanceUID = first.study_uid
            query.SeriesInstanceUID = first.series_uid
            query.SOPInstanceUID = [i.sop_uid for i in items]
            for status, _ident in assoc.send_c_get(
                query, StudyRootQueryRetrieveInformationModelGet
            ):
                if status is None or "Status" not in status:  # aborted, or timed out
                    failure = (
                        "the source ended the C-GET without an answer (it aborted the "
                        f"association or did not answer in {self.timeout:.0f} s: is "
                        f"{self.src.calling_ae} allowed to retrieve there?); retried on the "
                        "next run"
                    )
                    break
                code = int(status.Status)
                if code not in (0x0000, 0xFF00, 0xFF01, 0xB000):
                    failure = _get_failure(code)
        finally:
            with suppress(Exception):
                assoc.release()
        for item in items:
            path = received.pop(item.sop_uid, None)
            yield (item, path) if path else (item, failure or "not sent by the source")
        for stray in received.values():
            stray.unlink(missing_ok=True)

    def close(self) -> None:
        return None


def _patient_keys(ds: Dataset) -> None:
    ds.PatientID = ""
    ds.PatientName = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    item = Dataset()
    item.PatientID = ""
    item.IssuerOfPatientID = ""
    ds.OtherPatientIDsSequence = [item]


def _reachable(host: str, port: int, timeout: float) -> bool:
    """Whether anything listens there (pynetdicom reports a refused TCP connection and an
    aborted association alike)."""
    try:
        socket.create_connection((host, port), timeout=min(timeout, 10)).close()
    except OSError:
        return False
    return True


def _get_failure(code: int) -> str:
    """A C-GET failure status as what the operator can do about it."""
    if code == 0xA702:
        return (
            "C-GET failed with status 0xA702 (the source could not send it on this "
            "association: it offers no transfer syntax or SOP Class we proposed; check the "
            "source's log, it is retried on the next run)"
        )
    return (
        f"C-GET failed with status 0x{code:04X} (the source could not read or send the "
        "instance; check the source's log, it is retried on the next run)"
    )


def _patient_row(rows: list[Dataset], image: Dataset) -> Dataset:
    """The study-level answer (patient demographics) an image-level answer belongs to: the
    one with its Patient ID; the only one if the source gave the image none."""
    pid = image.get("PatientID")
    if pid is None and len(rows) == 1:
        return rows[0]
    for row in rows:
        if str(row.get("PatientID", "")).strip() == str(pid or "").strip():
            return row
    bare = Dataset()  # a patient no study-level answer named: its ID only, no demographics
    bare.PatientID = str(pid or "")
    return bare


def _study_query() -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    _patient_keys(q)
    q.StudyInstanceUID = ""
    q.StudyDate = ""
    return q


def _series_query(study_uid: str) -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = "SERIES"
    q.StudyInstanceUID = study_uid
    q.SeriesInstanceUID = ""
    q.Modality = ""
    return q


def _image_query(study_uid: str, series_uid: str) -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.PatientID = ""  # whose instance this is, when the study is under several patients
    q.StudyInstanceUID = study_uid
    q.SeriesInstanceUID = series_uid
    q.SOPInstanceUID = ""
    q.SOPClassUID = ""
    return q


class DicomWebSource:
    """QIDO-RS to list studies and series, series metadata (WADO-RS) for every instance's
    attributes (QIDO answers need not carry Other Patient IDs Sequence), WADO-RS to fetch
    each instance in its stored transfer syntax (``transfer-syntax=*``)."""

    ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'

    def __init__(self, base_url: str, *, timeout: float = 120) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise InvalidInput("a DICOMweb source is its base URL, e.g. https://pacs/dicom-web")
        self.base = base_url.rstrip("/")
        self.http = httpx.Client(timeout=timeout)

    def _json(self, path: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        url = self.base + path
        try:
            r = self.http.get(url, params=params, headers={"Accept": "application/dicom+json"})
        except httpx.TransportError as exc:  # unreachable: one line for the operator
            raise ConnectionError(f"DICOMweb source {self.base} cannot be reached: {exc}") from exc
        if r.status_code == 204:
            return []
        if r.is_error:
            raise ConnectionError(
                f"DICOMweb source answered {r.status_code} to GET {url}: {r.text[:200]}"
            )
        body: list[dict[str, Any]] = r.json()
        return body

    def inventory(self) -> Iterator[Entry]:
        # One Study (or Series) UID may come back once per patient it is filed under: each
        # is walked once; the instances' own answers say whose they are.
        studies = dict.fromkeys(
            uid for study in self._json("/studies") if (uid := _json_value(study, "0020000D"))
        )
        for uid in studies:
            series_uids = dict.fromkeys(
                suid
                for series in self._json(f"/studies/{uid}/series")
                if (suid := _json_value(series, "0020000E"))
            )
            for suid in series_uids:
                for meta in self._series_listing(uid, suid):
                    ds = Dataset.from_json(
                        {k: v for k, v in meta.items() if "BulkDataURI" not in v}
                    )
                    if _s(ds, "SOPInstanceUID"):
                        yield entry_of(ds)

    def _series_listing(self, study_uid: str, series_uid: str) -> list[dict[str, Any]]:
        """The series' instances from its metadata (every attribute, Other Patient IDs with
        the NHS number among them); when the source cannot answer that (Orthanc answers 404
        for a series whose study it files under two patients), from QIDO-RS at instance
        level, so the series is listed rather than the whole inventory given up."""
        path = f"/studies/{study_uid}/series/{series_uid}"
        try:
            return self._json(path + "/metadata")
        except ConnectionError as first:
            try:
                return self._json(path + "/instances", {"includefield": _LISTING_FIELDS})
            except ConnectionError:
                raise first from None

    def fetch(self, items: list[Item], workdir: Path) -> Iterator[tuple[Item, Path | str]]:
        for item in items:
            url = (
                f"{self.base}/studies/{item.study_uid}/series/{item.series_uid}"
                f"/instances/{item.sop_uid}"
            )
            try:
                r = self.http.get(url, headers={"Accept": self.ACCEPT_DICOM})
                r.raise_for_status()
                parts = _multipart(r.headers.get("content-type", ""), r.content)
            except (httpx.HTTPError, ValueError) as exc:
                yield item, f"WADO-RS failed: {exc}"
                continue
            if len(parts) != 1:
                yield item, f"WADO-RS answered {len(parts)} parts for one instance"
                continue
            fd, name = tempfile.mkstemp(prefix="wado-", suffix=".dcm", dir=workdir)
            with open(fd, "wb") as fp:
                fp.write(parts[0])
            yield item, Path(name)

    def close(self) -> None:
        self.http.close()


# What an instance-level QIDO-RS answer must carry to list an instance under its patient.
_LISTING_FIELDS = ",".join(
    (
        "00100010",  # PatientName
        "00100020",  # PatientID
        "00100030",  # PatientBirthDate
        "00100040",  # PatientSex
        "00101002",  # OtherPatientIDsSequence (the NHS number, where the source has it)
        "00080016",  # SOPClassUID
        "00080020",  # StudyDate
        "00080060",  # Modality
    )
)


def _json_value(obj: dict[str, Any], tag: str) -> str | None:
    values = obj.get(tag, {}).get("Value") or []
    return str(values[0]) if values else None


def _multipart(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a multipart/related answer, with the standard library's MIME parser."""
    if not content_type.lower().startswith("multipart/"):
        raise ValueError(f"expected a multipart answer, got {content_type or 'none'}")
    msg = BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    out = []
    for part in msg.iter_parts():
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            out.append(payload)
    return out
