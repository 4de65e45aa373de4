"""Records, keys and changes of the cross-trust patient index (no I/O)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from solent.domain.nhs_number import is_placeholder as is_placeholder  # re-exported
from solent.domain.principal import REGIONAL_IDENTITY_SOURCE, Principal, PrincipalKind
from solent.errors import SolentError

T = TypeVar("T")

VERIFIED = "NSTS01"
NHS_OID = "2.16.840.1.113883.2.1.4.1"
DEMOGRAPHIC_FIELDS = ("name", "birth_date", "sex")
LINK_FIELDS = {"birth_date", "sex", "nhs_number", "nhs_number_valid", "nhs_number_verified"}


class IdentityRejected(SolentError):
    """A change that must be refused (HL7 AE) and, when ``work_item`` is set, queued for people."""

    def __init__(self, message: str, *, work_item: str | None = None, held: bool = False) -> None:
        super().__init__(message)
        self.work_item = work_item
        self.held = held


@dataclass(frozen=True, slots=True)
class PatientKey:
    """A local identifier with the trust that issued it (CX.1 + CX.4)."""

    issuer: str
    local_id: str

    def __str__(self) -> str:
        return f"{self.local_id}/{self.issuer}"


@dataclass(frozen=True, slots=True)
class Demographics:
    """What a trust's PAS says about its own record; None means "not sent", not "erase"."""

    name: str | None = None
    birth_date: str | None = None
    sex: str | None = None
    nhs_number: str | None = None  # as received; normalised and checked here
    nhs_status: str | None = None  # PID-32, NSTS01..NSTS08
    address: str | None = None
    phone: str | None = None
    gp_practice: str | None = None
    gp: str | None = None
    death_date: str | None = None  # PID-29 YYYYMMDD (R42); "" erases a death recorded in error
    visit_date: str | None = None  # a visit (A01/A03/A04) on this date: a contact (R42)


#: The widest value the record keeps of each field (index/schema.py): one wider would be cut on
#: SQLite and fail the write on PostgreSQL, so it is refused whole, whichever feed sent it.
WIDTHS = {
    "name": 324,
    "birth_date": 8,
    "sex": 16,
    "nhs_status": 8,
    "phone": 200,
    "gp_practice": 200,
    "gp": 200,
    "death_date": 8,
    "visit_date": 8,
}


def check_widths(key: PatientKey, demo: Demographics) -> None:
    """Refuse (IdentityRejected) a record key or demographic longer than the record keeps."""
    if len(key.local_id) > 64 or len(key.issuer) > 16:
        raise IdentityRejected(f"patient identifier {key} is longer than 64 characters")
    for field, width in WIDTHS.items():
        value = getattr(demo, field)
        if value is not None and len(value) > width:
            raise IdentityRejected(f"{field} of {key} is longer than {width} characters")


@dataclass(frozen=True, slots=True)
class Resolved:
    patient_pk: int
    issuer: str
    local_id: str
    retired: bool  # the identifier asked for is retired; this is the record that replaced it


@dataclass(frozen=True, slots=True)
class Change:
    """Context of one change: who made it and which journalled message carried it."""

    principal: Principal
    message_pk: int | None = None

    @property
    def actor(self) -> str:
        return self.principal.describe()


def require_speaks_for(principal: Principal, what: str, *issuers: str) -> None:
    """A feed (a registered HL7 sender, a NODE principal) changes only records its own trust
    issued; a regional identity source may change any. Checked on the identifiers alone, before
    any read, so a refusal says nothing about whether another trust's record exists. People
    (administrators) are checked by the door adapters call (``door.IdentityDoor``)."""
    if principal.kind is not PrincipalKind.NODE or REGIONAL_IDENTITY_SOURCE in principal.roles:
        return
    foreign = sorted({i for i in issuers if i != principal.trust})
    if foreign:
        raise IdentityRejected(
            f"{what} names records of {', '.join(foreign)}; this feed speaks for "
            f"{principal.trust or 'no trust'} only. Cross-trust links come from a regional "
            "identity source (`solent hl7 sender add APP FACILITY --host HOST --regional`) "
            "or an administrator (POST /api/identity/link)"
        )


def _conflict(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    if a["birth_date"] and b["birth_date"] and a["birth_date"] != b["birth_date"]:
        return f"date of birth {a['birth_date']} vs {b['birth_date']}"
    sexes = ("M", "F")
    if a["sex"] in sexes and b["sex"] in sexes and a["sex"] != b["sex"]:
        return f"sex {a['sex']} vs {b['sex']}"
    return None


def _key(row: dict[str, Any]) -> str:
    return f"{row['local_id']}/{row['issuer']}"


def _snapshot(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: row[k]
        for k in (
            "issuer",
            "local_id",
            "name",
            "birth_date",
            "sex",
            "nhs_number",
            "nhs_number_valid",
            "nhs_number_verified",
        )
    }


def key_dict(key: PatientKey) -> dict[str, str]:
    return asdict(key)
