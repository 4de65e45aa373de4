"""Accept negotiation and the STOW-RS multipart spooler, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from solent.dicom import transcode as tc
from solent.protocols.dicomweb import multipart as mp
from solent.protocols.dicomweb.accept import (
    NotAcceptable,
    negotiate_instance,
    negotiate_pixels,
    negotiate_rendered,
    parse_accept,
)

J2K = tc.J2K_LOSSLESS


def test_instance_defaults_follow_ps318() -> None:
    # No Accept: the server's choice, which is as stored.
    assert negotiate_instance(parse_accept(None), J2K) == J2K
    # application/dicom without transfer-syntax means Explicit VR Little Endian.
    ranges = parse_accept('multipart/related; type="application/dicom"')
    assert negotiate_instance(ranges, J2K) == tc.EXPLICIT_LE
    star = parse_accept('multipart/related; type="application/dicom"; transfer-syntax=*')
    assert negotiate_instance(star, J2K) == J2K


def test_instance_prefers_by_quality_and_refuses_readably() -> None:
    ranges = parse_accept(
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.201;'
        ' q=0.5, multipart/related; type="application/dicom"; transfer-syntax=*; q=0.9'
    )
    assert negotiate_instance(ranges, J2K) == J2K
    with pytest.raises(NotAcceptable, match="transfer-syntax"):
        negotiate_instance(parse_accept("text/html"), J2K)
    with pytest.raises(NotAcceptable, match="stored as"):
        negotiate_instance(
            parse_accept('multipart/related; type="application/dicom"; transfer-syntax=1.2.3'),
            J2K,
        )


def test_frames_negotiation() -> None:
    octets_any = parse_accept(
        'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    )
    plan = negotiate_pixels(octets_any, J2K)
    assert (plan.media_type, plan.transfer_syntax, plan.as_stored) == (
        "application/octet-stream",
        J2K,
        True,
    )
    plan = negotiate_pixels(parse_accept('multipart/related; type="application/octet-stream"'), J2K)
    assert (plan.transfer_syntax, plan.as_stored) == (tc.EXPLICIT_LE, False)
    plan = negotiate_pixels(parse_accept('multipart/related; type="image/jp2"'), J2K)
    assert (plan.media_type, plan.as_stored) == ("image/jp2", True)
    # A family without the stored syntax: its lossless default, never a lossy one unasked.
    plan = negotiate_pixels(parse_accept('multipart/related; type="image/jpeg"'), J2K)
    assert plan.transfer_syntax == tc.JPEG_LOSSLESS_SV1
    plan = negotiate_pixels(parse_accept(None), tc.EXPLICIT_LE)
    assert plan.media_type == "application/octet-stream"
    with pytest.raises(NotAcceptable):
        negotiate_pixels(parse_accept("application/pdf"), J2K)


def test_rendered_negotiation() -> None:
    assert negotiate_rendered(parse_accept(None)) == "image/jpeg"
    assert negotiate_rendered(parse_accept("image/png, image/jpeg;q=0.5")) == "image/png"
    with pytest.raises(NotAcceptable, match="image/jpeg"):
        negotiate_rendered(parse_accept("image/tiff"))


def test_bad_quality_is_not_acceptable() -> None:
    with pytest.raises(NotAcceptable, match="quality"):
        parse_accept("image/png; q=high")


def _body(parts: list[bytes], boundary: str = "b0undary") -> bytes:
    out = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
        for p in parts
    )
    return out + f"--{boundary}--\r\n".encode()


def test_spooler_writes_each_part_to_a_file(tmp_path: Path) -> None:
    parts = [b"A" * 70000, b"\r\n--not-a-boundary\r\n" * 10, b"C"]
    body = _body(parts)
    spooler = mp.PartSpooler("b0undary", tmp_path, 1 << 20, 10)
    for i in range(0, len(body), 1000):  # arrives in chunks that split boundaries
        spooler.feed(body[i : i + 1000])
    got = spooler.finish()
    assert [p.path.read_bytes() for p in got] == parts
    assert {p.content_type for p in got} == {"application/dicom"}
    spooler.discard()
    assert not list(tmp_path.iterdir())


def test_spooler_limits_and_malformed(tmp_path: Path) -> None:
    spooler = mp.PartSpooler("b0undary", tmp_path, 100, 10)
    with pytest.raises(mp.TooLarge):
        spooler.feed(_body([b"x" * 200]))
    spooler.discard()
    truncated = mp.PartSpooler("b0undary", tmp_path, 1 << 20, 10)
    truncated.feed(_body([b"abc"])[:-20])
    with pytest.raises(mp.BadMultipart):
        truncated.finish()
    truncated.discard()
    wrong = mp.PartSpooler("other", tmp_path, 1 << 20, 10)
    with pytest.raises(mp.BadMultipart):
        wrong.feed(_body([b"abc"]))
        wrong.finish()
    wrong.discard()
    too_many = mp.PartSpooler("b0undary", tmp_path, 1 << 20, 2)
    with pytest.raises(mp.TooLarge, match="parts"):
        too_many.feed(_body([b"1", b"2", b"3"]))
    too_many.discard()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "preamble",
    [b"", b"\r\n", b"This is a multi-part message in MIME format.\r\n", b"x" * 5000 + b"\r\n"],
)
def test_spooler_ignores_a_preamble_and_epilogue(tmp_path: Path, preamble: bytes) -> None:
    """RFC 2046 5.1.1: text before the first delimiter and after the last is ignored. A STOW-RS
    body with a preamble was refused ("Expected boundary character 45, got 84")."""
    parts = [b"A" * 3000, b"B"]
    body = preamble + _body(parts) + b"an epilogue\r\n"
    spooler = mp.PartSpooler("b0undary", tmp_path, 1 << 20, 10)
    for i in range(0, len(body), 7):  # the delimiter arrives split across chunks
        spooler.feed(body[i : i + 7])
    assert [p.path.read_bytes() for p in spooler.finish()] == parts
    spooler.discard()


def test_spooler_without_its_boundary_is_a_clear_refusal(tmp_path: Path) -> None:
    short = mp.PartSpooler("other", tmp_path, 1 << 20, 10)
    short.feed(_body([b"abc"]))
    with pytest.raises(mp.BadMultipart, match="is the boundary right"):
        short.finish()
    long = mp.PartSpooler("other", tmp_path, 1 << 20, 10)
    with pytest.raises(mp.BadMultipart, match="no boundary delimiter in its first"):
        long.feed(_body([b"x" * (mp.PREAMBLE_MAX + 10)]))
    assert not list(tmp_path.iterdir())
