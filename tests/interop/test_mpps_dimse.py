"""Modality Performed Procedure Step (R17, PS3.4 Annex F) against a running `solent serve`: a
modality (pynetdicom as the SCU, as many modality toolkits are) reports a step IN PROGRESS for
a worklist order, then COMPLETED. The order leaves the worklist when started; the steps are
listed by `solent worklist steps`; PS3.4's refusals come back as their statuses (duplicate,
unknown instance, a finished step updated again); a node that may only query cannot use MPPS,
and another trust's modality cannot update the step."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
)

from solent.app import build_archive
from solent.domain.principal import SYSTEM
from solent.settings import load_settings
from tests.conftest import RunningServer, start_server
from tests.contract.synthetic import write_instance

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data = tmp_path_factory.mktemp("mpps") / "srv"
    archive = build_archive(load_settings(environ={}, data_dir=data))
    try:
        for code in ("ZZA", "ZZB"):
            archive.index.add_trust(code, f"Trust {code}")
        for aet, trust, allow in (
            ("CT_ZZA", "ZZA", ["store", "query"]),
            ("CT_ZZB", "ZZB", ["store", "query"]),
            ("VIEW_ZZA", "ZZA", ["query"]),
        ):
            archive.index.add_node(aet, "127.0.0.1", 104, trust, allow)
        archive.services.inbox.add_order(
            SYSTEM,
            {
                "accession_number": "ACC4001",
                "accession_issuer": "ZZA",
                "patient_issuer": "ZZA",
                "patient_id": "M4001",
                "patient_name": "MPPS^MOLLY",
                "study_instance_uid": "1.2.826.0.1.3680043.8.498.4001",
                "modality": "CT",
                "scheduled_start_date": date.today().strftime("%Y%m%d"),
                "scheduled_procedure_step_id": "ACC4001",
            },
        )
    finally:
        archive.close()
    srv = start_server(data)
    try:
        yield srv
    finally:
        srv.stop()


def _associate(srv: RunningServer, aet: str, *contexts: str) -> object:
    ae = AE(ae_title=aet)
    for context in contexts:
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", srv.ports["dicom"], ae_title="SOLENT")
    assert assoc.is_established
    return assoc


def _worklist(srv: RunningServer) -> list[str]:
    assoc = _associate(srv, "CT_ZZA", ModalityWorklistInformationFind)
    query = Dataset()
    query.AccessionNumber = ""
    query.PatientID = ""
    step = Dataset()
    step.Modality = "CT"
    query.ScheduledProcedureStepSequence = [step]
    found = [
        str(ds.AccessionNumber)
        for status, ds in assoc.send_c_find(query, ModalityWorklistInformationFind)  # type: ignore[attr-defined]
        if status and status.Status in (0xFF00, 0xFF01) and ds is not None
    ]
    assoc.release()  # type: ignore[attr-defined]
    return found


def _in_progress() -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.PatientID = "MPPS^MOLLY", "M4001"
    item = Dataset()
    item.AccessionNumber = "ACC4001"
    item.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.4001"
    item.ScheduledProcedureStepID = "ACC4001"
    ds.ScheduledStepAttributesSequence = [item]
    ds.PerformedProcedureStepID = "PPS4001"
    ds.PerformedStationAETitle = "CT_ZZA"
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = "20251205", "101500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.Modality = "CT"
    ds.PerformedSeriesSequence = []
    return ds


def test_a_step_starts_and_completes_and_the_order_follows(
    pacs: RunningServer, tmp_path: Path
) -> None:
    assert "ACC4001" in _worklist(pacs)
    uid = generate_uid()
    assoc = _associate(pacs, "CT_ZZA", ModalityPerformedProcedureStep)
    status, _ = assoc.send_n_create(_in_progress(), ModalityPerformedProcedureStep, uid)  # type: ignore[attr-defined]
    assert status.Status == 0x0000
    again, _ = assoc.send_n_create(_in_progress(), ModalityPerformedProcedureStep, uid)  # type: ignore[attr-defined]
    assert again.Status == 0x0111  # duplicate SOP instance
    assert "ACC4001" not in _worklist(pacs)  # started: off the worklist

    # Of the two images the step performed, the modality manages to send one.
    series_uid, sent, lost = generate_uid(), generate_uid(), generate_uid()
    image = write_instance(
        tmp_path / "sent.dcm",
        patient_id="M4001",
        patient_name="MPPS^MOLLY",
        study_uid="1.2.826.0.1.3680043.8.498.4001",
        series_uid=series_uid,
        sop_instance_uid=sent,
    )
    storing = _associate(pacs, "CT_ZZA", CTImageStorage)
    assert storing.send_c_store(dcmread(image.path)).Status == 0x0000  # type: ignore[attr-defined]
    storing.release()  # type: ignore[attr-defined]

    done = Dataset()
    done.PerformedProcedureStepStatus = "COMPLETED"
    done.PerformedProcedureStepEndDate, done.PerformedProcedureStepEndTime = "20251205", "103000"
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.ReferencedImageSequence = []
    for uid_ in (sent, lost):
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CTImageStorage, uid_
        series.ReferencedImageSequence.append(ref)
    done.PerformedSeriesSequence = [series]
    status, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, uid)  # type: ignore[attr-defined]
    assert status.Status == 0x0000
    late, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, uid)  # type: ignore[attr-defined]
    assert late.Status == 0x0110 and "no longer" in str(late.get("ErrorComment", ""))
    unknown, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, generate_uid())  # type: ignore[attr-defined]
    assert unknown.Status == 0x0112
    assoc.release()  # type: ignore[attr-defined]

    listed = json.loads(pacs.cli("worklist", "steps", "--json").stdout)
    [step] = [s for s in listed if s["sop_instance_uid"] == uid]
    assert (step["status"], step["trust_code"], step["calling_ae"]) == (
        "COMPLETED",
        "ZZA",
        "CT_ZZA",
    )
    assert step["accession_number"] == "ACC4001" and step["patient_id"] == "M4001"
    # Completeness: the step listed two images, the archive holds one.
    assert (step["performed_instances"], step["received_instances"]) == (2, 1)
    assert step["missing"] == [lost]
    shown = pacs.cli("worklist", "steps").stdout
    assert f"{uid}  received 1 of 2" in shown


def test_other_trusts_and_query_only_nodes_cannot_touch_a_step(pacs: RunningServer) -> None:
    uid = generate_uid()
    mine = _associate(pacs, "CT_ZZA", ModalityPerformedProcedureStep)
    status, _ = mine.send_n_create(_in_progress(), ModalityPerformedProcedureStep, uid)  # type: ignore[attr-defined]
    assert status.Status == 0x0000
    mine.release()  # type: ignore[attr-defined]

    theirs = _associate(pacs, "CT_ZZB", ModalityPerformedProcedureStep)
    change = Dataset()
    change.PerformedProcedureStepStatus = "DISCONTINUED"
    status, _ = theirs.send_n_set(change, ModalityPerformedProcedureStep, uid)  # type: ignore[attr-defined]
    assert status.Status == 0x0112  # another trust's step does not exist for it
    theirs.release()  # type: ignore[attr-defined]

    ae = AE(ae_title="VIEW_ZZA")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    ae.add_requested_context(ModalityWorklistInformationFind)
    viewer = ae.associate("127.0.0.1", pacs.ports["dicom"], ae_title="SOLENT")
    if viewer.is_established:
        accepted = {str(c.abstract_syntax) for c in viewer.accepted_contexts}
        viewer.release()
        assert ModalityPerformedProcedureStep not in accepted
