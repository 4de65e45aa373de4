"""What DICOM says after a change: outgoing headers carry the record's current patient identity.

Stored blobs never change. Every adapter that sends DICOM (WADO-RS instances and metadata,
QIDO-RS, C-FIND, C-MOVE/C-GET) patches on the way out with one ``CurrentIdentity`` per request,
which reads ``IdentityService.current_patient_attributes`` once per study. An instance whose
header already says what the record says is left alone, so its stored bytes go out untouched.

The same retrieve gives the same bytes (and ETags) until the record changes: the Original
Attributes item is stamped with the time of the record's last change (never "now"), and Part 10
files are patched by splicing re-encoded patient elements between the stored bytes
(``header_splice``), the re-encoding done once per distinct patient module in a request.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from sqlalchemy import func, or_, select

from solent.dicom import header_splice as hs
from solent.dicom.identity_patch import apply_identity, apply_identity_json, modification_stamp
from solent.errors import NotFound
from solent.index import schema as t
from solent.index import study_edits
from solent.index.sql import Index
from solent.services.identity import IdentityService

ALWAYS = "OtherPatientIDsSequence"  # an NHS number traced after the images came in
#: Worth a re-encode whether or not the sender filled them in: a traced NHS number, and the
#: study attributes a person corrected (only then are they among the attributes, R57).
_ALWAYS_NEEDED = frozenset({ALWAYS, "AccessionNumber", "StudyInstanceUID"})
SPECIFIC_CHARACTER_SET = 0x00080005  # how the stored names are encoded: part of every plan
ORIGINAL_ATTRIBUTES = 0x04000561
PLANS_PER_REQUEST = 1024


@dataclass(frozen=True, slots=True)
class SplicedHead:
    """A Part 10 file with the current identity: ``head`` replaces the stored bytes before
    ``tail_offset``; the rest (pixel data and anything after Original Attributes) is as stored."""

    head: bytes
    tail_offset: int
    dataset_start: int  # where the dataset starts in ``head`` (after preamble and file meta)


def _needed(attributes: Mapping[str, Any], present: Callable[[str], bool]) -> dict[str, Any]:
    """The attributes whose difference makes an instance worth re-encoding: those the sender
    filled in, and the NHS number. An issuer or placeholder ID the sender left out is added
    only along with a real change (queries qualify IDs by issuer anyway, R24)."""
    return {k: v for k, v in attributes.items() if k in _ALWAYS_NEEDED or present(k)}


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _tags(attrs: Mapping[str, Any]) -> frozenset[int]:
    """The top-level tags a patch may change or depends on."""
    tags = {tag_for_keyword(k) for k in attrs}
    return frozenset({SPECIFIC_CHARACTER_SET, ORIGINAL_ATTRIBUTES} | {x for x in tags if x})


_Elements = list[tuple[int, bytes]]  # (tag, encoded element) to splice in, in tag order
_JsonPlan = tuple[list[str], list[tuple[str, Any]]]  # (keys to remove, (key, element) to set)


def _json_tags(attrs: Mapping[str, Any]) -> frozenset[str]:
    """The DICOM JSON keys a patch may change or depends on."""
    return frozenset({f"{x:08X}" for x in _tags(attrs) if x != SPECIFIC_CHARACTER_SET})


class OutgoingIdentity:
    """Patches outgoing DICOM with per-study patient attributes, cached for one request;
    subclasses say where the attributes and their modification time come from."""

    def __init__(self) -> None:
        self._fingerprints: dict[str, str] = {}
        # (fingerprint, encoding, stored patient elements) -> (replacement elements,), or
        # (None,) when that header already says what the record says; likewise for JSON.
        self._plans: dict[tuple[str, bool, bool, bytes], tuple[_Elements | None]] = {}
        self._json_plans: dict[tuple[str, str], tuple[_JsonPlan | None]] = {}

    def attributes(self, study_uid: str) -> dict[str, Any] | None:
        """The study's patient attributes by keyword (see ``apply_identity``); None: none."""
        raise NotImplementedError

    def modified_at(self, study_uid: str) -> str:
        """Attribute Modification DateTime (DT) of the study's patched instances."""
        raise NotImplementedError

    def fingerprint(self, study_uid: str) -> str:
        """A short hash of the current identity, for ETags: a change must not answer 304."""
        if study_uid not in self._fingerprints:
            attrs = self.attributes(study_uid)
            stamp = self.modified_at(study_uid) if attrs else ""
            text = json.dumps([attrs, stamp], sort_keys=True, default=str)
            self._fingerprints[study_uid] = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self._fingerprints[study_uid]

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
        return apply_identity(dataset, attrs, modified_at=self.modified_at(study_uid))

    def patch_part10(
        self, study_uid: str, buf: bytes | memoryview, *, complete: bool
    ) -> SplicedHead | None:
        """``buf`` (a Part 10 file, or its first bytes when not ``complete``) with the current
        identity spliced in: the same dataset ``patch_dataset`` and a re-encode would give,
        the stored bytes elsewhere untouched. None when the header already says the same.

        Raises ``header_splice.Truncated`` (give more of the file) and ``Unsupported``
        (deflated, no file meta, malformed: use ``patch_dataset`` on a full parse)."""
        attrs = self.attributes(study_uid)
        if not attrs:
            return None
        try:
            layout = hs.read_layout(buf)
        except hs.Truncated:
            if complete:
                raise hs.Unsupported("the file ends inside its file meta") from None
            raise
        tags = _tags(attrs)
        found = hs.walk(buf, layout, ORIGINAL_ATTRIBUTES, complete=complete)
        raw = hs.raw_elements(buf, found, tags)
        key = (self.fingerprint(study_uid), layout.implicit_vr, layout.little_endian, raw)
        cached = self._plans.get(key)  # one get: safe while another thread clears
        if cached is None:
            try:
                patient = hs.decode(raw, layout)
                changed = self.patch_dataset(study_uid, patient)
                cached = (hs.encode(patient, layout) if changed else None,)
            except Exception as exc:  # pydicom cannot read or write these values
                raise hs.Unsupported(f"patient elements: {exc}") from exc
            if len(self._plans) >= PLANS_PER_REQUEST:
                self._plans.clear()
            self._plans[key] = cached
        new = cached[0]
        try:
            meta = hs.fixed_meta(buf, layout, found)
        except Exception as exc:  # a file meta pydicom cannot read or write
            raise hs.Unsupported(f"file meta: {exc}") from exc
        if new is None and meta is None:
            return None
        head = hs.splice(buf, found, tags, new) if new is not None else bytes(buf[: found.stop])
        if meta is None:
            return SplicedHead(head, found.stop, layout.dataset_start)
        return SplicedHead(meta + head[layout.dataset_start :], found.stop, len(meta))

    def patch_json(self, study_uid: str, obj: dict[str, Any]) -> bool:
        """Patch one DICOM JSON object in place; True when it changed.

        The patch depends only on the object's patient elements: it is worked out once per
        distinct set of them (a series shares one) and then applied as a few dict updates."""
        return self._patch_json(study_uid, obj, shared=False)

    def _patch_json(self, study_uid: str, obj: dict[str, Any], *, shared: bool) -> bool:
        """``shared``: the new elements may be the plan's own objects (serialised at once)."""
        attrs = self.attributes(study_uid)
        if not attrs:
            return False
        tags = _json_tags(attrs)
        relevant = {t: v for t, v in obj.items() if t in tags}
        key = (self.fingerprint(study_uid), json.dumps(relevant, sort_keys=True))
        cached = self._json_plans.get(key)
        if cached is None:
            cached = (self._json_plan(study_uid, attrs, relevant),)
            if len(self._json_plans) >= PLANS_PER_REQUEST:
                self._json_plans.clear()
            self._json_plans[key] = cached
        plan = cached[0]
        if plan is None:
            return False
        removed, updates = plan
        for tag in removed:
            del obj[tag]
        for tag, value in updates:  # existing keys keep their place, new ones go last
            obj[tag] = value if shared else copy.deepcopy(value)
        return True

    def _json_plan(
        self, study_uid: str, attrs: dict[str, Any], relevant: dict[str, Any]
    ) -> _JsonPlan | None:
        """(tags to remove, (tag, element) to set in order) or None when nothing changes."""
        filled = {t for t, v in relevant.items() if v.get("Value")}
        needed = _needed(attrs, lambda k: f"{tag_for_keyword(k) or 0:08X}" in filled)
        if not apply_identity_json(copy.deepcopy(relevant), needed):
            return None
        patched = copy.deepcopy(relevant)
        if not apply_identity_json(patched, attrs, modified_at=self.modified_at(study_uid)):
            return None
        return [t for t in relevant if t not in patched], list(patched.items())

    def patch_document(self, study_uid: str, doc: bytes) -> bytes:
        """One serialised DICOM JSON object, patched; the same bytes when nothing changed."""
        obj = json.loads(doc)
        if not self._patch_json(study_uid, obj, shared=True):
            return doc
        return json.dumps(obj, separators=(",", ":")).encode()


