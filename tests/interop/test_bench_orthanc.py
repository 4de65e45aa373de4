"""The benchmark's Orthanc is a real, working peer: the comparison is only fair if it is.

Starts Orthanc the way `python -m bench compare` does (SQLite, DICOMweb plugin, free ports,
TCP_NODELAY), stores the bench's small studies over REST and reads them back through the same
QIDO-RS and C-FIND clients the benchmark times.
"""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
from bench import compare_phases as ph
from bench import population
from bench.orthanc import ORTHANC_AET, OrthancServer

from tests.conftest import require, require_tool

pytestmark = pytest.mark.interop


def _rows() -> list[population.StudyRow]:
    base = population.StudyRow(
        study_uid="2.25.4242.1",
        study_date="20240110",
        study_time="090000",
        accession="ZZA240000001",
        description="CT synthetic study",
        modality="CT",
        issuer="ZZA",
        local_id="ZZA00000042",
        name="JONES^MIA",
        birth_date="19800202",
        sex="F",
        nhs_number="9990000018",
    )
    return [
        base,
        replace(base, study_uid="2.25.4242.2", study_date="20240301", accession="ZZA240000002"),
        replace(
            base,
            study_uid="2.25.4242.3",
            modality="MR",
            local_id="ZZB00000043",
            issuer="ZZB",
            accession="ZZB240000003",
        ),
        replace(
            base,
            study_uid="2.25.4242.4",
            study_date="20250101",
            local_id="ZZC00000044",
            issuer="ZZC",
            accession="ZZC250000004",
        ),
    ]


def test_bench_orthanc_stores_and_answers_qido_and_c_find() -> None:
    require_tool("Orthanc")
    require_tool("findscu")
    require(shutil.which("dpkg") is not None, "dpkg (to find the DICOMweb plugin)")
    with OrthancServer() as orthanc:
        first_pid = orthanc.pid
        with orthanc.bulk_load():  # restarted without fsync for the fill, durable after it
            assert population.upload_orthanc(orthanc.base_url, _rows(), threads=2) == 4
        assert orthanc.pid != first_pid and orthanc.config()["SyncStorageArea"] is True
        assert orthanc.statistics()["CountStudies"] == 4
        target = ph.Target(
            "Orthanc", orthanc.dicomweb_url, ORTHANC_AET, orthanc.dicom_port, {orthanc.pid}
        )
        http = ph.Http(target)
        try:
            _, by_patient = ph.qido(http, {"PatientID": "ZZA00000042", "IssuerOfPatientID": "ZZA"})
            _, by_range = ph.qido(
                http, {"StudyDate": "20240101-20240331", "ModalitiesInStudy": "CT"}
            )
        finally:
            http.close()
        assert (by_patient, by_range) == (2, 2)
        seconds, matches = ph.cfind(
            target,
            {"StudyDate": "20240101-20240331", "ModalitiesInStudy": "CT", "StudyInstanceUID": ""},
            floor=ph.echo_seconds(target),
        )
        assert matches == 2 and seconds >= 0
