"""The task functions and the change-feed consumers that feed them.

A task is a plain function of a `TaskContext` and JSON arguments, so the PostgreSQL queue and
the in-process runner call the very same code. A task raises to ask for a retry (the store or
index was unreachable); a result worth keeping (e.g. a fixity failure) is recorded, not raised.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from solent.errors import NotFound
from solent.index.jobs import FeedEvent, record_blob_check
from solent.services.access import AccessService
from solent.services.audit import AuditTrail
from solent.services.availability import AVAILABILITY_EVENTS, AvailabilityService, Notice
from solent.services.ris_notify import RIS_MESSAGES, RIS_NOTIFIER, RisNotice, RisNotifications

if TYPE_CHECKING:
    from solent.index.sql import Index
    from solent.services.prior_prefetch import PriorPrefetch
    from solent.settings import Settings
    from solent.storage import BlobStore

log = logging.getLogger(__name__)

JOBS_RUN = Counter(
    "solent_jobs_run_total", "Background jobs run by this process", ["task", "outcome"]
)
BLOB_CHECKS = Counter("solent_blob_checks_total", "Fixity checks of stored blobs", ["result"])


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class TaskContext:
    index: Index
    store: BlobStore
    worker: str
    settings: Settings | None = None  # our AE title (notifications)
    #: Sends one availability notification, returns the DIMSE status (the DICOM adapter's
    #: ``protocols.dimse.ian.send_notification``, given by the composition root: services
    #: and jobs never import protocols); raises SolentError or OSError when unreachable.
    notify: Callable[[str, Notice], int] | None = None
    #: Rules-based prior prefetch (R47) and procedure coding (R19) of this process: it warms
    #: this process's caches and this node's page cache (services/prior_prefetch.py).
    prefetch: PriorPrefetch | None = None
    #: Sends one RIS notification of a study edit, returns (MSA-1, MSA-3) of the ACK (the HL7
    #: adapter's ``protocols.hl7.ris.RisSender``); raises OSError when there is no answer.
    tell_ris: Callable[[RisNotice], tuple[str, str]] | None = None


def verify_blob(ctx: TaskContext, sop_instance_uid: str) -> None:
    """Fixity: the stored bytes still hash to the digest recorded at ingest (issue 16's first
    change-feed consumer; object stores are not trusted blindly across a region)."""
    digest = ctx.index.instance_digest(sop_instance_uid)
    if digest is None:
        return  # deleted since it was stored: nothing left to check
    sha256, key = digest
    try:
        with ctx.store.open(key) as stream:
            h = hashlib.sha256()
            while chunk := stream.read(1 << 20):
                h.update(chunk)
    except NotFound:
        ok, detail = False, "blob missing from the store"
    else:
        ok = h.hexdigest() == sha256
        detail = "digest matches" if ok else f"digest {h.hexdigest()} != recorded {sha256}"
    BLOB_CHECKS.labels("ok" if ok else "failed").inc()
    record_blob_check(ctx.index, sop_instance_uid, key, ok, detail, ctx.worker)


#: Most nodes one availability job tells at the same time.
NOTIFY_THREADS = 8


class NotificationFailed(RuntimeError):
    """Some subscribed node could not be reached: the job runs again later."""


def notify_availability(ctx: TaskContext, study_uid: str, seq: int) -> None:
    """IHE Instance Availability Notification (R20): tell every subscribed node that may see
    the study what it holds now. Skipped when a later change of the study is in the feed (its
    own job says it all), so a burst of stores makes one notification. A node that cannot be
    reached (or answers what is no DICOM) makes the job fail and run again (every node is then
    told again: a notification states the study's availability, so a repeat is harmless); a
    node that answers with a failure status is not asked again."""
    if ctx.notify is None:
        raise NotificationFailed("this process has no DICOM sender for notifications")
    audit = AuditTrail(ctx.index)
    service = AvailabilityService(ctx.index, AccessService(ctx.index, audit), audit)
    if service.superseded(study_uid, seq):
        return
    ae_title = ctx.settings.ae_title if ctx.settings is not None else "SOLENT"
    notify = ctx.notify

    def tell(notice: Notice) -> int | Exception:
        try:
            return notify(ae_title, notice)
        except Exception as exc:  # unreachable, or answered what is no DICOM: that node's
            return exc

    # The nodes are told at once, each on its own thread: one that accepts the connection and
    # then says nothing holds up only itself (for its DIMSE timeout), not the nodes after it.
    notices = service.notices(study_uid)
    with ThreadPoolExecutor(max_workers=max(1, min(len(notices), NOTIFY_THREADS))) as pool:
        outcomes = list(pool.map(tell, notices))
    unreachable: list[str] = []
    for notice, status in zip(notices, outcomes, strict=True):
        if isinstance(status, Exception):
            service.sent(notice, ok=False, detail=str(status))
            unreachable.append(f"{notice.node.ae_title}: {status}")
            continue
        service.sent(notice, ok=status == 0, detail=f"N-CREATE status 0x{status:04X}")
        if status != 0:
            log.warning(
                "%s refused the availability notification of study %s (status 0x%04X)",
                notice.node.ae_title,
                study_uid,
                status,
            )
    if unreachable:
        raise NotificationFailed("; ".join(unreachable))


def notify_ris(ctx: TaskContext, seq: int) -> None:
    """R57: tell the RIS of each trust concerned of the study edit that is change-feed event
    ``seq``, and wait for each ACK. AA/CA is done; AE/AR or no answer makes the job fail and
    run again with the jobs' backoff, every RIS told again with the same MSH-10 (a RIS that
    took it already recognises the repeat). No RIS registered: nothing is sent."""
    if ctx.tell_ris is None:
        raise NotificationFailed("this process has no HL7 sender for RIS notifications")
    audit = AuditTrail(ctx.index)
    service = RisNotifications(ctx.index, AccessService(ctx.index, audit), audit)
    failed: list[str] = []
    for notice in service.notices(RIS_NOTIFIER, seq):
        where = f"{notice.destination.application}^{notice.destination.facility}"
        try:
            code, text = ctx.tell_ris(notice)
        except Exception as exc:  # unreachable, or no answer: that RIS's
            service.sent(RIS_NOTIFIER, notice, ok=False, result=f"no ACK: {exc}")
            failed.append(f"{where}: {exc}")
            continue
        ok = code in ("AA", "CA")
        service.sent(RIS_NOTIFIER, notice, ok=ok, result=f"MSA-1 {code or '?'} {text}".strip())
        if not ok:
            failed.append(f"{where} answered {code or 'no ACK'}: {text}")
    if failed:
        raise NotificationFailed("; ".join(failed))


class NoPrefetcher(RuntimeError):
    """This process was built without the prefetch service (the job runs again elsewhere)."""


def _prefetcher(ctx: TaskContext) -> PriorPrefetch:
    if ctx.prefetch is None:
        raise NoPrefetcher("this process has no prior prefetch service")
    return ctx.prefetch


def code_study(ctx: TaskContext, study_uid: str) -> None:
    """R19: record a study's procedure code as received and mapped (a no-op until it exists)."""
    _prefetcher(ctx).coding.code_study(study_uid)


