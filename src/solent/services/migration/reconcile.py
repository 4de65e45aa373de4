"""Identity before data: each source patient through the identity service, then per study
whether it may move, waits on the identity queue, or merges into a study already held.

The rules are the identity service's (the same as HL7 feeds); this module only asks them for
every inventoried source at once, so a conflict between two sources is known before either
moves a study, and it never files a study under a guess.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, and_, func, insert, select, update

from solent.domain.principal import Principal
from solent.index import identity as id_store
from solent.index import schema as t
from solent.index.sql import Index, now
from solent.services.access import Permission
from solent.services.identity import VERIFIED, Change, Demographics, IdentityService, PatientKey
from solent.services.migration.model import (
    BLOCKING,
    CONFLICT,
    DIFFER,
    FINAL,
    STUDY_ELSEWHERE,
    Plan,
    Source,
    demographics_of,
    lossy_rendering,
    require,
    source_of,
)

STUDY_PAGE = 500  # studies whose inventory rows are in memory at once


def _studies(conn: Connection, source: str) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The source's inventory study by study, a page of studies at a time (keyset on the
    Study UID): a legacy archive of millions of instances is never held in memory at once.
    Each page is read completely before its studies are handed out, so the caller may update
    their rows on the same connection."""
    c = t.migration_item.c
    last: str | None = None
    while True:
        q = select(c.study_uid).where(c.source == source)
        if last is not None:
            q = q.where(c.study_uid > last)
        uids = [
            str(u)
            for (u,) in conn.execute(
                q.group_by(c.study_uid).order_by(c.study_uid).limit(STUDY_PAGE)
            )
        ]
        if not uids:
            return
        last = uids[-1]
        page: dict[str, list[dict[str, Any]]] = {u: [] for u in uids}
        rows = conn.execute(
            select(c.study_uid, c.sop_uid, c.patient_id, c.state, c.size_bytes)
            .where(c.source == source, c.study_uid.in_(uids))
            .order_by(c.pk)
        ).mappings()
        for r in rows:
            page[r["study_uid"]].append(dict(r))
        yield from page.items()


class _DryRun(Exception):
    def __init__(self, plan: Plan) -> None:
        self.plan = plan


