"""Rows adapters read: trusts, nodes, HL7 senders and where a stored instance's bytes are.

They live in the domain so protocol adapters can name them without importing the index
(issue 11); the index builds them from its tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# A frame is one or more (offset, length) byte ranges in the stored file.
FrameRanges = list[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class TrustRow:
    code: str
    name: str


@dataclass(frozen=True, slots=True)
class NodeRow:
    ae_title: str
    host: str
    port: int
    trust_code: str
    allow_store: bool
    allow_query: bool
    allow_retrieve: bool
    tls_identity: str | None = None  # certificate CN or SHA-256 it must present (DIMSE TLS)
    allow_notify: bool = False  # sent IHE Instance Availability Notifications (R20)
    outside: bool = False  # R28: an outside source; what it stores is held until reconciled

    @property
    def allowed(self) -> list[str]:
        return [
            op
            for op, ok in (
                ("store", self.allow_store),
                ("query", self.allow_query),
                ("retrieve", self.allow_retrieve),
                ("notify", self.allow_notify),
            )
            if ok
        ]


@dataclass(frozen=True, slots=True)
class SenderRow:
    application: str  # MSH-3, or "*" for any application of the facility
    facility: str  # MSH-4
    hosts: tuple[str, ...]  # host names / IPs it may call from; ("*",) for any
    trust_code: str | None  # the trust it speaks for; None for a regional system (EMPI)


@dataclass(frozen=True, slots=True)
class DestinationRow:
    """A trust's RIS, told of study edits over MLLP (R57)."""

    trust_code: str
    host: str
    port: int
    application: str  # MSH-5
    facility: str  # MSH-6
    tls: bool = False
    tls_ca: str | None = None  # PEM CA file; None: the system's trusted CAs


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """One stored instance: identity, syntax, size and where its bytes are."""

    pk: int
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size_bytes: int
    sha256: str
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    frames_json: str | None
    trust_code: str

    def frames(self) -> list[FrameRanges] | None:
        """Byte ranges of each frame, or None when frames are not byte-addressable."""
        if self.frames_json is None:
            return None
        return [[(int(o), int(n)) for o, n in f] for f in json.loads(self.frames_json)]


@dataclass(frozen=True, slots=True)
class StoredInstanceRef:
    """Enough to send one stored instance: its identity, syntax and where its bytes are."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size_bytes: int
    study_uid: str
    series_uid: str
