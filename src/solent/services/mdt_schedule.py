"""The warming of MDT meetings' caches in background threads: one meeting at a time per
thread, at most `PREFETCH_SLOTS` at once, and the sweep that starts the warming shortly before
each meeting (`MdtService.due_prefetches` decides which and as whom).

Split from services/mdt.py so the meeting rules (who may create, read, take part) and the
background work that fills the caches (services/mdt_prefetch.py says what is warmed) are read
apart; `MdtService` checks access and claims the meeting before anything here runs.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from solent.domain.principal import Principal
from solent.errors import NotFound
from solent.index import mdt as store
from solent.index.sql import Index
from solent.services import mdt_prefetch as warm
from solent.services.audit import AuditAction, AuditTrail, PatientRef
from solent.services.identity import IdentityService
from solent.services.retrieve import RetrieveService

log = logging.getLogger(__name__)

#: Prefetches running at once in this process: many meetings warming together must not take
#: every core from the people already viewing.
PREFETCH_SLOTS = threading.BoundedSemaphore(2)
#: The warming before a meeting starts runs this long before its start time.
PREFETCH_LEAD = timedelta(minutes=30)

#: Item id -> the patient record row, for the items whose patient the caller may see.
VisibleItems = Callable[[Principal, list[dict[str, Any]]], dict[int, dict[str, Any]]]


def purpose(meeting_id: int) -> str:
    return f"mdt:{meeting_id}"


class MeetingWarmer:
    """Runs each claimed meeting's warming as the principal who asked (only what they may see
    is read; the rest of the items are marked "not available"), and the periodic sweep."""

    def __init__(
        self,
        index: Index,
        audit: AuditTrail,
        retrieve: RetrieveService,
        identity: IdentityService,
        visible: VisibleItems,
        clock: Callable[[], datetime],
    ) -> None:
        self._index = index
        self._audit = audit
        self._retrieve = retrieve
        self._identity = identity
        self._visible = visible
        self._clock = clock
        self._threads: dict[int, threading.Thread] = {}
        self._sweeper: tuple[threading.Event, threading.Thread] | None = None

    def start(self, principal: Principal, meeting_id: int, base: str) -> None:
        """Warm a meeting the caller has claimed (``store.claim_prefetch``) in a thread."""
        thread = threading.Thread(
            target=self._guarded,
            args=(principal, meeting_id, base),
            name=f"mdt-prefetch-{meeting_id}",
            daemon=True,
        )
        self._threads[meeting_id] = thread
        thread.start()

    def wait(self, meeting_id: int, timeout: float) -> None:
        thread = self._threads.get(meeting_id)
        if thread is not None:
            thread.join(timeout)

    def _guarded(self, principal: Principal, meeting_id: int, base: str) -> None:
        try:
            with PREFETCH_SLOTS:
                self._run(principal, meeting_id, base)
        except Exception:
            log.exception("prefetch of MDT meeting %s failed", meeting_id)
            self._index.write(
                lambda c: store.finish_prefetch(c, meeting_id, "failed", self._clock())
            )

    def _run(self, principal: Principal, meeting_id: int, base: str) -> None:
        # Every read made to warm (and its audit record) carries the meeting.
        principal = dataclasses.replace(principal, purpose=purpose(meeting_id))
        with self._index.read() as conn:
            items = store.items_of(conn, meeting_id)
        visible = self._visible(principal, items)
        plan: list[tuple[dict[str, Any], list[tuple[str, list[str]]]]] = []
        for item in items:
            if int(item["pk"]) not in visible:
                hidden = int(item["pk"])
                self._index.write(
                    partial(store.set_item_prefetch, item=hidden, state="not available", warmed=0)
                )
                continue
            studies = []
            for study in item["study_uids"]:
                row = self._identity.study(study)
                if row is None:
                    continue
                series = [s["series_uid"] for s in self._identity.series(int(row["pk"]))]
                studies.append((study, series))
            plan.append((item, studies))
        total = sum(1 + len(series) for _, studies in plan for _, series in studies)
        self._index.write(lambda c: store.set_prefetch(c, meeting_id, "running", 0, total))
        done = 0
        failed = False
        for item, studies in plan:
            item_id = int(item["pk"])
            self._index.write(
                partial(store.set_item_prefetch, item=item_id, state="running", warmed=0)
            )
            warmed = warm.Warmed()
            state = "done"
            try:
                for study, series in studies:
                    warm.warm_study_thumbnail(self._retrieve, principal, study, warmed)
                    done += 1
                    for n, uid in enumerate(series):
                        warm.warm_series(
                            self._retrieve, principal, study, uid, base, warmed, preview=n == 0
                        )
                        done += 1
                        self._index.write(
                            partial(
                                store.set_prefetch, meeting=meeting_id, state="running", done=done
                            ),
                            relaxed=True,
                        )
            except NotFound:  # no longer visible to them (or deleted): nothing more is read
                state = "not available"
            except Exception:
                log.exception("prefetch of item %s of MDT meeting %s failed", item_id, meeting_id)
                state, failed = "failed", True
            self._index.write(
                partial(store.set_item_prefetch, item=item_id, state=state, warmed=warmed.total)
            )
            patient = visible[item_id]
            self._audit.record(
                principal,
                AuditAction.RETRIEVE,
                patient=PatientRef(
                    item["patient_issuer"], item["patient_id"], patient["nhs_number"]
                ),
                purpose=purpose(meeting_id),
                detail={
                    "mdt": "prefetch",
                    "studies": item["study_uids"],
                    "state": state,
                    "warmed": warmed.counts,
                },
            )
        self._index.write(lambda c: store.set_prefetch(c, meeting_id, "running", done, total))
        self._index.write(
            lambda c: store.finish_prefetch(
                c, meeting_id, "failed" if failed else "done", self._clock()
            )
        )

    def start_sweep(self, due: Callable[[], object], interval: float) -> None:
        """Call ``due`` every ``interval`` seconds until `stop_sweep` (once per process)."""
        if self._sweeper is not None:
            return
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(interval):
                try:
                    due()
                except Exception:
                    log.exception("MDT prefetch sweep failed; trying again")

        self._sweeper = (stop, threading.Thread(target=run, name="mdt-prefetch-due", daemon=True))
        self._sweeper[1].start()

    def stop_sweep(self) -> None:
        if self._sweeper is not None:
            self._sweeper[0].set()
            self._sweeper = None
