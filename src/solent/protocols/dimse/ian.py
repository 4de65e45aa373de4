"""Instance Availability Notification SCU (PS3.4 Annex R; IHE RAD-49): one N-CREATE per study
and node, listing each instance with its availability.

pynetdicom does the association and the N-CREATE; this module only builds the data set of
PS3.3 C.4.23 from what the availability service decided the node may be told.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom.presentation import build_context

from solent.protocols.dimse.net import make_ae
from solent.protocols.dimse.scu import AssociationFailed, associate
from solent.services.availability import Notice

INSTANCE_AVAILABILITY_NOTIFICATION = "1.2.840.10008.5.1.4.33"
MODALITY_PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"


def ian_dataset(notice: Notice, retrieve_ae: str) -> Dataset:
    """The notification's attributes: the study, its series and instances, where to get them."""
    study = notice.study
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UIDs and an AE title only; declared anyway
    steps = []
    for sop_uid in study.performed_steps:  # the MPPS the modality reported (R17)
        step = Dataset()
        step.ReferencedSOPClassUID = MODALITY_PERFORMED_PROCEDURE_STEP
        step.ReferencedSOPInstanceUID = sop_uid
        step.PerformedWorkitemCodeSequence = Sequence()  # type 2
        steps.append(step)
    ds.ReferencedPerformedProcedureStepSequence = Sequence(steps)
    ds.StudyInstanceUID = study.study_uid
    by_series: dict[str, list[Dataset]] = {}
    for item in study.instances:
        ref = Dataset()
        ref.ReferencedSOPClassUID = item.sop_class_uid
        ref.ReferencedSOPInstanceUID = item.sop_instance_uid
        ref.InstanceAvailability = item.availability
        ref.RetrieveAETitle = retrieve_ae
        by_series.setdefault(item.series_uid, []).append(ref)
    series = []
    for series_uid, refs in by_series.items():
        s = Dataset()
        s.SeriesInstanceUID = series_uid
        s.ReferencedSOPSequence = Sequence(refs)
        series.append(s)
    ds.ReferencedSeriesSequence = Sequence(series)
    return ds


def send_notification(ae_title: str, notice: Notice, *, timeout: float = 30.0) -> int:
    """Send one notification; the N-CREATE status (0: success). AssociationFailed when the node
    cannot be reached or does not accept the SOP class; OSError on the network."""
    ae = make_ae(ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    context = build_context(INSTANCE_AVAILABILITY_NOTIFICATION)
    assoc = associate(ae, notice.node, [context])
    try:
        if not any(
            c.abstract_syntax == INSTANCE_AVAILABILITY_NOTIFICATION for c in assoc.accepted_contexts
        ):
            raise AssociationFailed(
                f"{notice.node.ae_title} does not accept Instance Availability Notification"
            )
        status, _ = assoc.send_n_create(
            ian_dataset(notice, ae_title), INSTANCE_AVAILABILITY_NOTIFICATION, generate_uid()
        )
        if "Status" not in status:
            raise AssociationFailed(f"{notice.node.ae_title} did not answer the N-CREATE")
        return int(status.Status)
    finally:
        if assoc.is_established:
            assoc.release()
