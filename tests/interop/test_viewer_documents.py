"""Documents in the reading screen (real chromium, real `solent serve`): a study holding a CT
series, an outside report as Encapsulated PDF, two structured reports of other projects (the
shared corpus) and one whose values hold markup. The clinician sees an entry per document in
the series strip (the presentation state none), the PDF itself, and each report as a readable
document; a value with ``<script>`` in it shows as text and runs nothing."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid

from tests.conftest import RunningServer, require_corpus, start_server
from tests.interop.viewer_support import (
    add_user,
    eventually,
    new_page,
    require_browser,
    shot,
    sign_in,
)
from tests.unit.stow_support import ct_instance, presentation_state, structured_report

pytestmark = [pytest.mark.interop, pytest.mark.slow]

STUDY = generate_uid()
CT_SOP = generate_uid()
PDF_FILE = "obj_encapsulated_pdf_orthanc.dcm"
SR_FILE = "obj_sr_comprehensive_dcmtk.dcm"
TID1500_FILE = "obj_sr_tid1500_dcmqi.dcm"
HOSTILE = "<script>window.__pwned=1</script><img src=x onerror=__pwned=2>"  # LO: 64 at most


def _ours(ds: Dataset) -> Dataset:
    """``ds`` moved into the test's study, of one patient of trust ZZA."""
    ds.StudyInstanceUID, ds.StudyDate, ds.AccessionNumber = STUDY, "20250314", "DOCS1"
    ds.PatientID, ds.IssuerOfPatientID = "D100001", "ZZA"
    ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "DOCS^DAISY", "19700101", "F"
    return ds


def _read(data: bytes) -> Dataset:
    return pydicom.dcmread(DicomBytesIO(data))


@pytest.fixture(scope="module")
def documents_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    require_browser()
    source = require_corpus()
    root = tmp_path_factory.mktemp("viewer-documents")
    folder = root / "in"
    folder.mkdir()
    ct = _read(ct_instance("D100001", "ZZA", STUDY, sop=CT_SOP))
    ct.PixelData = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 60).tobytes()
    ct.SeriesNumber, ct.SeriesDescription = 2, "CT chest"
    pdf = pydicom.dcmread(source / PDF_FILE)
    pdf.DocumentTitle = "Outside report (scanned)"
    pdf.SeriesNumber = 1  # an OT document listed before the images by series number
    hostile = _read(
        structured_report("D100001", "ZZA", STUDY, title=HOSTILE, finding=HOSTILE, image=CT_SOP)
    )
    state, _ = presentation_state("D100001", "ZZA", STUDY, {str(ct.SeriesInstanceUID): [CT_SOP]})
    datasets = {
        "ct.dcm": ct,
        "pdf.dcm": pdf,
        "sr.dcm": pydicom.dcmread(source / SR_FILE),
        "tid1500.dcm": pydicom.dcmread(source / TID1500_FILE),
        "hostile.dcm": hostile,
        "pr.dcm": _read(state),
    }
    for name, ds in datasets.items():
        _ours(ds).save_as(folder / name, enforce_file_format=True)
    srv = start_server(root / "srv")
    srv.cli("trust", "add", "ZZA", "--name", "Trust A")
    add_user(srv, "rad", "ZZA", "radiologist")
    srv.cli("import", str(folder), "--trust", "ZZA")
    yield srv
    srv.stop()


def _document(page: Any) -> str:
    view = page.locator(".pane[data-pane='Current'] .document-view article")
    view.first.wait_for()
    return str(view.first.inner_text())


def _open(page: Any, label: str) -> str:
    page.locator(".thumb.document", has_text=label).click()
    page.locator(".document-view .doc-title", has_text=label.split(": ", 1)[1]).wait_for()
    return _document(page)


