"""Mutated and generated files through the one ingest pipeline: typed outcomes only, no crash,
and nothing already stored changes."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from solent.app import Archive, build_archive
from solent.domain.outcomes import Outcome, RejectReason, StoreResult
from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
from solent.settings import load_settings
from tests.conftest import require_corpus, shared_dir
from tests.fuzz.conftest import fuzz_settings

CORPUS = shared_dir() / "dicom-corpus"
SEEDS = sorted(p for p in CORPUS.glob("*.dcm") if p.stat().st_size < 40_000)[:24]
FUZZER = Principal(PrincipalKind.IMPORTER, "fuzzer", "ZZA")
PROVENANCE = Provenance(Channel.IMPORT, source_path="fuzz")


class Stored:
    """The archive under fuzz, with a fingerprint of what was stored before fuzzing began."""

    def __init__(self, archive: Archive, seeded: dict[str, str]) -> None:
        self.archive = archive
        self.seeded = seeded  # SOP Instance UID -> sha256 of the stored bytes

    def unchanged(self) -> None:
        for uid, digest in self.seeded.items():
            found = self.archive.index.instance_digest(uid)
            assert found is not None and found[0] == digest, f"{uid} changed"
            with self.archive.store.open(found[1]) as f:
                assert hashlib.sha256(f.read()).hexdigest() == digest


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    require_corpus()  # skip (locally) or fail (CI) without the corpus the seeds come from
    data = tmp_path_factory.mktemp("fuzz") / "var"
    archive = build_archive(load_settings(environ={}, data_dir=data))
    archive.index.add_trust("ZZA", "Trust A")
    seeded: dict[str, str] = {}
    for seed in SEEDS[:6]:
        r = archive.ingestor.ingest_file(seed, FUZZER, PROVENANCE)
        if r.outcome is Outcome.STORED and r.sop_instance_uid:
            seeded[r.sop_instance_uid] = hashlib.sha256(seed.read_bytes()).hexdigest()
    assert seeded
    yield Stored(archive, seeded)
    archive.close()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)).read_bytes())
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "length", "splice"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "length":  # corrupt a 16- or 32-bit length field with an extreme value
            width = draw(st.sampled_from([2, 4]))
            value = draw(st.sampled_from([0, 1, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, len(data) * 2]))
            data[at : at + width] = struct.pack("<I", value & 0xFFFFFFFF)[:width]
        else:
            other = draw(st.sampled_from(SEEDS)).read_bytes()
            start = draw(st.integers(0, max(0, len(other) - 1)))
            data[at:] = other[start : start + draw(st.integers(1, 4096))]
    return bytes(data)


@st.composite
def generated(draw: st.DrawFn) -> bytes:
    """A preamble, DICM and random (often almost valid) explicit VR little endian elements."""
    out = bytearray(b"\0" * 128 + b"DICM")
    for _ in range(draw(st.integers(0, 30))):
        group = draw(st.sampled_from([0x0002, 0x0008, 0x0010, 0x0020, 0x0028, 0x7FE0, 0xFFFE]))
        element = draw(st.integers(0, 0xFFFF))
        vr = draw(st.sampled_from([b"UI", b"LO", b"PN", b"US", b"OB", b"SQ", b"UN", b"XX"]))
        value = draw(st.binary(max_size=80))
        out += struct.pack("<HH", group, element) + vr
        if vr in (b"OB", b"SQ", b"UN"):
            out += b"\0\0" + struct.pack("<I", draw(st.sampled_from([len(value), 0xFFFFFFFF])))
        else:
            out += struct.pack("<H", len(value) & 0xFFFF)
        out += value
    return bytes(out)


def _check(result: StoreResult) -> None:
    assert isinstance(result, StoreResult)
    assert isinstance(result.outcome, Outcome)
    if result.outcome is Outcome.REJECTED:
        assert isinstance(result.reason, RejectReason) and result.message
    else:
        assert result.sop_instance_uid and result.study_uid


@fuzz_settings(share=0.25)
@given(data=st.one_of(mutated(), generated(), st.binary(max_size=2048)))
def test_ingest_survives_hostile_files(
    stored: Stored, tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz-input.dcm"
    path.write_bytes(data)
    _check(stored.archive.ingestor.ingest_file(path, FUZZER, PROVENANCE))
    stored.unchanged()


def test_seeded_store_is_still_consistent(stored: Stored) -> None:
    """After the fuzz run: the index and the blobs agree and the audit chain is intact."""
    from solent.services.check import check_archive

    stored.unchanged()
    report = check_archive(stored.archive.index, stored.archive.store, repair=False)
    assert report.clean, report.as_json()
    assert stored.archive.audit.verify().intact