def prefetch_priors(
    ctx: TaskContext,
    trigger: str,
    study_uid: str | None = None,
    patient_pk: int | None = None,
) -> None:
    """R47: warm the relevant priors, from every trust, of the patient a trigger names."""
    prefetch = _prefetcher(ctx)
    if trigger == "study" and study_uid:
        prefetch.coding.code_study(study_uid)  # what relevance compares for the new study
    prefetch.run(trigger, study_uid=study_uid, patient_pk=patient_pk)


Task = Callable[..., None]
TASKS: dict[str, Task] = {
    "verify_blob": verify_blob,
    "notify_availability": notify_availability,
    "code_study": code_study,
    "prefetch_priors": prefetch_priors,
    "notify_ris": notify_ris,
}


@dataclass(frozen=True)
class Consumer:
    """Turns the change-feed events it cares about into (task, arguments) jobs."""

    name: str
    kinds: frozenset[str]
    jobs: Callable[[FeedEvent], list[tuple[str, dict[str, Any]]]]
    #: Events younger than this wait (beyond the queue's own settle): a study still arriving
    #: is notified once, after it has been quiet this long.
    settle_seconds: float = 0.0
    #: A consumer added to a running archive starts at the feed's head, not its history.
    from_head: bool = False
    #: Job arguments a later event's job supersedes: jobs equal but for these collapse into
    #: the last one of a batch.
    supersede: frozenset[str] = field(default_factory=frozenset)

    def batch_jobs(self, events: Sequence[FeedEvent]) -> list[tuple[str, dict[str, Any]]]:
        """The jobs of a batch of events, collapsed (a 600-slice series: one job, not 600)."""
        return [(task, args) for _, task, args in self.batch_jobs_seq(events)]

    def batch_jobs_seq(self, events: Sequence[FeedEvent]) -> list[tuple[int, str, dict[str, Any]]]:
        """`batch_jobs`, each with the seq of the (last) event it came from: what a failed job
        names (the in-process queue's record of it)."""
        out: dict[str, tuple[int, str, dict[str, Any]]] = {}
        for event in events:
            for task, args in self.jobs(event):
                kept = {k: v for k, v in args.items() if k not in self.supersede}
                key = task + json.dumps(kept, sort_keys=True, default=str)
                out.pop(key, None)  # the later job goes last, where its event was
                out[key] = (event.seq, task, args)
        return list(out.values())


