"""The viewer's image tools in a real browser (issue 12): zoom, pan, rotate, flip and invert
change the drawn pixels as the geometry says; cine plays a multi-frame instance frame by frame
and stops; key images are marked and jumped back to; the help panel lists every shortcut; an
MDT participant who may not see the presented patient sees a clear "not available" state with
no image of the previous patient. Shares the demo server and chromium with the other browser
tests (tests/interop/conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from solent.demo import DEMO_ROOT
from tests.conftest import RunningServer
from tests.interop.viewer_support import (
    add_user,
    canvas,
    differs,
    eventually,
    image_index,
    new_page,
    pane,
    shot,
    sign_in,
    wait_image,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

ALICE_CT = DEMO_ROOT + "1.1"  # ZZA A100001, 24 slices, 2024
BOB_CT = DEMO_ROOT + "1.4"  # ZZB B7730444
FRAMES = 12
MULTIFRAME_SC = "1.2.840.10008.5.1.4.1.1.7.2"  # Multi-frame Grayscale Byte Secondary Capture


# -- pixel geometry ------------------------------------------------------------------------------


def gray(px: np.ndarray) -> np.ndarray:
    return np.asarray(px.mean(axis=2), dtype=np.float64)


def centroid(px: np.ndarray, threshold: float = 60) -> tuple[float, float]:
    """(x, y) of the drawn object's bright pixels."""
    ys, xs = np.nonzero(gray(px) > threshold)
    assert len(xs) > 100, "nothing bright drawn"
    return float(xs.mean()), float(ys.mean())


def bone(px: np.ndarray) -> tuple[float, float]:
    """(x, y) of the phantom's saturated bright spot (1000 HU at the default W/L)."""
    return centroid(px, 245)


def area(px: np.ndarray, threshold: float = 60) -> int:
    return int((gray(px) > threshold).sum())


def centre_square(px: np.ndarray, share: float = 0.85) -> np.ndarray:
    """The central square (share of the shorter side): inside the image whatever the canvas."""
    h, w = px.shape[:2]
    side = int(min(h, w) * share) // 16 * 16
    top, left = (h - side) // 2, (w - side) // 2
    return gray(px)[top : top + side, left : left + side]


def blocks(a: np.ndarray, size: int = 8) -> np.ndarray:
    """Mean of size x size blocks: compares shapes, not single-pixel resampling noise."""
    h, w = a.shape[0] // size * size, a.shape[1] // size * size
    return a[:h, :w].reshape(h // size, size, w // size, size).mean(axis=(1, 3))


def mismatch(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(blocks(a) - blocks(b)).mean())


def zoom_of(page: Any) -> float:
    text = page.inner_text(f"{pane()} .overlay .br")
    return float(text.split("Zoom", 1)[1].split()[0])


def drag(page: Any, dx: float, dy: float) -> None:
    box = page.locator(f"{pane()} .viewport").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + dx, y + dy, steps=10)
    page.mouse.up()


def reset(page: Any, base: np.ndarray) -> None:
    page.keyboard.press("0")
    eventually(lambda: differs(base, canvas(page)) < 0.01, what="reset to the first view")


# -- a multi-frame instance: a bright square moving right, one step a frame -------------------


