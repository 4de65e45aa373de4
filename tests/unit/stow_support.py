"""Small DICOM instances and STOW-RS request bodies for the access tests (no corpus needed)."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from solent.dicom.rejection_note import KEY_OBJECT_SELECTION

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
BOUNDARY = "b0undary-solent"


def ct_instance(
    patient_id: str,
    issuer: str,
    study: str,
    *,
    series: str | None = None,
    sop: str | None = None,
    name: str = "DEMO^DORA",
    nhs: str | None = None,
) -> bytes:
    """An 8x8 CT image (Part 10 bytes) naming ``patient_id`` of ``issuer`` in ``study``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CT_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop or generate_uid()
    ds.PatientID, ds.IssuerOfPatientID = patient_id, issuer
    ds.PatientName, ds.PatientBirthDate, ds.PatientSex = name, "19800101", "F"
    if nhs:
        item = Dataset()
        item.PatientID, item.IssuerOfPatientID = nhs, "NHS"
        ds.OtherPatientIDsSequence = [item]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series or generate_uid()
    ds.Modality, ds.StudyDate = "CT", "20250314"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.zeros((8, 8), np.uint16).tobytes()
    fp = DicomBytesIO()
    dcmwrite(fp, ds, enforce_file_format=True)
    return fp.getvalue()


def stow_body(*parts: bytes) -> tuple[bytes, dict[str, str]]:
    """A multipart/related body of application/dicom parts, and its Content-Type header."""
    body = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
        for p in parts
    )
    body += f"--{BOUNDARY}--\r\n".encode()
    return body, {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    }


def rejection_note(
    patient: str,
    issuer: str,
    study: str,
    refs: dict[str, list[str]],
    code: str = "113038",
    meaning: str = "Incorrect Modality Worklist Entry",
) -> tuple[bytes, str]:
    """A Key Object Selection Document titled ``code`` (DCM) listing ``refs`` (series -> SOPs);
    with another title (113005 "For Conference") it is a key image note."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = KEY_OBJECT_SELECTION
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID, ds.IssuerOfPatientID = patient, issuer
    ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "DEMO^DORA", "19800101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.Modality, ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "KO", "20250314", 99, 1
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator = code, "DCM"
    title.CodeMeaning = meaning
    ds.ConceptNameCodeSequence = [title]
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    evidence = Dataset()
    evidence.StudyInstanceUID = study
    evidence.ReferencedSeriesSequence = []
    for series_uid, sops in refs.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedSOPSequence = []
        for sop in sops:
            ref = Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CT_STORAGE, sop
            item.ReferencedSOPSequence.append(ref)
        evidence.ReferencedSeriesSequence.append(item)
    ds.CurrentRequestedProcedureEvidenceSequence = [evidence]
    fp = DicomBytesIO()
    dcmwrite(fp, ds, enforce_file_format=True)
    return fp.getvalue(), str(ds.SOPInstanceUID)


GSPS_STORAGE = "1.2.840.10008.5.1.4.1.1.11.1"


def presentation_state(
    patient: str, issuer: str, study: str, refs: dict[str, list[str]], label: str = "MDT"
) -> tuple[bytes, str]:
    """A Grayscale Softcopy Presentation State in ``study`` applying to ``refs`` (series ->
    SOPs), with Content Label ``label``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = GSPS_STORAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID, ds.IssuerOfPatientID = patient, issuer
    ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "DEMO^DORA", "19800101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.Modality, ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "PR", "20250314", 98, 1
    ds.ContentLabel, ds.PresentationCreationDate = label, "20250314"
    ds.ReferencedSeriesSequence = []
    for series_uid, sops in refs.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedImageSequence = []
        for sop in sops:
            ref = Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CT_STORAGE, sop
            item.ReferencedImageSequence.append(ref)
        ds.ReferencedSeriesSequence.append(item)
    fp = DicomBytesIO()
    dcmwrite(fp, ds, enforce_file_format=True)
    return fp.getvalue(), str(ds.SOPInstanceUID)


ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def _part10(ds: Dataset) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    fp = DicomBytesIO()
    dcmwrite(fp, ds, enforce_file_format=True)
    return fp.getvalue()


def _document_header(ds: Dataset, sop_class: str, patient_id: str, issuer: str, study: str) -> None:
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.PatientID, ds.IssuerOfPatientID = patient_id, issuer
    ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "DEMO^DORA", "19800101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20250314", 90, 1


def encapsulated_pdf(
    patient_id: str, issuer: str, study: str, document: bytes, *, title: str = "Request form"
) -> bytes:
    """An Encapsulated PDF instance (modality DOC) carrying ``document`` (odd lengths are
    padded to even by DICOM; Encapsulated Document Length gives the real one)."""
    ds = Dataset()
    _document_header(ds, ENCAPSULATED_PDF, patient_id, issuer, study)
    ds.Modality, ds.DocumentTitle, ds.BurnedInAnnotation = "DOC", title, "YES"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(document)
    ds.EncapsulatedDocument = document + (b"\0" if len(document) % 2 else b"")
    return _part10(ds)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def structured_report(
    patient_id: str, issuer: str, study: str, *, title: str, finding: str, image: str | None = None
) -> bytes:
    """A Comprehensive SR: a titled CONTAINER holding a TEXT finding, a NUM in mm, a CODE and,
    with ``image`` (a CT SOP Instance UID), an IMAGE reference."""
    ds = Dataset()
    _document_header(ds, COMPREHENSIVE_SR, patient_id, issuer, study)
    ds.Modality, ds.ValueType = "SR", "CONTAINER"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", title)]
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    text = Dataset()
    text.RelationshipType, text.ValueType, text.TextValue = "CONTAINS", "TEXT", finding
    text.ConceptNameCodeSequence = [_code("121071", "DCM", "Finding")]
    num = Dataset()
    num.RelationshipType, num.ValueType = "CONTAINS", "NUM"
    num.ConceptNameCodeSequence = [_code("410668003", "SCT", "Length")]
    measured = Dataset()
    measured.NumericValue = "12.5"
    measured.MeasurementUnitsCodeSequence = [_code("mm", "UCUM", "millimeter")]
    num.MeasuredValueSequence = [measured]
    code = Dataset()
    code.RelationshipType, code.ValueType = "CONTAINS", "CODE"
    code.ConceptNameCodeSequence = [_code("121072", "DCM", "Impression")]
    code.ConceptCodeSequence = [_code("17621005", "SCT", "Normal")]
    items = [text, num, code]
    if image:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CT_STORAGE, image
        img = Dataset()
        img.RelationshipType, img.ValueType = "CONTAINS", "IMAGE"
        img.ConceptNameCodeSequence = [_code("121112", "DCM", "Source of Measurement")]
        img.ReferencedSOPSequence = [ref]
        items.append(img)
    ds.ContentSequence = items
    return _part10(ds)
