"""Modality Performed Procedure Step SCP (PS3.4 Annex F; IHE RAD-6/RAD-7; R17).

pynetdicom receives the N-CREATE and N-SET; this module reads what the step says and maps the
service's answers to the statuses of PS3.4 F.7.2 (a node that may store is the modality).
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from solent.errors import AlreadyExists, InvalidInput, NotFound
from solent.protocols.dimse.access import Operation, Peer
from solent.protocols.dimse.status import NOT_AUTHORIZED, PROCESSING_FAILURE, SUCCESS, status
from solent.services.access import AccessDenied
from solent.services.performed_steps import (
    InvalidInstance,
    PerformedStepService,
    StepFinal,
    StepReport,
)

log = logging.getLogger(__name__)

MODALITY_PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_OBJECT_INSTANCE = 0x0112
INVALID_ATTRIBUTE_VALUE = 0x0106
MISSING_ATTRIBUTE = 0x0120
INVALID_OBJECT_INSTANCE = 0x0117


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value or "").strip()


def report_of(ds: Dataset) -> StepReport:
    """The step as the service takes it; its attributes kept as DICOM JSON."""
    scheduled = tuple(
        (_text(item, "AccessionNumber"), _text(item, "StudyInstanceUID"))
        for item in ds.get("ScheduledStepAttributesSequence") or []
    )
    first_study = next((s for _, s in scheduled if s), "")
    first_accession = next((a for a, _ in scheduled if a), "")
    return StepReport(
        status=_text(ds, "PerformedProcedureStepStatus"),
        patient_id=_text(ds, "PatientID"),
        study_uid=first_study,
        accession_number=first_accession,
        modality=_text(ds, "Modality"),
        performed_step_id=_text(ds, "PerformedProcedureStepID"),
        description=_text(ds, "PerformedProcedureStepDescription"),
        scheduled=scheduled,
        attributes=ds.to_json_dict(),
    )


class MppsSCP:
    def __init__(self, service: PerformedStepService) -> None:
        self.service = service

    def handle_n_create(self, event: Event, peer: Peer | None) -> tuple[Any, Dataset | None]:
        if peer is None or not peer.may(Operation.STORE):
            return NOT_AUTHORIZED, None
        request: Any = event.request
        sop_uid = str(request.AffectedSOPInstanceUID or "")
        if not sop_uid:
            return status(INVALID_OBJECT_INSTANCE, "the SCU assigns the MPPS instance UID"), None
        try:
            ds = event.attribute_list
            if not _text(ds, "PerformedProcedureStepStatus"):
                return status(MISSING_ATTRIBUTE, "Performed Procedure Step Status missing"), None
            self.service.create(peer.principal, sop_uid, report_of(ds))
        except AlreadyExists as exc:
            return status(DUPLICATE_SOP_INSTANCE, str(exc)), None
        except AccessDenied:
            return NOT_AUTHORIZED, None
        except InvalidInstance as exc:
            return status(INVALID_OBJECT_INSTANCE, str(exc)), None
        except InvalidInput as exc:
            return status(INVALID_ATTRIBUTE_VALUE, str(exc)), None
        except Exception:
            log.exception("MPPS N-CREATE failed")
            return PROCESSING_FAILURE, None
        return SUCCESS, ds

    def handle_n_set(self, event: Event, peer: Peer | None) -> tuple[Any, Dataset | None]:
        if peer is None or not peer.may(Operation.STORE):
            return NOT_AUTHORIZED, None
        request: Any = event.request
        sop_uid = str(request.RequestedSOPInstanceUID or "")
        try:
            ds = event.modification_list
            self.service.update(peer.principal, sop_uid, report_of(ds))
        except NotFound as exc:
            return status(NO_SUCH_OBJECT_INSTANCE, str(exc)), None
        except StepFinal as exc:
            # PS3.4 F.7.2.2.2: "Performed Procedure Step Object may no longer be updated".
            return status(PROCESSING_FAILURE, str(exc)), None
        except AccessDenied:
            return NOT_AUTHORIZED, None
        except InvalidInput as exc:
            return status(INVALID_ATTRIBUTE_VALUE, str(exc)), None
        except Exception:
            log.exception("MPPS N-SET failed")
            return PROCESSING_FAILURE, None
        return SUCCESS, ds