def secondary_capture(
    frames: np.ndarray, sop_class: str, study: str, series: str, patient: tuple[str, str]
) -> Dataset:
    """An 8-bit grey Secondary Capture of ``frames`` (frames x 128 x 128, or 128 x 128)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID = patient
    ds.PatientBirthDate, ds.PatientSex = "19600101", "O"
    ds.StudyTime = "101500"
    ds.Modality = "OT"
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 128
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.WindowCenter, ds.WindowWidth = 128, 256
    ds.PixelData = frames.tobytes()
    return ds


def multiframe(path: Path) -> str:
    frames = np.full((FRAMES, 128, 128), 20, dtype=np.uint8)
    for f in range(FRAMES):
        frames[f, 52:76, 8 + 8 * f : 32 + 8 * f] = 230
    study = generate_uid()
    ds = secondary_capture(frames, MULTIFRAME_SC, study, generate_uid(), ("DEMO^CINE", "C300001"))
    ds.StudyDate = ds.SeriesDate = "20250301"
    ds.AccessionNumber, ds.StudyDescription = "CINE1", "CINE LOOP"
    ds.NumberOfFrames = FRAMES
    ds.save_as(path, enforce_file_format=True)
    return study


# -- tests ----------------------------------------------------------------------------------------


def test_zoom_pan_rotate_flip_invert_change_the_pixels_as_they_should(
    demo: RunningServer, browser: Any, tmp_path: Path
) -> None:
    errors: list[str] = []
    page = new_page(browser, demo, errors)
    sign_in(page, "rad")
    page.goto(f"{demo.base_url}/viewer/#/study/{ALICE_CT}?prior=")
    base = wait_image(page)
    page.wait_for_timeout(500)  # the last frames of the series arrive; the image stays put
    base = canvas(page)
    bx, by = centroid(base)
    assert zoom_of(page) == pytest.approx(1.0, abs=0.01)

    # Zoom tool (z): dragging changes the magnification; the body's drawn area follows it
    # (zoom squared), around the same centre.
    page.keyboard.press("z")
    drag(page, 0, -60)
    eventually(lambda: abs(zoom_of(page) - 1) > 0.1, what="zoom changed")
    page.wait_for_timeout(300)
    zoom, zoomed = zoom_of(page), canvas(page)
    assert area(zoomed) / area(base) == pytest.approx(zoom**2, rel=0.15), zoom
    zx, zy = centroid(zoomed)
    assert abs(zx - bx) < 25 and abs(zy - by) < 25
    shot(page, tmp_path, "15-zoom")
    reset(page, base)

    # Pan tool (p): the image moves with the mouse, pixel for pixel.
    page.keyboard.press("p")
    drag(page, 120, 60)
    eventually(lambda: differs(base, canvas(page)) > 0.05, what="pan")
    page.wait_for_timeout(300)
    px, py = centroid(canvas(page))
    assert px - bx == pytest.approx(120, abs=12) and py - by == pytest.approx(60, abs=12)
    reset(page, base)

    # Rotate 90° clockwise (r): the picture is the original turned a quarter clockwise; the
    # phantom's one bright (bone) spot, above the centre, goes to the right of it.
    h, w = base.shape[:2]
    assert bone(base)[1] < h / 2 - 50 and abs(bone(base)[0] - w / 2) < 10
    square = centre_square(base)
    page.keyboard.press("r")
    eventually(lambda: differs(base, canvas(page)) > 0.05, what="rotate")
    page.wait_for_timeout(300)
    turned = canvas(page)
    assert bone(turned)[0] > w / 2 + 50 and abs(bone(turned)[1] - h / 2) < 10
    assert mismatch(centre_square(turned), np.rot90(square, k=-1)) < 6
    shot(page, tmp_path, "16-rotate")

    # Flip horizontally after the turn: mirrored left to right, the bone spot left of centre.
    page.keyboard.press("h")
    eventually(lambda: bone(canvas(page))[0] < w / 2 - 50, what="flip h")
    page.wait_for_timeout(300)
    assert mismatch(centre_square(canvas(page)), np.fliplr(centre_square(turned))) < 6
    reset(page, base)

    # Flip vertically: mirrored top to bottom, the bone spot below the centre.
    page.click("#flip-v")
    eventually(lambda: bone(canvas(page))[1] > h / 2 + 50, what="flip v")
    page.wait_for_timeout(300)
    assert mismatch(centre_square(canvas(page)), np.flipud(square)) < 6
    reset(page, base)

    # Invert (i): bright becomes dark, point for point.
    page.keyboard.press("i")
    eventually(lambda: differs(base, canvas(page)) > 0.2, what="invert")
    page.wait_for_timeout(300)
    inverted = centre_square(canvas(page))
    assert float(np.corrcoef(inverted.ravel(), square.ravel())[0, 1]) < -0.95
    assert float(np.abs(inverted + square - 255).mean()) < 12
    reset(page, base)
    assert not errors, errors


def test_cine_plays_a_multi_frame_instance_and_stops(
    demo: RunningServer, browser: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "cine"
    folder.mkdir()
    study = multiframe(folder / "cine.dcm")
    demo.cli("import", str(folder), "--trust", "ZZA")
    errors: list[str] = []
    page = new_page(browser, demo, errors)
    sign_in(page, "rad")
    page.goto(f"{demo.base_url}/viewer/#/study/{study}?prior=")
    wait_image(page)
    assert f"/{FRAMES}" in page.inner_text(f"{pane()} .overlay .bl")  # frames are the stack

    # Frame by frame, the square is where that frame drew it: frame n at x = 8 + 8 n (of 128).
    page.locator(f"{pane()} .viewport").hover()
    page.keyboard.press("Home")
    eventually(lambda: image_index(page) == 0, what="first frame")
    page.wait_for_timeout(300)
    first = centroid(canvas(page), 120)
    page.keyboard.press("End")
    eventually(lambda: image_index(page) == FRAMES - 1, what="last frame")
    page.wait_for_timeout(300)
    drawn = canvas(page)
    last = centroid(drawn, 120)
    xs = np.nonzero((gray(drawn) > 8).any(axis=0))[0]  # the image (background 20), not the canvas
    width = xs[-1] - xs[0] + 1
    assert last[0] - first[0] == pytest.approx(8 * (FRAMES - 1) / 128 * width, rel=0.05)
    assert last[1] == pytest.approx(first[1], abs=3)

    # Cine (c): the frames advance on their own, the square with them; c again stops it.
    # Every frame index the overlay shows is recorded in the page: sampling from here could
    # alias with the cine's period (a sample every 250 ms sees every 3rd frame of 12 at 12 fps).
    page.evaluate(
        """(sel) => {
          window.__cineSeen = new Set();
          const overlay = document.querySelector(sel);
          new MutationObserver(() => window.__cineSeen.add(overlay.getAttribute('data-index')))
            .observe(overlay, { attributes: true, attributeFilter: ['data-index'] });
        }""",
        f"{pane()} .overlay",
    )
    page.keyboard.press("c")
    page.wait_for_selector("#cine.active")
    xs: set[int] = set()

    def advanced() -> bool:
        xs.add(round(centroid(canvas(page), 120)[0]))
        return page.evaluate("window.__cineSeen.size") >= 6 and len(xs) >= 4

    eventually(advanced, timeout=20, what="cine advancing")
    shot(page, tmp_path, "17-cine")
    page.keyboard.press("c")
    assert page.locator("#cine.active").count() == 0
    page.wait_for_timeout(300)
    stopped, pixels = image_index(page), canvas(page)
    page.wait_for_timeout(1200)
    assert image_index(page) == stopped and differs(pixels, canvas(page)) < 0.002
    assert not errors, errors


def test_key_images_and_the_help_panel(demo: RunningServer, browser: Any, tmp_path: Path) -> None:
    headers = add_user(demo, "keyrad", "ZZA", "radiologist")
    errors: list[str] = []
    page = new_page(browser, demo, errors)
    sign_in(page, "keyrad")
    page.on("dialog", lambda dialog: dialog.accept("left lower lobe nodule"))
    page.goto(f"{demo.base_url}/viewer/#/study/{ALICE_CT}?prior=")
    wait_image(page)
    page.wait_for_selector("#key-images li.empty")
    page.locator(f"{pane()} .viewport").hover()
    before = canvas(page)
    page.keyboard.press("PageDown")
    eventually(lambda: image_index(page) == 22, what="slice 23")
    # The index moves when the slice is asked for; its pixels follow once its frame is in.
    eventually(lambda: differs(before, canvas(page)) > 0.01, what="slice 23 drawn")
    marked = canvas(page)
    page.keyboard.press("k")  # the note comes from the prompt
    page.wait_for_selector("#key-images .key-go:has-text('left lower lobe nodule')")
    keys = httpx.get(
        f"{demo.base_url}/api/viewer/studies/{ALICE_CT}/key-images", headers=headers, timeout=30
    ).json()["key_images"]
    mine = [k for k in keys if k["by"] == "keyrad"]
    assert [k["note"] for k in mine] == ["left lower lobe nodule"]
    page.keyboard.press("Home")
    eventually(lambda: image_index(page) == 0, what="first slice")
    eventually(lambda: differs(marked, canvas(page)) > 0.01, what="another slice drawn")
    page.click("#key-images .key-go")
    eventually(lambda: image_index(page) == 22, what="back at the key image")
    eventually(lambda: differs(marked, canvas(page)) < 0.01, what="the key image drawn again")
    shot(page, tmp_path, "18-key-images")

    # The help panel lists every shortcut the reading screen answers to.
    page.keyboard.press("?")
    page.wait_for_selector("#help:not([hidden])")
    listed = " ".join(page.locator("#help kbd").all_inner_texts())
    for key in ("Page Up", "Home", "w s p z", "l a o", "r h v i", "0", "c", "k", "1", "5", "?"):
        assert key in listed, key
    text = page.inner_text("#help")
    assert "CT lung" in text and "key image" in text and "cine" in text
    shot(page, tmp_path, "06-help")
    page.keyboard.press("?")
    page.wait_for_selector("#help", state="hidden")
    assert not errors, errors


def test_mdt_follower_who_may_not_see_the_patient_sees_no_image(
    demo: RunningServer, browser: Any, tmp_path: Path
) -> None:
    """Meeting of Alice (ZZA) then Bob (ZZB); the follower (ZZA only) may see Alice, not Bob.
    When the presenter moves to Bob, the follower's Alice image goes and a clear "not
    available to you" takes its place; back on Alice, her image returns."""
    coordinator = add_user(demo, "coordab", "ZZA", "mdt_coordinator", also=("ZZB",))
    add_user(demo, "presab", "ZZA", "radiologist", also=("ZZB",))
    add_user(demo, "folza", "ZZA", "clinician")
    r = httpx.post(
        demo.base_url + "/api/mdt/meetings",
        headers=coordinator,
        json={
            "title": "Restricted MDT",
            "date": "2026-12-08",
            "team": "Chest",
            "items": [
                {"issuer": "ZZA", "patient_id": "A100001", "study_uids": [ALICE_CT]},
                {"issuer": "ZZB", "patient_id": "B7730444", "study_uids": [BOB_CT]},
            ],
        },
        timeout=30,
    )
    assert r.status_code == 201, r.text
    meeting = r.json()["id"]
    errors: list[str] = []

    def join(name: str) -> Any:
        page = new_page(browser, demo, errors)
        sign_in(page, name)
        page.goto(f"{demo.base_url}/viewer/#/mdt/{meeting}")
        page.wait_for_selector("#mdt-status")
        return page

    pres, fol = join("presab"), join("folza")
    assert "not available to you" in fol.inner_text(".mdt-items li[data-item]:nth-child(2)")
    pres.click("#mdt-claim")
    pres.wait_for_selector("#mdt-status:has-text('Presenter: presab (you)')")
    pres.click(f".mdt-open[data-study='{ALICE_CT}']")
    wait_image(pres)
    wait_image(fol)
    assert "DEMO, Alice" in fol.inner_text(f"{pane()} .overlay")

    pres.click(f".mdt-open[data-study='{BOB_CT}']")
    wait_image(pres)
    fol.wait_for_selector("#mdt-restricted:has-text('Not available to you')")
    assert fol.locator("#mdt-stage canvas").count() == 0  # no image of Alice left behind
    assert fol.locator("#mdt-stage .overlay").count() == 0
    stage = fol.inner_text("#mdt-stage")
    assert "patient 2 of this meeting" in stage
    assert "Bob" not in stage and "B7730444" not in stage and BOB_CT not in fol.content()
    shot(fol, tmp_path, "19-mdt-restricted")

    pres.click(f".mdt-open[data-study='{ALICE_CT}']")
    fol.wait_for_selector("#mdt-restricted", state="detached")
    wait_image(fol)
    assert fol.get_attribute("#mdt-stage", "data-restricted") == "false"
    assert not errors, errors


