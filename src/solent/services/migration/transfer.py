"""Transfer bookkeeping: what is still to fetch (newest first), and storing what was fetched
through the one ingest pipeline with each instance's outcome recorded.

The importers fetch; this module decides the record a copy is filed under (only one the
identity service links), stores through ingest and records the state that makes a killed run
resumable: ingest is idempotent per SOP Instance UID, so a re-fetched instance is a duplicate.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import Connection, select, update

from solent.dicom import iso2022
from solent.domain.outcomes import Outcome, RejectReason
from solent.domain.principal import Channel, Principal, Provenance
from solent.errors import InvalidInput, NotFound
from solent.index import identity as id_store
from solent.index import schema as t
from solent.index.sql import Index, now
from solent.ingest import Ingestor
from solent.services.access import Permission
from solent.services.identity import Change, Demographics, IdentityService, PatientKey
from solent.services.migration.copies import content_digest
from solent.services.migration.model import (
    EXCLUDED,
    OPEN_STATES,
    Item,
    Source,
    lossy_rendering,
    require,
)
from solent.services.migration.quarantine import Quarantine


class Transfer:
    def __init__(
        self,
        index: Index,
        ingestor: Ingestor,
        replacing: Ingestor,
        identity: IdentityService,
        quarantine: Quarantine,
    ) -> None:
        self._index = index
        self._ingestor = ingestor
        self._replacing = replacing  # conflict="replace": only for a better copy (R54)
        self.identity = identity
        self._quarantine = quarantine

    def pending(
        self, principal: Principal, source: str, *, newest_first: bool = True, limit: int = 0
    ) -> list[Item]:
        """Instances still to fetch, newest studies first by default (what clinicians need)."""
        require(principal, Permission.STORE)
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
        require(principal, Permission.STORE)
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
            under = file_under if isinstance(file_under, tuple) else None

            def provenance(item: Item) -> Provenance:
                return Provenance(
                    Channel.MIGRATION,
                    calling_ae=src.calling_ae if src.kind == "dimse" else None,
                    source_path=item.locator,
                    extra={"migration_source": src.name},
                )

            def replacer(item: Item, path: Path) -> Callable[[], bool]:
                def replace() -> bool:
                    got = self._replacing.ingest_files(
                        [(path, provenance(item))], principal, file_under=under
                    )[0]
                    return got.outcome in (Outcome.STORED, Outcome.REPLACED)

                return replace

            results = self._ingestor.ingest_files(
                [(path, provenance(item)) for item, path in fetched], principal, file_under=under
            )
            for (item, path), digest, size, result in zip(
                fetched, digests, sizes, results, strict=True
            ):
                if result.outcome in (Outcome.STORED, Outcome.REPLACED):
                    state, reason = "stored", None
                elif result.outcome is Outcome.DUPLICATE:
                    state, reason = "duplicate", "already in the archive with identical content"
                elif result.reason is RejectReason.CONFLICT:
                    state, reason = self._quarantine.compare(
                        src, item, path, digest, replacer(item, path)
                    )
                else:
                    state, reason = "failed", f"{result.reason}: {result.message}"
                updates.append((item.sop_uid, state, reason, digest, size))
        if file_under is None:
            stored = {sop for sop, state, *_ in updates if state == "stored"}
            self._repair_names(principal, src, [f for f in fetched if f[0].sop_uid in stored])
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

    def _repair_names(
        self, principal: Principal, src: Source, stored: list[tuple[Item, Path]]
    ) -> None:
        """Reconcile named each record migration created from the source's listing, which a
        legacy PACS answers in its own character set: a name may have lost every letter that
        set cannot carry. The first instance stored carries the name in its own character
        set; a record with no name (the listing lost every letter), or whose name is exactly a
        lossy rendering of the header's, takes the header's name (through the identity
        service, audited). Any other difference is left alone."""
        mp = t.migration_patient.c
        for pid in dict.fromkeys(item.patient_id for item, _ in stored if item.patient_id):
            path = next(p for i, p in stored if i.patient_id == pid)
            header = _header_name(path)
            resolved = self.identity.resolve(src.trust, pid)
            if header is None or resolved is None:
                continue
            with self._index.read() as conn:
                owns = conn.execute(
                    select(mp.owns_record).where(mp.source == src.name, mp.patient_id == pid)
                ).scalar()
                row = id_store.get_patient(conn, resolved.patient_pk)
            if (
                owns
                and row is not None
                and (not row["name"] or lossy_rendering(header, row["name"]))
            ):
                self.identity.update_record(
                    PatientKey(src.trust, pid), Demographics(name=header), Change(principal)
                )

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

    def fail(self, principal: Principal, source: str, sop_uid: str, reason: str) -> None:
        require(principal, Permission.STORE)
        self._set(source, sop_uid, "failed", reason, None)

    def exclude(
        self, principal: Principal, source: str, sop_uids: list[str], reason: str
    ) -> list[dict[str, Any]]:
        """Leave instances the source can never deliver (a corrupt file, a transfer syntax it
        cannot send) out of the migration, with the operator's reason: no longer fetched,
        counted as ``excluded`` by the verification, not as unresolved. Only instances not
        yet in the archive (pending, failed, held as a conflict or waiting on identity); the
        rows changed (study, patient), for the audit record."""
        require(principal, Permission.STORE)
        why = " ".join(reason.split())
        if not why:
            raise InvalidInput("say why these instances are left out (--reason)")
        note = f"excluded by {principal.name}: {why}"[:4000]
        return self._move(source, sop_uids, OPEN_STATES, EXCLUDED, note)

    def include(
        self, principal: Principal, source: str, sop_uids: list[str]
    ) -> list[dict[str, Any]]:
        """Undo ``exclude``: the instances are fetched again by the next run."""
        require(principal, Permission.STORE)
        return self._move(source, sop_uids, (EXCLUDED,), "pending", None)

    def _move(
        self,
        source: str,
        sop_uids: list[str],
        from_states: tuple[str, ...],
        to_state: str,
        reason: str | None,
    ) -> list[dict[str, Any]]:
        c = t.migration_item.c
        wanted = list(dict.fromkeys(sop_uids))

        def op(conn: Connection) -> list[dict[str, Any]]:
            rows = [
                dict(r)
                for r in conn.execute(
                    select(c.sop_uid, c.study_uid, c.patient_id, c.state).where(
                        c.source == source, c.sop_uid.in_(wanted)
                    )
                ).mappings()
            ]
            found = {r["sop_uid"]: r for r in rows}
            unknown = [u for u in wanted if u not in found]
            if unknown:
                raise NotFound(f"source {source!r} lists no instance {unknown[0]}")
            stuck = [r for r in rows if r["state"] not in from_states]
            if stuck:
                raise InvalidInput(
                    f"instance {stuck[0]['sop_uid']} is {stuck[0]['state']}; only "
                    f"{', '.join(from_states)} instances can be "
                    f"{'excluded' if to_state == EXCLUDED else 'included again'}"
                )
            conn.execute(
                update(t.migration_item)
                .where(c.source == source, c.sop_uid.in_(wanted))
                .values(state=to_state, reason=reason, updated_at=now())
            )
            return rows

        changed: list[dict[str, Any]] = self._index.write(op)
        return changed

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


def _header_name(path: Path) -> str | None:
    """Patient's Name as the file's own Specific Character Set decodes it, without the ISO 2022
    escape sequences pydicom leaves in some sets (IR 58), as ingest reads it."""
    try:
        ds = pydicom.dcmread(
            path, force=True, specific_tags=["SpecificCharacterSet", "PatientName"]
        )
        name = iso2022.strip(str(ds.get("PatientName") or "")).strip().replace("\x00", "")
    except Exception:  # an unreadable header names nobody; ingest reported it already
        return None
    return name or None
