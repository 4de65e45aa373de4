"""The fast upper layer (SOLENT_DICOM_ENGINE=fast) at the PDU level: raw sockets speak the
protocol byte by byte, pynetdicom and DCMTK are the real peers.

The raw client here builds its PDUs by hand from PS3.8, independently of solent's ul/ modules.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import evt
from pynetdicom.presentation import build_role

from solent.app import Archive, build_archive
from solent.protocols.dimse.listener import DimseListener
from solent.protocols.dimse.net import make_ae
from solent.protocols.dimse.ul.server import FastServer
from solent.settings import load_settings
from tests.conftest import require_corpus, require_tool

PEER = "PEER"
VERIFICATION = "1.2.840.10008.1.1"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"


class Running:
    def __init__(self, archive: Archive, listener: DimseListener, port: int) -> None:
        self.archive = archive
        self.listener = listener
        self.port = port

    def count(self) -> int:
        return (
            len(self.archive.index.list_studies())
            if hasattr(self.archive.index, "list_studies")
            else 0
        )

    def stored(self, sop_instance_uid: str) -> bool:
        return self.archive.index.instance_digest(sop_instance_uid) is not None

    def spool_files(self) -> list[Path]:
        return list((self.archive.settings.tmp_dir / "dimse").glob("*"))


@pytest.fixture
def fast(tmp_path: Path) -> Iterator[Running]:
    settings = load_settings(
        environ={}, data_dir=tmp_path / "var", dicom_port=0, dicom_engine="fast", dicom_workers=1
    )
    archive = build_archive(settings)
    archive.index.add_trust("ZZA", "Trust A")
    archive.index.add_node(PEER, "127.0.0.1", 104, "ZZA", ["store", "query", "retrieve"])
    listener = DimseListener(archive.services)
    port = listener.start()
    assert isinstance(listener._servers[0], FastServer)
    yield Running(archive, listener, port)
    listener.stop()
    archive.close()


# -- a raw PS3.8 client ---------------------------------------------------------------------


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(value)) + value


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BxI", kind, len(body)) + body


def associate_rq(
    contexts: list[tuple[int, str, list[str]]],
    *,
    max_pdu: int = 16384,
    window: tuple[int, int] | None = None,
    roles: list[str] = (),  # type: ignore[assignment]
    called: str = "SOLENT",
) -> bytes:
    body = struct.pack(">H2x16s16s32x", 1, called.ljust(16).encode(), PEER.ljust(16).encode())
    body += _item(0x10, b"1.2.840.10008.3.1.1.1")
    for cid, abstract, syntaxes in contexts:
        sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, t.encode()) for t in syntaxes)
        body += _item(0x20, bytes((cid, 0, 0, 0)) + sub)
    user = _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, b"1.2.3.4")
    if window:
        user += _item(0x53, struct.pack(">HH", *window))
    for uid in roles:
        user += _item(0x54, struct.pack(">H", len(uid)) + uid.encode() + b"\x00\x01")
    body += _item(0x50, user)
    return _pdu(0x01, body)


def command(**elements: tuple[str, Any]) -> bytes:
    """A command set from (VR, value) pairs keyed by hex element number."""
    body = b""
    for elem, (vr, value) in sorted(elements.items(), key=lambda kv: int(kv[0], 16)):
        if vr == "US":
            raw = struct.pack("<H", value)
        else:
            raw = value.encode()
            raw += b"\x00" * (len(raw) % 2)
        body += struct.pack("<HHI", 0, int(elem, 16), len(raw)) + raw
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def pdv(cid: int, control: int, value: bytes) -> bytes:
    return struct.pack(">IBB", len(value) + 2, cid, control) + value


def p_data(*pdvs: bytes) -> bytes:
    return _pdu(0x04, b"".join(pdvs))


class Raw:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed")
            out += chunk
        return out

    def pdu(self) -> tuple[int, bytes]:
        kind, length = struct.unpack(">BxI", self.exact(6))
        return kind, self.exact(length)

    def message(self) -> tuple[dict[int, bytes], bytes, list[int]]:
        """(command elements, data set bytes, P-DATA PDU lengths) of the next message."""
        cmd, data, sizes = b"", b"", []
        while True:
            kind, body = self.pdu()
            assert kind == 0x04, f"expected P-DATA-TF, got 0x{kind:02X}"
            sizes.append(len(body))
            pos = 0
            while pos < len(body):
                length, _cid, control = struct.unpack_from(">IBB", body, pos)
                value = body[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if control & 1:
                    cmd += value
                else:
                    data += value
                if control & 2 and (not control & 1 or _no_dataset(cmd)):
                    return _elements(cmd), data, sizes

    def close(self) -> None:
        self.sock.close()


def _elements(raw: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos < len(raw):
        _g, elem, length = struct.unpack_from("<HHI", raw, pos)
        out[elem] = raw[pos + 8 : pos + 8 + length]
        pos += 8 + length
    return out


def _no_dataset(cmd: bytes) -> bool:
    return _elements(cmd).get(0x0800) == struct.pack("<H", 0x0101)


def us(elements: dict[int, bytes], elem: int) -> int:
    return int(struct.unpack("<H", elements[elem])[0])


def accepted(ac: bytes) -> dict[int, tuple[int, str]]:
    """context id -> (result, transfer syntax) of an A-ASSOCIATE-AC body."""
    out, pos = {}, 68
    while pos < len(ac):
        kind, length = ac[pos], struct.unpack_from(">H", ac, pos + 2)[0]
        if kind == 0x21:
            value = ac[pos + 4 : pos + 4 + length]
            ts = value[8:].decode().strip("\x00") if len(value) > 4 else ""
            out[value[0]] = (value[2], ts)
        pos += 4 + length
    return out


def user_items(ac: bytes) -> dict[int, bytes]:
    pos = 68
    while pos < len(ac):
        kind, length = ac[pos], struct.unpack_from(">H", ac, pos + 2)[0]
        if kind == 0x50:
            value, out, sub = ac[pos + 4 : pos + 4 + length], {}, 0
            while sub < len(value):
                k, n = value[sub], struct.unpack_from(">H", value, sub + 2)[0]
                out[k] = value[sub + 4 : sub + 4 + n]
                sub += 4 + n
            return out
        pos += 4 + length
    return {}


def open_raw(
    run: Running, contexts: list[tuple[int, str, list[str]]], **kw: Any
) -> tuple[Raw, bytes]:
    raw = Raw(run.port)
    raw.send(associate_rq(contexts, **kw))
    kind, body = raw.pdu()
    assert kind == 0x02, f"expected A-ASSOCIATE-AC, got 0x{kind:02X}"
    return raw, body


def echo_works(run: Running) -> bool:
    raw, _ = open_raw(run, [(1, VERIFICATION, [IMPLICIT])])
    try:
        raw.send(
            p_data(
                pdv(
                    1,
                    3,
                    command(
                        **{
                            "0002": ("UI", VERIFICATION),
                            "0100": ("US", 0x30),
                            "0110": ("US", 9),
                            "0800": ("US", 0x0101),
                        }
                    ),
                )
            )
        )
        cmd, _, _ = raw.message()
        return us(cmd, 0x0900) == 0 and us(cmd, 0x0120) == 9
    finally:
        raw.send(_pdu(0x05, bytes(4)))
        raw.close()


def store_command(msg_id: int, ds: Dataset) -> bytes:
    return command(
        **{
            "0002": ("UI", str(ds.SOPClassUID)),
            "0100": ("US", 1),
            "0110": ("US", msg_id),
            "0700": ("US", 0),
            "0800": ("US", 0),
            "1000": ("UI", str(ds.SOPInstanceUID)),
        }
    )


def encoded(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def corpus_file(name: str) -> Path:
    """A file of the shared corpus; the test skips (locally) or fails (CI) without it."""
    return require_corpus() / name


def ct_file() -> Path:
    return corpus_file("mod_ct_small.dcm")


def ct_copy() -> Dataset:
    ds = pydicom.dcmread(ct_file())
    ds.SOPInstanceUID = generate_uid()
    return ds


def assert_aborted(raw: Raw) -> None:
    """The server answers A-ABORT and closes the connection."""
    try:
        kind, _ = raw.pdu()
    except (ConnectionError, OSError):
        return  # closed without the A-ABORT reaching us first: still aborted
    assert kind == 0x07
    raw.sock.settimeout(5)
    assert raw.sock.recv(1) == b""


# -- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("max_pdu", [4096, 1 << 20])
def test_store_and_get_with_max_pdu_4k_and_1m(fast: Running, max_pdu: int) -> None:
    """pynetdicom stores and C-GETs with either maximum; raw, every P-DATA-TF the server
    sends fits the length the peer announced."""
    ds = pydicom.dcmread(ct_file())
    ae = make_ae(PEER)
    ae.maximum_pdu_size = max_pdu
    ae.add_requested_context(ds.SOPClassUID, [str(ds.file_meta.TransferSyntaxUID)])
    assoc = ae.associate("127.0.0.1", fast.port, ae_title="SOLENT", max_pdu=max_pdu)
    assert assoc.is_established
    assert assoc.acceptor.maximum_length == 1 << 20  # what the server receives
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    assert fast.stored(ds.SOPInstanceUID)

    raw, _ = open_raw(
        fast,
        [
            (1, STUDY_GET, [EXPLICIT]),
            (3, str(ds.SOPClassUID), [str(ds.file_meta.TransferSyntaxUID)]),
        ],
        max_pdu=max_pdu,
        roles=[str(ds.SOPClassUID)],
    )
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = ds.StudyInstanceUID
    get = command(
        **{
            "0002": ("UI", STUDY_GET),
            "0100": ("US", 0x10),
            "0110": ("US", 5),
            "0700": ("US", 0),
            "0800": ("US", 0),
        }
    )
    raw.send(p_data(pdv(1, 3, get)) + p_data(pdv(1, 2, encoded(ident))))
    cmd, data, sizes = raw.message()
    assert us(cmd, 0x0100) == 0x0001  # the C-STORE sub-operation
    assert max(sizes) <= max_pdu
    if max_pdu == 4096:
        assert len(sizes) > 10
    stored = ct_file().read_bytes()
    assert stored.endswith(data) and len(data) > len(stored) - 1024  # the stored bytes
    rsp = command(
        **{
            "0002": ("UI", str(ds.SOPClassUID)),
            "0100": ("US", 0x8001),
            "0120": ("US", us(cmd, 0x0110)),
            "0800": ("US", 0x0101),
            "0900": ("US", 0),
            "1000": ("UI", str(ds.SOPInstanceUID)),
        }
    )
    raw.send(p_data(pdv(3, 3, rsp)))
    final, _, _ = raw.message()
    assert us(final, 0x0100) == 0x8010 and us(final, 0x0900) == 0
    assert us(final, 0x1021) == 1
    raw.send(_pdu(0x05, bytes(4)))
    assert raw.pdu()[0] == 0x06
    raw.close()


def test_fragmented_command_set_across_pdvs_and_pdus(fast: Running) -> None:
    raw, _ = open_raw(fast, [(1, VERIFICATION, [IMPLICIT])])
    cmd = command(
        **{
            "0002": ("UI", VERIFICATION),
            "0100": ("US", 0x30),
            "0110": ("US", 7),
            "0800": ("US", 0x0101),
        }
    )
    raw.send(p_data(pdv(1, 1, cmd[:5]), pdv(1, 1, cmd[5:20])))
    time.sleep(0.05)
    raw.send(p_data(pdv(1, 1, cmd[20:30])) + p_data(pdv(1, 3, cmd[30:])))
    got, _, _ = raw.message()
    assert us(got, 0x0100) == 0x8030 and us(got, 0x0900) == 0 and us(got, 0x0120) == 7
    raw.send(_pdu(0x05, bytes(4)))
    assert raw.pdu()[0] == 0x06
    raw.close()


def test_multiple_contexts_each_answered_and_used(fast: Running) -> None:
    ct = ct_copy()
    raw, ac = open_raw(
        fast,
        [
            (1, VERIFICATION, [IMPLICIT]),
            (3, CT_STORAGE, ["1.2.3.999", EXPLICIT]),  # first syntax unknown: second chosen
            (5, CT_STORAGE, ["1.2.3.999"]),  # no syntax we take
            (7, "1.2.3.4.5.6.7", [EXPLICIT]),  # no such abstract syntax
            (9, "1.2.840.10008.5.1.4.1.1.4", [IMPLICIT, EXPLICIT]),
            (11, "1.2.840.10008.1.2.1.99", [EXPLICIT]),
        ],
    )
    results = accepted(ac)
    assert results[1] == (0, IMPLICIT)
    assert results[3] == (0, EXPLICIT)
    assert results[5][0] == 4
    assert results[7][0] == 3
    assert results[9] == (0, IMPLICIT)
    assert results[11][0] == 3
    raw.send(p_data(pdv(3, 3, store_command(1, ct)), pdv(3, 2, encoded(ct))))
    got, _, _ = raw.message()
    assert us(got, 0x0100) == 0x8001 and us(got, 0x0900) == 0
    raw.send(_pdu(0x05, bytes(4)))
    assert raw.pdu()[0] == 0x06
    raw.close()
    assert fast.stored(ct.SOPInstanceUID)


def test_asynchronous_operations_window(fast: Running) -> None:
    """Window 4 negotiated: three C-STOREs sent back to back, three answers, all stored."""
    raw, ac = open_raw(fast, [(1, CT_STORAGE, [EXPLICIT])], window=(4, 4))
    assert struct.unpack(">HH", user_items(ac)[0x53]) == (4, 1)
    copies = [ct_copy() for _ in range(3)]
    raw.send(
        b"".join(
            p_data(pdv(1, 3, store_command(10 + i, ds))) + p_data(pdv(1, 2, encoded(ds)))
            for i, ds in enumerate(copies)
        )
    )
    answered = set()
    for _ in copies:
        got, _, _ = raw.message()
        assert us(got, 0x0900) == 0
        answered.add(us(got, 0x0120))
    assert answered == {10, 11, 12}
    raw.send(_pdu(0x05, bytes(4)))
    assert raw.pdu()[0] == 0x06
    raw.close()
    assert all(fast.stored(ds.SOPInstanceUID) for ds in copies)
    # Without the item the window is one: the AC says nothing about it.
    raw, ac = open_raw(fast, [(1, CT_STORAGE, [EXPLICIT])])
    assert 0x53 not in user_items(ac)
    raw.close()


def test_abort_mid_dataset_stores_nothing(fast: Running) -> None:
    ct = ct_copy()
    data = encoded(ct)
    raw, _ = open_raw(fast, [(1, CT_STORAGE, [EXPLICIT])])
    raw.send(p_data(pdv(1, 3, store_command(1, ct))) + p_data(pdv(1, 0, data[: len(data) // 2])))
    time.sleep(0.2)
    assert fast.spool_files()  # it was being received into the spool
    raw.send(_pdu(0x07, bytes(4)))
    raw.close()
    deadline = time.monotonic() + 5
    while fast.spool_files() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fast.spool_files() == []
    assert not fast.stored(ct.SOPInstanceUID)
    blobs = [p for p in (fast.archive.settings.data_dir / "blobs").rglob("*") if p.is_file()]
    assert blobs == []
    # Same with the connection simply cut.
    raw, _ = open_raw(fast, [(1, CT_STORAGE, [EXPLICIT])])
    raw.send(p_data(pdv(1, 3, store_command(1, ct))) + p_data(pdv(1, 0, data[:1000])))
    raw.close()
    time.sleep(0.3)
    assert fast.spool_files() == [] and not fast.stored(ct.SOPInstanceUID)
    assert echo_works(fast)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(struct.pack(">BxI", 0x04, 0xFFFFFFFF) + b"\x00" * 64, id="length-ffffffff"),
        pytest.param(_pdu(0x09, b"\x00" * 8), id="unknown-type"),
        pytest.param(p_data(struct.pack(">IBB", 5000, 1, 3) + b"x" * 10), id="pdv-past-pdu"),
        pytest.param(p_data(struct.pack(">IBB", 1, 1, 3)), id="pdv-length-1"),
        pytest.param(_pdu(0x01, b"\x00" * 80), id="second-associate-rq"),
        pytest.param(p_data(pdv(3, 3, b"\x00" * 8)), id="context-not-accepted"),
        pytest.param(p_data(pdv(1, 2, b"\x00" * 8)), id="data-without-command"),
        pytest.param(
            p_data(pdv(1, 3, struct.pack("<HHI", 0, 0x100, 99) + b"\x00\x01")),
            id="element-past-command",
        ),
    ],
)
def test_malformed_pdus_in_data_transfer_are_aborted(fast: Running, bad: bytes) -> None:
    raw, _ = open_raw(fast, [(1, VERIFICATION, [IMPLICIT])])
    raw.send(bad)
    assert_aborted(raw)
    raw.close()
    assert echo_works(fast)


@pytest.mark.parametrize(
    "rq",
    [
        pytest.param(
            _pdu(
                0x01,
                struct.pack(">H2x16s16s32x", 1, b"SOLENT".ljust(16), b"PEER".ljust(16))
                + struct.pack(">BxH", 0x20, 400)
                + b"\x01\x00\x00\x00",
            ),
            id="item-length-past-pdu",
        ),
        pytest.param(struct.pack(">BxI", 0x01, 0xFFFFFFFF), id="rq-length-ffffffff"),
        pytest.param(_pdu(0x04, pdv(1, 3, b"\x00" * 8)), id="p-data-before-association"),
        pytest.param(_pdu(0x42, b""), id="unknown-type-first"),
    ],
)
def test_malformed_association_requests_are_aborted(fast: Running, rq: bytes) -> None:
    raw = Raw(fast.port)
    raw.send(rq)
    assert_aborted(raw)
    raw.close()
    assert echo_works(fast)


def test_rejections_say_why(fast: Running) -> None:
    raw = Raw(fast.port)
    raw.send(associate_rq([(1, VERIFICATION, [IMPLICIT])], called="NOTUS"))
    kind, body = raw.pdu()
    assert (kind, body[1], body[2], body[3]) == (0x03, 1, 1, 7)  # called AE not recognized
    raw.close()
    raw = Raw(fast.port)
    raw.send(associate_rq([(1, VERIFICATION, [IMPLICIT])]).replace(b"PEER", b"EVIL"))
    kind, body = raw.pdu()
    assert (kind, body[1], body[2], body[3]) == (0x03, 1, 1, 3)  # calling AE not recognized
    raw.close()


def test_deflated_context_accepted_and_handed_to_ingest(fast: Running) -> None:
    deflated = corpus_file("ts_deflated_sc_image.dcm")
    ds = pydicom.dcmread(deflated)
    raw, ac = open_raw(fast, [(1, str(ds.SOPClassUID), ["1.2.840.10008.1.2.1.99"])])
    assert accepted(ac)[1] == (0, "1.2.840.10008.1.2.1.99")
    raw.close()
    ae = make_ae(PEER)
    ae.add_requested_context(ds.SOPClassUID, ["1.2.840.10008.1.2.1.99"])
    assoc = ae.associate("127.0.0.1", fast.port, ae_title="SOLENT")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(deflated)  # the file's own (deflated) bytes
        assert rsp.Status == 0
        assert fast.stored(ds.SOPInstanceUID)
    finally:
        assoc.release()


def test_dcmtk_storescu_and_getscu_through_the_fast_path(fast: Running, tmp_path: Path) -> None:
    dcmsend, getscu = require_tool("dcmsend"), require_tool("getscu")
    prefer = {
        ct_file(): [],
        corpus_file("ts_rle_mr_small.dcm"): ["+xr"],
        corpus_file("ts_j2k_lossless_mr_siemens_trio.dcm"): ["+xv"],
    }
    files = list(prefer)
    out = subprocess.run(
        [
            dcmsend,
            "-aet",
            PEER,
            "-aec",
            "SOLENT",
            "--max-send-pdu",
            "4096",
            "127.0.0.1",
            str(fast.port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert fast.stored(ds.SOPInstanceUID)
        target = tmp_path / ds.SOPInstanceUID
        target.mkdir()
        got = subprocess.run(
            [
                getscu,
                "-aet",
                PEER,
                "-aec",
                "SOLENT",
                "-S",
                "-k",
                "QueryRetrieveLevel=IMAGE",
                "-k",
                f"StudyInstanceUID={ds.StudyInstanceUID}",
                "-k",
                f"SeriesInstanceUID={ds.SeriesInstanceUID}",
                "-k",
                f"SOPInstanceUID={ds.SOPInstanceUID}",
                *prefer[f],
                "-pdu",
                "4096",
                "-od",
                str(target),
                "127.0.0.1",
                str(fast.port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert got.returncode == 0, got.stderr
        [received] = list(target.iterdir())
        back = pydicom.dcmread(received)
        assert back.SOPInstanceUID == ds.SOPInstanceUID
        assert str(back.file_meta.TransferSyntaxUID) == str(ds.file_meta.TransferSyntaxUID)


def _big_instance(path: Path, megabytes: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "BIG1", "Big^Instance", "CT"
    side = int((megabytes * (1 << 20) // 2) ** 0.5)
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.zeros((side, side), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_c_get_to_a_peer_that_stops_reading_keeps_memory_bounded(
    fast: Running, tmp_path: Path
) -> None:
    """A 64 MB instance to a peer that never reads: the server blocks on a full socket with
    its 1 MB send buffer, it does not read the instance into memory."""
    path = tmp_path / "big.dcm"
    ds = _big_instance(path, 64)
    ae = make_ae(PEER)
    ae.add_requested_context(CT_STORAGE, [EXPLICIT])
    assoc = ae.associate("127.0.0.1", fast.port, ae_title="SOLENT")
    assert assoc.send_c_store(path).Status == 0
    assoc.release()
    path.unlink()
    raw, _ = open_raw(
        fast,
        [(1, STUDY_GET, [EXPLICIT]), (3, CT_STORAGE, [EXPLICIT])],
        max_pdu=1 << 20,
        roles=[CT_STORAGE],
    )
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = ds.StudyInstanceUID
    get = command(
        **{
            "0002": ("UI", STUDY_GET),
            "0100": ("US", 0x10),
            "0110": ("US", 5),
            "0700": ("US", 0),
            "0800": ("US", 0),
        }
    )
    tracemalloc.start()
    try:
        raw.send(p_data(pdv(1, 3, get)) + p_data(pdv(1, 2, encoded(ident))))
        time.sleep(2.0)  # the server fills the socket buffers and blocks
        _, peak = tracemalloc.get_traced_memory()
        server = fast.listener._servers[0]
        assert isinstance(server, FastServer)
        assert server.active_associations, "the association is still open, blocked on sending"
    finally:
        tracemalloc.stop()
        raw.close()
    assert peak < 8 << 20, f"peak {peak / 1e6:.1f} MB while sending a 64 MB instance"


def test_other_services_are_handed_to_pynetdicom(fast: Running) -> None:
    """C-FIND on the fast engine's port: pynetdicom answers it (handoff keeps the RQ bytes)."""
    ct = ct_copy()
    ae = make_ae(PEER)
    ae.add_requested_context(CT_STORAGE, [EXPLICIT])
    ae.add_requested_context("1.2.840.10008.5.1.4.1.2.2.1")
    assoc = ae.associate("127.0.0.1", fast.port, ae_title="SOLENT")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ct).Status == 0
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = ct.StudyInstanceUID
        found = [(s.Status, i) for s, i in assoc.send_c_find(ident, "1.2.840.10008.5.1.4.1.2.2.1")]
        assert [s for s, _ in found] == [0xFF00, 0x0000]
        identifier = found[0][1]
        assert identifier is not None and identifier.StudyInstanceUID == ct.StudyInstanceUID
    finally:
        assoc.release()


