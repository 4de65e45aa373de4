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
    from solent.security.users import UserService
    from solent.services.access import AccessService
    from solent.services.audit import AuditTrail
    from solent.services.query import QueryService
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
    users: UserService  # accounts, roles, tokens, logins (issue 11: admin scope, limits)