def two_series(folder: Path) -> tuple[str, str, str]:
    """A study of two series (study, first series, second): the first eight slices with a
    bright square at the left, the second one slice with it at the right."""
    study, series = generate_uid(), (generate_uid(), generate_uid())
    for n, (uid, count, x) in enumerate(((series[0], 8, 8), (series[1], 1, 88)), start=1):
        for i in range(count):
            pixels = np.full((128, 128), 20, dtype=np.uint8)
            pixels[52:76, x + 2 * i : x + 24 + 2 * i] = 230
            ds = secondary_capture(
                pixels, "1.2.840.10008.5.1.4.1.1.7", study, uid, ("DEMO^SERIES", "S300001")
            )
            ds.StudyDate = ds.SeriesDate = "20250302"
            ds.AccessionNumber, ds.StudyDescription = "SERIES2", "TWO SERIES"
            ds.SeriesDescription = f"SERIES {n}"
            ds.SeriesNumber, ds.InstanceNumber = n, i + 1
            ds.save_as(folder / f"s{n}-{i}.dcm", enforce_file_format=True)
    return study, *series


def test_a_thumbnail_opens_its_series_and_dragging_scrolls(
    demo: RunningServer, browser: Any, tmp_path: Path
) -> None:
    """Issue 12: series thumbnails switch the pane to their series; with the Scroll tool a
    vertical drag moves through the stack."""
    folder = tmp_path / "series"
    folder.mkdir()
    study, first, second = two_series(folder)
    demo.cli("import", str(folder), "--trust", "ZZA")
    errors: list[str] = []
    page = new_page(browser, demo, errors)
    sign_in(page, "rad")
    page.goto(f"{demo.base_url}/viewer/#/study/{study}?prior=")
    wait_image(page)
    thumbs = page.locator(".thumbnails[data-pane='Current'] .thumb")
    eventually(lambda: thumbs.count() == 2, what="two thumbnails")
    assert "/8" in page.inner_text(f"{pane()} .overlay .bl")

    # Scroll tool: dragging down moves forward through the eight slices.
    page.click(".toolbar [data-tool='StackScroll']")
    page.locator(f"{pane()} .viewport").hover()
    page.keyboard.press("Home")
    eventually(lambda: image_index(page) == 0, what="first slice")
    page.wait_for_timeout(300)
    top = canvas(page)
    drag(page, 0, 300)
    eventually(lambda: image_index(page) > 0, what="drag scroll")
    eventually(lambda: differs(top, canvas(page)) > 0.001, what="the slice dragged to drawn")

    # The second thumbnail: its one slice, the square on the right of the image.
    left = centroid(canvas(page), 120)
    page.locator(f".thumb[data-series='{second}']").click()
    eventually(lambda: "/1" in page.inner_text(f"{pane()} .overlay .bl"), what="series 2 shown")
    eventually(lambda: centroid(canvas(page), 120)[0] > left[0] + 50, what="series 2 drawn")
    assert "SERIES 2" in page.inner_text(f"{pane()} .overlay")
    page.locator(f".thumb[data-series='{first}']").click()
    eventually(lambda: "/8" in page.inner_text(f"{pane()} .overlay .bl"), what="series 1 again")
    shot(page, tmp_path, "17-series-thumbnails")
    assert not errors, errors
