"""What DICOM says after a change: outgoing headers carry the record's current patient identity.

Stored blobs never change. Every adapter that sends DICOM (WADO-RS instances and metadata,
QIDO-RS, C-FIND, C-MOVE/C-GET) patches on the way out with one ``CurrentIdentity`` per request,
which reads ``IdentityService.current_patient_attributes`` once per study. An instance whose
header already says what the record says is left alone, so its stored bytes go out untouched.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from solent.dicom.identity_patch import apply_identity, apply_identity_json
from solent.errors import NotFound
from solent.index.sql import Index
from solent.services.identity import IdentityService

ALWAYS = "OtherPatientIDsSequence"  # an NHS number traced after the images came in


def _needed(attributes: Mapping[str, Any], present: Callable[[str], bool]) -> dict[str, Any]:
    """The attributes whose difference makes an instance worth re-encoding: those the sender
    filled in, and the NHS number. An issuer or placeholder ID the sender left out is added
    only along with a real change (queries qualify IDs by issuer anyway, R24)."""
    return {k: v for k, v in attributes.items() if k == ALWAYS or present(k)}


class CurrentIdentity:
    """Current patient attributes per study, cached for one request."""

    def __init__(self, index: Index) -> None:
        self._identity = IdentityService(index)
        self._by_study: dict[str, dict[str, Any] | None] = {}

    def attributes(self, study_uid: str) -> dict[str, Any] | None:
        """None when the study is unknown (nothing to patch)."""
        if study_uid not in self._by_study:
            try:
                attrs = self._identity.current_patient_attributes(study_uid)
            except NotFound:
                attrs = None
            if attrs is not None and not attrs.get(ALWAYS):
                # No NHS number on the record: other IDs the sender listed stay as they are.
                attrs.pop(ALWAYS, None)
            self._by_study[study_uid] = attrs
        return self._by_study[study_uid]

    def fingerprint(self, study_uid: str) -> str:
        """A short hash of the current identity, for ETags: a change must not answer 304."""
        attrs = self.attributes(study_uid)
        text = json.dumps(attrs, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def patch_dataset(self, study_uid: str, dataset: Dataset) -> bool:
        """Patch ``dataset`` in place; True when its header changed (re-encode it)."""
        attrs = self.attributes(study_uid)
        if not attrs:
            return False
        probe = Dataset()
        for keyword in attrs:
            if keyword in dataset:
                probe[keyword] = copy.deepcopy(dataset[keyword])
        if not apply_identity(probe, _needed(attrs, lambda k: bool(dataset.get(k)))):
            return False
        return apply_identity(dataset, attrs)

    def patch_json(self, study_uid: str, obj: dict[str, Any]) -> bool:
        """Patch one DICOM JSON object in place; True when it changed."""
        attrs = self.attributes(study_uid)
        if not attrs:
            return False
        tags = {f"{tag_for_keyword(k) or 0:08X}" for k in attrs}
        probe = {t: copy.deepcopy(v) for t, v in obj.items() if t in tags}
        filled = {t for t, v in obj.items() if v.get("Value")}
        needed = _needed(attrs, lambda k: f"{tag_for_keyword(k) or 0:08X}" in filled)
        if not apply_identity_json(probe, needed):
            return False
        return apply_identity_json(obj, attrs)

    def patch_document(self, study_uid: str, doc: bytes) -> bytes:
        """One serialised DICOM JSON object, patched; the same bytes when nothing changed."""
        obj = json.loads(doc)
        if not self.patch_json(study_uid, obj):
            return doc
        return json.dumps(obj, separators=(",", ":")).encode()
