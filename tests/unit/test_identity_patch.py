"""Outgoing DICOM carries the current identity; the received values stay in Original
Attributes Sequence."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

from solent.dicom.identity_patch import apply_identity, apply_identity_json

ATTRS: dict[str, Any] = {
    "PatientID": "B7654321",
    "IssuerOfPatientID": "ZZB",
    "PatientName": "CARTER^JAMES^PAUL",
    "PatientBirthDate": "19620417",
    "PatientSex": "M",
    "OtherPatientIDsSequence": [
        {"PatientID": "9990000026", "IssuerOfPatientID": "NHS", "TypeOfPatientID": "TEXT"}
    ],
}


def received() -> Dataset:
    ds = Dataset()
    ds.PatientID = "BTMP000812"
    ds.IssuerOfPatientID = "ZZB"
    ds.PatientName = "UNKNOWN^MALE"
    ds.PatientBirthDate = "19650101"
    ds.PatientSex = "M"
    return ds


def test_apply_identity_replaces_and_keeps_originals() -> None:
    ds = received()
    assert apply_identity(ds, ATTRS)
    assert (ds.PatientID, str(ds.PatientName), ds.PatientBirthDate) == (
        "B7654321",
        "CARTER^JAMES^PAUL",
        "19620417",
    )
    assert ds.OtherPatientIDsSequence[0].PatientID == "9990000026"
    (item,) = ds.OriginalAttributesSequence
    original = item.ModifiedAttributesSequence[0]
    assert original.PatientID == "BTMP000812"
    assert str(original.PatientName) == "UNKNOWN^MALE"
    assert "IssuerOfPatientID" not in original  # unchanged values are not recorded
    assert item.ReasonForTheAttributeModification == "CORRECT"


def test_apply_identity_is_a_no_op_when_current() -> None:
    ds = received()
    apply_identity(ds, ATTRS)
    assert not apply_identity(ds, ATTRS)
    assert len(ds.OriginalAttributesSequence) == 1


def test_none_removes_contact_details() -> None:
    ds = received()
    ds.PatientAddress = "1 SECRET ROAD"
    assert apply_identity(ds, {"PatientAddress": None})
    assert "PatientAddress" not in ds


def test_apply_identity_json() -> None:
    obj: dict[str, Any] = {
        "00100020": {"vr": "LO", "Value": ["BTMP000812"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "UNKNOWN^MALE"}]},
    }
    assert apply_identity_json(obj, ATTRS)
    assert obj["00100020"]["Value"] == ["B7654321"]
    assert obj["00100010"]["Value"] == [{"Alphabetic": "CARTER^JAMES^PAUL"}]
    assert obj["00101002"]["Value"][0]["00100020"]["Value"] == ["9990000026"]
    original = obj["04000561"]["Value"][0]["04000550"]["Value"][0]
    assert original["00100020"]["Value"] == ["BTMP000812"]
    assert not apply_identity_json(obj, ATTRS)


def _as_received_with_nhs(number: str) -> Dataset:
    ds = received()
    ds.PatientID, ds.PatientName, ds.PatientBirthDate = "B7654321", "CARTER^JAMES^PAUL", "19620417"
    item = Dataset()
    item.PatientID = number
    item.IssuerOfPatientID = "NHS"  # no TypeOfPatientID, no qualifiers: what modalities send
    ds.OtherPatientIDsSequence = [item]
    return ds


def test_an_nhs_number_already_listed_is_not_a_change() -> None:
    """Same identifiers, fewer descriptive attributes: the instance already says what the
    record says and goes out untouched, in Part 10 and in DICOM JSON alike."""
    ds = _as_received_with_nhs("9990000026")
    assert not apply_identity(ds, ATTRS)
    assert "OriginalAttributesSequence" not in ds
    obj = _as_received_with_nhs("9990000026").to_json_dict()
    assert not apply_identity_json(obj, ATTRS)


def test_a_different_nhs_number_is_replaced_and_kept_as_original() -> None:
    ds = _as_received_with_nhs("9990000018")
    assert apply_identity(ds, ATTRS)
    assert ds.OtherPatientIDsSequence[0].PatientID == "9990000026"
    original = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
    assert original.OtherPatientIDsSequence[0].PatientID == "9990000018"
    obj = _as_received_with_nhs("9990000018").to_json_dict()
    assert apply_identity_json(obj, ATTRS)
    assert obj["00101002"]["Value"][0]["00100020"]["Value"] == ["9990000026"]
