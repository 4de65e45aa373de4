"""Legacy PACS migration state: sources, inventory, reconciliation, transfer outcomes (issue 13).

The importers (``solent.importers.migration``) talk to the legacy systems; this service owns
what must survive a crash: every instance a source holds is a row whose state moves
pending -> stored | duplicate | quarantined | failed, or waits while its patient's identity is
unresolved. Identity decisions are the identity service's (the same rules as HL7); storing is
the one ingest pipeline's. A killed run resumes from these rows: ingest is idempotent per SOP
Instance UID, so an instance stored just before the kill comes back as a duplicate, not twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import Connection, and_, delete, func, insert, select, update

from solent.domain import nhs_number as nhs
from solent.domain.outcomes import Outcome, RejectReason
from solent.domain.principal import Channel, Principal, Provenance
from solent.errors import InvalidInput, NotFound
from solent.index import identity as id_store
from solent.index import schema as t
from solent.index.sql import Index, now
from solent.ingest import Ingestor
from solent.services.access import AccessDenied, Permission, permissions_of
from solent.services.identity import VERIFIED, Change, Demographics, IdentityService, PatientKey
from solent.storage import BlobStore

KINDS = ("dimse", "dicomweb", "folder")
FINAL = ("stored", "duplicate", "quarantined")
# Work-queue kinds that stop a record's studies from moving: the identity service raised them.
BLOCKING = frozenset(
    {
        "invalid-nhs-number",
        "demographic-conflict",
        "nhs-number-changed",
        "duplicate-record",
        "migration-demographics-differ",
    }
)
STUDY_ELSEWHERE = "migration-study-elsewhere"
DIFFER = "migration-demographics-differ"


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    kind: str
    address: str
    trust: str
    nhs_traced: bool = False
    calling_ae: str = "SOLENT"
    associations: int = 2
    rate: int = 0  # instances per second, 0 = as fast as the source answers
    hours: str | None = None  # "HH:MM-HH:MM" when transfers may run (may wrap midnight)


@dataclass(frozen=True, slots=True)
class Entry:
    """One instance as the source's inventory lists it."""

    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    patient_name: str | None = None
    birth_date: str | None = None
    sex: str | None = None
    nhs_number: str | None = None
    sop_class_uid: str | None = None
    study_date: str | None = None
    modality: str | None = None
    size_bytes: int | None = None
    locator: str | None = None


@dataclass
class InventoryDelta:
    total: int = 0
    new: int = 0
    changed: int = 0  # rows whose patient demographics changed at the source


@dataclass
class Plan:
    """What a run would do (dry run) or did decide (reconcile), before any byte moves."""

    source: str
    move_instances: int = 0
    move_bytes: int = 0
    move_studies: int = 0
    merge_studies: list[dict[str, Any]] = field(default_factory=list)
    waiting: list[dict[str, str]] = field(default_factory=list)  # per study: why it waits
    demographics_applied: int = 0
    already_done: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Item:
    sop_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str | None
    patient_id: str
    locator: str | None
    size_bytes: int | None


class _DryRun(Exception):
    def __init__(self, plan: Plan) -> None:
        self.plan = plan


def _require(principal: Principal, permission: Permission) -> None:
    if permission not in permissions_of(principal):
        raise AccessDenied("migration needs the importer or an administrator")


def content_digest(path: Path) -> str:
    """The SHA-256 a migration compares copies of one instance by (R54: pixel-data hashes).

    With pixel data: the hash of the Pixel Data value, so a copy whose header was relabelled
    (an IEP copy under another patient ID) is the same acquisition, while other pixels under
    the same SOP Instance UID are a collision. Without: the dataset after the File Meta group
    (copies that came by different routes differ in their meta header only).
    """
    ds = pydicom.dcmread(path, force=True, specific_tags=["PixelData"])
    pixels = ds.get("PixelData")  # by keyword: the value
    if isinstance(pixels, bytes) and pixels:
        return hashlib.sha256(pixels).hexdigest()
    with path.open("rb") as fp:
        head = fp.read(144)
        start = 0
        if len(head) >= 144 and head[128:132] == b"DICM":
            # (0002,0000) File Meta Information Group Length: UL, value at bytes 140..143.
            start = 144 + int.from_bytes(head[140:144], "little")
        fp.seek(start)
        h = hashlib.sha256()
        while chunk := fp.read(1 << 20):
            h.update(chunk)
        return h.hexdigest()


