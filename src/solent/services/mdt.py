"""MDT meetings: a coordinator lists patients and the studies to show, in order; the studies
are prefetched before the meeting; outcomes are noted per patient; the live room follows the
presenter (services/mdt_live.py).

Roles: clinicians, radiologists and MDT coordinators take part (read meetings, join the live
room, note outcomes); only an MDT coordinator creates a meeting. The one access rule still
applies to every patient: a participant who may not see an item's patient gets that item with
no patient data at all (no identifiers, name, NHS number or study UIDs), and its live view
redacted. Audit records made here carry the meeting in their purpose (``mdt:<id>``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from solent.domain.principal import Principal, PrincipalKind
from solent.errors import InvalidInput, NotFound
from solent.index import mdt as store
from solent.index import security as users
from solent.index import viewer as viewer_store
from solent.index.sql import Index
from solent.services.access import AccessDenied, AccessService, Permission, Role
from solent.services.audit import AuditAction, AuditTrail, PatientRef, audit_fields
from solent.services.identity import IdentityService
from solent.services.mdt_broker import ORDERED, Announce
from solent.services.mdt_live import LiveHub, advance
from solent.services.mdt_schedule import PREFETCH_LEAD, MeetingWarmer, purpose
from solent.services.retrieve import RetrieveService
from solent.services.viewer import ViewerService
from solent.ttl_cache import TtlCache

log = logging.getLogger(__name__)

MDT_ROLES = frozenset({Role.CLINICIAN.value, Role.RADIOLOGIST.value, Role.MDT_COORDINATOR.value})
MAX_ITEMS = 100
MAX_STUDIES_PER_ITEM = 20
MAX_OUTCOME = 10_000
_PURPOSE = re.compile(r"mdt:([1-9][0-9]{0,17})")
_TIME = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")


@dataclass(frozen=True, slots=True)
class NewItem:
    issuer: str
    patient_id: str
    study_uids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SeenItem:
    """A meeting item whose patient the caller may see, with the studies they may see."""

    meeting: dict[str, Any]
    item: dict[str, Any]
    patient: dict[str, Any]  # the item's patient record row
    study_uids: tuple[str, ...]

    def ref(self) -> PatientRef:
        return PatientRef(
            self.item["patient_issuer"], self.item["patient_id"], self.patient["nhs_number"]
        )


@dataclass(frozen=True, slots=True)
class LiveSeat:
    """What the live room needs to know about a member joining."""

    meeting_id: int
    presenter: str | None
    coordinator: bool
    visible: dict[int, frozenset[str]]


class MdtService:
    def __init__(
        self,
        index: Index,
        access: AccessService,
        audit: AuditTrail,
        viewer: ViewerService,
        retrieve: RetrieveService,
        identity: IdentityService,
    ) -> None:
        self._identity = identity  # never handed out: adapters get this service only
        self._index = index
        self._access = access
        self._audit = audit
        self._viewer = viewer
        self._retrieve = retrieve
        #: Now, in the server's time zone (meeting times are local); tests move it.
        self.clock: Callable[[], datetime] = lambda: datetime.now().astimezone()
        self._warmer = MeetingWarmer(
            index, audit, retrieve, identity, self._visible_items, lambda: self.clock()
        )
        # Accepted purpose claims (a participant's every frame request carries one), briefly.
        self._participants: TtlCache[bool] = TtlCache(10.0, limit=10_000)

    # -- roles ------------------------------------------------------------------------------

    def _require_participant(self, principal: Principal) -> None:
        if MDT_ROLES & set(principal.roles) and self._access.permits(principal, Permission.READ):
            return
        self._refuse(principal, "taking part in MDT meetings", MDT_ROLES)

    def _require_coordinator(self, principal: Principal) -> None:
        if Role.MDT_COORDINATOR.value in principal.roles and self._access.permits(
            principal, Permission.READ
        ):
            return
        self._refuse(principal, "creating MDT meetings", {Role.MDT_COORDINATOR.value})

    def _refuse(self, principal: Principal, what: str, roles: set[str] | frozenset[str]) -> None:
        self._audit.record(
            principal,
            AuditAction.PERMISSION_DENIED,
            "denied",
            detail={"what": what},
        )
        mine = ", ".join(sorted(principal.roles)) or "none"
        raise AccessDenied(
            f"your role ({mine}) does not allow {what}; roles that do: {', '.join(sorted(roles))}"
        )

    def is_coordinator(self, principal: Principal, meeting: dict[str, Any]) -> bool:
        return meeting["coordinator"] == principal.name or (
            Role.MDT_COORDINATOR.value in principal.roles
            and self._access.permits(principal, Permission.READ)
        )

    # -- reading ----------------------------------------------------------------------------

    def _meeting_row(self, meeting_id: int) -> dict[str, Any]:
        with self._index.read() as conn:
            row = store.get_meeting(conn, meeting_id)
        if row is None:
            raise NotFound(f"no MDT meeting {meeting_id}")
        return row

    def _visible_items(
        self, principal: Principal, items: list[dict[str, Any]]
    ) -> dict[int, dict[str, Any]]:
        """Item id -> the patient record row, for the items whose patient the caller may see."""
        keys = {(i["patient_issuer"], i["patient_id"]) for i in items}
        with self._index.read() as conn:
            pks = viewer_store.patient_pks(conn, keys)
        visible = self._viewer.visible_pks(principal, pks.values())
        from solent.index import identity as records

        with self._index.read() as conn:
            rows = {int(r["pk"]): r for r in records.get_patients(conn, visible)}
        out = {}
        for item in items:
            pk = pks.get((item["patient_issuer"], item["patient_id"]))
            if pk is not None and pk in rows:
                out[int(item["pk"])] = rows[pk]
        return out

    def _visible_studies(
        self, principal: Principal, items: list[dict[str, Any]], visible: dict[int, Any]
    ) -> dict[int, list[str]]:
        """Item id -> the item's study UIDs the caller may see, for the visible items. A study
        listed when the meeting was made may since be out of the caller's reach (records
        unlinked, a study moved to another patient): it is left out like a hidden patient."""
        listed = [uid for i in items if int(i["pk"]) in visible for uid in i["study_uids"]]
        seen = self._access.visible_study_uids(principal, set(listed))
        return {
            int(i["pk"]): [uid for uid in i["study_uids"] if uid in seen]
            for i in items
            if int(i["pk"]) in visible
        }

    def _json(
        self, principal: Principal, meeting: dict[str, Any], *, audit: bool = True
    ) -> dict[str, Any]:
        with self._index.read() as conn:
            items = store.items_of(conn, int(meeting["pk"]))
        visible = self._visible_items(principal, items)
        studies = self._visible_studies(principal, items, visible)
        out_items: list[dict[str, Any]] = []
        for item in items:
            patient = visible.get(int(item["pk"]))
            if patient is None:
                out_items.append(
                    {
                        "id": int(item["pk"]),
                        "position": int(item["position"]),
                        "issuer": None,
                        "patient_id": None,
                        "patient_name": None,
                        "nhs_number": None,
                        "study_uids": [],
                        "outcome": None,
                        "prefetch": None,
                    }
                )
                continue
            out_items.append(
                {
                    "id": int(item["pk"]),
                    "position": int(item["position"]),
                    "issuer": item["patient_issuer"],
                    "patient_id": item["patient_id"],
                    "patient_name": patient["name"],
                    "nhs_number": patient["nhs_number"] if patient["nhs_number_valid"] else None,
                    "study_uids": studies[int(item["pk"])],
                    "outcome": item["outcome"],
                    "prefetch": {
                        "state": item["prefetch_state"] or "pending",
                        "warmed": int(item["prefetch_warmed"] or 0),
                    },
                }
            )
            if audit:
                self._audit.record(
                    principal,
                    AuditAction.VIEW,
                    patient=PatientRef(
                        item["patient_issuer"], item["patient_id"], patient["nhs_number"]
                    ),
                    purpose=purpose(int(meeting["pk"])),
                    detail={"api": "mdt meeting", "item": int(item["pk"])},
                )
        return {
            "id": int(meeting["pk"]),
            "title": meeting["title"],
            "date": meeting["date"],
            "time": meeting["time"],
            "team": meeting["team"],
            "coordinator": meeting["coordinator"],
            "presenter": meeting["presenter"],
            "items": out_items,
            "prefetch": self._meeting_prefetch(meeting, items, studies),
        }

    def _meeting_prefetch(
        self, meeting: dict[str, Any], items: list[dict[str, Any]], visible: dict[int, list[str]]
    ) -> dict[str, Any]:
        """The meeting's prefetch progress as this caller may know it. The stored counts are
        the prefetching coordinator's (one per study and per series of every item), so to a
        participant who may not see every item they would tell how many studies and series
        the hidden patients have: such a caller gets the counts of its visible items only."""
        state = meeting["prefetch_state"]
        if all(visible.get(int(i["pk"])) == i["study_uids"] for i in items):
            return {
                "state": state,
                "done": int(meeting["prefetch_done"]),
                "total": int(meeting["prefetch_total"]),
            }
        identity = self._identity
        done = total = 0
        for item in items:
            if int(item["pk"]) not in visible:
                continue
            units = 0
            for uid in visible[int(item["pk"])]:
                row = identity.study(uid)
                if row is not None:
                    units += 1 + len(identity.series(int(row["pk"])))
            total += units
            if item["prefetch_state"] == "done":
                done += units
        return {"state": state, "done": done, "total": total}

    def get(self, principal: Principal, meeting_id: int) -> dict[str, Any]:
        self._require_participant(principal)
        return self._json(principal, self._meeting_row(meeting_id))

    def meetings(self, principal: Principal, date: str | None) -> dict[str, Any]:
        self._require_participant(principal)
        with self._index.read() as conn:
            rows = store.meetings_on(conn, date)
        return {"meetings": [self._json(principal, m) for m in rows]}

    # -- changing ---------------------------------------------------------------------------

    def create(
        self,
        principal: Principal,
        *,
        title: str,
        date: str,
        team: str,
        items: list[NewItem],
        time: str | None = None,
        base_url: str | None = None,
    ) -> dict[str, Any]:
        """A new meeting; every patient and study must be one the coordinator may see. Its
        prefetch starts at once, as the coordinator (again before ``time``: `due_prefetches`)."""
        self._require_coordinator(principal)
        self._require_participant(principal)
        if time is not None and not _TIME.fullmatch(time):
            raise InvalidInput(f"time {time[:20]!r} must be HH:MM (24-hour), e.g. 14:30")
        try:  # 2026-13-45 was kept: a meeting no schedule, prefetch or client could place
            day = datetime.strptime(date, "%Y-%m-%d").date()
        except ValueError:
            raise InvalidInput(f"date {date[:20]!r} must be a day, YYYY-MM-DD") from None
        date = day.isoformat()
        if not items or len(items) > MAX_ITEMS:
            raise InvalidInput(f"a meeting lists 1 to {MAX_ITEMS} patients")
        checked: list[tuple[str, str, list[str], PatientRef]] = []
        for item in items:
            if len(item.study_uids) > MAX_STUDIES_PER_ITEM:
                raise InvalidInput(f"at most {MAX_STUDIES_PER_ITEM} studies per patient")
            pk = self._viewer._check_patient(principal, item.issuer, item.patient_id, "mdt create")
            person = self._viewer.person_of(principal, pk)
            own = {s["study_uid"] for s in self._identity.studies(person.pks)}
            for uid in item.study_uids:
                if uid not in own:
                    raise InvalidInput(
                        f"study {uid} is not a study of patient {item.patient_id} ({item.issuer})"
                    )
            ref = person.ref()
            checked.append(
                (item.issuer, item.patient_id, list(dict.fromkeys(item.study_uids)), ref)
            )

        def op(conn: Any) -> int:
            meeting = store.add_meeting(
                conn,
                title=title,
                date=date,
                team=team,
                coordinator=principal.name,
                items=[(a, b, c) for a, b, c, _ in checked],
                time=time,
                base=base_url,
            )
            for issuer, local_id, studies, ref in checked:
                AuditTrail.append_in(
                    conn,
                    audit_fields(
                        principal,
                        AuditAction.PATIENT_RECORD,
                        patient=PatientRef(issuer, local_id, ref.nhs_number),
                        purpose=purpose(meeting),
                        detail={"mdt": "listed for the meeting", "studies": studies},
                    ),
                )
            return meeting

        meeting_id = self._index.write(op)
        if base_url is not None:
            self.prefetch(principal, meeting_id, base_url)
        return self._json(principal, self._meeting_row(meeting_id), audit=False)

    def seen_item(self, principal: Principal, meeting_id: int, item_id: int) -> SeenItem:
        """An item of a meeting as a participant who may see its patient sees it; NotFound
        (one message) for an unknown item and for one whose patient the caller may not see."""
        self._require_participant(principal)
        meeting = self._meeting_row(meeting_id)
        with self._index.read() as conn:
            items = store.items_of(conn, meeting_id)
        item = next((i for i in items if int(i["pk"]) == item_id), None)
        visible = self._visible_items(principal, [item] if item else [])
        if item is None or item_id not in visible:
            raise NotFound(f"no item {item_id} in MDT meeting {meeting_id}")
        studies = self._visible_studies(principal, [item], visible)[item_id]
        return SeenItem(meeting, item, visible[item_id], tuple(studies))

    def set_outcome(
        self, principal: Principal, meeting_id: int, item_id: int, text: str
    ) -> dict[str, Any]:
        self._require_participant(principal)
        if len(text) > MAX_OUTCOME:
            raise InvalidInput(f"the outcome is longer than {MAX_OUTCOME} characters")
        seen = self.seen_item(principal, meeting_id, item_id)
        meeting, item, patient = seen.meeting, seen.item, seen.patient

        def op(conn: Any) -> None:
            store.set_outcome(conn, item_id, text, principal.name)
            AuditTrail.append_in(
                conn,
                audit_fields(
                    principal,
                    AuditAction.PATIENT_RECORD,
                    patient=PatientRef(
                        item["patient_issuer"], item["patient_id"], patient["nhs_number"]
                    ),
                    purpose=purpose(meeting_id),
                    detail={"mdt": "outcome", "item": item_id},
                ),
            )

        self._index.write(op)
        fresh = self._json(principal, meeting, audit=False)
        return next(i for i in fresh["items"] if i["id"] == item_id)

    # -- prefetch ---------------------------------------------------------------------------

    def prefetch(
        self,
        principal: Principal,
        meeting_id: int,
        base_url: str,
        *,
        before: datetime | None = None,
    ) -> bool:
        """Start warming the caches in a background thread; False if one is running already
        (or, with ``before``, one ended after it: another node did the warming before the start).

        Runs as ``principal``: only what they may see is warmed; the rest of the items are
        marked "not available" (and never read)."""
        self._require_participant(principal)
        self._meeting_row(meeting_id)
        if not self._index.write(lambda c: store.claim_prefetch(c, meeting_id, before=before)):
            return False
        self._warmer.start(principal, meeting_id, base_url)
        return True

    def wait_prefetch(self, meeting_id: int, timeout: float) -> None:
        """For tests and tools: wait for this process's prefetch of the meeting to end."""
        self._warmer.wait(meeting_id, timeout)

    def due_prefetches(self) -> list[int]:
        """Start the warming of today's meetings that begin within `PREFETCH_LEAD` and were not
        warmed since the lead began, each as its coordinator (their access today: a disabled
        coordinator or one who lost the role warms nothing); the meetings started. Called by
        `start_background`'s thread every minute on every node; the claim in the index lets
        one node do each."""
        at = self.clock()
        started: list[int] = []
        with self._index.read() as conn:
            rows = store.meetings_starting(conn, at.date().isoformat())
        for m in rows:
            hour, minute = (int(x) for x in str(m["time"]).split(":"))
            starts = at.replace(hour=hour, minute=minute, second=0, microsecond=0)
            lead_from = starts - PREFETCH_LEAD
            if not lead_from <= at < starts:
                continue
            with self._index.read() as conn:
                row = users.get_user(self._index, str(m["coordinator"]), conn=conn)
            if row is None or row.disabled:
                continue
            who = Principal(PrincipalKind.USER, row.name, row.trust, frozenset(row.roles))
            try:
                if self.prefetch(who, int(m["pk"]), m["prefetch_base"] or "", before=lead_from):
                    started.append(int(m["pk"]))
            except AccessDenied:
                log.warning("MDT meeting %s: its coordinator may no longer take part", m["pk"])
        return started

    def start_background(self, interval: float = 60.0) -> None:
        """The thread that starts the warming shortly before each meeting (`due_prefetches`)."""
        self._warmer.start_sweep(self.due_prefetches, interval)

    def stop_background(self) -> None:
        self._warmer.stop_sweep()

    # -- the purpose a participant's reads carry (X-Solent-Purpose) -------------------------

    def purpose_for(self, principal: Principal, claim: str) -> Principal:
        """``principal`` with the purpose ``mdt:<id>`` when they take part in that meeting
        (an MDT role, and the meeting exists); unchanged otherwise (the claim is not written
        into their audit records). InvalidInput when the claim is not ``mdt:<id>``."""
        found = _PURPOSE.fullmatch(claim.strip())
        if found is None:
            raise InvalidInput(
                f"X-Solent-Purpose {claim[:40]!r} is not understood: send mdt:<meeting id>"
            )
        meeting_id = int(found.group(1))
        key = (
            principal.kind,
            principal.name,
            principal.trust,
            principal.roles,
            principal.national,
            meeting_id,
        )
        if not self._participants.lookup(key)[0]:
            if not (MDT_ROLES & set(principal.roles)):
                return principal
            if not self._access.permits(principal, Permission.READ):
                return principal
            with self._index.read() as conn:
                if store.get_meeting(conn, meeting_id) is None:
                    return principal
            self._participants.put(key, True)
        return dataclasses.replace(principal, purpose=purpose(meeting_id))

    def remembered_purpose(self, principal: Principal, claim: str) -> Principal | None:
        """`purpose_for` when it needs nothing from the index (an event loop may call it)."""
        found = _PURPOSE.fullmatch(claim.strip())
        if found is None:
            return None
        meeting_id = int(found.group(1))
        key = (
            principal.kind,
            principal.name,
            principal.trust,
            principal.roles,
            principal.national,
            meeting_id,
        )
        if self._participants.lookup(key)[0]:
            return dataclasses.replace(principal, purpose=purpose(meeting_id))
        return None

    # -- live room --------------------------------------------------------------------------

    def join_live(self, principal: Principal, meeting_id: int) -> LiveSeat:
        """Who this member is in the room and which items they may see; audited per patient."""
        self._require_participant(principal)
        meeting = self._meeting_row(meeting_id)
        with self._index.read() as conn:
            items = store.items_of(conn, meeting_id)
        visible = self._visible_items(principal, items)
        studies = self._visible_studies(principal, items, visible)
        seat: dict[int, frozenset[str]] = {}
        for item in items:
            patient = visible.get(int(item["pk"]))
            if patient is None:
                continue
            seat[int(item["pk"])] = frozenset(studies[int(item["pk"])])
            self._audit.record(
                principal,
                AuditAction.VIEW,
                patient=PatientRef(
                    item["patient_issuer"], item["patient_id"], patient["nhs_number"]
                ),
                purpose=purpose(meeting_id),
                detail={"mdt": "joined the live meeting", "item": int(item["pk"])},
            )
        return LiveSeat(
            meeting_id, meeting["presenter"], self.is_coordinator(principal, meeting), seat
        )

    # -- live room state kept with the meeting (services/mdt_broker.py, mdt_shared.py) -------
    # The room's own bookkeeping, not a caller's read: the hub redacts per member what it
    # passes on, and the member's access was decided (and audited) when it joined.

    def keep_live(self, rooms: dict[str, list[dict[str, Any]]], announce: Announce | None) -> None:
        """Number each room's presenter and view events, keep its presenter and latest view,
        and announce the events, all in one transaction (the one path that writes them).

        Rooms are locked in meeting order (no deadlock between nodes); the numbers continue
        the meeting's ``live_seq`` unless the in-process broker numbered them already. The
        presenter and view kept are what every node shows after these events (``advance``).
        Committed without waiting for the disk (``relaxed``): visible to every node at once,
        which is what late joiners need; a crash can only lose the last moments of a meeting's
        view, never patient data."""

        def op(conn: Any) -> None:
            for room in sorted(rooms, key=LiveHub.meeting_of):
                events = rooms[room]
                if any(e.get("type") in ORDERED for e in events):
                    self._keep_room(conn, LiveHub.meeting_of(room), events)
                if announce is not None:
                    announce(conn, room, events)

        self._index.write(op, relaxed=True)

    @staticmethod
    def _keep_room(conn: Any, meeting: int, events: list[dict[str, Any]]) -> None:
        locked = store.lock_live(conn, meeting)
        if locked is None:
            return
        presenter, seq = locked
        before, view = presenter, None
        for event in events:
            if event.get("type") not in ORDERED:
                continue
            if "seq" not in event:
                seq += 1
                event["seq"] = seq
            seq = max(seq, int(event["seq"]))
            presenter, counts = advance(presenter, event)
            if counts and event["type"] == "view":
                view = event
        values: dict[str, Any] = {"seq": seq}
        if presenter != before:
            values["presenter"] = presenter
        if view is not None:
            values["view"] = json.dumps(view, separators=(",", ":"))
        store.save_live(conn, meeting, **values)

    def stored_live(self, room: str) -> list[dict[str, Any]]:
        """The room as kept: a ``snapshot`` of its presenter, latest view and last number."""
        with self._index.read() as conn:
            row = store.get_live(conn, LiveHub.meeting_of(room))
        if row is None:
            return []
        presenter, view, seq = row
        snapshot = {"type": "snapshot", "presenter": presenter, "seq": seq}
        if view:
            snapshot["view"] = json.loads(view)
        return [snapshot]

    def shown(self, principal: Principal, meeting_id: int, study_uid: str) -> None:
        """The presenter showed a study to the room: one VIEW record naming its patient."""
        patient = self._access.check_study(
            principal, study_uid, AuditAction.VIEW, purpose=purpose(meeting_id)
        )
        self._audit.record(
            principal,
            AuditAction.VIEW,
            patient=patient,
            study_uid=study_uid,
            purpose=purpose(meeting_id),
            detail={"mdt": "presented to the live meeting"},
        )
