"""Cross-trust patient index: one person's records at several trusts, linked and never merged.

A record is (issuing trust, local ID). Two records are linked when an explicit decision says so
(HL7 A24 or an administrator) or when both carry the same valid NHS number traced on PDS
(NSTS01) with agreeing date of birth and sex, unless an unlink (A37 or an administrator) blocks
that pair. Conflicts never link: they go to the data-quality queue for a person to resolve.
Every change is written with who, which message, when, and the state before and after.
"""

from solent.services.identity.changes import IdentityService
from solent.services.identity.model import (
    VERIFIED,
    Change,
    Demographics,
    IdentityRejected,
    PatientKey,
    Resolved,
    is_placeholder,
    key_dict,
)

__all__ = [
    "VERIFIED",
    "Change",
    "Demographics",
    "IdentityRejected",
    "IdentityService",
    "PatientKey",
    "Resolved",
    "is_placeholder",
    "key_dict",
]
