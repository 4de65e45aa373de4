"""Who is acting, for which trust, and how the data arrived.

Every call into ingest and the services takes a Principal so authorization and audit have one
place to hang on; adapters build it from what authenticated the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from solent.domain.national_role import RoleInForce


class PrincipalKind(StrEnum):
    NODE = "node"  # a registered DICOM node or HL7 sender
    USER = "user"  # a person or a service account over HTTP
    IMPORTER = "importer"  # the command-line importer / migration
    SYSTEM = "system"  # Solent itself (demo loader, janitor)


@dataclass(frozen=True, slots=True)
class SmartLaunch:
    """A SMART App Launch context (R23): the token's ``patient/`` scopes and its launch
    patient (Solent's FHIR Patient id, the patient record's key). Reads are limited to that
    patient, and the FHIR API to the resource types the scopes name."""

    patient: int
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class Principal:
    kind: PrincipalKind
    name: str
    trust: str | None
    roles: frozenset[str] = frozenset()
    address: str | None = None
    #: Why the caller reads, as they declared it and a service accepted it (e.g. ``mdt:7``, a
    #: participant's reads during MDT meeting 7); audit records carry it unless given another.
    purpose: str | None = None
    #: The national RBAC role the session acts under (R33): its organisation is ``trust``, and
    #: its permissions replace those of ``roles`` (which then are the roles it grants).
    national: RoleInForce | None = None
    #: ``trust`` was selected at login (R33): the session acts for that organisation alone,
    #: even when the account holds others.
    org_selected: bool = False
    #: A SMART launch's patient and scopes (R23); None: not limited to one patient.
    launch: SmartLaunch | None = None

    @property
    def acts_for_one_org(self) -> bool:
        return self.national is not None or self.org_selected

    def describe(self) -> str:
        at = f"@{self.trust}" if self.trust else ""
        return f"{self.kind}:{self.name}{at}"


SYSTEM = Principal(PrincipalKind.SYSTEM, "solent", None)

#: Role of a feed (a NODE principal) registered as a regional identity source (an EMPI:
#: `solent hl7 sender add ... --regional`): it may link and change records of every trust,
#: where any other feed changes only the records its own trust issued (issue 11).
REGIONAL_IDENTITY_SOURCE = "regional_identity_source"

#: Role of a caller that brings studies from outside the consortium (R28): a DICOM node
#: registered as an outside source (an IEP gateway, another organisation's PACS, `solent ae
#: add --outside`) or `solent import --outside` (a PDI disc). What it stores is held, filed
#: under no patient and seen by nobody, until an identity steward reconciles it.
OUTSIDE_SOURCE = "outside_source"


class Channel(StrEnum):
    DIMSE = "dimse"
    STOW = "stow"
    IMPORT = "import"
    MIGRATION = "migration"
    DEMO = "demo"
    RELEASE = "release"  # a held instance filed by the person who decided it (issue 11)
    RECONCILE = "reconcile"  # an outside study filed under the record a steward chose (R28)


@dataclass(frozen=True, slots=True)
class Provenance:
    """How an instance arrived; stored with the instance for the life of the archive."""

    channel: Channel
    calling_ae: str | None = None
    called_ae: str | None = None
    remote_address: str | None = None
    user: str | None = None
    source_path: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
