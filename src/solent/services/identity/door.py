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

from collections.abc import Iterable
from typing import Any

from solent.domain.principal import Principal
from solent.errors import NotFound
from solent.services.access import AccessDenied, AccessService, Permission, Role
from solent.services.audit import AuditAction, AuditOutcome, AuditTrail, PatientRef
from solent.services.identity.changes import IdentityService
from solent.services.identity.model import Change, Demographics, IdentityRejected, PatientKey


class IdentityDoor:
    def __init__(self, identity: IdentityService, access: AccessService, audit: AuditTrail) -> None:
        self._identity = identity
        self._access = access
        self._audit = audit

    def link(self, principal: Principal, a: PatientKey, b: PatientKey) -> None:
        """Link two records (what A24 does)."""
        self._require_steward(principal, "linking patient records", a.issuer, b.issuer)
        self._identity.link(a, b, Change(principal))

    def unlink(self, principal: Principal, a: PatientKey, b: PatientKey) -> None:
        """Unlink two records (what A37 does); also blocks their NHS-number link."""
        self._require_steward(principal, "unlinking patient records", a.issuer, b.issuer)
        self._identity.unlink(a, b, Change(principal))

    def feed(self, principal: Principal, key: PatientKey, demo: Demographics) -> tuple[int, bool]:
        """A trust's record sent by its patient identity source over FHIR (ITI-104): an
        integration account feeds the records of its own trust only, as an HL7 feed does.
        Returns (record key, created). Audited by the identity service with the change."""
        what = "feeding patient identities (ITI-104)"
        self._access.require(principal, Permission.STORE, what)
        if Role.INTEGRATION.value not in principal.roles or principal.trust != key.issuer:
            self._audit.record(
                principal,
                AuditAction.PERMISSION_DENIED,
                AuditOutcome.DENIED,
                detail={"attempted": what, "issuer": key.issuer},
            )
            raise AccessDenied(
                f"{what}: an integration account of {key.issuer} feeds {key.issuer}'s records; "
                "this account is not one"
            )
        found = self._identity.resolve(key.issuer, key.local_id)
        if found is not None and found.retired:
            raise IdentityRejected(
                f"{key} was retired by a merge or renumbering into "
                f"{found.local_id}/{found.issuer}; feed that identifier"
            )
        created = found is None
        return self._identity.update_record(key, demo, Change(principal)), created

    def set_sensitive(self, principal: Principal, key: PatientKey, sensitive: bool) -> None:
        """Set or clear the PDS S-flag of a record."""
        self._require_steward(principal, "marking a patient sensitive", key.issuer)
        self._identity.set_sensitive(key, sensitive, Change(principal))

    def reverse(self, principal: Principal, event_pk: int) -> dict[str, Any]:
        """Undo a link, unlink, identifier change or demographic update (not a merge). An event
        of records outside a trust administrator's trusts answers exactly like one that does
        not exist (it would otherwise be an oracle, and a way to change another trust's
        records)."""
        self._access.require(principal, Permission.ADMIN, "reversing identity changes")
        event = self._identity.event(event_pk)
        missing = NotFound(f"no identity event {event_pk}")
        if event is None:
            raise missing
        issuers = self._identity.issuers_of(
            [pk for pk in (event["patient_pk"], event["other_patient_pk"]) if pk is not None]
        )
        if not self._stewards(principal, issuers):
            raise missing
        self._identity.reverse(event_pk, principal)
        return {"reversed": event_pk, "patient": f"{event['local_id']}/{event['issuer']}"}

    def resolve_work_item(self, principal: Principal, item_pk: int) -> dict[str, Any]:
        """Close a work-queue item. One raised outside a trust administrator's trusts answers
        exactly like one that does not exist; the closing is audited naming its patient."""
        self._access.require(principal, Permission.ADMIN, "resolving data-quality items")
        items = self._identity.work_queue(status="open")
        item = next((i for i in items if i["pk"] == item_pk), None)
        if item is None or not self._stewards(principal, {item["issuer"]}):
            raise NotFound(f"no open work item {item_pk}")
        self._identity.resolve_work_item(item_pk, principal)
        patient = (
            PatientRef(item["issuer"], item["local_id"], item["nhs_number"])
            if item["issuer"] and item["local_id"]
            else None
        )
        self._audit.record(
            principal,
            AuditAction.PATIENT_RECORD,
            patient=patient,
            detail={"work_item": item_pk, "kind": item["kind"], "change": "resolved"},
        )
        out: dict[str, Any] = {"resolved": item_pk}
        if patient is not None:
            out["patient"] = f"{patient.local_id}/{patient.issuer}"
        return out

    def _stewards(self, principal: Principal, issuers: Iterable[str | None]) -> bool:
        """True when the caller administers every one of these trusts' records."""
        if principal.trust is None:
            return True
        trusts = self._access.scope(principal).trusts
        return all(i is not None and i in trusts for i in issuers)

    def _require_steward(self, principal: Principal, what: str, *issuers: str) -> None:
        self._access.require(principal, Permission.ADMIN, what)
        trusts = self._access.scope(principal).trusts
        foreign = sorted({i for i in issuers if principal.trust and i not in trusts})
        if foreign:
            raise AccessDenied(
                f"{what}: records of {', '.join(foreign)} are managed by that trust's "
                "administrators or a regional administrator"
            )
