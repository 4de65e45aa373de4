"""Read what ingest needs from a DICOM file without touching its bytes or decoding pixels.

The header is parsed up to Pixel Data; the Pixel Data element is walked for frame offsets; the
rest of the dataset is serialised once to DICOM JSON (bulk data replaced by URIs) so WADO-RS
metadata never re-parses a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import UID

from solent.dicom import iso2022
from solent.dicom.frames import Frame, PixelLayout, read_pixel_data
from solent.dicom.header_scan import read_header
from solent.dicom.inflate import (
    InflateLimits,
    InflateRefused,
    check_inflated_size,
    deflated_dataset_offset,
)
from solent.dicom.key_objects import KeyObject, is_presentation_state, key_object
from solent.dicom.metadata_json import (
    _JSON_CACHE_MAX,
    _JSON_CACHE_VALUE_MAX,
    _SEQUENCE_VALUE_MAX,
    _cacheable_tag,
    metadata_json,
)
from solent.dicom.rejection_note import KEY_OBJECT_SELECTION, RejectionNote, rejection_note
from solent.domain import nhs_number
from solent.domain.outcomes import RejectReason
from solent.domain.uids import uid_problem
from solent.errors import InvalidInput

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
DEFLATED = {"1.2.840.10008.1.2.1.99"}
# Every other transfer syntax, known to pydicom or not (JPEG XL, ...), encapsulates Pixel Data.
NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", *DEFLATED}
DEFER_SIZE = 64 * 1024
PIXEL_TAGS = {0x7FE00010: "7FE00010", 0x7FE00008: "7FE00008", 0x7FE00009: "7FE00009"}

log = logging.getLogger(__name__)


class RejectedInstance(Exception):
    def __init__(self, reason: RejectReason, message: str, sop_instance_uid: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.sop_instance_uid = sop_instance_uid


@dataclass(slots=True)
class ParsedInstance:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]
    frames: list[Frame] | None
    metadata_json: bytes  # zlib-compressed DICOM JSON object of this instance
    size: int
    sha256: str
    warnings: list[str] = field(default_factory=list)
    #: An IOCM rejection note's title and list (R56); None for every other object.
    rejection: RejectionNote | None = None
    #: What a key object selection (not a rejection note) or presentation state references
    #: (R30); None for every other object.
    key_object: KeyObject | None = None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fp:
        for chunk in iter(lambda: fp.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# The value of a top-level element by its raw encoding, for the attributes the index keeps
# (the same reasoning and rules as metadata_json._JSON_CACHE): most are the same in every
# slice of a series, and converting them one by one through pydicom was most of what parsing
# had left.
_VALUE_CACHE: dict[tuple[Any, ...], Any] = {}
# Keyword -> tag of the attributes read by keyword (pydicom's look-up is a function call and
# a dictionary walk per read; the index reads ~30 per instance).
_KEYWORD_TAGS: dict[str, BaseTag] = {}
# (dataset, warnings list, character set) of the parse in progress (under _PARSE_LOCK).
_parsing: tuple[Dataset, list[warnings.WarningMessage], Any] | None = None


def _get(ds: Dataset, keyword: str) -> Any:
    """``ds.get(keyword)``; for the dataset being parsed, from _VALUE_CACHE when it can be.

    Callers only read the value (str, int): cached values are shared between files."""
    current = _parsing
    if current is None or current[0] is not ds:
        return ds.get(keyword)
    tag = _KEYWORD_TAGS.get(keyword)
    if tag is None:
        found = pydicom.datadict.tag_for_keyword(keyword)
        if found is None:
            return ds.get(keyword)
        tag = _KEYWORD_TAGS[keyword] = BaseTag(found)
    r = ds._dict.get(tag)
    if r is None:
        return None
    if not isinstance(r, RawDataElement):
        return r.value  # converted already
    if r.value is None or len(r.value) > _JSON_CACHE_VALUE_MAX or not _cacheable_tag(tag):
        return ds[tag].value
    _, caught, encoding = current
    key = (int(tag), r.VR, r.value, r.is_implicit_VR, r.is_little_endian, encoding)
    try:
        return _VALUE_CACHE[key]
    except KeyError:
        pass
    seen = len(caught)
    value = ds[tag].value
    if len(caught) == seen:
        if len(_VALUE_CACHE) >= _JSON_CACHE_MAX:
            _VALUE_CACHE.clear()
        _VALUE_CACHE[key] = value
    return value


def _text(ds: Dataset, keyword: str, limit: int = 256) -> str | None:
    try:
        value = _get(ds, keyword)
    except Exception:
        return None
    if value is None or value == "" or value == b"":
        return None
    if isinstance(value, bytes | bytearray):
        value = _decoded(ds, bytes(value))
    text = iso2022.strip(str(value)).strip().replace("\x00", "")
    return text[:limit] or None


def _decoded(ds: Dataset, raw: bytes) -> str:
    """A text attribute received with a binary VR (UN from a node that did not know the
    attribute, or a wrong OB), decoded in the dataset's character set. ``str()`` of the bytes
    would index the Python literal ("b'SMITH^JOHN'") as the patient's name, and identity
    patching would then send that literal as the name of the patient's other instances."""
    try:
        charset = ds.get("SpecificCharacterSet") or "ISO_IR 6"
        encodings = pydicom.charset.convert_encodings(
            [charset] if isinstance(charset, str) else list(charset)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return str(pydicom.charset.decode_bytes(raw, encodings, set()))
    except Exception:
        return raw.decode("latin-1")


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = _get(ds, keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _required_int(ds: Dataset, keyword: str, *, minimum: int = 1) -> int:
    try:
        raw = _get(ds, keyword)
        value = int(raw)
    except (TypeError, ValueError) as exc:
        raise RejectedInstance(
            RejectReason.MALFORMED, f"{keyword} is missing or not an integer"
        ) from exc
    if value < minimum:
        raise RejectedInstance(
            RejectReason.MALFORMED, f"{keyword} is {value}, must be >= {minimum}"
        )
    return value


def nhs_number_of(ds: Dataset, extra_tag: str = "") -> str | None:
    """The NHS number from Other Patient IDs Sequence (issuer NHS) or a configured tag."""
    try:
        value = _nhs_in_sequence(ds)
        if value:
            return value
        if extra_tag:
            if "," in extra_tag:
                g, e = extra_tag.split(",")
                key: int | None = (int(g, 16) << 16) | int(e, 16)
            else:  # a keyword: ds.get(keyword) gives the value, not the element
                key = pydicom.datadict.tag_for_keyword(extra_tag.strip())
            elem = ds.get(key) if key is not None else None
            value = nhs_number.normalise(str(elem.value if elem is not None else ""))
            if value:
                return value
    except Exception:
        return None
    return None


OTHER_PATIENT_IDS = BaseTag(0x00101002)
# The NHS number of an Other Patient IDs Sequence by the sequence's raw encoding (the same
# reasoning as _VALUE_CACHE: a series repeats it in every slice, and reading it meant
# converting the sequence and its items through pydicom). The answer depends on the items'
# Patient ID and Issuer of Patient ID only, that is on the sequence's bytes and the dataset's
# character set. A failure is kept as _FAILED; nothing that warned is kept.
_NHS_CACHE: dict[tuple[Any, ...], object] = {}  # str, None or _FAILED
_FAILED = object()
_MISSING = object()


def _nhs_in_sequence(ds: Dataset) -> str | None:
    current = _parsing
    r = ds._dict.get(OTHER_PATIENT_IDS)
    if (
        current is None
        or current[0] is not ds
        or not isinstance(r, RawDataElement)
        or r.value is None
        or len(r.value) > _SEQUENCE_VALUE_MAX
    ):
        return _nhs_in_sequence_uncached(ds)
    _, caught, encoding = current
    key = (r.VR, r.value, r.is_implicit_VR, r.is_little_endian, encoding)
    hit = _NHS_CACHE.get(key, _MISSING)
    if hit is _MISSING:
        seen = len(caught)
        try:
            hit = _nhs_in_sequence_uncached(ds)
        except Exception:
            hit = _FAILED
        if len(caught) == seen:
            if len(_NHS_CACHE) >= _JSON_CACHE_MAX:
                _NHS_CACHE.clear()
            _NHS_CACHE[key] = hit
    if hit is _FAILED:
        raise InvalidInput("Other Patient IDs Sequence cannot be read")  # nhs_number_of: None
    return hit if isinstance(hit, str) else None


def _nhs_in_sequence_uncached(ds: Dataset) -> str | None:
    for item in ds.get("OtherPatientIDsSequence", []) or []:
        if str(item.get("IssuerOfPatientID", "")).strip().upper() == nhs_number.NHS_ISSUER:
            value = nhs_number.normalise(str(item.get("PatientID", "")))
            if value:
                return value
    return None


def _layout(ds: Dataset) -> PixelLayout | None:
    # Presence by tag (Rows, Columns, Number of Frames): what `keyword in ds` asks, without
    # the keyword look-up.
    if 0x00280010 not in ds._dict and 0x00280011 not in ds._dict:
        return None
    rows = _required_int(ds, "Rows")
    cols = _required_int(ds, "Columns")
    bits = _required_int(ds, "BitsAllocated")
    if bits not in (1, 8, 16, 32, 64):
        raise RejectedInstance(RejectReason.MALFORMED, f"BitsAllocated {bits} is not 1/8/16/32/64")
    stored = _int(ds, "BitsStored")
    if stored is not None and not 0 < stored <= bits:
        raise RejectedInstance(
            RejectReason.MALFORMED, f"BitsStored {stored} is not between 1 and BitsAllocated {bits}"
        )
    high = _int(ds, "HighBit")
    if high is not None and not 0 <= high < bits:
        raise RejectedInstance(RejectReason.MALFORMED, f"HighBit {high} is outside BitsAllocated")
    spp = _int(ds, "SamplesPerPixel") or 1
    if spp not in (1, 3, 4):
        raise RejectedInstance(RejectReason.MALFORMED, f"SamplesPerPixel {spp} is not 1, 3 or 4")
    frames = _required_int(ds, "NumberOfFrames") if 0x00280008 in ds._dict else 1
    if spp == 3 and str(_get(ds, "PhotometricInterpretation") or "").strip() == "YBR_FULL_422":
        spp = 2  # native 4:2:2 stores two samples per pixel (PS3.3 C.7.6.3.1.2)
    return PixelLayout(rows, cols, spp, bits, frames)


def _check_uids(ds: Dataset) -> tuple[str, str, str, str]:
    values = []
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        raw = _get(ds, keyword)
        value = str(raw).strip().rstrip("\x00") if raw is not None else ""
        problem = uid_problem(value)
        if problem == "missing":
            raise RejectedInstance(RejectReason.MISSING_ATTRIBUTE, f"{keyword} is missing")
        if problem:
            raise RejectedInstance(
                RejectReason.INVALID_UID, f"{keyword} {value[:80]!r} is {problem}"
            )
        values.append(value)
    return values[0], values[1], values[2], values[3]


_PARSE_LOCK = threading.Lock()


class _Positioned:
    """A file as pydicom reads it, with ``tell`` answered from a count kept here.

    A buffered file's ``tell`` is an lseek(2) every time, ~80 per CT header, each releasing
    and retaking the GIL: with the blob store's I/O thread waiting for the GIL meanwhile
    (FileBlobStore.place_file), every one was a thread switch. pydicom only reads, seeks and
    tells; it reads deferred values from this object too (it is not an io.BufferedReader, so
    pydicom does not reopen the file by its name, which a spool may no longer have).
    """

    __slots__ = ("_fp", "_pos", "name")

    def __init__(self, fp: BinaryIO) -> None:
        self._fp = fp
        self._pos = fp.tell()
        self.name = getattr(fp, "name", "")

    def read(self, size: int = -1) -> bytes:
        data = self._fp.read(size)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._pos = self._fp.seek(offset, whence)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def fileno(self) -> int:
        return self._fp.fileno()

    @property
    def closed(self) -> bool:
        return self._fp.closed


def parse_file(
    path: Path,
    *,
    sha256: str | None = None,
    nhs_tag: str = "",
    force_transfer_syntax: str | None = None,
    inflate: InflateLimits | None = None,
    opened: BinaryIO | None = None,
    header_scan: bool = True,
) -> ParsedInstance:
    """Parse one stored-as-received file. Raises RejectedInstance with a readable reason.

    A deflated file is first inflated as a counted stream against ``inflate`` (default
    limits when None), so pydicom's all-in-memory inflate only ever meets a bounded file.
    ``opened``: the file already open (ingest moves a spool into the store meanwhile, so its
    path may be gone); the caller closes it. ``header_scan=False`` reads every header with
    pydicom (header_scan.read_header gives the same dataset for the files it takes; tests
    compare the two).
    """
    # warnings.catch_warnings swaps process-global state: two threads parsing at once could
    # swallow each other's truncation warnings and give a file a different verdict. Parsing is
    # pure Python (GIL-bound), so serialising it costs threads next to nothing.
    with (
        _PARSE_LOCK,
        contextlib.nullcontext(opened) if opened is not None else path.open("rb") as opened_fp,
        warnings.catch_warnings(record=True) as caught,
    ):
        fp: Any = _Positioned(opened_fp)
        size = os.fstat(fp.fileno()).st_size
        warnings.simplefilter("always")
        try:
            offset = deflated_dataset_offset(fp)
            if offset is not None:
                check_inflated_size(fp, offset, size, inflate or InflateLimits())
                fp.seek(0)
            try:
                parsed = _parse(fp, size, nhs_tag, force_transfer_syntax, caught, header_scan)
            finally:
                global _parsing
                _parsing = None
        except RejectedInstance:
            raise
        except InflateRefused as exc:
            raise RejectedInstance(exc.reason, exc.message) from exc
        except RecursionError as exc:
            raise RejectedInstance(RejectReason.MALFORMED, "sequences nested too deeply") from exc
        except InvalidInput as exc:
            raise RejectedInstance(RejectReason.MALFORMED, str(exc)) from exc
        except (InvalidDicomError, EOFError) as exc:
            raise RejectedInstance(
                RejectReason.MALFORMED, f"not a readable DICOM file: {exc}"
            ) from exc
        except Exception as exc:  # pydicom raises many types on broken input
            raise RejectedInstance(
                RejectReason.MALFORMED,
                f"not a readable DICOM file: {type(exc).__name__}: {exc}"[:300],
            ) from exc
    parsed.size = size
    parsed.sha256 = sha256 or sha256_file(path)
    parsed.warnings = sorted({str(w.message)[:200] for w in caught})[:20]
    return parsed


def _parse(
    fp: BinaryIO,
    size: int,
    nhs_tag: str,
    force_ts: str | None,
    caught: list[warnings.WarningMessage] | None = None,
    header_scan: bool = True,
) -> ParsedInstance:
    if size < 8:
        raise RejectedInstance(RejectReason.MALFORMED, f"file is only {size} bytes")
    # One full structural parse; values above DEFER_SIZE stay on disk (read lazily by path),
    # so Pixel Data is located, never loaded, for native images. The common file is cut from
    # one read of its header (header_scan); pydicom reads every other one.
    ds: Any = None
    start = fp.tell()
    if header_scan and start == 0:
        seen = len(caught) if caught is not None else 0
        ds = read_header(fp, size, DEFER_SIZE)
        if ds is None:
            if caught is not None:
                del caught[seen:]  # what the declined attempt warned is not this file's
            fp.seek(start)
    if ds is None:
        ds = pydicom.dcmread(fp, defer_size=DEFER_SIZE, force=True)
    as_read = dict(ds._dict)  # the elements as read, before anything below converts them
    if caught is not None:
        global _parsing
        charset = ds._character_set
        _parsing = (ds, caught, tuple(charset) if isinstance(charset, list) else charset)
    meta: FileMetaDataset = ds.file_meta if hasattr(ds, "file_meta") else FileMetaDataset()
    ts_raw = meta.get("TransferSyntaxUID") or force_ts
    if not ts_raw:
        # No file meta: pydicom guessed the encoding; record what it guessed.
        ts_raw = (
            pydicom.uid.ImplicitVRLittleEndian
            if ds.is_implicit_VR
            else (
                pydicom.uid.ExplicitVRLittleEndian
                if ds.is_little_endian
                else pydicom.uid.ExplicitVRBigEndian
            )
        )
    ts = UID(str(ts_raw).strip().rstrip("\x00"))
    if uid_problem(str(ts)):
        raise RejectedInstance(
            RejectReason.MALFORMED, f"Transfer Syntax UID {str(ts)[:80]!r} is invalid"
        )
    name = str(getattr(fp, "name", ""))
    _check_no_eof_warning(caught or [], name)
    if len(ds) == 0:
        raise RejectedInstance(RejectReason.MALFORMED, "the file holds no dataset")
    if meta.get("TransferSyntaxUID") or force_ts:
        _check_vr_encoding(as_read, ts)
    if not meta and not ({0x00080016, 0x00080018, 0x0020000D} & set(ds.keys())):
        fp.seek(128)
        if fp.read(4) != b"DICM":
            raise RejectedInstance(
                RejectReason.MALFORMED,
                "not a DICOM file (no DICM prefix, no file meta, no SOP/Study UIDs)",
            )
    if str(ts) not in DEFLATED:
        # Offsets of a deflated file point into the inflated stream, not the stored bytes;
        # a cut-off deflate stream already failed to inflate above.
        _check_lengths(ds, size)
    if "SOPClassUID" not in ds and meta.get("MediaStorageSOPClassUID"):
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
    sop_class_raw = _get(ds, "SOPClassUID")  # ds.get("SOPClassUID", ""), from the cache
    if str(sop_class_raw if sop_class_raw is not None else "").strip() == MEDIA_STORAGE_DIRECTORY:
        raise RejectedInstance(
            RejectReason.NOT_AN_INSTANCE,
            "a DICOMDIR is a media index, not an instance; import its folder instead",
        )
    sop_class, sop_uid, study_uid, series_uid = _check_uids(ds)
    for stray in [t for t in ds.keys() if t >> 16 == 0xFFFE]:  # noqa: SIM118 - tags, not elements
        # A stray delimiter at dataset level is a harmless writer bug seen in real files; a
        # stray item carries data nobody can place, so the file is rejected.
        if stray == 0xFFFEE000:
            raise RejectedInstance(
                RejectReason.MALFORMED, "stray item tag (FFFE,E000) at dataset level"
            )
        del ds[stray]

    layout = _layout(ds)
    frames: list[Frame] | None = None
    pixel_tag: str | None = None
    pixel_vr: str | None = None
    for tag, name in PIXEL_TAGS.items():
        if tag not in ds._dict:  # what `tag in ds` asks, without converting the key
            continue
        pixel_tag = name
        raw = ds.get_item(tag, keep_deferred=True)  # never load a deferred (large) value
        if str(ts) in DEFLATED:
            # Offsets into the inflated stream mean nothing in the stored file: frames are
            # served by decoding. The full parse above already inflated and checked the stream.
            value = ds[tag].value
            if tag == 0x7FE00010 and layout and len(value) < layout.native_length:
                raise RejectedInstance(RejectReason.MALFORMED, "deflated Pixel Data is too short")
            pixel_vr = "OW"
        else:
            implicit = bool(ds.is_implicit_VR)
            header = 8 if implicit else 12
            value_tell = getattr(raw, "value_tell", None) or getattr(raw, "file_tell", None)
            if value_tell is None:
                raise RejectedInstance(
                    RejectReason.MALFORMED, "cannot locate Pixel Data in the file"
                )
            fp.seek(value_tell - header)
            info = read_pixel_data(
                fp,
                size,
                little_endian=bool(ds.is_little_endian),
                implicit_vr=implicit,
                layout=layout if tag == 0x7FE00010 else None,
            )
            ts_encapsulated = str(ts) not in NATIVE_SYNTAXES
            if tag == 0x7FE00010 and info.encapsulated != ts_encapsulated:
                raise RejectedInstance(
                    RejectReason.MALFORMED,
                    f"Pixel Data is {'encapsulated' if info.encapsulated else 'native'} but the "
                    f"transfer syntax {ts} says {'encapsulated' if ts_encapsulated else 'native'}",
                )
            frames = info.frames
            pixel_vr = (
                "OB"
                if info.encapsulated
                else ("OW" if layout and layout.bits_allocated > 8 else "OB")
            )
        del ds[tag]
        break

    patient_id = _text(ds, "PatientID", 64)
    nhs = nhs_number_of(ds, nhs_tag)
    rejection = None
    keyobj = None
    if sop_class == KEY_OBJECT_SELECTION:
        try:
            rejection = rejection_note(ds)
        except Exception as exc:
            raise RejectedInstance(
                RejectReason.MALFORMED,
                f"the key object selection's title or evidence cannot be read: {exc}"[:300],
                sop_instance_uid=sop_uid,
            ) from exc
    if rejection is None and (
        sop_class == KEY_OBJECT_SELECTION or is_presentation_state(sop_class)
    ):
        # The references only serve R30's flagging: an object whose references cannot be
        # read is stored as before, just never flagged.
        try:
            keyobj = key_object(ds, sop_class)
        except Exception:
            log.warning("references of key object %s unreadable; stored unflagged", sop_uid)
    doc = metadata_json(ds, str(ts), pixel_vr, pixel_tag, as_read, caught)
    modality = _text(ds, "Modality", 16)
    return ParsedInstance(
        rejection=rejection,
        key_object=keyobj,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_uid,
        study_uid=study_uid,
        series_uid=series_uid,
        transfer_syntax_uid=str(ts),
        patient={
            "local_id": patient_id,
            "issuer_in_file": _text(ds, "IssuerOfPatientID", 64),
            "name": _text(ds, "PatientName", 324),
            "birth_date": _text(ds, "PatientBirthDate", 8),
            "sex": _text(ds, "PatientSex", 16),
            "nhs_number": nhs,
            "nhs_number_valid": (
                nhs_number.is_valid(nhs) and not nhs_number.is_placeholder(nhs) if nhs else None
            ),
        },
        study={
            "study_uid": study_uid,
            "study_date": _text(ds, "StudyDate", 8),
            "study_time": _text(ds, "StudyTime", 16),
            "accession_number": _text(ds, "AccessionNumber", 16),
            "accession_issuer": _accession_issuer(ds),
            "study_id": _text(ds, "StudyID", 16),
            "study_description": _text(ds, "StudyDescription", 64),
            "referring_physician": _text(ds, "ReferringPhysicianName", 324),
        },
        series={
            "series_uid": series_uid,
            "modality": modality,
            "series_number": _int(ds, "SeriesNumber"),
            "series_description": _text(ds, "SeriesDescription", 64),
            "body_part": _text(ds, "BodyPartExamined", 16),
            "series_date": _text(ds, "SeriesDate", 8),
            "series_time": _text(ds, "SeriesTime", 16),
        },
        instance={
            "sop_instance_uid": sop_uid,
            "sop_class_uid": sop_class,
            "instance_number": _int(ds, "InstanceNumber"),
            "rows": layout.rows if layout else None,
            "columns": layout.columns if layout else None,
            "number_of_frames": layout.number_of_frames if layout and pixel_tag else None,
            "transfer_syntax_uid": str(ts),
        },
        frames=frames,
        metadata_json=doc,
        size=size,
        sha256="",
    )


def _check_vr_encoding(as_read: dict[Any, Any], ts: UID) -> None:
    """The dataset is in the VR encoding its transfer syntax names. pydicom reads a dataset
    whose first element says otherwise (a C-STORE peer sending explicit VR on an implicit VR
    context) with a warning; stored as it is, the file would misread everywhere else."""
    try:
        implicit = ts.is_implicit_VR
    except ValueError:  # a transfer syntax pydicom does not know: nothing to compare with
        return
    # The first element as read (pydicom converts Specific Character Set at once).
    first = next((e for e in as_read.values() if isinstance(e, RawDataElement)), None)
    found = first.is_implicit_VR if first is not None else implicit
    if found != implicit:
        raise RejectedInstance(
            RejectReason.MALFORMED,
            f"the dataset is encoded in {'implicit' if found else 'explicit'} VR but its "
            f"transfer syntax {ts} ({ts.name}) says {'implicit' if implicit else 'explicit'} VR",
        )


def _check_no_eof_warning(caught: list[warnings.WarningMessage], name: str) -> None:
    """Reject a file cut short inside an undefined length: pydicom only warns about it.

    The warning names the file, so a warning another import thread raised meanwhile (the
    warnings registry is process-wide) is never held against this one.
    """
    if any(
        str(w.message).startswith("End of file reached before delimiter")
        and str(w.message).endswith(f" in file {name}")
        for w in caught
    ):
        raise RejectedInstance(
            RejectReason.MALFORMED,
            "the file is truncated: it ends inside an undefined-length sequence or Pixel Data",
        )


def _check_lengths(ds: Dataset, size: int) -> None:
    """Reject a file cut short inside a defined length: pydicom keeps what it could read."""
    # The elements as held (raw or converted): what get_item(tag, keep_deferred=True) gives,
    # without its per-tag conversion and look-up; a deferred (large) value is never loaded.
    for tag, raw in ds._dict.items():
        if tag >> 16 == 0xFFFE:
            continue  # stray delimiters: judged below
        length = getattr(raw, "length", None)
        value_tell = getattr(raw, "value_tell", None)
        if length is None or value_tell is None or length == 0xFFFFFFFF:
            continue
        if getattr(raw, "value", b"") is None and length > DEFER_SIZE:
            continue  # deferred, as before: Pixel Data is checked where it is located below
        if value_tell + length > size:
            raise RejectedInstance(
                RejectReason.MALFORMED,
                f"the file is truncated: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) declares "
                f"{length} bytes but the file ends after {max(size - value_tell, 0)}",
            )


def _accession_issuer(ds: Dataset) -> str | None:
    try:
        if 0x00080051 not in ds._dict:  # most files: no need to look the keyword up
            return None
        seq = ds.get("IssuerOfAccessionNumberSequence")
        if seq:
            return _text(seq[0], "LocalNamespaceEntityID", 64) or _text(
                seq[0], "UniversalEntityID", 64
            )
    except Exception:
        return None
    return None
