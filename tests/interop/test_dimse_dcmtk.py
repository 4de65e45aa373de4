"""DCMTK against a real `solent serve`: echo, store (every corpus file in its own syntax),
malformed files, C-FIND per level and matching rule, C-MOVE to storescp, C-GET, worklist."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from solent.dicom.parse import RejectedInstance, parse_file
from solent.services.retrieve import split_part10
from tests.conftest import (
    SOLENT,
    RunningServer,
    require_corpus,
    require_tool,
    shared_dir,
    start_server,
)

pytestmark = pytest.mark.timeout(600)
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
CORPUS = shared_dir() / "dicom-corpus"
AET = "DCMTKSCU"


def run(*args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), env=DCMTK_ENV, capture_output=True, text=True, timeout=timeout, check=check
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def manifest() -> list[dict[str, str]]:
    with (CORPUS / "MANIFEST.tsv").open(encoding="utf-8") as fp:
        return list(csv.DictReader(fp, delimiter="\t"))


def ingest_accepts(path: Path) -> bool:
    """Whether the ingest parser takes the file (a few "valid" files lack e.g. a Study UID)."""
    try:
        parse_file(path)
    except RejectedInstance:
        return False
    return True


def dataset_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    _, offset = split_part10(data)
    return data[offset:]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    require_tool("dcmsend")
    require_corpus()
    data = tmp_path_factory.mktemp("dimse") / "srv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOLENT_")}
    env["SOLENT_DATA_DIR"] = str(data)
    for code in ("ZZA", "ZZB"):
        subprocess.run(
            [str(SOLENT), "trust", "add", code, "--name", f"Trust {code}"],
            env=env,
            check=True,
            capture_output=True,
        )
    srv = start_server(
        data,
        {"SOLENT_CONFLICT_POLICY": "replace", "SOLENT_DICOM_ACCEPT_UNKNOWN_SOP_CLASSES": "true"},
    )
    srv.cli("ae", "add", AET, "--host", "127.0.0.1", "--port", "104", "--trust", "ZZA")
    # Solent itself, so `solent send|query|retrieve` (calling AE SOLENT) can talk to the server.
    srv.cli(
        "ae",
        "add",
        "SOLENT",
        "--host",
        "127.0.0.1",
        "--port",
        str(srv.ports["dicom"]),
        "--trust",
        "ZZA",
    )
    yield srv
    srv.stop()


def dcmsend(pacs: RunningServer, *files: Path, aet: str = AET) -> subprocess.CompletedProcess[str]:
    return run(
        "dcmsend",
        "-v",
        "--decompress-never",
        "-aet",
        aet,
        "-aec",
        "SOLENT",
        "127.0.0.1",
        str(pacs.ports["dicom"]),
        *map(str, files),
    )


def _out(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def store_statuses(out: str) -> list[str]:
    return re.findall(r"Received C-STORE Response \(([^)]*)\)", out)


def echo(pacs: RunningServer, aet: str = AET) -> subprocess.CompletedProcess[str]:
    return run("echoscu", "-aet", aet, "-aec", "SOLENT", "127.0.0.1", str(pacs.ports["dicom"]))


def test_echo_registered_node_and_rejects_unknown_callers(pacs: RunningServer) -> None:
    assert echo(pacs).returncode == 0
    unknown = echo(pacs, "NOBODY")
    assert unknown.returncode != 0
    assert "Calling AE Title Not Recognized" in unknown.stderr
    # Registered AE title, but calling from an address that is not the registered host.
    pacs.cli("ae", "add", "ELSEWHERE", "--host", "10.11.12.13", "--port", "104", "--trust", "ZZA")
    assert "Calling AE Title Not Recognized" in echo(pacs, "ELSEWHERE").stderr
    wrong_called = run(
        "echoscu", "-aet", AET, "-aec", "NOTSOLENT", "127.0.0.1", str(pacs.ports["dicom"])
    )
    assert wrong_called.returncode != 0


def _strict_files(rows: list[dict[str, str]]) -> set[str]:
    """Files that must be stored with Success: the ingest parser takes them, their file meta
    names the same instance as their dataset, and their Study UID is filed under one patient
    in the corpus (a study sent under a second patient is refused: never the wrong patient)."""
    idents: dict[str, tuple[str, str, bool]] = {}
    owners: dict[str, set[str]] = {}
    for r in rows:
        try:
            ds = pydicom.dcmread(CORPUS / r["file"], stop_before_pixels=True)
        except Exception:
            continue
        study = str(ds.get("StudyInstanceUID", ""))
        meta = ds.file_meta
        meta_ok = (
            str(meta.get("MediaStorageSOPInstanceUID", "")) == str(ds.get("SOPInstanceUID", ""))
            and bool(meta.get("MediaStorageSOPClassUID"))
            and bool(meta.get("TransferSyntaxUID"))
        )
        idents[r["file"]] = (study, str(ds.get("PatientID", "")), meta_ok)
        owners.setdefault(study, set()).add(str(ds.get("PatientID", "")))
    return {
        name
        for name, (study, _, meta_ok) in idents.items()
        if meta_ok and len(owners[study]) == 1 and ingest_accepts(CORPUS / name)
    }


def test_every_valid_corpus_file_is_stored_in_its_own_transfer_syntax(
    pacs: RunningServer,
) -> None:
    rows = [r for r in manifest() if not r["file"].startswith(("bad_", "fuzz_"))]
    strict = _strict_files(rows)
    stored_syntaxes: set[str] = set()
    # DCMTK: one file per transfer syntax, sent by dcmsend in that syntax (never converted).
    by_syntax: dict[str, str] = {}
    for r in rows:
        if r["file"] in strict and "Deflated Explicit" not in r["transfer_syntax_name"]:
            by_syntax.setdefault(r["transfer_syntax_name"], r["file"])
    for syntax, name in sorted(by_syntax.items()):
        result = dcmsend(pacs, CORPUS / name)
        statuses = store_statuses(_out(result))
        if not statuses:
            continue  # DCMTK has no codec/dictionary entry for it; solent send covers it below
        assert statuses == ["Success"], f"{name} ({syntax}): {statuses}"
        assert "Converting transfer syntax" not in _out(result)
        stored_syntaxes.add(syntax)
    # Every valid file, as its own bytes (pynetdicom, no decoding on either side), one batch.
    out = pacs.cli("send", "SOLENT", "--json", *(str(CORPUS / r["file"]) for r in rows),
                   check=False)  # fmt: skip
    lines = {Path(x["path"]).name: x for x in map(json.loads, out.stdout.splitlines())}
    sent = 0
    for r in rows:
        line = lines[r["file"]]
        if line["status"] is None:
            assert r["file"] not in strict, line  # only files without file meta stay unsent
            continue
        sent += 1
        if r["file"] in strict:
            assert line["status"] == 0, f"{r['file']} ({r['transfer_syntax_name']}): {line}"
            stored_syntaxes.add(r["transfer_syntax_name"])
        else:
            assert line["status"] == 0 or line["comment"], line  # failures say why
    assert sent >= 140, f"only {sent} of {len(rows)} files could be sent"
    for syntax in (
        "JPEG-LS Lossless Image Compression",
        "RLE Lossless",
        "Explicit VR Big Endian",
        "Deflated Explicit VR Little Endian",
        "JPEG XL JPEG Recompression",
        "Deflated Image Frame Compression",
        "JPEG 2000 Image Compression",
        "JPEG Baseline (Process 1)",
    ):
        assert syntax in stored_syntaxes, syntax


def test_malformed_files_get_failure_statuses_and_the_server_keeps_serving(
    pacs: RunningServer,
) -> None:
    failures = 0
    for row in manifest():
        if not row["file"].startswith(("bad_", "fuzz_")):
            continue
        result = dcmsend(pacs, CORPUS / row["file"])
        for status in store_statuses(result.stdout + result.stderr):
            if status != "Success":
                failures += 1
                assert status.startswith("Error"), status
        assert echo(pacs).returncode == 0, f"server stopped answering after {row['file']}"
    assert failures >= 5  # the rest DCMTK itself refuses to send, or ingest accepts as-is


def _find(pacs: RunningServer, tmp: Path, *keys: str, model: str = "-S") -> list[pydicom.Dataset]:
    out = tmp / f"find{time.monotonic_ns()}"
    out.mkdir()
    args = [
        "findscu",
        model,
        "-X",
        "-od",
        str(out),
        "-aet",
        AET,
        "-aec",
        "SOLENT",
        "127.0.0.1",
        str(pacs.ports["dicom"]),
    ]
    for k in keys:
        args += ["-k", k]
    result = run(*args)
    assert result.returncode == 0, result.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def _get(
    pacs: RunningServer, out: Path, *keys: str, options: tuple[str, ...] = ("-v", "-S")
) -> subprocess.CompletedProcess[str]:
    """getscu from the registered node into ``out`` with these -k keys."""
    args = ["getscu", *options, "-aet", AET, "-aec", "SOLENT", "-od", str(out)]
    args += ["127.0.0.1", str(pacs.ports["dicom"])]
    for k in keys:
        args += ["-k", k]
    return run(*args)


def _image_keys(ds: pydicom.Dataset) -> tuple[str, ...]:
    return (
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={ds.StudyInstanceUID}",
        f"SeriesInstanceUID={ds.SeriesInstanceUID}",
        f"SOPInstanceUID={ds.SOPInstanceUID}",
    )


@pytest.fixture(scope="module")
def ct_study(pacs: RunningServer) -> pydicom.Dataset:
    path = CORPUS / "mod_ct_small.dcm"
    assert store_statuses(_out(dcmsend(pacs, path))) == ["Success"]
    return pydicom.dcmread(path)


def test_findscu_each_level_and_matching_rule(
    pacs: RunningServer, ct_study: pydicom.Dataset, tmp_path: Path
) -> None:
    ds = ct_study
    study = ds.StudyInstanceUID
    name = str(ds.PatientName)
    # Patient level (Patient Root), single value on PatientID with the caller's trust.
    rows = _find(
        pacs,
        tmp_path,
        "QueryRetrieveLevel=PATIENT",
        f"PatientID={ds.PatientID}",
        "PatientName",
        model="-P",
    )
    assert [str(r.PatientName) for r in rows] == [name]
    # Study level: wildcard (case-insensitive PN), universal return keys.
    rows = _find(
        pacs,
        tmp_path,
        "QueryRetrieveLevel=STUDY",
        f"PatientName={name[:3].lower()}*",
        "StudyInstanceUID",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
    )
    assert study in [r.StudyInstanceUID for r in rows]
    hit = next(r for r in rows if r.StudyInstanceUID == study)
    assert "CT" in list(hit.ModalitiesInStudy) or hit.ModalitiesInStudy == "CT"
    assert int(hit.NumberOfStudyRelatedInstances) >= 1
    # Date range, open range, and a range that excludes the study.
    day = ds.StudyDate
    assert study in [
        r.StudyInstanceUID
        for r in _find(
            pacs, tmp_path, "QueryRetrieveLevel=STUDY", f"StudyDate={day}-{day}", "StudyInstanceUID"
        )
    ]
    assert study in [
        r.StudyInstanceUID
        for r in _find(
            pacs, tmp_path, "QueryRetrieveLevel=STUDY", f"StudyDate=-{day}", "StudyInstanceUID"
        )
    ]
    assert study not in [
        r.StudyInstanceUID
        for r in _find(
            pacs, tmp_path, "QueryRetrieveLevel=STUDY", "StudyDate=21000101-", "StudyInstanceUID"
        )
    ]
    # List of UIDs at series level; '?' wildcard on Modality.
    rows = _find(
        pacs,
        tmp_path,
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={study}",
        "SeriesInstanceUID",
        "Modality=C?",
    )
    assert [r.SeriesInstanceUID for r in rows] == [ds.SeriesInstanceUID]
    rows = _find(
        pacs,
        tmp_path,
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={study}",
        f"SeriesInstanceUID={ds.SeriesInstanceUID}",
        f"SOPInstanceUID={ds.SOPInstanceUID}\\1.2.3.4",
        "InstanceNumber",
    )
    assert [r.SOPInstanceUID for r in rows] == [ds.SOPInstanceUID]
    # SQL wildcard characters are literal: '%' matches nothing here.
    assert (
        _find(pacs, tmp_path, "QueryRetrieveLevel=STUDY", "PatientName=%", "StudyInstanceUID") == []
    )


def _storescp(tmp: Path, *opts: str) -> tuple[subprocess.Popen[str], int, Path]:
    out = tmp / "received"
    out.mkdir(exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        ["storescp", *opts, "-aet", "DEST", "-od", str(out), str(port)],
        env=DCMTK_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(0.5)
    return proc, port, out


COMPRESSED_LOSSLESS = [
    "ts_jpegls_lossless_mr_small.dcm",
    "ts_rle_mr_small.dcm",
    "ts_j2k_lossless_mr_small.dcm",
    "ts_jpeg_lossless_sv1_mr_dcmtk.dcm",
]


def test_movescu_to_storescp_gets_the_stored_bytes(pacs: RunningServer, tmp_path: Path) -> None:
    """What was sent comes back byte for byte: `solent send` puts each file's own dataset bytes
    on the wire (DCMTK's senders re-encode), storescp +B writes what it receives."""
    files = [
        CORPUS / f
        for f in (
            "mod_ct_small.dcm",
            "ts_jpeg_lossless_sv1_mr_dcmtk.dcm",
            "ts_explicit_vr_be_us_rgb_small.dcm",
        )
    ]
    sent = pacs.cli("send", "SOLENT", *map(str, files), check=False)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    proc, port, out = _storescp(tmp_path, "+xa", "+B")
    try:
        pacs.cli(
            "ae",
            "add",
            "DEST",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--trust",
            "ZZA",
            "--allow",
            "store",
        )
        for f in files:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            study = ds.StudyInstanceUID
            result = run(
                "movescu", "-v", "-S", "-aet", AET, "-aec", "SOLENT", "-aem", "DEST",
                "127.0.0.1", str(pacs.ports["dicom"]),
                "-k", "QueryRetrieveLevel=IMAGE",
                "-k", f"StudyInstanceUID={study}",
                "-k", f"SeriesInstanceUID={ds.SeriesInstanceUID}",
                "-k", f"SOPInstanceUID={ds.SOPInstanceUID}",
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert "Received Final Move Response (Success)" in _out(result)
        received = {
            pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in out.iterdir()
        }
        for f in files:
            uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
            assert dataset_bytes(received[uid]) == dataset_bytes(f), f.name
        # Unknown destination: A801, nothing sent.
        result = run(
            "movescu",
            "-v",
            "-S",
            "-aet",
            AET,
            "-aec",
            "SOLENT",
            "-aem",
            "NOWHERE",
            "127.0.0.1",
            str(pacs.ports["dicom"]),
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study}",
        )
        assert "Refused: MoveDestinationUnknown" in _out(result)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_getscu_receives_compressed_instances_decompressed_pixel_identical(
    pacs: RunningServer, tmp_path: Path
) -> None:
    for name in COMPRESSED_LOSSLESS:
        assert store_statuses(_out(dcmsend(pacs, CORPUS / name))) == ["Success"]
    out = tmp_path / "got"
    out.mkdir()
    for name in COMPRESSED_LOSSLESS:
        original = pydicom.dcmread(CORPUS / name)
        result = _get(pacs, out, *_image_keys(original))
        assert result.returncode == 0, result.stdout + result.stderr
        got = [pydicom.dcmread(p) for p in out.iterdir()]
        mine = [g for g in got if g.SOPInstanceUID == original.SOPInstanceUID]
        assert mine, f"{name} not received: {result.stdout[-800:]}"
        ds = mine[-1]
        assert not ds.file_meta.TransferSyntaxUID.is_compressed
        assert np.array_equal(ds.pixel_array, original.pixel_array), name
        for p in out.iterdir():
            p.unlink()


def test_worklist_query_returns_scheduled_orders(pacs: RunningServer, tmp_path: Path) -> None:
    pacs.cli(
        "worklist",
        "add",
        "--patient-id",
        "W123",
        "--issuer",
        "ZZA",
        "--accession",
        "ACC900",
        "--modality",
        "CT",
        "--date",
        "20300102",
        "--patient-name",
        "WORK^LIST",
        "--station-aet",
        "CT01",
    )
    pacs.cli(
        "worklist",
        "add",
        "--patient-id",
        "W124",
        "--issuer",
        "ZZA",
        "--accession",
        "ACC901",
        "--modality",
        "MR",
        "--date",
        "20300102",
    )
    out = tmp_path / "wl"
    out.mkdir()
    result = run(
        "findscu",
        "-W",
        "-X",
        "-od",
        str(out),
        "-aet",
        AET,
        "-aec",
        "SOLENT",
        "127.0.0.1",
        str(pacs.ports["dicom"]),
        "-k",
        "PatientName=work*",
        "-k",
        "PatientID",
        "-k",
        "AccessionNumber",
        "-k",
        "ScheduledProcedureStepSequence[0].Modality=CT",
        "-k",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20300101-20300131",
        "-k",
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
    )
    assert result.returncode == 0, result.stderr
    rows = [pydicom.dcmread(p) for p in out.glob("rsp*.dcm")]
    assert [(r.PatientID, r.AccessionNumber) for r in rows] == [("W123", "ACC900")]
    step = rows[0].ScheduledProcedureStepSequence[0]
    assert step.Modality == "CT" and step.ScheduledStationAETitle == "CT01"


def test_node_without_query_permission_gets_no_query_context(
    pacs: RunningServer, tmp_path: Path
) -> None:
    pacs.cli(
        "ae",
        "add",
        "STOREONLY",
        "--host",
        "localhost",
        "--port",
        "104",
        "--trust",
        "ZZB",
        "--allow",
        "store",
    )
    assert echo(pacs, "STOREONLY").returncode == 0
    result = run(
        "findscu",
        "-S",
        "-aet",
        "STOREONLY",
        "-aec",
        "SOLENT",
        "127.0.0.1",
        str(pacs.ports["dicom"]),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "StudyInstanceUID",
    )
    assert result.returncode != 0
    assert "No Acceptable Presentation Contexts" in result.stderr + result.stdout


def test_solent_cli_echo_send_query_against_itself(pacs: RunningServer, tmp_path: Path) -> None:
    """The SCU side: `solent echo/send/query` to a node registered as Solent itself."""
    assert "0x0000" in pacs.cli("echo", "SOLENT").stdout
    sent = pacs.cli("send", "SOLENT", str(CORPUS / "ts_rle_mr_small.dcm"), check=False)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    q = pacs.cli(
        "query",
        "SOLENT",
        "--level",
        "IMAGE",
        "-k",
        f"SOPInstanceUID={pydicom.dcmread(CORPUS / 'ts_rle_mr_small.dcm').SOPInstanceUID}",
        "-k",
        "AvailableTransferSyntaxUID",
        "-k",
        "StudyInstanceUID",
        "-k",
        "SeriesInstanceUID",
    )
    assert "1.2.840.10008.1.2.5" in q.stdout


def _values(ds: pydicom.Dataset) -> dict[str, object]:
    """Every element's value but group lengths, Pixel Data and Planar Configuration (decoded
    pixels are sent colour-by-pixel), nested items included."""
    skip = {0x7FE00010, 0x00280006}
    return {
        str(e.tag): e.value if e.VR != "SQ" else [_values(i) for i in e.value]
        for e in ds
        if e.tag not in skip and e.tag.element != 0
    }


def test_getscu_with_explicit_le_only_gets_implicit_and_big_endian_instances_intact(
    pacs: RunningServer, tmp_path: Path
) -> None:
    """A peer accepting only Explicit VR Little Endian: instances stored in Implicit VR (all
    sub-operations failed: "encoding without a string argument") or Big Endian (header values
    sent byte-swapped: High Bit 15 as 3840, planar colour pixels scrambled) arrive intact."""
    names = [
        "series_mr_dcm4che_05.dcm",
        "mod_pt_implicit.dcm",
        "ts_explicit_vr_be_us_rgb_small.dcm",
    ]
    sent = pacs.cli("send", "SOLENT", *(str(CORPUS / n) for n in names), check=False)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    for name in names:
        original = pydicom.dcmread(CORPUS / name)
        out = tmp_path / name
        out.mkdir()
        result = _get(pacs, out, *_image_keys(original), options=("-v", "-S", "+xe"))
        assert result.returncode == 0 and "Final status report" in _out(result), _out(result)
        got = [pydicom.dcmread(p) for p in out.iterdir()]
        assert len(got) == 1, f"{name} not received: {_out(result)[-800:]}"
        ds = got[0]
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1", name
        assert _values(ds) == _values(original), name
        assert np.array_equal(ds.pixel_array, original.pixel_array), name


@pytest.mark.parametrize(
    ("name", "prefer", "arrives_in"),
    [
        # getscu +xs / +xv / +xb accepts one syntax per storage class: the first it proposes
        # (JPEG Lossless, JPEG 2000 Lossless, Big Endian). Every instance stored in another
        # syntax was failed (A702, nothing received) though the peer had also proposed
        # uncompressed ones: now re-encoded losslessly, or the context is not big endian.
        ("ts_explicit_vr_le_mr_siemens_trio.dcm", "+xs", "1.2.840.10008.1.2.4.70"),
        ("ts_jpeg_lossless_sv1_mr_dcmtk.dcm", "+xv", "1.2.840.10008.1.2.4.90"),
        ("ts_implicit_vr_le_mr_siemens_trio_gdcm.dcm", "+xb", "1.2.840.10008.1.2.1"),
        # Deflated: a data set of odd length is refused by DCMTK ("Odd Fragment Length"),
        # see test_retrieve_deflated_wire for one sent as stored.
        ("ts_deflated_sc_image.dcm", "+xd", "1.2.840.10008.1.2.1.99"),
    ],
)
def test_getscu_preferring_another_syntax_receives_the_instance_pixel_identical(
    pacs: RunningServer, tmp_path: Path, name: str, prefer: str, arrives_in: str
) -> None:
    path = CORPUS / name
    assert store_statuses(_out(dcmsend(pacs, path))) == ["Success"]
    original = pydicom.dcmread(path)
    result = _get(pacs, tmp_path, *_image_keys(original), options=("-v", "-S", prefer))
    got = [pydicom.dcmread(p) for p in tmp_path.iterdir()]
    assert len(got) == 1, f"{name} not received with {prefer}: {_out(result)[-800:]}"
    ds = got[0]
    assert ds.SOPInstanceUID == original.SOPInstanceUID
    assert ds.file_meta.TransferSyntaxUID == arrives_in
    assert np.array_equal(ds.pixel_array, original.pixel_array), name
    assert str(ds.PatientName) == str(original.PatientName)


def test_a_get_with_find_proposed_too_gets_the_instance_in_the_only_accepted_syntax(
    pacs: RunningServer,
) -> None:
    """The same on the pynetdicom engine, which serves an association that proposes C-FIND
    with C-GET (as viewers do): JPEG Lossless only for MR, stored uncompressed; it failed
    the sub-operation (A702) and sent nothing."""
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        MRImageStorage,
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelGet,
    )

    path = CORPUS / "ts_explicit_vr_le_mr_siemens_trio.dcm"
    assert store_statuses(_out(dcmsend(pacs, path))) == ["Success"]
    original = pydicom.dcmread(path)
    received: list[pydicom.Dataset] = []

    def on_store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0

    ae = AE(ae_title=AET)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(MRImageStorage, ["1.2.840.10008.1.2.4.70"])
    assoc = ae.associate(
        "127.0.0.1",
        pacs.ports["dicom"],
        ae_title="SOLENT",
        ext_neg=[build_role(MRImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = original.StudyInstanceUID
    query.SeriesInstanceUID = original.SeriesInstanceUID
    query.SOPInstanceUID = original.SOPInstanceUID
    statuses = [
        int(status.Status)
        for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
        if status
    ]
    assoc.release()
    assert statuses[-1] == 0x0000, [hex(s) for s in statuses]
    (ds,) = received
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    assert np.array_equal(ds.pixel_array, original.pixel_array)


def test_a_rejection_note_sent_by_dcmsend_withdraws_a_series(
    pacs: RunningServer, tmp_path: Path
) -> None:
    """Scenario 2.8 over DIMSE: a modality sends a series, then a KOS "Incorrect Modality
    Worklist Entry" listing it; findscu no longer finds the series or its images, getscu gets
    nothing, and sending the same images again is refused."""
    from pydicom.uid import generate_uid

    from tests.unit.stow_support import ct_instance, rejection_note

    study, wrong, kept = generate_uid(), generate_uid(), generate_uid()
    files = []
    for i, series in enumerate((wrong, wrong, kept)):
        path = tmp_path / f"ct{i}.dcm"
        path.write_bytes(ct_instance("IOCM1", "ZZA", study, series=series))
        files.append(path)
    assert store_statuses(_out(dcmsend(pacs, *files))) == ["Success"] * 3
    wrong_sops = [str(pydicom.dcmread(p).SOPInstanceUID) for p in files[:2]]
    note = tmp_path / "note.dcm"
    note.write_bytes(rejection_note("IOCM1", "ZZA", study, {wrong: wrong_sops})[0])
    assert store_statuses(_out(dcmsend(pacs, note))) == ["Success"]

    series = _find(
        pacs,
        tmp_path,
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={study}",
        "SeriesInstanceUID",
        "NumberOfSeriesRelatedInstances",
    )
    assert wrong not in [r.SeriesInstanceUID for r in series]
    assert kept in [r.SeriesInstanceUID for r in series]
    images = _find(
        pacs,
        tmp_path,
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={study}",
        f"SeriesInstanceUID={wrong}",
        "SOPInstanceUID",
    )
    assert images == []
    out = tmp_path / "got"
    out.mkdir()
    _get(
        pacs,
        out,
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={study}",
        f"SeriesInstanceUID={wrong}",
        options=(),
    )
    assert list(out.iterdir()) == []
    again = store_statuses(_out(dcmsend(pacs, files[0])))
    assert again and again[0] != "Success", again
    series = _find(
        pacs,
        tmp_path,
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={study}",
        "SeriesInstanceUID",
    )
    assert wrong not in [r.SeriesInstanceUID for r in series]


def test_an_iep_gateway_study_is_held_until_a_steward_reconciles_it(
    pacs: RunningServer, tmp_path: Path
) -> None:
    """R28 over DIMSE with DCMTK: dcmsend as a node registered `--outside` (an IEP gateway)
    is answered Success, but getscu of ZZA's own node gets nothing until `solent identity
    reconcile` (JSON API) files the study under ZZA's record; then the instances carry that
    record's identity, and the outside Patient ID, issuer and name in Original Attributes."""
    import httpx
    from pydicom.uid import generate_uid

    from tests.conftest import _server_index
    from tests.unit.stow_support import ct_instance

    own = tmp_path / "own.dcm"  # the patient's own record at ZZA, from its own modality
    own.write_bytes(ct_instance("A-IRWF-1", "ZZA", generate_uid(), name="IRWF^PATIENT"))
    assert store_statuses(_out(dcmsend(pacs, own))) == ["Success"]
    index, _settings = _server_index(pacs)  # as `solent ae add IEPGW ... --outside`
    index.add_node("IEPGW", "127.0.0.1", 104, "ZZA", ["store"], outside=True)
    study = generate_uid()
    files = []
    for i in range(2):
        path = tmp_path / f"iep{i}.dcm"
        path.write_bytes(ct_instance("RXH-1", "RXH", study, name="JONES^OUTSIDE"))
        files.append(path)
    assert store_statuses(_out(dcmsend(pacs, *files, aet="IEPGW"))) == ["Success"] * 2

    keys = ("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
    before = tmp_path / "before"
    before.mkdir()
    _get(pacs, before, *keys, options=())
    assert list(before.iterdir()) == []  # held: nobody sees it

    done = httpx.post(
        f"{pacs.base_url}/api/identity/imports/{study}/reconcile",
        json={"to": {"issuer": "ZZA", "patient_id": "A-IRWF-1"}, "reason": "IEP from RXH"},
        headers=pacs.admin_headers(),
    )
    assert done.status_code == 200 and done.json()["instances"] == 2, done.text
    after = tmp_path / "after"
    after.mkdir()
    _get(pacs, after, *keys, options=())
    got = [pydicom.dcmread(p) for p in sorted(after.iterdir())]
    assert len(got) == 2
    for ds in got:
        assert (ds.PatientID, ds.IssuerOfPatientID) == ("A-IRWF-1", "ZZA")
        assert str(ds.PatientName) == "IRWF^PATIENT"
        original = ds.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0]
        assert (original.PatientID, original.IssuerOfPatientID) == ("RXH-1", "RXH")
        assert str(original.PatientName) == "JONES^OUTSIDE"
