"""Rules-based prefetch of a patient's relevant priors from every trust (R47, for R48).

A trigger (an order placed, an admission, a study arriving; jobs/tasks.py turns change-feed
events into them) names a patient record and, but for an admission, the procedure to come.
The person is resolved across all linked identifiers (the identity service's links: NHS
number, explicit A24 links, never across an A37 unlink), and only records that a clinician of
the trigger's trust may open are considered (the access rule, AccessService.visible_among): a
prefetch never reads what that trust's viewers could not be shown. The priors the rules choose
(domain/prior_relevance.py) are warmed exactly as an MDT item is (services/mdt_prefetch.py):
series metadata as the trust sees the person, thumbnails, the preview and every frame in the
syntax the viewer asks for.

"Hot" in this archive means: on a filesystem store, the node's page cache (shared by every
process of the node, and what the frame fast path serves from); on S3, which has no local
tier, the frames kept in the serving process's memory; in both, the DICOMweb response cache of
the process that runs the job (``solent serve``'s first process, where background work runs).

The actor is the system, not a user: the reads are audited as ``system:prefetch@<trust>`` with
the purpose ``prefetch:<trigger>`` (one VIEW record per study read, channel "prior prefetch",
naming each prior's own record), plus one record of the prefetch itself naming the trigger's
patient, the studies chosen and why. Warming discloses nothing to anyone; recording it lets a
privacy officer of the trust that holds a prior see why it was read for another trust.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from prometheus_client import Counter

from solent.domain.principal import Principal, PrincipalKind
from solent.domain.prior_relevance import Procedure, Rules, relevant_priors, study_day
from solent.domain.procedures import Mapped
from solent.errors import NotFound
from solent.index import identity as ids
from solent.index import procedures as store
from solent.index.sql import Index
from solent.services import mdt_prefetch as warm
from solent.services.access import AccessService
from solent.services.audit import AuditAction, AuditTrail, PatientRef
from solent.services.identity import IdentityService
from solent.services.procedures import ProcedureCoding
from solent.services.retrieve import RetrieveService

log = logging.getLogger(__name__)

CHANNEL = "prior prefetch"  # the audit channel of the reads made to warm priors
TRIGGERS = ("order", "admission", "study")
#: A study arriving triggers a prefetch only when it was made this recently: one dated earlier
#: is an import or a migration of the past, not a study someone is about to report.
ARRIVAL_WINDOW_DAYS = 7

PRIORS = Counter(
    "solent_prefetch_priors_total",
    "Priors warmed by rules-based prefetch (R47), by trigger and the criterion they matched",
    ["trigger", "matched"],
)
RUNS = Counter(
    "solent_prefetch_runs_total",
    "Rules-based prefetches run, by trigger and outcome (warmed, nothing-relevant, unknown, "
    "old-study: a study arriving dated more than ARRIVAL_WINDOW_DAYS ago)",
    ["trigger", "outcome"],
)


@dataclass
class PrefetchResult:
    """What one prefetch chose and warmed (returned to the job, logged and audited)."""

    trigger: str
    outcome: str = "unknown"
    patient: PatientRef | None = None
    trust: str | None = None
    chosen: list[tuple[str, str, str]] = field(default_factory=list)  # (study, trust, why)
    warmed: dict[str, int] = field(default_factory=dict)


def _modalities(value: str | None) -> frozenset[str]:
    return frozenset(m for m in (value or "").replace(",", "\\").split("\\") if m)


def _procedure_of_mapped(
    study_uid: str, when: str | None, modalities: frozenset[str], mapped: Mapped | None, trust: str
) -> Procedure:
    return Procedure(
        study_uid,
        when,
        modalities,
        mapped.key if mapped else None,
        mapped.regions if mapped else frozenset(),
        trust,
    )


class PriorPrefetch:
    """Chooses a trigger's relevant priors and warms them in this process (see module doc)."""

    def __init__(
        self,
        index: Index,
        identity: IdentityService,
        access: AccessService,
        audit: AuditTrail,
        retrieve: RetrieveService,
        coding: ProcedureCoding,
        rules: Rules,
        base_url: str,
        today: Callable[[], date] = date.today,
    ) -> None:
        self._index = index
        self._identity = identity
        self._access = access
        self._audit = audit
        self._retrieve = retrieve
        self.coding = coding
        self.rules = rules
        self.base_url = base_url.rstrip("/")
        self.today = today

    # -- what the trigger names ---------------------------------------------------------------

    def _current(
        self,
        trigger: str,
        study_uid: str | None,
        accession: str | None,
        issuer: str | None,
        patient_pk: int | None,
    ) -> tuple[int, str, Procedure | None] | None:
        """(the patient record, the trust whose clinicians will view, the current procedure)."""
        if trigger == "order":
            with self._index.read() as conn:
                order = store.order_with_context(
                    conn, study_uid=study_uid, accession=accession, issuer=issuer
                )
            if order is None:
                return None
            found = self._identity.resolve(str(order["patient_issuer"]), str(order["patient_id"]))
            if found is None:
                return None
            trust = str(order["patient_issuer"])
            mapped: Mapped | None
            if order.get("nicip_code") or order.get("snomed_code"):
                mapped = Mapped(
                    order["nicip_code"], order["snomed_code"], order["body_region"], "map"
                )
            else:  # filed before the table had its row: map it now
                mapped = self.coding.map_code(
                    str(order["accession_issuer"]),
                    order.get("procedure_coding_system"),
                    order.get("procedure_code"),
                    order.get("requested_procedure_description"),
                )
            current = _procedure_of_mapped(
                str(order["study_instance_uid"]),
                order["scheduled_start_date"],
                _modalities(order["modality"]),
                mapped,
                trust,
            )
            return found.patient_pk, trust, current
        if trigger == "study":
            if not study_uid:
                return None
            with self._index.read() as conn:
                study = ids.study_by_uid(conn, study_uid)
            if study is None:
                return None
            row = {**study, "study_uid": study_uid}
            mapped, _ = self.coding.study_codes([row])[study_uid]
            current = _procedure_of_mapped(
                study_uid,
                study["study_date"],
                _modalities(study["modalities"]),
                mapped,
                str(study["trust_code"]),
            )
            return int(study["patient_pk"]), str(study["trust_code"]), current
        if trigger == "admission" and patient_pk is not None:
            record = self._patient(patient_pk)
            if record is None:
                return None
            return patient_pk, record.issuer, None
        return None

    def _recent(self, study_date: str | None) -> bool:
        made = study_day(study_date)
        return made is not None and (self.today() - made).days <= ARRIVAL_WINDOW_DAYS

    def _patient(self, patient_pk: int) -> PatientRef | None:
        with self._index.read() as conn:
            row = ids.get_patient(conn, patient_pk)
        return (
            None if row is None else PatientRef(row["issuer"], row["local_id"], row["nhs_number"])
        )

    def candidates(self, patient_pk: int, trust: str) -> list[tuple[Procedure, dict[str, Any]]]:
        """Every study of the person (all linked records) a clinician of ``trust`` may open."""
        component = self._identity.linked_patient_pks(patient_pk)
        viewer = Principal(PrincipalKind.NODE, "prefetch", trust)  # the trust's scope, no user
        visible = self._access.visible_among(viewer, component)
        studies = self._identity.studies(visible)
        codes = self.coding.study_codes(studies)
        out = []
        for s in studies:
            mapped, _ = codes[str(s["study_uid"])]
            proc = _procedure_of_mapped(
                str(s["study_uid"]),
                s["study_date"],
                _modalities(s["modalities"]),
                mapped,
                str(s["trust_code"]),
            )
            out.append((proc, s))
        return out

    # -- the run -------------------------------------------------------------------------------

    def run(
        self,
        trigger: str,
        *,
        study_uid: str | None = None,
        accession: str | None = None,
        issuer: str | None = None,
        patient_pk: int | None = None,
    ) -> PrefetchResult:
        """Choose and warm the trigger's priors; what was done (also metrics, log, audit)."""
        result = PrefetchResult(trigger)
        if trigger not in TRIGGERS:
            raise ValueError(f"unknown prefetch trigger {trigger!r}")
        named = self._current(trigger, study_uid, accession, issuer, patient_pk)
        if named is None:
            RUNS.labels(trigger, "unknown").inc()
            log.info(
                "prefetch (%s): nothing names a patient (%s)", trigger, study_uid or patient_pk
            )
            return result
        pk, trust, current = named
        result.trust = trust
        if trigger == "study" and current is not None and not self._recent(current.study_date):
            result.outcome = "old-study"
            RUNS.labels(trigger, result.outcome).inc()
            return result
        result.patient = self._patient(pk)
        found = self.candidates(pk, trust)
        rows = {proc.study_uid: row for proc, row in found}
        chosen = relevant_priors(current, [p for p, _ in found], self.rules, self.today())
        if not chosen:
            result.outcome = "nothing-relevant"
            RUNS.labels(trigger, result.outcome).inc()
            return result
        principal = Principal(
            PrincipalKind.SYSTEM, "prefetch", trust, purpose=f"prefetch:{trigger}"
        )
        warmed = warm.Warmed()
        for prior, why in chosen:
            try:
                self._warm_study(
                    principal, prior.study_uid, int(rows[prior.study_uid]["study_pk"]), warmed
                )
            except NotFound:  # deleted or rejected since it was chosen: nothing to warm
                continue
            result.chosen.append((prior.study_uid, str(prior.trust), why))
            PRIORS.labels(trigger, why).inc()
        result.warmed = dict(warmed.counts)
        result.outcome = "warmed" if result.chosen else "nothing-relevant"
        RUNS.labels(trigger, result.outcome).inc()
        self._audit.record(
            principal,
            AuditAction.VIEW,
            patient=result.patient,
            purpose=principal.purpose,
            detail={
                "prefetch": trigger,
                "studies": [{"study": s, "trust": t, "matched": w} for s, t, w in result.chosen],
                "warmed": result.warmed,
            },
        )
        log.info(
            "prefetch (%s) for a patient of %s warmed %d prior(s) from %s: %s",
            trigger,
            trust,
            len(result.chosen),
            ",".join(sorted({t for _, t, _ in result.chosen})),
            result.warmed,
        )
        return result

    def _warm_study(
        self, principal: Principal, study_uid: str, study_pk: int, warmed: warm.Warmed
    ) -> None:
        svc = self._retrieve
        warm.warm_study_thumbnail(svc, principal, study_uid, warmed, CHANNEL)
        for n, series in enumerate(self._identity.series(study_pk)):
            warm.warm_series(
                svc,
                principal,
                study_uid,
                str(series["series_uid"]),
                self.base_url,
                warmed,
                preview=n == 0,
                channel=CHANNEL,
            )
