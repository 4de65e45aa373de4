"""DIMSE status codes Solent answers with (PS3.4 Annexes B, C, J, K; PS3.7 C)."""

from __future__ import annotations

from pydicom.dataset import Dataset

SUCCESS = 0x0000
PENDING = 0xFF00
PENDING_WARNING = 0xFF01  # C-FIND: optional keys not supported
CANCEL = 0xFE00
NOT_AUTHORIZED = 0x0124  # PS3.7 C.5: Refused, not authorized
OUT_OF_RESOURCES = 0xA700
FIND_OUT_OF_RESOURCES = 0xA700  # C-FIND: too many matches / cannot process now
MOVE_OUT_OF_RESOURCES_SUBOPS = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_MISMATCH = 0xA900  # C-FIND/MOVE/GET: identifier does not match SOP class
DATASET_MISMATCH = 0xA900  # C-STORE: data set does not match SOP class
#: C-STORE Warning (PS3.4 B.2.3). Solent answers it, with an Error Comment, for an IOCM
#: retention note (113039) that was stored but withdrew nothing yet: under a legal hold, or
#: awaiting a second person's approval (R43, R44). Nothing was coerced.
STORED_WITH_WARNING = 0xB000
CANNOT_UNDERSTAND = 0xC000
UNABLE_TO_PROCESS = 0xC001
PROCESSING_FAILURE = 0x0110

ERROR_COMMENT_MAX = 64  # LO


def status(code: int, comment: str = "") -> Dataset:
    """A status dataset; failures carry an Error Comment cut to fit its LO VR."""
    ds = Dataset()
    ds.Status = code
    if comment:
        text = comment.replace("\\", "/").replace("\n", " ").strip()
        ds.ErrorComment = text[:ERROR_COMMENT_MAX]
    return ds