class MigrationService:
    def __init__(
        self,
        index: Index,
        store: BlobStore,
        ingestor: Ingestor,
        identity: IdentityService,
        quarantine_dir: Path,
    ) -> None:
        self._index = index
        self._store = store  # the archive's copy of a colliding instance is compared
        self._ingestor = ingestor
        self.identity = identity
        self.quarantine_dir = quarantine_dir

    # -- sources -------------------------------------------------------------------------------

    def add_source(self, principal: Principal, src: Source) -> Source:
        _require(principal, Permission.ADMIN)
        if src.kind not in KINDS:
            raise InvalidInput(f"source kind must be one of {', '.join(KINDS)}")
        if self._index.get_trust(src.trust) is None:
            raise InvalidInput(f"no trust {src.trust!r}; add it with `solent trust add`")
        if src.associations < 1 or src.rate < 0:
            raise InvalidInput("associations must be >= 1 and rate >= 0")
        if src.hours is not None:
            _parse_hours(src.hours)

        def op(conn: Connection) -> None:
            c = t.migration_source.c
            values = {k: v for k, v in asdict(src).items() if k != "trust"}
            values["trust_code"] = src.trust
            if conn.execute(select(c.name).where(c.name == src.name)).first():
                conn.execute(update(t.migration_source).where(c.name == src.name).values(values))
            else:
                conn.execute(insert(t.migration_source).values({**values, "created_at": now()}))

        self._index.write(op)
        return src

    def sources(self, principal: Principal) -> list[Source]:
        _require(principal, Permission.STORE)
        with self._index.read() as conn:
            rows = conn.execute(select(t.migration_source).order_by(t.migration_source.c.name))
            return [_source(r) for r in rows.mappings()]

    def source(self, principal: Principal, name: str) -> Source:
        for s in self.sources(principal):
            if s.name == name:
                return s
        raise NotFound(f"no migration source {name!r}; add it with `solent migrate source add`")

    # -- inventory -----------------------------------------------------------------------------

    def record_inventory(
        self, principal: Principal, source: str, entries: Iterable[Entry]
    ) -> InventoryDelta:
        """Upsert what the source lists now: new instances become pending (delta sync)."""
        _require(principal, Permission.STORE)
        delta = InventoryDelta()
        batch: list[Entry] = []
        for e in entries:
            batch.append(e)
            if len(batch) >= 500:
                self._upsert(source, batch, delta)
                batch = []
        if batch:
            self._upsert(source, batch, delta)
        return delta

    def _upsert(self, source: str, batch: list[Entry], delta: InventoryDelta) -> None:
        c = t.migration_item.c
        demo = ("patient_id", "patient_name", "birth_date", "sex", "nhs_number")

        def op(conn: Connection) -> None:
            known = {
                r.sop_uid: r
                for r in conn.execute(
                    select(t.migration_item).where(
                        c.source == source, c.sop_uid.in_([e.sop_uid for e in batch])
                    )
                )
            }
            stamp = now()
            for e in batch:
                delta.total += 1
                values = asdict(e)
                old = known.get(e.sop_uid)
                if old is None:
                    conn.execute(
                        insert(t.migration_item).values(
                            {
                                **values,
                                "source": source,
                                "state": "pending",
                                "seen_at": stamp,
                                "updated_at": stamp,
                            }
                        )
                    )
                    delta.new += 1
                    continue
                changed = any(getattr(old, k) != values[k] for k in demo)
                if changed:
                    delta.changed += 1
                keep = {k: v for k, v in values.items() if v is not None or k in demo}
                conn.execute(
                    update(t.migration_item)
                    .where(c.pk == old.pk)
                    .values({**keep, "seen_at": stamp, "updated_at": stamp})
                )

        self._index.write(op)

    def inventory(self, principal: Principal, source: str) -> list[dict[str, Any]]:
        _require(principal, Permission.STORE)
        c = t.migration_item.c
        with self._index.read() as conn:
            q = select(t.migration_item).where(c.source == source).order_by(c.pk)
            return [
                {k: _plain(v) for k, v in r.items() if k != "pk"}
                for r in conn.execute(q).mappings()
            ]

    # -- reconciliation ------------------------------------------------------------------------

    def reconcile(self, principal: Principal, source: str, *, dry_run: bool = False) -> Plan:
        """Identity first: apply each source patient's demographics through the identity
        service (issuer = the source's trust), then decide per study whether it may move.

        A dry run makes the same decisions in a transaction that is rolled back, so it reports
        exactly what the real run would move, merge and hold, and changes nothing.
        """
        _require(principal, Permission.STORE)
        src = self.source(principal, source)

        def op(conn: Connection) -> Plan:
            plan = self._reconcile(conn, principal, src)
            if dry_run:
                raise _DryRun(plan)
            return plan

        try:
            return self._index.write(op)
        except _DryRun as done:
            return done.plan

    def _reconcile(self, conn: Connection, principal: Principal, src: Source) -> Plan:
        plan = Plan(src.name)
        c = t.migration_item.c
        rows = [
            dict(r)
            for r in conn.execute(select(t.migration_item).where(c.source == src.name)).mappings()
        ]
        # 1. Patients of EVERY inventoried source, so a conflict between two sources is
        #    known before either moves a study.
        pks = self._apply_patients(conn, principal)[src.name]
        plan.demographics_applied = pks.pop("", 0)
        # 2. Studies: held while the identity queue holds their record, or while the study is
        #    filed (or claimed by another source) under a record not linked to this one.
        blocked = self._blocked_records(conn, set(pks.values()))
        studies: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            studies[r["study_uid"]].append(dict(r))
        for study_uid, items in studies.items():
            open_items = [r for r in items if r["state"] not in FINAL]
            plan.already_done += len(items) - len(open_items)
            if not open_items:
                continue
            pids = {r["patient_id"] for r in items}
            why = "; ".join(blocked[pks[p]] for p in sorted(pids) if pks[p] in blocked)
            if len(pids) > 1:
                why = why or f"one study under several patient IDs at this source: {sorted(pids)}"
            owner = self._owner(conn, study_uid, src.name)
            pid = sorted(pids)[0]
            mine = pks[pid]
            linked = owner is not None and (
                owner["patient_pk"] == mine
                or owner["patient_pk"] in self.identity.linked_patient_pks(mine, conn=conn)
            )
            # Only a study already IN the archive holds this copy back: the first source to
            # store a study files it; another source's inventory is reported, not waited on.
            if not why and owner is not None and owner["stored"] and not linked:
                why = (
                    f"study already {owner['where']} under {owner['record']}, "
                    f"a record not linked to {pid}/{src.trust}"
                )
                self.identity.add_work_item(
                    STUDY_ELSEWHERE,
                    f"study {study_uid} at migration source {src.name} is under "
                    f"{pid}/{src.trust} but {why}; link the records or correct the "
                    "source before it moves",
                    conn=conn,
                    issuer=src.trust,
                    local_id=pid,
                    patient_pk=mine,
                )
            if not why and owner is not None:
                plan.merge_studies.append(
                    {
                        "study_uid": study_uid,
                        "with": owner["where"],
                        "filed_under": owner["record"],
                        "linked": linked,
                        "new_instances": sum(
                            1 for r in open_items if r["sop_uid"] not in owner["sops"]
                        ),
                    }
                )
            state, reason = ("waiting", why) if why else ("pending", None)
            if why:
                plan.waiting.append({"study_uid": study_uid, "reason": why})
            else:
                plan.move_studies += 1
                plan.move_instances += len(open_items)
                plan.move_bytes += sum(r["size_bytes"] or 0 for r in open_items)
            conn.execute(
                update(t.migration_item)
                .where(
                    c.source == src.name,
                    c.study_uid == study_uid,
                    c.state.in_(("pending", "waiting")),
                )
                .values(state=state, reason=reason, updated_at=now())
            )
        return plan

    def _apply_patients(self, conn: Connection, principal: Principal) -> dict[str, dict[str, int]]:
        """Apply each source patient's demographics through the identity service (issuer = the
        source's trust) when they changed since last applied; returns source -> ID -> record.

        Every distinct demographic set a source shows for one Patient ID is applied, so two NHS
        numbers for one local ID reach the identity rules as such. Key "" counts the changes.
        """
        c, mp = t.migration_item.c, t.migration_patient.c
        sources = {
            r["name"]: _source(r) for r in conn.execute(select(t.migration_source)).mappings()
        }
        shown: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        rows = conn.execute(
            select(
                c.source,
                c.patient_id,
                c.patient_name,
                c.birth_date,
                c.sex,
                c.nhs_number,
                func.min(c.study_date).label("first"),
            )
            .group_by(c.source, c.patient_id, c.patient_name, c.birth_date, c.sex, c.nhs_number)
            .order_by(c.source, c.patient_id, func.min(c.study_date))
        ).mappings()
        for r in rows:
            d = _demographics(r)
            if d not in shown[(r["source"], r["patient_id"])]:
                shown[(r["source"], r["patient_id"])].append(d)
        applied = {
            (r.source, r.patient_id): r.demographics
            for r in conn.execute(select(t.migration_patient))
        }
        change = Change(principal)
        out: dict[str, dict[str, int]] = {name: {"": 0} for name in sources}
        created = {
            int(r.patient_pk)
            for r in conn.execute(
                select(mp.patient_pk).where(mp.patient_pk.is_not(None), mp.owns_record)
            )
        }

        def migrated(pk: int) -> bool:
            return pk in created

        for (name, pid), demos in shown.items():
            src = sources[name]
            text = json.dumps(demos, sort_keys=True)
            before = self.identity.resolve(src.trust, pid, conn=conn)
            owns = before is None or migrated(before.patient_pk)
            if before is not None and not owns:
                # The trust's own record (PAS/HL7, or images received live): legacy data never
                # overwrites it; a disagreement is queued for people and its studies wait.
                self._compare(conn, before.patient_pk, src, pid, demos)
            elif applied.get((name, pid)) != text:
                for d in demos:
                    self.identity.update_record(
                        PatientKey(src.trust, pid),
                        Demographics(
                            name=d["name"],
                            birth_date=d["birth_date"],
                            sex=d["sex"],
                            nhs_number=d["nhs_number"],
                            nhs_status=VERIFIED if src.nhs_traced and d["nhs_number"] else None,
                        ),
                        change,
                        conn=conn,
                    )
                out[name][""] += 1
            resolved = self.identity.resolve(src.trust, pid, conn=conn)
            assert resolved is not None  # update_record created it if new
            out[name][pid] = resolved.patient_pk
            if owns:
                created.add(resolved.patient_pk)
            values = {
                "demographics": text,
                "patient_pk": resolved.patient_pk,
                "owns_record": owns,
                "updated_at": now(),
            }
            if (name, pid) in applied:
                conn.execute(
                    update(t.migration_patient)
                    .where(mp.source == name, mp.patient_id == pid)
                    .values(values)
                )
            else:
                conn.execute(
                    insert(t.migration_patient).values(
                        {**values, "source": name, "patient_id": pid}
                    )
                )
        return out

    def _compare(
        self, conn: Connection, pk: int, src: Source, pid: str, demos: list[dict[str, Any]]
    ) -> None:
        """Queue what the legacy system says differently from the trust's existing record."""
        row = id_store.get_patient(conn, pk)
        assert row is not None
        for d in demos:
            differ = [
                f"{k} {d[k]} (record: {row[k]})"
                for k in ("birth_date", "sex", "nhs_number")
                if d[k] and row[k] and d[k] != row[k]
            ]
            if differ:
                self.identity.add_work_item(
                    DIFFER,
                    f"migration source {src.name} has {pid}/{src.trust} with "
                    + ", ".join(differ)
                    + "; the record is kept, its legacy studies wait",
                    conn=conn,
                    issuer=src.trust,
                    local_id=pid,
                    patient_pk=pk,
                    nhs_number=row["nhs_number"],
                )

    def _blocked_records(self, conn: Connection, pks: set[int]) -> dict[int, str]:
        """Records whose studies wait: an open blocking work item names the record, or a
        demographic conflict names its NHS number (both sides of a conflict wait)."""
        rows = {int(r["pk"]): r for r in id_store.get_patients(conn, pks)}
        out: dict[int, str] = {}
        for w in id_store.work_items(conn, status="open"):
            if w["kind"] not in BLOCKING and w["kind"] != STUDY_ELSEWHERE:
                continue
            for pk, r in rows.items():
                hit = w["patient_pk"] == pk or (
                    w["kind"] == "demographic-conflict"
                    and r["nhs_number"]
                    and w["nhs_number"] == r["nhs_number"]
                )
                if hit and w["kind"] != STUDY_ELSEWHERE and pk not in out:
                    out[pk] = f"identity queue item {w['pk']} ({w['kind']}): {w['detail']}"
        return out

    def _owner(self, conn: Connection, study_uid: str, source: str) -> dict[str, Any] | None:
        """Who the study already belongs to: the archive, else another source's inventory."""
        study = id_store.study_by_uid(conn, study_uid)
        if study is not None:
            row = id_store.get_patient(conn, int(study["patient_pk"]))
            assert row is not None
            sops = {
                r[0]
                for r in conn.execute(
                    select(t.instance.c.sop_instance_uid)
                    .join(t.series, t.instance.c.series_pk == t.series.c.pk)
                    .where(t.series.c.study_pk == study["pk"])
                )
            }
            return {
                "patient_pk": int(study["patient_pk"]),
                "record": f"{row['local_id']}/{row['issuer']}",
                "where": "in the archive",
                "stored": True,
                "sops": sops,
            }
        c, mp = t.migration_item.c, t.migration_patient.c
        other = conn.execute(
            select(c.source, c.patient_id, mp.patient_pk, t.migration_source.c.trust_code)
            .join(t.migration_source, t.migration_source.c.name == c.source)
            .join(t.migration_patient, and_(mp.source == c.source, mp.patient_id == c.patient_id))
            .where(c.study_uid == study_uid, c.source != source, c.state != "waiting")
            .order_by(c.source)
            .limit(1)
        ).first()
        if other is None or other.patient_pk is None:
            return None
        sops = {
            r[0]
            for r in conn.execute(
                select(c.sop_uid).where(c.study_uid == study_uid, c.source == other.source)
            )
        }
        return {
            "patient_pk": int(other.patient_pk),
            "record": f"{other.patient_id}/{other.trust_code}",
            "where": f"at source {other.source}",
            "stored": False,
            "sops": sops,
        }

    # -- transfer ------------------------------------------------------------------------------

    def pending(
        self, principal: Principal, source: str, *, newest_first: bool = True, limit: int = 0
    ) -> list[Item]:
        """Instances still to fetch, newest studies first by default (what clinicians need)."""
        _require(principal, Permission.STORE)
        c = t.migration_item.c
        order = c.study_date.desc() if newest_first else c.study_date.asc()
        q = (
            select(t.migration_item)
            .where(c.source == source, c.state.in_(("pending", "failed")))
            .order_by(order, c.study_uid, c.series_uid, c.pk)
        )
        if limit:
            q = q.limit(limit)
        with self._index.read() as conn:
            return [
                Item(
                    r.sop_uid,
                    r.study_uid,
                    r.series_uid,
                    r.sop_class_uid,
                    r.patient_id,
                    r.locator,
                    r.size_bytes,
                )
                for r in conn.execute(q)
            ]

    def accept(self, principal: Principal, src: Source, item: Item, path: Path) -> str:
        """Store one fetched file; see accept_batch."""
        return self.accept_batch(principal, src, [(item, path)])[0]

    def accept_batch(
        self, principal: Principal, src: Source, fetched: list[tuple[Item, Path]]
    ) -> list[str]:
        """Store fetched files of ONE series through ingest (one group commit) and record
        each outcome (one more transaction); returns the states in order.

        Fetched temp files are removed; a folder source's own files are left where they are.
        """
        _require(principal, Permission.STORE)
        if not fetched:
            return []
        own = src.kind == "folder"
        digests = [content_digest(path) for _, path in fetched]
        sizes = [path.stat().st_size for _, path in fetched]
        file_under = self._file_under(src, fetched[0][0])
        updates: list[tuple[str, str, str | None, str, int]] = []
        if file_under == "waiting":
            for (item, _), digest, size in zip(fetched, digests, sizes, strict=True):
                updates.append(
                    (item.sop_uid, "waiting", "study's record is not linked", digest, size)
                )
        else:
            results = self._ingestor.ingest_files(
                [
                    (
                        path,
                        Provenance(
                            Channel.MIGRATION,
                            calling_ae=src.calling_ae if src.kind == "dimse" else None,
                            source_path=item.locator,
                            extra={"migration_source": src.name},
                        ),
                    )
                    for item, path in fetched
                ],
                principal,
                file_under=file_under if isinstance(file_under, tuple) else None,
            )
            for (item, path), digest, size, result in zip(
                fetched, digests, sizes, results, strict=True
            ):
                if result.outcome in (Outcome.STORED, Outcome.REPLACED):
                    state, reason = "stored", None
                elif result.outcome is Outcome.DUPLICATE:
                    state, reason = "duplicate", "already in the archive with identical content"
                elif result.reason is RejectReason.CONFLICT:
                    state, reason = self._collision(src, item, path, digest)
                else:
                    state, reason = "failed", f"{result.reason}: {result.message}"
                updates.append((item.sop_uid, state, reason, digest, size))
        if not own:
            for _, path in fetched:
                path.unlink(missing_ok=True)
        c = t.migration_item.c

        def op(conn: Connection) -> None:
            stamp = now()
            for sop, state, reason, digest, size in updates:
                conn.execute(
                    update(t.migration_item)
                    .where(c.source == src.name, c.sop_uid == sop)
                    .values(
                        state=state,
                        reason=reason,
                        source_sha256=digest,
                        size_bytes=size,
                        updated_at=stamp,
                    )
                )

        self._index.write(op)
        return [u[1] for u in updates]

    def _file_under(self, src: Source, item: Item) -> tuple[str, str] | str | None:
        """The record an instance of a study already filed elsewhere goes under, if linked."""
        with self._index.read() as conn:
            study = id_store.study_by_uid(conn, item.study_uid)
            if study is None:
                return None
            mine = self.identity.resolve(src.trust, item.patient_id, conn=conn)
            if mine is not None and mine.patient_pk == int(study["patient_pk"]):
                return None
            owner = id_store.get_patient(conn, int(study["patient_pk"]))
            assert owner is not None
            if mine is None or owner["pk"] not in self.identity.linked_patient_pks(
                mine.patient_pk, conn=conn
            ):
                return "waiting"
            return (str(owner["issuer"]), str(owner["local_id"]))

    def _collision(self, src: Source, item: Item, path: Path, digest: str) -> tuple[str, str]:
        """Same SOP Instance UID, other bytes: a collision unless only the meta header differs.
        The source's copy is kept (fsynced) beside the archive's; nothing is overwritten."""
        stored = self._index.instance_digest(item.sop_uid)
        if stored is not None:
            with self._store.open(stored[1]) as fp, _spool(fp) as archived:
                if content_digest(archived) == digest:
                    return "duplicate", "already in the archive (same pixel data, other header)"
        archive_sha = stored[0] if stored else ""
        dest = self.quarantine_dir / src.name / f"{item.sop_uid}.{digest[:16]}.dcm"
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes()
        with dest.open("wb") as fp:
            fp.write(data)
            fp.flush()
            os.fsync(fp.fileno())
        sha = hashlib.sha256(data).hexdigest()

        def op(conn: Connection) -> None:
            q = t.migration_quarantine.c
            found = conn.execute(
                select(q.pk).where(
                    q.source == src.name, q.sop_uid == item.sop_uid, q.source_sha256 == sha
                )
            ).first()
            if found is None:
                conn.execute(
                    insert(t.migration_quarantine).values(
                        source=src.name,
                        sop_uid=item.sop_uid,
                        study_uid=item.study_uid,
                        archive_sha256=archive_sha,
                        source_sha256=sha,
                        path=str(dest),
                        status="open",
                        at=now(),
                    )
                )

        self._index.write(op)
        return "quarantined", (
            f"SOP Instance UID already in the archive with other content (archive sha256 "
            f"{archive_sha[:12]}..., source {sha[:12]}...); both copies kept"
        )

    def fail(self, principal: Principal, source: str, sop_uid: str, reason: str) -> None:
        _require(principal, Permission.STORE)
        self._set(source, sop_uid, "failed", reason, None)

    def _set(
        self,
        source: str,
        sop_uid: str,
        state: str,
        reason: str | None,
        digest: str | None,
        size: int | None = None,
    ) -> None:
        c = t.migration_item.c
        values: dict[str, Any] = {"state": state, "reason": reason, "updated_at": now()}
        if digest:
            values["source_sha256"] = digest
        if size is not None:
            values["size_bytes"] = size
        self._index.write(
            lambda conn: conn.execute(
                update(t.migration_item)
                .where(c.source == source, c.sop_uid == sop_uid)
                .values(values)
            )
        )

    # -- verification --------------------------------------------------------------------------

    def verification(self, principal: Principal, source: str) -> dict[str, Any]:
        """Source vs archive, per instance: the source's content hash against the archived
        file's, counts per state, quarantine, and what waits on identity and why."""
        _require(principal, Permission.STORE)
        c, ic = t.migration_item.c, t.instance.c
        with self._index.read() as conn:
            rows = conn.execute(
                select(
                    t.migration_item,
                    ic.sha256.label("archive_file_sha256"),
                    ic.blob_key.label("archive_blob_key"),
                )
                .select_from(
                    t.migration_item.outerjoin(t.instance, ic.sop_instance_uid == c.sop_uid)
                )
                .where(c.source == source)
                .order_by(c.study_uid, c.series_uid, c.sop_uid)
            ).mappings()
            items = [dict(r) for r in rows]
            q = t.migration_quarantine.c
            quarantine = [
                {k: _plain(v) for k, v in r.items()}
                for r in conn.execute(
                    select(t.migration_quarantine).where(q.source == source).order_by(q.pk)
                ).mappings()
            ]
        out_items = []
        for r in items:
            archive_sha = None
            if r["archive_blob_key"]:
                with (
                    self._store.open(r["archive_blob_key"]) as fp,
                    _spool(fp) as archived,
                ):
                    archive_sha = content_digest(archived)
            verdict = r["state"]
            if r["state"] in ("stored", "duplicate"):
                if archive_sha is None:
                    verdict = "missing"
                elif archive_sha != r["source_sha256"]:
                    verdict = "hash-mismatch"
                else:
                    verdict = "verified"
            out_items.append(
                {
                    "study_uid": r["study_uid"],
                    "series_uid": r["series_uid"],
                    "sop_uid": r["sop_uid"],
                    "patient_id": r["patient_id"],
                    "state": r["state"],
                    "verdict": verdict,
                    "source_sha256": r["source_sha256"],
                    "archive_sha256": archive_sha,
                    "reason": r["reason"],
                }
            )
        counts: dict[str, int] = defaultdict(int)
        for i in out_items:
            counts[i["verdict"]] += 1
        studies = {i["study_uid"] for i in out_items}
        series = {i["series_uid"] for i in out_items}
        in_archive_studies = {i["study_uid"] for i in out_items if i["verdict"] == "verified"}
        unresolved = sum(n for k, n in counts.items() if k != "verified")
        return {
            "source": source,
            "instances": len(out_items),
            "studies": len(studies),
            "series": len(series),
            "studies_in_archive": len(in_archive_studies),
            "counts": dict(sorted(counts.items())),
            "unresolved": unresolved,
            "items": out_items,
            "quarantine": quarantine,
        }

    def progress(self, principal: Principal, source: str) -> dict[str, int]:
        _require(principal, Permission.STORE)
        c = t.migration_item.c
        with self._index.read() as conn:
            return {
                str(s): int(n)
                for s, n in conn.execute(
                    select(c.state, func.count()).where(c.source == source).group_by(c.state)
                )
            }

    def forget_source(self, principal: Principal, source: str) -> None:
        """Remove a source's migration state (not the instances it delivered)."""
        _require(principal, Permission.ADMIN)

        def op(conn: Connection) -> None:
            for table in (t.migration_item, t.migration_patient, t.migration_quarantine):
                conn.execute(delete(table).where(table.c.source == source))
            conn.execute(delete(t.migration_source).where(t.migration_source.c.name == source))

        self._index.write(op)


