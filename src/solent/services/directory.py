"""The archive's directory: trusts, DICOM nodes, HL7 senders and destinations (configuration,
no patient data).

Adapters and the CLI read and change the directory here rather than in the index; changes are
audited with the principal who made them.
"""

from __future__ import annotations

from collections.abc import Sequence

from solent.domain.principal import Principal
from solent.domain.records import DestinationRow, NodeRow, SenderRow, TrustRow
from solent.index import hl7_destinations, hl7_senders
from solent.index.sql import Index
from solent.services.audit import AuditAction, AuditTrail


class Directory:
    def __init__(self, index: Index, audit: AuditTrail) -> None:
        self._index = index
        self._audit = audit

    # -- reads ---------------------------------------------------------------------------------

    def trust(self, code: str) -> TrustRow | None:
        return self._index.get_trust(code)

    def trusts(self) -> list[TrustRow]:
        return self._index.list_trusts()

    def node(self, ae_title: str) -> NodeRow | None:
        return self._index.get_node(ae_title)

    def nodes(self) -> list[NodeRow]:
        return self._index.list_nodes()

    def sender(self, application: str, facility: str) -> SenderRow | None:
        return hl7_senders.find_sender(self._index, application, facility)

    def senders(self) -> list[SenderRow]:
        return hl7_senders.list_senders(self._index)

    def destinations(self) -> list[DestinationRow]:
        return hl7_destinations.list_destinations(self._index)

    # -- changes (audited) -----------------------------------------------------------------------

    def _changed(self, principal: Principal, what: str, **detail: object) -> None:
        self._audit.record(
            principal, AuditAction.SECURITY_ALERT, detail={"configuration": what, **detail}
        )

    def add_trust(self, principal: Principal, code: str, name: str) -> TrustRow:
        row = self._index.add_trust(code, name)
        self._changed(principal, "trust added", trust=code)
        return row

    def add_node(
        self,
        principal: Principal,
        ae_title: str,
        host: str,
        port: int,
        trust_code: str,
        allow: Sequence[str],
        tls_identity: str | None = None,
        *,
        outside: bool = False,
    ) -> NodeRow:
        row = self._index.add_node(
            ae_title, host, port, trust_code, allow, tls_identity, outside=outside
        )
        extra = {"outside": True} if outside else {}
        self._changed(principal, "node added", ae_title=ae_title, trust=trust_code, **extra)
        return row

    def remove_node(self, principal: Principal, ae_title: str) -> None:
        self._index.remove_node(ae_title)
        self._changed(principal, "node removed", ae_title=ae_title)

    def add_sender(
        self,
        principal: Principal,
        application: str,
        facility: str,
        hosts: Sequence[str],
        trust_code: str | None,
    ) -> SenderRow:
        row = hl7_senders.add_sender(self._index, application, facility, hosts, trust_code)
        self._changed(
            principal, "HL7 sender added", sender=f"{application}^{facility}", trust=trust_code
        )
        return row

    def remove_sender(self, principal: Principal, application: str, facility: str) -> None:
        hl7_senders.remove_sender(self._index, application, facility)
        self._changed(principal, "HL7 sender removed", sender=f"{application}^{facility}")

    def add_destination(self, principal: Principal, row: DestinationRow) -> DestinationRow:
        added = hl7_destinations.add_destination(self._index, row)
        self._changed(
            principal,
            "HL7 destination added",
            trust=row.trust_code,
            destination=f"{row.application}^{row.facility} at {row.host}:{row.port}",
            tls=row.tls,
        )
        return added

    def remove_destination(self, principal: Principal, trust_code: str) -> None:
        hl7_destinations.remove_destination(self._index, trust_code)
        self._changed(principal, "HL7 destination removed", trust=trust_code)
