"""The services an adapter receives: the only doors to patient data.

Protocol adapters (DIMSE, DICOMweb, FHIR, HL7, JSON API, IID, viewer, MDT, migration, CLI) get a
``Services`` from ``app.py`` and nothing else: no index, no blob store, no database connection.
Every method here that returns or changes patient data takes the caller (``Principal``), applies
the one access rule and writes the audit record naming the patient, so an adapter cannot forget
either. New services are added as fields here and composed once in ``app.build_archive``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from solent.ingest import Ingestor
    from solent.security.authn import Authenticator
    from solent.security.users import UserService
    from solent.services.access import AccessService
    from solent.services.audit import AuditTrail
    from solent.services.directory import Directory
    from solent.services.identity import IdentityService
    from solent.services.inbox import InboxService
    from solent.services.query import QueryService
    from solent.services.records import RecordService
    from solent.services.retrieve import RetrieveService
    from solent.services.retrieve_web import WebRetrieveService
    from solent.settings import Settings


@dataclass
class Services:
    settings: Settings
    access: AccessService
    audit: AuditTrail
    query: QueryService
    ingest: Ingestor
    web_retrieve: WebRetrieveService
    retrieve: RetrieveService  # C-MOVE / C-GET / storage commitment
    records: RecordService  # FHIR, IID and identity API reads (access + audit inside)
    identity: IdentityService  # identity changes (HL7, administrators); reads go via records
    inbox: InboxService  # the HL7 journal, orders and reports
    directory: Directory  # trusts, DICOM nodes, HL7 senders (configuration, audited changes)
    users: UserService  # accounts, roles, tokens (security/)
    authenticator: Authenticator  # bearer tokens and passwords -> Principal