def _verify_jobs(event: FeedEvent) -> list[tuple[str, dict[str, Any]]]:
    if not event.sop_instance_uid:
        return []
    return [("verify_blob", {"sop_instance_uid": event.sop_instance_uid})]


def _availability_jobs(event: FeedEvent) -> list[tuple[str, dict[str, Any]]]:
    if not event.study_uid:
        return []
    return [("notify_availability", {"study_uid": event.study_uid, "seq": event.seq})]


def _coding_jobs(event: FeedEvent) -> list[tuple[str, dict[str, Any]]]:
    if not event.study_uid:
        return []
    return [("code_study", {"study_uid": event.study_uid})]


def _ris_jobs(event: FeedEvent) -> list[tuple[str, dict[str, Any]]]:
    return [("notify_ris", {"seq": event.seq})] if event.kind in RIS_MESSAGES else []


#: Change-feed events that trigger a prior prefetch (R47), and the trigger each is.
PREFETCH_TRIGGERS = {
    "order.placed": "order",  # ORM^O01 / OMI^O23 with ORC-1=NW, or `solent worklist add`
    "patient.admitted": "admission",  # ADT^A01
    "instance.stored": "study",  # a study arriving (a burst of its instances: one job)
}


def _prefetch_jobs(event: FeedEvent) -> list[tuple[str, dict[str, Any]]]:
    trigger = PREFETCH_TRIGGERS.get(event.kind)
    if trigger == "admission":
        if event.patient_pk is None:
            return []
        return [("prefetch_priors", {"trigger": trigger, "patient_pk": event.patient_pk})]
    if trigger is None or not event.study_uid:
        return []
    return [("prefetch_priors", {"trigger": trigger, "study_uid": event.study_uid})]


#: How long a study must be quiet before its availability is notified (SOLENT_IAN_DELAY_SECONDS).
IAN_DELAY_SECONDS = 10.0
#: How long events wait before prefetch and coding follow them (SOLENT_PREFETCH_SETTLE_SECONDS):
#: a burst of a study's instances is coded and prefetched for once, not per instance (a study
#: arriving over longer than this makes a job per burst; a repeat run finds its caches warm).
PREFETCH_SETTLE_SECONDS = 5.0

CONSUMERS: tuple[Consumer, ...] = (
    Consumer("fixity", frozenset({"instance.stored", "instance.replaced"}), _verify_jobs),
    Consumer(
        "ian",
        AVAILABILITY_EVENTS,
        _availability_jobs,
        settle_seconds=IAN_DELAY_SECONDS,
        from_head=True,
        supersede=frozenset({"seq"}),
    ),
    Consumer(
        "procedures",
        frozenset({"instance.stored", "order.placed", "order.updated"}),
        _coding_jobs,
        settle_seconds=PREFETCH_SETTLE_SECONDS,
    ),
    Consumer(
        "prefetch",
        frozenset(PREFETCH_TRIGGERS),
        _prefetch_jobs,
        settle_seconds=PREFETCH_SETTLE_SECONDS,
        from_head=True,  # priors of orders placed from now on, not of the archive's history
    ),
    # R57: study edits told to the RIS of each trust concerned (from now on: a RIS registered
    # later is not sent the archive's history of edits).
    Consumer("ris", frozenset(RIS_MESSAGES), _ris_jobs, from_head=True),
)


def consumers_named(names: str, settle: Mapping[str, float] | None = None) -> tuple[Consumer, ...]:
    """The consumers a comma list of names selects (SOLENT_JOBS_CONSUMERS); ``settle``: a
    consumer's own settle time by name (from the settings)."""
    from solent.errors import ConfigurationError

    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {c.name: c for c in CONSUMERS}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ConfigurationError(
            f"unknown job consumer(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    chosen = [known[n] for n in wanted]
    return tuple(
        replace(c, settle_seconds=settle[c.name]) if settle and c.name in settle else c
        for c in chosen
    )