def test_reports_and_pdf_in_the_reading_screen(
    documents_server: RunningServer, browser: Any, tmp_path: Path
) -> None:
    srv = documents_server
    errors: list[str] = []
    page = new_page(browser, srv, errors)
    sign_in(page, "rad")
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    page.goto(f"{srv.base_url}/viewer/#/study/{STUDY}?prior=")
    page.wait_for_selector(".pane[data-pane='Current'] .overlay .bl:has-text('Im 1/1')")
    # The first-image preview is the CT's slice, not the PDF listed before it (nothing to draw).
    rendered = [u for u in asked if "/rendered" in u and "/frames/" in u]
    assert rendered and all(f"/instances/{CT_SOP}/frames/1/rendered" in u for u in rendered)

    # The strip: the images first (the study opens on them), then one entry per document;
    # the presentation state has none.
    strip = page.locator(".thumbnails[data-pane='Current'] .thumb")
    eventually(lambda: strip.count() == 5, what="five entries in the strip")
    assert "document" not in (strip.first.get_attribute("class") or "")
    page.wait_for_selector(".thumb.document:has-text('PDF: Outside report (scanned)')")
    labels = page.locator(".thumb.document .doc-label").all_inner_texts()
    assert sorted(labels) == sorted(
        [
            "PDF: Outside report (scanned)",
            "SR: Diagnosis",
            "SR: Imaging Measurement Report",
            f"SR: {HOSTILE}",
        ]
    ), labels
    shot(page, tmp_path, "documents-01-strip")

    # The PDF: shown from a blob URL holding exactly the encapsulated document.
    page.locator(".thumb.document:has-text('PDF:')").click()
    frame = page.locator(".document-view iframe.pdf")
    frame.wait_for()
    src = frame.get_attribute("src") or ""
    assert src.startswith("blob:"), src
    fetched = page.evaluate(
        """async (url) => { const b = await (await fetch(url)).blob();
        const bytes = new Uint8Array(await b.arrayBuffer()); let s = '';
        for (const c of bytes) s += String.fromCharCode(c);
        return { type: b.type, data: btoa(s) }; }""",
        src,
    )
    original = pydicom.dcmread(require_corpus() / PDF_FILE).EncapsulatedDocument
    assert fetched["type"] == "application/pdf"
    assert base64.b64decode(fetched["data"]) in (original, original.rstrip(b"\0"))
    shot(page, tmp_path, "documents-02-pdf")

    # A structured report as a document: title, flags, observer and the content tree.
    text = _open(page, "SR: Diagnosis")
    for expected in (
        "Completion\nCOMPLETE",
        "Verification\nVERIFIED",
        "RIESMEIER, Jörg, OFFIS e.V. on 13-Feb-2001 18:47",  # name and organisation
        "Diameter: 3 cm",
        "A mass of",
        "Inferred Sample Text",
        "Some UID: 1.2.3.4.5",
    ):
        assert expected in text, (expected, text)
    assert page.locator(".document-view .sr-ref.missing").count() > 0  # images not in the study
    shot(page, tmp_path, "documents-03-sr")

    text = _open(page, "SR: Imaging Measurement Report")
    for expected in (
        "Completion\nPARTIAL",
        "Person Observer Name: USER2",
        "Procedure reported: PET whole body",
        "Radiopharmaceutical agent: Fluorodeoxyglucose F^18^",
        "Image Library",
    ):
        assert expected in text, (expected, text)
    assert page.locator(".document-view h3:has-text('Image Library')").count() == 1

    # Markup in DICOM values is text: shown as typed, nothing runs, no element is made of it.
    text = _open(page, f"SR: {HOSTILE}")
    assert (
        f"Finding: {HOSTILE}" in text and "Length: 12.5 mm" in text and "Impression: Normal" in text
    )
    assert page.locator(".document-view .doc-title").inner_text() == HOSTILE
    assert page.locator(".document-view script, .document-view img").count() == 0
    assert page.evaluate("window.__pwned") is None
    # Its image reference is in the study: the link opens that image in the pane.
    page.locator(".document-view button.sr-ref").click()
    page.wait_for_selector(".pane[data-pane='Current'] .document-view", state="detached")
    image = page.locator(".pane[data-pane='Current'] .overlay").get_attribute("data-image-id")
    assert image and CT_SOP in image
    assert not errors, errors
