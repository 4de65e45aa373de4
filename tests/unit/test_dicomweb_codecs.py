"""Transcoding and rendering on corpus files: lossless round trips, readable refusals."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import pixel_array

from solent.dicom import transcode as tc
from solent.dicom.render import RenderOptions, Viewport, render_frame

LOSSLESS_TARGETS = [
    tc.EXPLICIT_LE,
    tc.RLE,
    tc.JPEG_LOSSLESS_SV1,
    tc.JPEG_LS,
    tc.J2K_LOSSLESS,
    tc.HTJ2K_LOSSLESS,
]
SOURCES = [
    "ts_explicit_vr_be_mr_small.dcm",  # big endian, signed 16-bit
    "ts_j2k_lossless_mr_siemens_trio.dcm",
    "ts_jpegls_lossless_mr_charls.dcm",
    "mod_us_rgb_esopecho.dcm",  # colour
    "mf_enhanced_mr_10frames.dcm",  # multi-frame
]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("target", LOSSLESS_TARGETS)
def test_lossless_transcoding_keeps_every_pixel(corpus_dir: Path, source: str, target: str) -> None:
    original = pydicom.dcmread(corpus_dir / source)
    with (corpus_dir / source).open("rb") as fp:
        out = tc.transcode_instance(fp, target)
    ds = pydicom.dcmread(io.BytesIO(out))
    assert ds.file_meta.TransferSyntaxUID == target
    assert ds.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(ds.pixel_array, original.pixel_array)


def test_a_stray_delimiter_the_archive_accepted_does_not_stop_transcoding(
    corpus_dir: Path,
) -> None:
    """mf_us_cine_jpeg_65frames_large.dcm has a stray (FFFE,E0DD) at dataset level: ingest
    stores it as harmless, so serving it decoded (WADO-RS default, C-GET/C-MOVE to a peer
    without JPEG) must work too; it answered 406 / A702 "cannot write ... (FFFE,E0DD)"."""
    path = corpus_dir / "mf_us_cine_jpeg_65frames_large.dcm"
    with path.open("rb") as fp:
        out = tc.transcode_instance(fp, tc.EXPLICIT_LE)
    ds = pydicom.dcmread(io.BytesIO(out))
    assert ds.file_meta.TransferSyntaxUID == tc.EXPLICIT_LE
    assert not [t for t in ds.keys() if t >> 16 == 0xFFFE]  # noqa: SIM118 - tags
    original = pydicom.dcmread(path)
    del original[0xFFFEE0DD]
    assert ds.SOPInstanceUID == original.SOPInstanceUID and int(ds.NumberOfFrames) == 65
    for index in (0, 64):
        assert np.array_equal(pixel_array(ds, index=index), pixel_array(original, index=index))


@pytest.mark.parametrize(
    "source", ["ts_explicit_vr_be_mr_small.dcm", "ts_explicit_vr_be_emri_10frames.dcm"]
)
@pytest.mark.parametrize("target", [tc.EXPLICIT_LE, tc.IMPLICIT_LE])
def test_big_endian_headers_keep_their_values_in_little_endian(
    corpus_dir: Path, source: str, target: str
) -> None:
    """WADO-RS's default (Explicit VR Little Endian) of a big endian instance sent its header
    bytes unswapped: High Bit 15 came back as 3840, Enhanced MR float values as garbage."""
    original = pydicom.dcmread(corpus_dir / source)
    with (corpus_dir / source).open("rb") as fp:
        ds = pydicom.dcmread(io.BytesIO(tc.transcode_instance(fp, target)))
    assert ds.HighBit == original.HighBit

    def flat(d: pydicom.Dataset) -> list[tuple[int, object]]:
        """Every value, nested items included; not group lengths, pixels, planar layout."""
        skip = (0x7FE00010, 0x00280006)
        return [
            (int(e.tag), e.value)
            for e in d.iterall()
            if e.VR != "SQ" and e.tag not in skip and e.tag.element != 0
        ]

    assert flat(ds) == flat(original)


def test_jpeg_baseline_refuses_more_than_8_bits(corpus_dir: Path) -> None:
    with (
        (corpus_dir / "mod_ct_small.dcm").open("rb") as fp,
        pytest.raises(tc.TranscodeError, match="8-bit"),
    ):
        tc.transcode_instance(fp, tc.JPEG_BASELINE)


def test_unknown_target_is_a_readable_refusal(corpus_dir: Path) -> None:
    with (
        (corpus_dir / "mod_ct_small.dcm").open("rb") as fp,
        pytest.raises(tc.TranscodeError, match="cannot encode"),
    ):
        tc.transcode_instance(fp, "1.2.840.10008.1.2.4.100")


def test_decode_one_frame_from_its_bytes(corpus_dir: Path) -> None:
    ds = pydicom.dcmread(corpus_dir / "ts_jpeg_lossless_sv1_rgb_us_2frames.dcm")
    header = tc.header_from_json(ds.to_json_dict(bulk_data_threshold=1 << 30))
    assert header is not None and header.number_of_frames == 2
    frames = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=2))
    second = tc.decode_frame(frames[1], header, str(ds.file_meta.TransferSyntaxUID))
    assert np.array_equal(second, ds.pixel_array[1])


def test_render_window_viewport_and_monochrome1(corpus_dir: Path) -> None:
    ds = pydicom.dcmread(corpus_dir / "mod_cr_mono1_chest.dcm")
    arr = ds.pixel_array
    opts = RenderOptions("image/png", viewport=Viewport(100, 100))
    img = Image.open(io.BytesIO(render_frame(arr, ds, 0, opts)))
    assert img.format == "PNG" and max(img.size) == 100
    narrow = RenderOptions("image/png", window=(float(arr.mean()), 1.0))
    pixels = np.asarray(Image.open(io.BytesIO(render_frame(arr, ds, 0, narrow))))
    assert set(np.unique(pixels)) <= {0, 255}  # a 1-wide window is a threshold
    jpeg = render_frame(arr, ds, 0, RenderOptions("image/jpeg", quality=50))
    assert Image.open(io.BytesIO(jpeg)).size == (ds.Columns, ds.Rows)


def _cod_mct(codestream: bytes) -> int:
    """The multiple component transformation byte of a JPEG 2000 codestream's COD marker."""
    at = codestream.index(b"\xff\x52")  # COD: Lcod(2) Scod(1) progression(1) layers(2) MCT(1)
    return codestream[at + 2 + 2 + 1 + 1 + 2]


