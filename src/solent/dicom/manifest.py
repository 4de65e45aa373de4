"""A study's imaging manifest as a DICOM Key Object Selection Document (IHE XDS-I.b, MHD).

A consumer outside the viewer (a tertiary centre, a regional registry, an MHD Document
Consumer) learns from it which instances the study holds today and where to fetch them:
Current Requested Procedure Evidence Sequence per series with Retrieve AE Title, Retrieve URL
(WADO-RS) and Retrieve Location UID, and TID 2010's content tree of references.

Its SOP Instance UID is derived from the study and the instances it lists, so the manifest
keeps its UID while the study is unchanged and gets a new one ("republished", R25) when an
instance arrives or is withdrawn by IOCM (withdrawn instances are not listed). pydicom writes
it; there is no maintained library for XDS-I manifests.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from solent import __version__
from solent.domain.nhs_number import NHS_ISSUER
from solent.domain.records import StoredInstance

KOS_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.88.59")


@dataclass(frozen=True)
class ManifestSubject:
    """The patient as the manifest's reader knows them (their trust's record where linked)."""

    patient_id: str
    issuer: str
    name: str
    birth_date: str
    sex: str
    nhs_number: str | None = None
    #: The study's own record when the reader's trust shows it under another.
    own: tuple[str, str] | None = None


def manifest_uid(study_uid: str, instances: Sequence[StoredInstance]) -> str:
    """Stable while the study's instance set is, new as soon as it changes."""
    listed = sorted(i.sop_instance_uid for i in instances)
    return str(generate_uid(entropy_srcs=["solent manifest", study_uid, *listed]))


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def kos_manifest(
    study: Mapping[str, str | None],
    subject: ManifestSubject,
    instances: Sequence[StoredInstance],
    *,
    retrieve_ae: str,
    wado_base: str,
    now: datetime | None = None,
) -> bytes:
    """The Part 10 file. ``study``: study_uid, study_date, study_time, accession_number,
    accession_issuer, study_description, trust_code; ``wado_base``: the DICOMweb root whose
    ``/studies/{uid}/series/{uid}`` is each series' Retrieve URL."""
    when = now or datetime.now()
    study_uid = str(study["study_uid"])
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = KOS_SOP_CLASS
    ds.SOPInstanceUID = manifest_uid(study_uid, instances)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["solent manifest series", study_uid])
    ds.Modality = "KO"
    ds.SeriesNumber = 9999
    ds.InstanceNumber = 1
    ds.StudyDate = study.get("study_date") or ""
    ds.StudyTime = study.get("study_time") or ""
    ds.StudyID = ""
    ds.ReferringPhysicianName = ""
    ds.AccessionNumber = study.get("accession_number") or ""
    if issuer := study.get("accession_issuer") or study.get("trust_code"):
        entity = Dataset()
        entity.LocalNamespaceEntityID = issuer
        ds.IssuerOfAccessionNumberSequence = [entity]
    ds.PatientName = subject.name
    ds.PatientID = subject.patient_id
    ds.IssuerOfPatientID = subject.issuer
    ds.PatientBirthDate = subject.birth_date
    ds.PatientSex = subject.sex
    others = []
    for value, issuer in ((subject.own or (None, None)), (subject.nhs_number, NHS_ISSUER)):
        if value and issuer:
            other = Dataset()
            other.PatientID, other.IssuerOfPatientID, other.TypeOfPatientID = value, issuer, "TEXT"
            others.append(other)
    if others:
        ds.OtherPatientIDsSequence = others
    ds.Manufacturer = "Solent PACS"
    ds.SoftwareVersions = __version__
    ds.ContentDate = ds.InstanceCreationDate = when.strftime("%Y%m%d")
    ds.ContentTime = ds.InstanceCreationTime = when.strftime("%H%M%S")
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code("113030", "DCM", "Manifest")]
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource, template.TemplateIdentifier = "DCMR", "2010"
    ds.ContentTemplateSequence = [template]
    ds.CurrentRequestedProcedureEvidenceSequence = [
        _evidence(study_uid, instances, retrieve_ae, wado_base)
    ]
    ds.ContentSequence = [_reference(i) for i in instances]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = KOS_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def _evidence(
    study_uid: str, instances: Sequence[StoredInstance], retrieve_ae: str, wado_base: str
) -> Dataset:
    by_series: dict[str, list[StoredInstance]] = {}
    for inst in instances:
        by_series.setdefault(inst.series_uid, []).append(inst)
    location = generate_uid(entropy_srcs=["solent retrieve location", retrieve_ae, wado_base])
    series_items = []
    for series_uid, members in by_series.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.RetrieveAETitle = retrieve_ae
        item.RetrieveURL = f"{wado_base}/studies/{study_uid}/series/{series_uid}"
        item.RetrieveLocationUID = location
        refs = []
        for inst in members:
            ref = Dataset()
            ref.ReferencedSOPClassUID = inst.sop_class_uid
            ref.ReferencedSOPInstanceUID = inst.sop_instance_uid
            refs.append(ref)
        item.ReferencedSOPSequence = refs
        series_items.append(item)
    study = Dataset()
    study.StudyInstanceUID = study_uid
    study.ReferencedSeriesSequence = series_items
    return study


def _reference(inst: StoredInstance) -> Dataset:
    """A TID 2010 content item: IMAGE for instances with pixel data, COMPOSITE otherwise."""
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "IMAGE" if inst.rows else "COMPOSITE"
    ref = Dataset()
    ref.ReferencedSOPClassUID = inst.sop_class_uid
    ref.ReferencedSOPInstanceUID = inst.sop_instance_uid
    item.ReferencedSOPSequence = [ref]
    return item