class Reconciler:
    def __init__(self, index: Index, identity: IdentityService) -> None:
        self._index = index
        self.identity = identity

    def reconcile(self, principal: Principal, src: Source, *, dry_run: bool = False) -> Plan:
        """Identity first: apply each source patient's demographics through the identity
        service (issuer = the source's trust), then decide per study whether it may move.

        A dry run makes the same decisions in a transaction that is rolled back, so it reports
        exactly what the real run would move, merge and hold, and changes nothing.
        """
        require(principal, Permission.STORE)

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
        # 1. Patients of EVERY inventoried source, so a conflict between two sources is
        #    known before either moves a study.
        records, applied = self._apply_patients(conn, principal)
        pks = records[src.name]
        plan.demographics_applied = applied[src.name]
        # 2. Studies: held while the identity queue holds their record, or while the study is
        #    filed (or claimed by another source) under a record not linked to this one.
        blocked = self._blocked_records(conn, set(pks.values()))
        for study_uid, items in _studies(conn, src.name):
            held = sum(1 for r in items if r["state"] == CONFLICT)
            open_items = [r for r in items if r["state"] not in (*FINAL, CONFLICT)]
            plan.conflicts += held
            plan.already_done += len(items) - len(open_items) - held
            if not open_items:
                continue
            pids = {r["patient_id"] for r in items}
            why = "; ".join(blocked[pks[p]] for p in sorted(pids) if pks.get(p) in blocked)
            if len(pids) > 1:
                why = why or f"one study under several patient IDs at this source: {sorted(pids)}"
            owner = self._owner(conn, study_uid, src.name)
            pid = sorted(pids)[0]
            mine = pks.get(pid)  # None: no Patient ID, ingest files it under its own record
            linked = (
                owner is not None
                and mine is not None
                and (
                    owner["patient_pk"] == mine
                    or owner["patient_pk"] in self.identity.linked_patient_pks(mine, conn=conn)
                )
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

    def _apply_patients(
        self, conn: Connection, principal: Principal
    ) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
        """Apply each source patient's demographics through the identity service (issuer = the
        source's trust) when they changed since last applied; returns source -> ID -> record,
        and source -> how many patients' demographics were applied.

        Every distinct demographic set a source shows for one Patient ID is applied, so two NHS
        numbers for one local ID reach the identity rules as such. Instances without a Patient
        ID have no record here: they are not one patient, and ingest files each such study
        under an unidentified record of its own, as every other way in does.
        """
        c, mp = t.migration_item.c, t.migration_patient.c
        sources = {
            r["name"]: source_of(r) for r in conn.execute(select(t.migration_source)).mappings()
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
            d = demographics_of(r)
            if d not in shown[(r["source"], r["patient_id"])]:
                shown[(r["source"], r["patient_id"])].append(d)
        applied = {
            (r.source, r.patient_id): r.demographics
            for r in conn.execute(select(t.migration_patient))
        }
        change = Change(principal)
        out: dict[str, dict[str, int]] = {name: {} for name in sources}
        changes: dict[str, int] = {name: 0 for name in sources}
        created = {
            int(r.patient_pk)
            for r in conn.execute(
                select(mp.patient_pk).where(mp.patient_pk.is_not(None), mp.owns_record)
            )
        }

        def migrated(pk: int) -> bool:
            return pk in created

        for (name, pid), demos in shown.items():
            if not pid:
                continue
            src = sources[name]
            text = json.dumps(demos, sort_keys=True)
            before = self.identity.resolve(src.trust, pid, conn=conn)
            owns = before is None or migrated(before.patient_pk)
            if before is not None and not owns:
                # The trust's own record (PAS/HL7, or images received live): legacy data never
                # overwrites it; a disagreement is queued for people and its studies wait.
                self._compare(conn, before.patient_pk, src, pid, demos)
            elif applied.get((name, pid)) != text:
                record = id_store.get_patient(conn, before.patient_pk) if before else None
                current = record["name"] if record is not None else None
                for d in demos:
                    self.identity.update_record(
                        PatientKey(src.trust, pid),
                        Demographics(
                            # not back to the listing's lossy rendering of a repaired name
                            name=None
                            if current and d["name"] and lossy_rendering(current, d["name"])
                            else d["name"],
                            birth_date=d["birth_date"],
                            sex=d["sex"],
                            nhs_number=d["nhs_number"],
                            nhs_status=VERIFIED if src.nhs_traced and d["nhs_number"] else None,
                        ),
                        change,
                        conn=conn,
                    )
                changes[name] += 1
                self._own_disagreement(conn, src, pid, demos)
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
        return out, changes

    def _own_disagreement(
        self, conn: Connection, src: Source, pid: str, demos: list[dict[str, Any]]
    ) -> None:
        """Queue a Patient ID the source itself shows with different birth dates or sexes: one
        legacy ID may be two people (a reused or mistyped hospital number). The demographics
        were applied one after another, so the record shows the last set and every study
        under the ID would be filed, shown and sent under it; its studies wait instead until
        someone resolves the item (same person: resolve it; two people: correct the source)."""
        differ = [
            f"{label} {', '.join(values)}"
            for key, label in (("birth_date", "birth dates"), ("sex", "sexes"))
            if len(values := sorted({d[key] for d in demos if d[key]})) > 1
        ]
        if not differ:
            return
        resolved = self.identity.resolve(src.trust, pid, conn=conn)
        assert resolved is not None
        names = sorted({d["name"] for d in demos if d["name"]})
        self.identity.add_work_item(
            DIFFER,
            f"migration source {src.name} lists {pid}/{src.trust} with different "
            + "; ".join(differ)
            + (f" (names: {'; '.join(names)})" if names else "")
            + ": one Patient ID may be two people; its legacy studies wait until this is "
            "resolved (same person) or the source is corrected (two people)",
            conn=conn,
            issuer=src.trust,
            local_id=pid,
            patient_pk=resolved.patient_pk,
            nhs_number=None,
        )

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
        demographic conflict names its NHS number (both sides of a conflict wait); the
        earliest such item is the reason given.

        Starts from the open items (few), never from the source's records (a legacy archive
        holds hundreds of thousands): no statement with one parameter per record (PostgreSQL
        takes at most 65535) and no walk of every record for every item."""
        items = [w for w in id_store.work_items(conn, status="open") if w["kind"] in BLOCKING]
        by_number: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for w in items:
            if w["kind"] == "demographic-conflict" and w["nhs_number"]:
                by_number[w["nhs_number"]].append(w)
        hits: dict[int, dict[str, Any]] = {}

        def hit(pk: int, w: dict[str, Any]) -> None:
            if pk in pks and (pk not in hits or w["pk"] < hits[pk]["pk"]):
                hits[pk] = w

        for w in items:
            if w["patient_pk"] is not None:
                hit(int(w["patient_pk"]), w)
        numbers = sorted(by_number)
        for start in range(0, len(numbers), 1000):
            pc = t.patient.c
            for pk, number in conn.execute(
                select(pc.pk, pc.nhs_number).where(pc.nhs_number.in_(numbers[start : start + 1000]))
            ):
                for w in by_number[number]:
                    hit(int(pk), w)
        return {
            pk: f"identity queue item {w['pk']} ({w['kind']}): {w['detail']}"
            for pk, w in hits.items()
        }

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