class _spool:
    """A blob as a temporary local file (dataset_digest reads a path; blobs may be in S3)."""

    def __init__(self, fp: Any) -> None:
        import tempfile

        self._tmp = tempfile.NamedTemporaryFile(prefix="solent-verify-", delete=False)  # noqa: SIM115
        while chunk := fp.read(1 << 20):
            self._tmp.write(chunk)
        self._tmp.close()

    def __enter__(self) -> Path:
        return Path(self._tmp.name)

    def __exit__(self, *exc: object) -> None:
        Path(self._tmp.name).unlink(missing_ok=True)


def _parse_hours(hours: str) -> tuple[int, int]:
    try:
        a, b = hours.split("-")
        ha, ma = (int(x) for x in a.split(":"))
        hb, mb = (int(x) for x in b.split(":"))
    except ValueError as exc:
        raise InvalidInput("--hours must look like 19:00-07:00") from exc
    if not (0 <= ha < 24 and 0 <= hb < 24 and 0 <= ma < 60 and 0 <= mb < 60):
        raise InvalidInput("--hours must look like 19:00-07:00")
    return ha * 60 + ma, hb * 60 + mb


def within_hours(hours: str | None, minute_of_day: int) -> bool:
    """Whether a transfer may run now; the window may wrap midnight (19:00-07:00)."""
    if not hours:
        return True
    start, end = _parse_hours(hours)
    if start <= end:
        return start <= minute_of_day < end
    return minute_of_day >= start or minute_of_day < end


def _source(r: Any) -> Source:
    return Source(
        name=r["name"],
        kind=r["kind"],
        address=r["address"],
        trust=r["trust_code"],
        nhs_traced=bool(r["nhs_traced"]),
        calling_ae=r["calling_ae"],
        associations=int(r["associations"]),
        rate=int(r["rate"]),
        hours=r["hours"],
    )


def _demographics(r: Any) -> dict[str, Any]:
    number = r["nhs_number"]
    return {
        "name": r["patient_name"] or None,
        "birth_date": r["birth_date"] or None,
        "sex": r["sex"] or None,
        "nhs_number": nhs.normalise(number) if number else None,
    }


def _plain(v: Any) -> Any:
    return v.isoformat() if hasattr(v, "isoformat") else v