def test_colour_frames_go_to_htj2k_with_the_reversible_colour_transform() -> None:
    """The viewer's HTJ2K decoder (OpenJPH, WebAssembly) gave all three samples of a colour
    frame coded without the colour transform the first sample's value: every uncompressed
    colour image it asked for as HTJ2K was garbage on screen. Coded with the reversible
    transform (as OpenJPH itself writes colour), it decodes right, and still losslessly."""
    rng = np.random.default_rng(7)
    rgb = np.zeros((60, 80, 3), np.uint8)
    rgb[..., 0] = np.arange(80) * 3
    rgb[..., 1] = np.arange(60)[:, None] * 4
    rgb[..., 2] = rng.integers(0, 256, (60, 80))
    header = tc.PixelHeader(
        rows=60,
        columns=80,
        samples_per_pixel=3,
        bits_allocated=8,
        bits_stored=8,
        pixel_representation=0,
        photometric_interpretation="RGB",
        planar_configuration=0,
        number_of_frames=1,
        pixel_keyword="PixelData",
    )
    coded = tc.encode_frame(rgb, header, tc.HTJ2K_LOSSLESS)
    assert _cod_mct(coded) == 1
    assert np.array_equal(tc.decode_frame(coded, header, tc.HTJ2K_LOSSLESS), rgb)
    grey = rgb[..., 0].copy()
    grey_header = dataclasses.replace(
        header, samples_per_pixel=1, photometric_interpretation="MONOCHROME2"
    )
    assert _cod_mct(tc.encode_frame(grey, grey_header, tc.HTJ2K_LOSSLESS)) == 0


def test_a_colour_instance_transcoded_to_htj2k_says_ybr_rct(corpus_dir: Path) -> None:
    with (corpus_dir / "mod_us_rgb_esopecho.dcm").open("rb") as fp:
        out = tc.transcode_instance(fp, tc.HTJ2K_LOSSLESS)
    ds = pydicom.dcmread(io.BytesIO(out))
    assert ds.PhotometricInterpretation == "YBR_RCT" and ds.PlanarConfiguration == 0
    original = pydicom.dcmread(corpus_dir / "mod_us_rgb_esopecho.dcm")
    assert np.array_equal(ds.pixel_array, original.pixel_array)


def test_a_palette_colour_image_with_16_bit_tables_renders_its_colours(corpus_dir: Path) -> None:
    """8-bit indices, 16-bit palette entries: the colours are scaled from 16 bits (they were
    scaled as if 8-bit and came out white wherever anything was drawn)."""
    from pydicom.pixels import apply_color_lut

    from solent.dicom.render import to_display

    ds = pydicom.dcmread(corpus_dir / "mod_us_palette_obxxxx1a.dcm")
    assert ds.RedPaletteColorLookupTableDescriptor[2] == 16 and ds.BitsStored == 8
    shown = to_display(ds.pixel_array, ds, 0, RenderOptions("image/png", 90))
    expected = (np.asarray(apply_color_lut(ds.pixel_array, ds)) >> 8).astype(np.uint8)
    assert shown.dtype == np.uint8
    assert np.abs(shown.astype(int) - expected).max() <= 1
    assert (shown == 255).mean() < 0.05  # a dark ultrasound sector, not a white one


def test_lossy_transcoding_records_method_and_ratio(corpus_dir: Path) -> None:
    """PS3.3 C.7.6.1.1.5 (R49): a copy made lossy says so, with method and ratio; a second lossy
    step keeps the first one's values before its own."""
    with (corpus_dir / "mod_us_rgb_esopecho.dcm").open("rb") as fp:
        out = pydicom.dcmread(io.BytesIO(tc.transcode_instance(fp, tc.JPEG_BASELINE)))
    assert out.LossyImageCompression == "01"
    assert out.LossyImageCompressionMethod == "ISO_10918_1"
    raw = out.Rows * out.Columns * out.SamplesPerPixel * int(out.get("NumberOfFrames", 1))
    coded = len(out.PixelData)
    assert float(out.LossyImageCompressionRatio) == pytest.approx(raw / coded, rel=0.05)
    assert float(out.LossyImageCompressionRatio) > 1

    with (corpus_dir / "ts_jpeg_baseline_rgb_dcmtk.dcm").open("rb") as fp:
        first = pydicom.dcmread(fp)
    first.LossyImageCompression = "01"
    first.LossyImageCompressionMethod = "ISO_10918_1"
    first.LossyImageCompressionRatio = 8
    buf = io.BytesIO()
    first.save_as(buf)
    buf.seek(0)
    again = pydicom.dcmread(io.BytesIO(tc.transcode_instance(buf, tc.JPEG_BASELINE)))
    assert list(again.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_10918_1"]
    assert float(again.LossyImageCompressionRatio[0]) == 8
    assert len(again.LossyImageCompressionRatio) == 2
