"""An instance ingest has parsed, attributed and placed durably, waiting for its index rows:
what the group commit (``pipeline``) and the hold for reconciliation (``held``) both take."""

from __future__ import annotations

from dataclasses import dataclass

from solent.dicom.parse import ParsedInstance
from solent.domain.outcomes import Outcome, StoreResult
from solent.domain.principal import Principal, Provenance
from solent.storage import PLACED, Placement


@dataclass(slots=True)
class Prepared:
    """An instance whose blob is durable (once ``placement`` is waited for) and that only
    needs its index rows."""

    parsed: ParsedInstance
    principal: Principal
    provenance: Provenance
    trust: str
    local_id: str
    placeholder: bool
    replace: bool
    key: str
    placement: Placement = PLACED  # the blob's fsyncs, awaited before the index commit
    warning: str = ""  # set while indexing: stored, but not all it asked for was done


def store_detail(
    provenance: Provenance, sop_instance_uid: str | None, series_uid: str | None, outcome: str
) -> dict[str, str]:
    """The audit detail of a store: how it came in and what became of it."""
    detail = {"channel": provenance.channel.value}
    for key, value in (
        ("sop_instance_uid", sop_instance_uid),
        ("series_uid", series_uid),
        ("calling_ae", provenance.calling_ae),
        ("remote_address", provenance.remote_address),
        ("outcome", outcome),
    ):
        if value:
            detail[key] = value
    return {**detail, **provenance.extra}


def result_for(
    outcome: Outcome, parsed: ParsedInstance, message: str, *, warning: str = ""
) -> StoreResult:
    """The answer for an instance ingest accepted (stored, replaced, duplicate or held)."""
    return StoreResult(
        outcome,
        sop_class_uid=parsed.sop_class_uid,
        sop_instance_uid=parsed.sop_instance_uid,
        study_uid=parsed.study_uid,
        series_uid=parsed.series_uid,
        message=message,
        warning=warning,
    )
