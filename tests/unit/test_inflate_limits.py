"""Deflated Explicit VR Little Endian is inflated against a cap (issue 11 part 5): a bomb is
refused as too large without its memory ever being taken; a well-formed file is stored as sent."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from solent.app import Archive
from solent.dicom.inflate import InflateLimits
from solent.dicom.parse import RejectedInstance, parse_file
from solent.domain.outcomes import Outcome, RejectReason
from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
from tests.deflate_files import write_bomb, write_deflated


def test_bomb_is_refused_as_too_large_with_bounded_memory(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.dcm"
    size = write_bomb(bomb, inflated=128 << 20)
    assert size < 1 << 20  # ~128 KiB on disk, 128 MiB inflated
    tracemalloc.start()
    try:
        with pytest.raises(RejectedInstance) as caught:
            parse_file(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.reason is RejectReason.TOO_LARGE
    assert "inflates beyond" in caught.value.message
    assert peak < 8 << 20, f"inflating the bomb took {peak} bytes"


def test_absolute_cap_applies_whatever_the_ratio(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.dcm"
    write_bomb(bomb, inflated=3 << 20)
    limits = InflateLimits(max_ratio=10000, max_bytes=2 << 20)
    with pytest.raises(RejectedInstance) as caught:
        parse_file(bomb, inflate=limits)
    assert caught.value.reason is RejectReason.TOO_LARGE
    # Within both limits the same file is a readable instance.
    parsed = parse_file(bomb, inflate=InflateLimits(max_ratio=10000, max_bytes=4 << 20))
    assert parsed.sop_class_uid == "1.2.840.10008.5.1.4.1.1.104.1"


def test_well_formed_deflated_file_parses(tmp_path: Path) -> None:
    path = tmp_path / "ok.dcm"
    ds = write_deflated(path)
    parsed = parse_file(path)
    assert parsed.transfer_syntax_uid == "1.2.840.10008.1.2.1.99"
    assert parsed.sop_instance_uid == ds.SOPInstanceUID
    assert parsed.instance["rows"] == 8


def test_corrupt_deflate_stream_is_malformed(tmp_path: Path) -> None:
    good = tmp_path / "ok.dcm"
    write_deflated(good)
    data = bytearray(good.read_bytes())
    meta_end = len(data) - 40
    data[meta_end:] = b"\xff" * 40  # garbage where the deflate stream continues
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(bytes(data))
    with pytest.raises(RejectedInstance) as caught:
        parse_file(bad)
    assert caught.value.reason is RejectReason.MALFORMED


def test_cut_short_deflate_stream_is_malformed(tmp_path: Path) -> None:
    good = tmp_path / "ok.dcm"
    write_deflated(good)
    data = good.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-20])
    with pytest.raises(RejectedInstance) as caught:
        parse_file(cut)
    assert caught.value.reason is RejectReason.MALFORMED


IMPORTER = Principal(PrincipalKind.IMPORTER, "solent-import", "ZZA")


def test_import_refuses_bomb_and_stores_good_file_as_received(
    archive: Archive, tmp_path: Path
) -> None:
    bomb = tmp_path / "bomb.dcm"
    write_bomb(bomb, inflated=64 << 20)
    refused = archive.ingestor.ingest_file(bomb, IMPORTER, Provenance(Channel.IMPORT))
    assert refused.outcome is Outcome.REJECTED
    assert refused.reason is RejectReason.TOO_LARGE
    assert "inflates beyond" in refused.message
    assert archive.index.stats()["instances"] == 0

    good = tmp_path / "ok.dcm"
    ds = write_deflated(good)
    sent = good.read_bytes()
    stored = archive.ingestor.ingest_file(good, IMPORTER, Provenance(Channel.IMPORT))
    assert stored.outcome is Outcome.STORED, stored.message
    digest = archive.index.instance_digest(ds.SOPInstanceUID)
    assert digest is not None
    with archive.store.open(digest[1]) as fp:
        assert fp.read() == sent  # the deflated bytes as sent, not re-encoded
