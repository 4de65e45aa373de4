"""DICOM JSON (metadata, QIDO-RS) gets the same patch, worked out once per patient module.

``OutgoingIdentity.patch_json`` caches the patch by the object's patient elements; the result
must be exactly what ``apply_identity_json`` gives on the object itself (same keys, values and
key order, so the serialised bytes match), for every instance of a series.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pydicom
import pytest

from solent.dicom.identity_patch import apply_identity_json
from solent.services.outgoing_identity import FixedIdentity
from tests.unit.test_header_splice import FILES, STAMP, STUDY, corpus, nhs_item

RECORD: dict[str, Any] = {
    "PatientID": "B7654321",
    "IssuerOfPatientID": "ZZB",
    "PatientName": "CARTER^JAMES^PAUL",
    "PatientBirthDate": "19620417",
    "PatientSex": "M",
    "OtherPatientIDsSequence": [nhs_item("9990000026")],
    "PatientAddress": None,
}


def document(name: str) -> dict[str, Any]:
    ds = pydicom.dcmread(corpus(name), stop_before_pixels=True, force=True)
    ds.PatientAddress = "1 HIGH STREET"
    doc: dict[str, Any] = ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=str)
    return doc


@pytest.mark.parametrize("name", FILES[:8])
def test_cached_json_patch_equals_the_direct_patch(name: str) -> None:
    doc = document(name)
    expected = copy.deepcopy(doc)
    assert apply_identity_json(expected, RECORD, modified_at=STAMP)
    identity = FixedIdentity(RECORD, STAMP)
    for n in range(3):  # the first works the plan out, the others reuse it
        got = copy.deepcopy(doc)
        assert identity.patch_json(STUDY, got)
        assert json.dumps(got) == json.dumps(expected), n
    assert len(identity._json_plans) == 1
    got["00100010"]["Value"][0]["Alphabetic"] = "CHANGED"  # a copy, not the shared plan
    again = copy.deepcopy(doc)
    identity.patch_json(STUDY, again)
    assert json.dumps(again) == json.dumps(expected)


def test_json_already_current_is_left_alone() -> None:
    doc = document(FILES[0])
    identity = FixedIdentity(RECORD, STAMP)
    identity.patch_json(STUDY, doc)
    before = json.dumps(doc)
    assert not FixedIdentity(RECORD, STAMP).patch_json(STUDY, doc)
    assert json.dumps(doc) == before
