"""Real files from other projects display right in the viewer (real chromium, real `solent
serve`): one of each transfer syntax, photometric interpretation and kind of multi-frame object
of the shared corpus a clinician meets, opened as a study.

"Right" is checked against the archive's own rendering of the same frame (``/rendered``, decoded
by pydicom and its codecs): the picture drawn on the viewer's canvas, cropped to the image and
scaled down, must correlate with it. A decoder that garbles a frame, swaps colour planes badly,
forgets to invert MONOCHROME1 or shows nothing fails (such faults measured 0.1-0.4 here, or
below zero). The bar is not higher because two faithful displays may differ in VOI: where a
file has both a VOI LUT and a window, PS3.3 C.11.2.1.2 lets the display apply either (the
mammogram here: 0.71 between them)."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.conftest import RunningServer, require_corpus, start_server
from tests.interop.viewer_support import (
    add_user,
    canvas,
    new_page,
    require_browser,
    settled,
    shot,
    sign_in,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

#: File -> what it stands for. One file per study (several corpus files share UIDs).
FILES = {
    "mod_ct_small.dcm": "CT, signed 16-bit, explicit VR (its study also has a report, SR 0)",
    "ts_implicit_vr_le_mr_siemens_trio_gdcm.dcm": "MR, implicit VR",
    "ts_explicit_vr_be_us_rgb_small.dcm": "US RGB, big endian",
    "ts_deflated_sc_image.dcm": "deflated explicit VR",
    "ts_jpeg_baseline_rgb_dcmtk.dcm": "JPEG baseline, colour (YBR_FULL)",
    "ts_jpeg_baseline_ycbcr_subsampled_dcmtk.dcm": "JPEG baseline, YBR 4:2:2 subsampled",
    "ts_jpeg_extended_12bit_nm.dcm": "JPEG extended 12-bit",
    "ts_jpeg_lossless_sv1_mr_dcmtk.dcm": "JPEG lossless SV1",
    "ts_jpegls_lossless_mr_charls.dcm": "JPEG-LS lossless",
    "ts_jpegls_near_lossless_ct1_wg04.dcm": "JPEG-LS near-lossless CT",
    "ts_j2k_lossless_us_rgb_wg04.dcm": "JPEG 2000 lossless, colour",
    "ts_j2k_lossy_ct1_wg04.dcm": "JPEG 2000 lossy CT",
    "ts_rle_mr_small.dcm": "RLE",
    "mod_cr_mono1_chest.dcm": "CR MONOCHROME1 (inverted)",
    "mod_us_palette_obxxxx1a.dcm": "US PALETTE COLOR",
    "mod_mg_jpeg_lossless.dcm": "mammography, JPEG lossless",
    "mod_pt_jpeg_lossless.dcm": "PET, JPEG lossless, no window (min/max)",
    "mod_dx_highdicom.dcm": "DX MONOCHROME1",
    "mod_nm_multiframe_13x_heart.dcm": "NM, 13 frames",
    "mod_xa_96frames_jpeg.dcm": "XA cine, 96 JPEG frames",
    "px_palette_16bit_segmented_us.dcm": "US PALETTE COLOR, segmented 16-bit tables",
    "px_ybr_full_422_uncompressed.dcm": "YBR_FULL_422 uncompressed",
    "mf_us_cine_jpeg_ybr422_30frames.dcm": "US cine, JPEG YBR 4:2:2",
    "mf_enhanced_mr_10frames.dcm": "enhanced MR, 10 frames",
    "mf_us_cine_rle_palette_10frames.dcm": "US cine, RLE, PALETTE COLOR",
    "ts_jpegxl_us_27frames.dcm": "JPEG XL (transcoded for the browser)",
}


def _uids(path: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


@pytest.fixture(scope="module")
def corpus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    require_browser()
    source = require_corpus()
    root = tmp_path_factory.mktemp("viewer-corpus")
    srv = start_server(root / "srv")
    srv.cli("trust", "add", "ZZA", "--name", "Trust A")
    add_user(srv, "rad", "ZZA", "radiologist")
    folder = root / "in"
    folder.mkdir()
    for name in FILES:
        shutil.copy(source / name, folder / name)
    _report_before_images(source / "mod_ct_small.dcm", folder / "report.dcm")
    srv.cli("import", str(folder), "--trust", "ZZA")
    yield srv
    srv.stop()


def _report_before_images(image: Path, out: Path) -> None:
    """A report (SR) in the CT's study, numbered before its image series: the study must
    still open on its images."""
    ct = pydicom.dcmread(image, stop_before_pixels=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate"):
        setattr(ds, keyword, ct.get(keyword, ""))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ct.StudyInstanceUID, generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 0, 1
    ds.ValueType = "CONTAINER"
    pydicom.dcmwrite(out, ds, enforce_file_format=True)


def _grey(pixels: np.ndarray) -> np.ndarray:
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return np.asarray(img.convert("L").resize((64, 64), Image.Resampling.BOX), dtype=float)


def _image_part(pixels: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The image as fitted into the canvas (centred, whole, aspect kept)."""
    ch, cw = pixels.shape[:2]
    scale = min(cw / cols, ch / rows)
    w, h = cols * scale, rows * scale
    x0, y0 = round((cw - w) / 2), round((ch - h) / 2)
    return pixels[y0 : y0 + int(h), x0 : x0 + int(w)]


@pytest.mark.parametrize("name", list(FILES))
def test_a_corpus_file_displays_as_the_archive_renders_it(
    corpus_server: RunningServer, browser: Any, tmp_path: Path, name: str
) -> None:
    study, series = _uids(require_corpus() / name)
    errors: list[str] = []
    page = new_page(browser, corpus_server, errors)
    sign_in(page, "rad")
    page.goto(f"{corpus_server.base_url}/viewer/#/study/{study}?prior=")
    drawn = settled(page)
    shot(page, tmp_path, name.removesuffix(".dcm"))
    token = page.evaluate("sessionStorage.getItem('solent.token')")
    # The frame on screen: a multi-frame image opens at its middle slice, and a study may
    # hold more instances than this file (corpus files share study UIDs).
    image_id = page.get_attribute(".pane[data-pane='Current'] .overlay", "data-image-id") or ""
    assert f"/series/{series}/instances/" in image_id, image_id
    response = page.request.get(
        image_id.removeprefix("wadors:") + "/rendered",
        headers={"Authorization": f"Bearer {token}", "Accept": "image/png"},
    )
    assert response.status == 200, response.text()
    expected = np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"), dtype=np.int16)
    rows, cols = expected.shape[:2]
    ours = _grey(_image_part(canvas(page), rows, cols))
    theirs = _grey(expected)
    r = float(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1])
    print(f"{name}: correlation {r:.3f}")
    assert r > 0.6, f"{FILES[name]}: the viewer's picture does not match the archive's ({r:.3f})"
    assert drawn.std() > 5
    assert not errors, errors
    page.context.close()