def test_c_get_cancel_and_role_needed(fast: Running) -> None:
    """A C-GET whose peer did not take the SCP role gets no sub-operation sent: A702."""
    ct = ct_copy()
    ae = make_ae(PEER)
    ae.add_requested_context(CT_STORAGE, [EXPLICIT])
    assoc = ae.associate("127.0.0.1", fast.port, ae_title="SOLENT")
    assert assoc.send_c_store(ct).Status == 0
    assoc.release()
    ae = make_ae(PEER)
    ae.add_requested_context(STUDY_GET)
    ae.add_requested_context(CT_STORAGE, [EXPLICIT])
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    assoc = ae.associate(
        "127.0.0.1",
        fast.port,
        ae_title="SOLENT",
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = ct.StudyInstanceUID
    try:
        [(final, failed)] = list(assoc.send_c_get(ident, STUDY_GET))
        assert final.Status == 0xA702 and final.NumberOfFailedSuboperations == 1
        assert failed is not None and failed.FailedSOPInstanceUIDList == ct.SOPInstanceUID
        assert received == []
    finally:
        assoc.release()
    with_role = make_ae(PEER)
    with_role.add_requested_context(STUDY_GET)
    with_role.add_requested_context(CT_STORAGE, [EXPLICIT])
    assoc = with_role.associate(
        "127.0.0.1",
        fast.port,
        ae_title="SOLENT",
        ext_neg=[build_role(CT_STORAGE, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    try:
        [(final, _)] = list(assoc.send_c_get(ident, STUDY_GET))
        assert final.Status == 0 and received == [ct.SOPInstanceUID]
    finally:
        assoc.release()


def test_concurrent_associations(fast: Running) -> None:
    copies = [ct_copy() for _ in range(8)]
    errors: list[BaseException] = []

    def send(part: list[Dataset]) -> None:
        try:
            ae = make_ae(PEER)
            ae.add_requested_context(CT_STORAGE, [EXPLICIT])
            assoc = ae.associate("127.0.0.1", fast.port, ae_title="SOLENT")
            for ds in part:
                assert assoc.send_c_store(ds).Status == 0
            assoc.release()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(copies[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert all(fast.stored(ds.SOPInstanceUID) for ds in copies)


def test_c_store_on_a_context_of_another_sop_class_is_refused(fast: Running) -> None:
    """PS3.7 C.5.4: 0122 for a SOP class that is not the context's; nothing stored."""
    ct = ct_copy()
    raw, _ = open_raw(fast, [(1, VERIFICATION, [EXPLICIT])])
    raw.send(p_data(pdv(1, 3, store_command(3, ct)), pdv(1, 2, encoded(ct))))
    got, _, _ = raw.message()
    assert us(got, 0x0100) == 0x8001 and us(got, 0x0900) == 0x0122
    raw.send(_pdu(0x05, bytes(4)))
    assert raw.pdu()[0] == 0x06
    raw.close()
    assert not fast.stored(ct.SOPInstanceUID)
    assert fast.spool_files() == []


# --- the requesting side (C-MOVE sub-associations, ul/client.py) ---------------------------

MOVE_PROPOSED = [
    ("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]),
    ("1.2.840.10008.5.1.4.1.1.4", ["1.2.840.10008.1.2.4.90"]),
]


def _ac_body(*contexts: tuple[int, int, str], max_pdu: int = 32768) -> bytes:
    """An A-ASSOCIATE-AC body (after the PDU header) answering ``contexts``."""

    def item(kind: int, value: bytes) -> bytes:
        return bytes((kind, 0)) + struct.pack(">H", len(value)) + value

    body = struct.pack(">H", 1) + b"\0\0" + b"DEST".ljust(16) + b"SOLENT".ljust(16) + bytes(32)
    body += item(0x10, b"1.2.840.10008.3.1.1.1")
    for context_id, result, ts in contexts:
        syntax = item(0x40, ts.encode()) if ts else b""
        body += item(0x21, bytes((context_id, 0, result, 0)) + syntax)
    return body + item(0x50, item(0x51, struct.pack(">I", max_pdu)))


def test_requestor_proposes_what_the_acceptor_parses() -> None:
    from solent.protocols.dimse.ul import client, pdu

    raw = client.associate_rq(
        "SOLENT", "DEST", MOVE_PROPOSED, max_pdu_length=65536,
        implementation_class_uid="1.2.3.4", implementation_version_name="SOLENT",
    )  # fmt: skip
    rq = pdu.parse_associate_rq(memoryview(raw)[6:])
    assert (rq.calling_ae, rq.called_ae, rq.max_pdu_length) == ("SOLENT", "DEST", 65536)
    assert [(c.context_id, c.abstract_syntax, c.transfer_syntaxes) for c in rq.contexts] == [
        (1, *MOVE_PROPOSED[0]),
        (3, *MOVE_PROPOSED[1]),
    ]


def test_requestor_keeps_only_accepted_contexts_and_the_peer_maximum() -> None:
    from solent.protocols.dimse.ul import client

    contexts, max_pdu = client.parse_associate_ac(
        _ac_body((1, 0, "1.2.840.10008.1.2"), (3, 4, "")), MOVE_PROPOSED
    )
    assert max_pdu == 32768
    assert list(contexts) == [1]
    assert (contexts[1].abstract_syntax, contexts[1].transfer_syntax) == (
        MOVE_PROPOSED[0][0],
        "1.2.840.10008.1.2",
    )


@pytest.mark.parametrize(
    "answer",
    [
        (5, 0, "1.2.840.10008.1.2"),  # a context never proposed
        (2, 0, "1.2.840.10008.1.2"),  # an even (acceptor-numbered) context ID
        (3, 0, "1.2.840.10008.1.2.1"),  # accepted with a syntax never proposed for it
    ],
)
def test_requestor_refuses_an_ac_that_breaks_ps3_8(answer: tuple[int, int, str]) -> None:
    from solent.protocols.dimse.ul import client
    from solent.protocols.dimse.ul.pdu import PduError

    with pytest.raises(PduError):
        client.parse_associate_ac(_ac_body(answer), MOVE_PROPOSED)


def test_requestor_item_lengths_past_the_pdu_are_refused() -> None:
    from solent.protocols.dimse.ul import client
    from solent.protocols.dimse.ul.pdu import PduError

    body = bytearray(_ac_body((1, 0, "1.2.840.10008.1.2")))
    body[70:72] = struct.pack(">H", 0xFFFF)  # the application context item's length
    with pytest.raises(PduError):
        client.parse_associate_ac(bytes(body), MOVE_PROPOSED)
