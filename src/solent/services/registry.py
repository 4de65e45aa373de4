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
    from solent.services.audit_door import AuditDoor
    from solent.services.broadcast import Broadcast
    from solent.services.check import ArchiveCheck
    from solent.services.directory import Directory
    from solent.services.health import HealthService
    from solent.services.held import HeldService
    from solent.services.identity.door import IdentityDoor
    from solent.services.inbox import InboxService
    from solent.services.jobs import JobsService
    from solent.services.key_objects import KeyObjectService
    from solent.services.manifests import ManifestService
    from solent.services.mdt import MdtService
    from solent.services.mdt_live import LiveHub
    from solent.services.mdt_outcomes import MdtOutcomeService
    from solent.services.migration import MigrationService
    from solent.services.outside_imports import OutsideImports
    from solent.services.patient_queries import PatientQueryService
    from solent.services.peers import PeerAddresses
    from solent.services.performed_steps import PerformedStepService
    from solent.services.query import QueryService
    from solent.services.records import RecordService
    from solent.services.reporter_notices import ReporterNoticeService
    from solent.services.retention import RetentionService
    from solent.services.retention_schedule import RetentionSchedule
    from solent.services.retrieve import RetrieveService
    from solent.services.study_edit import StudyEditService
    from solent.services.viewer import ViewerService
    from solent.settings import Settings


@dataclass
class Services:
    settings: Settings
    access: AccessService
    audit: AuditDoor  # write as the caller; read only as an auditor, each read audited
    query: QueryService
    ingest: Ingestor
    retrieve: RetrieveService  # every image read: C-GET/C-MOVE, commitment, WADO-RS/URI, renders
    records: RecordService  # FHIR, IID and identity API reads (access + audit inside)
    manifests: ManifestService  # R25/R27: study manifests for IHE MHD consumers
    patients: PatientQueryService  # R5/R6: PIX/PDQ identifier and demographic queries
    identity: IdentityDoor  # identity changes by people (steward rule inside); reads: records
    held: HeldService  # issue 11: instances held for reconciliation, released or discarded
    imports: OutsideImports  # R28: outside studies held until reconciled to a patient
    study_edits: StudyEditService  # R57: studies moved to another patient, accessions corrected
    inbox: InboxService  # the HL7 journal, orders and reports
    directory: Directory  # trusts, DICOM nodes, HL7 senders (configuration, audited changes)
    users: UserService  # accounts, roles, tokens (security/)
    authenticator: Authenticator  # bearer tokens and passwords -> Principal
    migration: MigrationService  # legacy PACS consolidation state (issue 13)
    health: HealthService  # issue 16: liveness/readiness for the load balancer
    jobs: JobsService  # issue 16: background work on the change feed
    broadcast: Broadcast  # issue 16: publish/subscribe across nodes (MDT rooms, caches)
    viewer: ViewerService  # issue 12: worklist, timeline, study, reports, key images
    key_objects: KeyObjectService  # R30: key objects and presentation states, withdrawn flags
    mdt: MdtService  # issue 12: MDT meetings, outcomes, prefetch
    mdt_outcomes: MdtOutcomeService  # R32: radiology input per item, recorded per study
    reporter_notices: ReporterNoticeService  # R32: discrepancies flagged to the primary reporter
    live: LiveHub  # issue 12: the MDT live rooms of this process
    peers: PeerAddresses  # issue 11: listeners check a caller's address before reading
    check: ArchiveCheck  # issue 11: `solent check [--repair]`, caller checked, deletions audited
    performed_steps: PerformedStepService  # R17: MPPS from modalities, orders follow
    retention: RetentionService  # R43/R44: legal holds, two-person retention deletions
    retention_schedule: RetentionSchedule  # R42: each study's retention date, expired studies
