"""The pure rules behind the DIMSE adapter: peer addresses, commitment reports, worklist
matching, retrieve identifiers."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
from solent.protocols.dimse.access import Peer, host_matches
from solent.protocols.dimse.commitment import commitment_report
from solent.protocols.dimse.retrieve_scp import RetrieveRefused, retrieve_keys
from solent.protocols.dimse.status import status
from solent.protocols.dimse.worklist_scp import _matches


def test_host_matching_by_ip_name_and_mapped_ipv6() -> None:
    assert host_matches("127.0.0.1", "127.0.0.1")
    assert host_matches("localhost", "127.0.0.1")
    assert host_matches("127.0.0.1", "::ffff:127.0.0.1")
    assert not host_matches("10.1.2.3", "127.0.0.1")
    assert not host_matches("no-such-host.invalid", "127.0.0.1")
    assert host_matches("*", "192.0.2.7")


def test_commitment_report_splits_committed_from_missing_and_wrong_class() -> None:
    req = Dataset()
    req.TransactionUID = "1.2.3"
    items = []
    for cls, uid in (
        ("1.2.840.10008.5.1.4.1.1.2", "1.1"),
        ("1.2.840.10008.5.1.4.1.1.2", "1.2"),
        ("1.2.840.10008.5.1.4.1.1.4", "1.3"),
    ):
        item = Dataset()
        item.ReferencedSOPClassUID = cls
        item.ReferencedSOPInstanceUID = uid
        items.append(item)
    req.ReferencedSOPSequence = Sequence(items)
    stored = {"1.1": "1.2.840.10008.5.1.4.1.1.2", "1.3": "1.2.840.10008.5.1.4.1.1.2"}
    event_type, report = commitment_report(req, stored)
    assert event_type == 2
    assert [i.ReferencedSOPInstanceUID for i in report.ReferencedSOPSequence] == ["1.1"]
    assert {(i.ReferencedSOPInstanceUID, i.FailureReason) for i in report.FailedSOPSequence} == {
        ("1.2", 0x0112),
        ("1.3", 0x0119),
    }
    event_type, report = commitment_report(
        req, {**stored, "1.2": "1.2.840.10008.5.1.4.1.1.2", "1.3": "1.2.840.10008.5.1.4.1.1.4"}
    )
    assert event_type == 1 and "FailedSOPSequence" not in report


@pytest.mark.parametrize(
    ("column", "pattern", "value", "expected"),
    [
        ("patient_name", "smith*", "SMITH^JOHN", True),
        ("patient_name", "sm?th^john", "SMITH^JOHN", True),
        ("patient_name", "jones*", "SMITH^JOHN", False),
        ("modality", "CT\\MR", "MR", True),
        ("modality", "CT", "MR", False),
        ("scheduled_start_date", "20300101-20300131", "20300102", True),
        ("scheduled_start_date", "20300103-", "20300102", False),
        ("scheduled_start_date", "-20300102", "20300102", True),
        ("accession_number", "A%", "A1", False),
    ],
)
def test_worklist_matching_rules(column: str, pattern: str, value: str, expected: bool) -> None:
    assert _matches(column, pattern, value) is expected


def _peer(trust: str = "ZZA") -> Peer:
    return Peer(
        Principal(PrincipalKind.NODE, "PEER", trust),
        Provenance(Channel.DIMSE, calling_ae="PEER"),
        None,
    )


def test_retrieve_keys_need_the_unique_key_of_their_level() -> None:
    ident = Dataset()
    ident.QueryRetrieveLevel = "SERIES"
    ident.StudyInstanceUID = "1.2"
    ident.SeriesInstanceUID = "1.2.3\\1.2.4"
    keys = retrieve_keys(ident, "1.2.840.10008.5.1.4.1.2.2.2", _peer())
    assert keys.series_uids == ("1.2.3", "1.2.4") and keys.study_uids == ("1.2",)
    ident.SeriesInstanceUID = ""
    with pytest.raises(RetrieveRefused):
        retrieve_keys(ident, "1.2.840.10008.5.1.4.1.2.2.2", _peer())
    patient = Dataset()
    patient.QueryRetrieveLevel = "PATIENT"
    patient.PatientID = "123"
    with pytest.raises(RetrieveRefused):  # Study Root has no PATIENT level
        retrieve_keys(patient, "1.2.840.10008.5.1.4.1.2.2.2", _peer())
    keys = retrieve_keys(patient, "1.2.840.10008.5.1.4.1.2.1.2", _peer("ZZB"))
    assert (keys.patient_id, keys.patient_issuer) == ("123", "ZZB")  # scoped to the caller (R24)


def test_error_comment_fits_its_vr() -> None:
    ds = status(0xC000, "x" * 200 + "\\y")
    assert ds.Status == 0xC000 and len(ds.ErrorComment) == 64 and "\\" not in ds.ErrorComment
