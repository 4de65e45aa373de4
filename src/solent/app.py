"""Composition root: the only module that knows which backends are in use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from solent.compose import keyed_audit, open_index
from solent.dicom.inflate import InflateLimits
from solent.domain.prior_relevance import Rules
from solent.domain.retention_rules import Policy
from solent.index.sql import Index
from solent.ingest import Ingestor, IngestPolicy
from solent.jobs.queue import open_job_queue
from solent.jobs.tasks import consumers_named
from solent.protocols.dimse.ian import send_notification
from solent.protocols.hl7.ris import RisSender
from solent.security.authn import Authenticator
from solent.security.users import UserService
from solent.services.access import AccessService
from solent.services.audit import AuditTrail
from solent.services.audit_door import AuditDoor
from solent.services.broadcast import open_broadcast
from solent.services.check import ArchiveCheck
from solent.services.directory import Directory
from solent.services.health import HealthService
from solent.services.held import HeldService
from solent.services.identity import IdentityService
from solent.services.identity.door import IdentityDoor
from solent.services.inbox import InboxReads, InboxService
from solent.services.jobs import JobsService
from solent.services.key_objects import KeyObjectService
from solent.services.manifests import ManifestService
from solent.services.mdt import MdtService
from solent.services.mdt_live import LiveHub
from solent.services.mdt_outcomes import MdtOutcomeService
from solent.services.mdt_shared import open_broker
from solent.services.migration import MigrationService
from solent.services.national_rbac import load_policy
from solent.services.outside_imports import OutsideImports
from solent.services.patient_queries import PatientQueryService
from solent.services.peers import PeerAddresses
from solent.services.performed_steps import PerformedStepService
from solent.services.prior_prefetch import PriorPrefetch
from solent.services.procedures import ProcedureCoding
from solent.services.query import QueryService
from solent.services.records import RecordService
from solent.services.registry import Services
from solent.services.reporter_notices import ReporterNoticeService
from solent.services.retention import RetentionService
from solent.services.retention_schedule import RetentionSchedule
from solent.services.retrieve import RetrieveService
from solent.services.study_edit import StudyEditService
from solent.services.viewer import ViewerService
from solent.settings import Settings
from solent.storage import BlobStore, open_blob_store


class Listener(Protocol):
    """A protocol server started by `solent serve` (DIMSE, HL7 MLLP...)."""

    name: str

    def start(self) -> int:
        """Start listening; returns the bound port."""

    def stop(self) -> None: ...


@dataclass
class Archive:
    settings: Settings
    index: Index
    store: BlobStore
    ingestor: Ingestor
    query: QueryService
    listeners: list[Listener] = field(default_factory=list)
    # Security (issue 6): the one audit trail and the one authorization point of this archive.
    audit: AuditTrail = field(init=False)
    access: AccessService = field(init=False)
    # The cross-trust patient index whole (tests, the demo loader); adapters get the door.
    identity: IdentityService = field(init=False)
    # Rules-based prior prefetch (R47), which the ``prefetch`` job consumer runs (tests).
    prefetch: PriorPrefetch = field(init=False)
    # What adapters receive instead of this object (issue 11): services only.
    services: Services = field(init=False)

    def __post_init__(self) -> None:
        self.audit = keyed_audit(self.index, self.settings)
        national = load_policy(self.settings.rbac_policy) if self.settings.rbac_policy else None
        self.access = AccessService(
            self.index,
            self.audit,
            break_glass_minutes=self.settings.break_glass_minutes,
            national=national,
        )
        self.query.use_access(self.access)  # every query is scoped by the access rule
        identity = self.identity = IdentityService(self.index, production=self.settings.production)
        users = UserService(self.index, self.settings, self.audit, national)
        coding = ProcedureCoding(self.index, self.settings.procedure_map)
        inbox = InboxService(self.index, identity, coding)
        retrieve = RetrieveService(
            self.index,
            self.store,
            self.access,
            self.audit,
            access_ttl=self.settings.dicomweb_access_cache_seconds,
            cache_bytes=self.settings.dicomweb_cache_mb << 20,
        )
        viewer = ViewerService(
            self.index,
            self.access,
            self.audit,
            self.query,
            identity,
            max_results=self.settings.max_query_results,
            coding=coding,
        )
        broadcast = open_broadcast(self.settings.effective_database_url)
        mdt = MdtService(self.index, self.access, self.audit, viewer, retrieve, identity)
        records = RecordService(
            identity, InboxReads(self.index), self.access, self.audit, self.query
        )
        prefetch = self.prefetch = PriorPrefetch(
            self.index,
            identity,
            self.access,
            self.audit,
            retrieve,
            coding,
            Rules(
                self.settings.prefetch_max_priors,
                self.settings.prefetch_max_age_days,
                Rules.parse_criteria(self.settings.prefetch_relevance),
            ),
            self.settings.prefetch_dicomweb_base
            or f"http://{self.settings.bind_address}:{self.settings.http_port}/dicomweb",
        )
        self.services = Services(
            settings=self.settings,
            access=self.access,
            audit=AuditDoor(
                self.audit, self.access, retention_years=self.settings.audit_retention_years
            ),
            query=self.query,
            ingest=self.ingestor,
            retrieve=retrieve,
            records=records,
            manifests=ManifestService(records, self.index, self.settings.ae_title),
            patients=PatientQueryService(self.index, identity, self.access, self.audit),
            identity=IdentityDoor(identity, self.access, self.audit),
            held=HeldService(
                self.index, self.store, self.access, self.audit, self.ingestor, identity
            ),
            imports=OutsideImports(
                self.index, self.store, self.access, self.audit, self.ingestor, identity
            ),
            study_edits=StudyEditService(self.index, self.access, self.audit, identity),
            inbox=inbox,
            directory=Directory(self.index, self.audit),
            users=users,
            authenticator=Authenticator(self.index, self.settings, users),
            migration=MigrationService(self.index, self.store, self.ingestor, identity, self.audit),
            health=HealthService(self.index, self.store),
            jobs=JobsService(
                open_job_queue(
                    self.index,
                    self.store,
                    consumers=consumers_named(
                        self.settings.jobs_consumers,
                        {
                            "ian": self.settings.ian_delay_seconds,
                            "procedures": self.settings.prefetch_settle_seconds,
                            "prefetch": self.settings.prefetch_settle_seconds,
                        },
                    ),
                    concurrency=self.settings.jobs_concurrency,
                    max_attempts=self.settings.jobs_max_attempts,
                    poll_seconds=self.settings.jobs_poll_seconds,
                    settle_seconds=self.settings.jobs_settle_seconds,
                    stalled_seconds=self.settings.jobs_stalled_seconds,
                    settings=self.settings,
                    notify=send_notification,
                    prefetch=prefetch,
                    tell_ris=RisSender(
                        client_cert=self.settings.hl7_tls_cert,
                        client_key=self.settings.hl7_tls_key,
                    ),
                ),
                self.access,
            ),
            broadcast=broadcast,
            viewer=viewer,  # issue 12
            key_objects=KeyObjectService(self.index, self.access, self.audit, viewer, identity),
            mdt=mdt,
            mdt_outcomes=MdtOutcomeService(
                self.index, self.access, self.audit, mdt, viewer, identity
            ),
            reporter_notices=ReporterNoticeService(self.index, self.access, self.audit),
            # issue 16: a room's members may be connected to any node (PostgreSQL)
            live=LiveHub(
                open_broker(broadcast, mdt.keep_live, mdt.stored_live),
                heartbeat=self.settings.mdt_heartbeat_seconds,
            ),
            peers=PeerAddresses(self.index),
            check=ArchiveCheck(self.index, self.store, self.access, self.audit),
            performed_steps=PerformedStepService(self.index, self.access, self.audit),
            retention=RetentionService(self.index, self.access, self.audit),
            retention_schedule=RetentionSchedule(
                self.index,
                self.access,
                self.audit,
                identity,
                Policy(
                    self.settings.retention_adult_years, self.settings.retention_policy == "rcr"
                ),
            ),
        )

    def close(self) -> None:
        self.services.jobs.stop_background()
        self.services.mdt.stop_background()
        self.services.live.close()
        self.services.broadcast.close()
        for listener in self.listeners:
            listener.stop()
        self.store.close()
        self.index.close()


def open_store(settings: Settings) -> BlobStore:
    return open_blob_store(
        settings.effective_storage_url,
        s3_endpoint_url=settings.s3_endpoint_url,
        s3_region=settings.s3_region,
        s3_access_key_id=settings.s3_access_key_id,
        s3_secret_access_key=settings.s3_secret_access_key.get_secret_value(),
        s3_timeout_seconds=settings.s3_timeout_seconds,
    )


def build_archive(settings: Settings, *, migrate: bool = True) -> Archive:
    index = open_index(settings, migrate=migrate)
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings)
    ensure_bucket = getattr(store, "ensure_bucket", None)
    if migrate and ensure_bucket is not None:
        ensure_bucket()  # like the schema, a fresh S3 bucket is set up on first start
    policy = IngestPolicy(
        conflict=settings.conflict_policy,
        missing_patient_id=settings.missing_patient_id_policy,
        nhs_number_tag=settings.nhs_number_tag,
        production=settings.production,
        inflate=InflateLimits(settings.deflate_max_ratio, settings.deflate_max_bytes),
    )
    ingestor = Ingestor(index, store, policy)
    return Archive(settings, index, store, ingestor, QueryService(index))