class CurrentIdentity(OutgoingIdentity):
    """What the patient index says now, per study, read once per request, as seen from
    ``viewing_trust`` (the caller's trust, or the destination node's: services/trust_view.py).
    The fingerprint hashes the attributes, so caches keyed by it are per view of the person."""

    def __init__(
        self,
        index: Index,
        viewing_trust: str | None = None,
        guard: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self._index = index
        self.viewing_trust = viewing_trust
        #: The access rule for the caller the handle was made for (RetrieveService.allow):
        #: raises for a study they may not see, so a handle reads no other patient.
        self._guard = guard
        self._identity = IdentityService(index)
        self._by_study: dict[str, dict[str, Any] | None] = {}
        self._stamps: dict[str, str] = {}

    def attributes(self, study_uid: str) -> dict[str, Any] | None:
        """None when the study is unknown (nothing to patch)."""
        if study_uid not in self._by_study:
            if self._guard is not None:
                self._guard(study_uid)
            try:
                attrs = self._identity.current_patient_attributes(
                    study_uid, viewing_trust=self.viewing_trust
                )
            except NotFound:
                attrs = None
            if attrs is not None and not attrs.get(ALWAYS):
                # No NHS number on the record: other IDs the sender listed stay as they are.
                attrs.pop(ALWAYS, None)
            if attrs is not None:  # R57: an accession corrected, a series moved in
                with self._index.read() as conn:
                    attrs.update(study_edits.study_overrides(conn, study_uid))
            self._by_study[study_uid] = attrs
        return self._by_study[study_uid]

    def modified_at(self, study_uid: str) -> str:
        """The last change of the record (its row, contact details, identity events naming
        it) or, when later, when the study arrived: stable, so the same retrieve gives the
        same bytes, and never before the images it describes."""
        if study_uid not in self._stamps:
            if self._guard is not None:
                self._guard(study_uid)
            self._stamps[study_uid] = modification_stamp(self._last_change(study_uid))
        return self._stamps[study_uid]

    def _last_change(self, study_uid: str) -> datetime | None:
        st, pa, co, ev = t.study.c, t.patient.c, t.patient_contact.c, t.identity_event.c
        event = (
            select(func.max(ev.at))
            .where(or_(ev.patient_pk == st.patient_pk, ev.other_patient_pk == st.patient_pk))
            .scalar_subquery()
        )
        query = (
            select(st.created_at, pa.updated_at, co.updated_at, event)
            .select_from(
                t.study.join(t.patient, pa.pk == st.patient_pk).outerjoin(
                    t.patient_contact, co.patient_pk == st.patient_pk
                )
            )
            .where(st.study_uid == study_uid)
        )
        with self._index.read() as conn:
            row = conn.execute(query).first()
        known = [_utc(x) for x in row or () if isinstance(x, datetime)]
        seen = self._seen_record(study_uid)
        if seen is not None:  # the viewer's record changes what goes out too
            known.append(_utc(seen["updated_at"]))
        return max(known) if known else None

    def _seen_record(self, study_uid: str) -> dict[str, Any] | None:
        if not self.viewing_trust:
            return None
        with self._index.read() as conn:
            row = conn.execute(
                select(t.study.c.patient_pk).where(t.study.c.study_uid == study_uid)
            ).first()
            if row is None:
                return None
            return self._identity.record_seen_from(int(row[0]), self.viewing_trust, conn=conn)


class FixedIdentity(OutgoingIdentity):
    """The same attributes for every study, stamped ``modified_at``: for benchmarks and
    tests of the patch itself, without an index."""

    def __init__(self, attributes: Mapping[str, Any] | None, modified_at: str) -> None:
        super().__init__()
        self._attributes = dict(attributes) if attributes is not None else None
        self._modified_at = modified_at

    def attributes(self, study_uid: str) -> dict[str, Any] | None:
        return self._attributes

    def modified_at(self, study_uid: str) -> str:
        return self._modified_at
