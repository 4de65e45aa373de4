"""The cross-trust patient index as adapters see it (issue 11, "one guarded door").

Identity changes people ask for (the JSON API, `solent hl7 link|unlink|reverse`) take the
caller, and the steward rule is applied here, not in the route: administrators only, a trust's
administrator only on records its trust issued (a regional administrator, no trust, on any).
The identity service then writes the change with its audit record. Feeds reach the index
through the HL7 inbox, where the identity service itself holds a feed to its own trust
(``model.require_speaks_for``). Reads go through ``RecordService``, which applies the access
rule; nothing here returns patient data.
"""

from __future__ import annotations

from solent.domain.principal import Principal
from solent.services.access import AccessDenied, AccessService, Permission
from solent.services.identity.changes import IdentityService
from solent.services.identity.model import Change, PatientKey


class IdentityDoor:
    def __init__(self, identity: IdentityService, access: AccessService) -> None:
        self._identity = identity
        self._access = access

    def link(self, principal: Principal, a: PatientKey, b: PatientKey) -> None:
        """Link two records (what A24 does)."""
        self._require_steward(principal, "linking patient records", a.issuer, b.issuer)
        self._identity.link(a, b, Change(principal))

    def unlink(self, principal: Principal, a: PatientKey, b: PatientKey) -> None:
        """Unlink two records (what A37 does); also blocks their NHS-number link."""
        self._require_steward(principal, "unlinking patient records", a.issuer, b.issuer)
        self._identity.unlink(a, b, Change(principal))

    def set_sensitive(self, principal: Principal, key: PatientKey, sensitive: bool) -> None:
        """Set or clear the PDS S-flag of a record."""
        self._require_steward(principal, "marking a patient sensitive", key.issuer)
        self._identity.set_sensitive(key, sensitive, Change(principal))

    def reverse(self, principal: Principal, event_pk: int) -> int:
        """Undo a link, unlink, identifier change or demographic update (not a merge)."""
        self._require_steward(principal, "reversing identity changes")
        return self._identity.reverse(event_pk, principal)

    def resolve_work_item(self, principal: Principal, item_pk: int) -> None:
        self._require_steward(principal, "resolving data-quality items")
        self._identity.resolve_work_item(item_pk, principal)

    def _require_steward(self, principal: Principal, what: str, *issuers: str) -> None:
        self._access.require(principal, Permission.ADMIN, what)
        trusts = self._access.scope(principal).trusts
        foreign = sorted({i for i in issuers if principal.trust and i not in trusts})
        if foreign:
            raise AccessDenied(
                f"{what}: records of {', '.join(foreign)} are managed by that trust's "
                "administrators or a regional administrator"
            )
