"""Images show even where the browser cannot decode them (issue 12).

A stored instance in a transfer syntax the viewer does not decode in the browser still
displays: the viewer asks the archive for its frames transcoded (lossless HTJ2K,
viewer/src/imaging.ts ``frameAccept``) instead of showing nothing. JPEG XL is the case here:
the archive decodes it (imagecodecs); the viewer leaves its 1 MB decoder unloaded. And a frame
the browser fails to load is replaced by the archive's rendering of it (/rendered).

Real `solent serve`, real chromium; the image's left half is dark and its right half bright,
so the drawn pixels show the decoded image, not just "something".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import generate_uid

from tests.conftest import RunningServer, start_server
from tests.interop.viewer_support import (
    add_user,
    canvas,
    new_page,
    not_blank,
    pane,
    require_browser,
    shot,
    sign_in,
    wait_image,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

JPEG_XL_LOSSLESS = "1.2.840.10008.1.2.4.110"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
ROOT = "1.2.826.0.1.3680043.10.1455.99."
SIZE = 256


def jpeg_xl_instance(path: Path) -> str:
    """A 12-bit MONOCHROME2 CT slice stored as JPEG XL lossless; returns its study UID."""
    pixels = np.full((SIZE, SIZE), 100, dtype=np.uint16)
    pixels[:, SIZE // 2 :] = 3000
    pixels[SIZE // 4 : SIZE // 2, SIZE // 8 : SIZE // 4] = 1800  # a mark: not left/right symmetric
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEG_XL_LOSSLESS
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid(ROOT)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(ROOT), generate_uid(ROOT)
    ds.PatientName, ds.PatientID, ds.IssuerOfPatientID = "JXL^Test", "ZZAJXL1", "ZZA"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20260101", "090000", "ZZAJXL"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, 1
    ds.StudyDescription = ds.SeriesDescription = "JPEG XL stored"
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    ds.Rows = ds.Columns = SIZE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.WindowCenter, ds.WindowWidth = 0, 1, 1500, 3000
    ds.PixelData = encapsulate([bytes(imagecodecs.jpegxl_encode(pixels, lossless=True))])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True  # encapsulated
    # pydicom's writer refuses a transfer syntax it does not know (JPEG XL): the preamble,
    # file meta and the explicit VR little endian dataset are written piece by piece.
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, ds.file_meta, enforce_standard=True)
    write_dataset(fp, ds)
    path.write_bytes(fp.getvalue())
    return str(ds.StudyInstanceUID)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, str]]:
    require_browser()
    root = tmp_path_factory.mktemp("viewer-jxl")
    srv = start_server(root / "srv")
    srv.cli("trust", "add", "ZZA", "--name", "Trust A")
    add_user(srv, "rad", "ZZA", "radiologist")
    folder = root / "in"
    folder.mkdir()
    study = jpeg_xl_instance(folder / "jxl.dcm")
    srv.cli("import", str(folder), "--trust", "ZZA")
    yield srv, study
    srv.stop()


def test_a_jpeg_xl_instance_displays_from_transcoded_frames(
    server: tuple[RunningServer, str], browser: Any, tmp_path: Path
) -> None:
    srv, study = server
    frame_types: list[str] = []
    errors: list[str] = []
    page = new_page(browser, srv, errors)

    def on_response(response: Any) -> None:
        path = response.url.split("?")[0]
        if "/frames/" in path and not path.endswith("/rendered") and response.status == 200:
            accept = response.request.headers.get("accept", "")
            frame_types.append(f"{accept} -> {response.headers.get('content-type', '')}")

    page.on("response", on_response)
    sign_in(page, "rad")
    page.goto(f"{srv.base_url}/viewer/#/study/{study}?prior=")
    pixels = wait_image(page)
    shot(page, tmp_path, "jpeg-xl")
    overlay = page.inner_text(f"{pane()} .overlay")
    assert "JXL, Test" in overlay
    # The viewer asked for the frame transcoded and the archive sent it so (HTJ2K, not JPEG XL).
    assert frame_types, "no frame was fetched"
    for exchange in frame_types:
        asked, _, got = exchange.partition(" -> ")
        assert f"transfer-syntax={HTJ2K_LOSSLESS}" in asked, exchange
        assert 'type="image/jphc"' in got, exchange
    # The decoded picture: the right half (3000) drawn brighter than the left (100).
    grey = pixels.mean(axis=2)
    rows, cols = grey.shape
    band = grey[rows // 3 : 2 * rows // 3]
    left = band[:, cols // 2 - cols // 8 : cols // 2 - cols // 16].mean()
    right = band[:, cols // 2 + cols // 16 : cols // 2 + cols // 8].mean()
    assert right - left > 100, (left, right)
    assert not errors, errors


def test_a_frame_the_browser_cannot_load_shows_as_the_archive_renders_it(
    server: tuple[RunningServer, str], browser: Any, tmp_path: Path
) -> None:
    """Fault injected in the browser: every request for the instance's frame (as pixel data)
    fails at the network level, as a broken decoder or a refused transcoding would; the
    archive's rendering of that frame (/rendered, not intercepted) is shown in its place."""
    srv, study = server
    errors: list[str] = []
    page = new_page(browser, srv, errors)
    sign_in(page, "rad")
    failing = re.compile(r".*/frames/1$")
    page.route(failing, lambda route: route.abort("failed"))
    page.goto(f"{srv.base_url}/viewer/#/study/{study}?prior=")
    fallback = f"{pane()} img.rendered-fallback"
    page.wait_for_function(
        f"document.querySelector({fallback!r})?.naturalWidth > 0", timeout=60_000
    )
    shot(page, tmp_path, "rendered-fallback")
    # The rendered picture: right half brighter than left (the instance's own window).
    left, right = page.evaluate(
        HALVES,
        fallback,
    )
    assert right - left > 100, (left, right)
    # The first-image preview gave way to it; Cornerstone drew nothing (the frame failed).
    assert page.locator(f"{pane()} img.preview:not(.rendered-fallback)").count() == 0
    assert not not_blank(canvas(page))
    # The failed frame is settled: nothing left "loading", the series-loaded mark is set.
    overlay = page.inner_text(f"{pane()} .overlay")
    assert "loading" not in overlay, overlay
    assert "1 shown as rendered by the archive" in overlay, overlay
    loaded = "performance.getEntriesByName('solent:series-loaded:Current').length"
    assert page.evaluate(loaded) == 1
    # The user's W/L: the CT brain preset (40/80) re-renders the frame at that window,
    # where both halves (100 and 3000) are white.
    rendered: list[str] = []
    page.on("request", lambda r: rendered.append(r.url) if "/rendered" in r.url else None)
    page.keyboard.press("4")
    page.wait_for_function(
        f"document.querySelector({fallback!r})?.dataset.window === '40.0,80.0'"
        f" && document.querySelector({fallback!r}).complete",
        timeout=30_000,
    )
    assert any(u.endswith("/rendered?window=40.0,80.0") for u in rendered), rendered
    left, right = page.evaluate(HALVES, fallback)
    assert min(left, right) > 200, (left, right)
    # Once the frame can be loaded (retried 2, 4 and 8 s after the failure), the real
    # image replaces the rendering, still at the user's window.
    page.unroute(failing)
    page.wait_for_function(f"!document.querySelector({fallback!r})", timeout=30_000)
    assert not_blank(canvas(page))
    assert "shown as rendered" not in page.inner_text(f"{pane()} .overlay")
    assert "W 80 L 40" in page.inner_text(f"{pane()} .overlay")


# Mean grey of a band left and right of the middle of an <img> (selector as the argument).
HALVES = """(sel) => {
              const img = document.querySelector(sel);
              const c = document.createElement('canvas');
              c.width = img.naturalWidth; c.height = img.naturalHeight;
              const g = c.getContext('2d');
              g.drawImage(img, 0, 0);
              const mean = (x0, x1) => {
                const d = g.getImageData(x0, c.height / 3, x1 - x0, c.height / 3).data;
                let s = 0;
                for (let i = 0; i < d.length; i += 4) s += d[i];
                return s / (d.length / 4);
              };
              const w = c.width;
              return [mean(w * 3 / 8, w * 7 / 16), mean(w * 9 / 16, w * 5 / 8)];
            }"""
