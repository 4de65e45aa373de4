"""The access rule kept as rows on PostgreSQL (migration 0009, issue 16) says what the rule itself
says (index/access.py ``evaluated_patient_pks``), for every trust, after every kind of change a
feed, an ingest or an administrator makes: NHS numbers traced, untraced, moved; dates of birth
and sexes changed; explicit links and "unlinked" decisions made and undone; studies stored,
moved between records and deleted; orders placed, corrected and cancelled; records added and
removed. A stale row would show a record to a trust that may no longer see it, so each change
is checked as soon as it commits.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, delete, insert, select, update

from solent.index import identity as store
from solent.index import schema as t
from solent.index.access import evaluated_patient_pks, granted_pks, visible_patient_pks
from solent.index.sql import Index

TRUSTS = ("ZZA", "ZZB", "ZZC", "ZZD")
NUMBERS = ("9434765919", "9434765870", "9434765862", "9434765854", "9434765846", "9434765838")


@pytest.fixture
def index(regional_pg_index: Index) -> Index:
    return regional_pg_index


def _now() -> datetime:
    return datetime.now(UTC)


class Region:
    """A small random region and the changes made to it (few NHS numbers, so records meet)."""

    def __init__(self, index: Index, rng: random.Random) -> None:
        self.index, self.rng = index, rng
        self.serial = 0

    def _demographics(self) -> dict[str, Any]:
        r = self.rng
        return {
            "birth_date": r.choice(["19700101", "19700101", "19811224", "", None]),
            "sex": r.choice(["M", "M", "F", "", "U"]),
            "nhs_number": r.choice([*NUMBERS, None]),
            "nhs_number_valid": r.random() > 0.15,
            "nhs_number_verified": r.random() > 0.3,
        }

    def _pks(self, conn: Connection, table: Any = t.patient) -> list[int]:
        return [int(pk) for pk in conn.scalars(select(table.c.pk).order_by(table.c.pk))]

    def add_record(self, conn: Connection) -> None:
        self.serial += 1
        trust = self.rng.choice(TRUSTS)
        store.insert_patient(conn, trust, f"R{self.serial}", self._demographics())

    def add_study(self, conn: Connection) -> None:
        self.serial += 1
        stamp = _now()
        conn.execute(
            insert(t.study).values(
                study_uid=f"1.2.826.0.1.3680043.10.1.{self.serial}",
                patient_pk=self.rng.choice(self._pks(conn)),
                trust_code=self.rng.choice(TRUSTS),
                modalities="CT",
                created_at=stamp,
                updated_at=stamp,
            )
        )

    def add_order(self, conn: Connection) -> None:
        self.serial += 1
        r = self.rng
        ordered = conn.execute(
            select(t.patient.c.issuer, t.patient.c.local_id, t.patient.c.nhs_number).where(
                t.patient.c.pk == r.choice(self._pks(conn))
            )
        ).one()
        conn.execute(
            insert(t.orders).values(
                accession_number=f"A{self.serial}",
                accession_issuer=ordered.issuer,
                patient_issuer=ordered.issuer,
                patient_id=ordered.local_id if r.random() > 0.2 else "UNKNOWN",
                nhs_number=ordered.nhs_number if r.random() > 0.2 else r.choice(NUMBERS),
                patient_birth_date=r.choice(["19700101", "19811224", ""]),
                patient_sex=r.choice(["M", "F", ""]),
                study_instance_uid=f"1.2.826.0.1.3680043.10.2.{self.serial}",
                modality="CT",
                scheduled_start_date="20261205",
                status="SCHEDULED",
                created_at=_now(),
                updated_at=_now(),
            )
        )

    def change(self, conn: Connection) -> str:
        """One random change; its name, for the failure message."""
        r = self.rng
        pks = self._pks(conn)
        p = t.patient.c
        kind = r.choice(
            [
                "number", "traced", "valid", "birth", "sex", "link", "unlink", "drop-link",
                "study", "move-study", "study-trust", "drop-study", "order", "order-fix",
                "drop-order", "record", "drop-record",
            ]
        )  # fmt: skip
        if kind == "number":
            conn.execute(
                update(t.patient)
                .where(p.pk == r.choice(pks))
                .values(nhs_number=r.choice([*NUMBERS, None]))
            )
        elif kind in ("traced", "valid"):
            column = "nhs_number_verified" if kind == "traced" else "nhs_number_valid"
            conn.execute(
                update(t.patient).where(p.pk == r.choice(pks)).values({column: r.random() > 0.5})
            )
        elif kind == "birth":
            conn.execute(
                update(t.patient)
                .where(p.pk == r.choice(pks))
                .values(birth_date=r.choice(["19700101", "19811224", ""]))
            )
        elif kind == "sex":
            conn.execute(update(t.patient).where(p.pk == r.choice(pks)).values(sex=r.choice("MFU")))
        elif kind in ("link", "unlink"):
            a, b = sorted(r.sample(pks, 2))
            store.set_link(conn, a, b, kind + "ed", "test", "test")
        elif kind == "drop-link":
            links = conn.execute(select(t.patient_link.c.patient_a, t.patient_link.c.patient_b))
            pairs = list(links)
            if pairs:
                store.delete_link(conn, *r.choice(pairs))
        elif kind == "study":
            self.add_study(conn)
        elif kind in ("move-study", "study-trust", "drop-study"):
            studies = self._pks(conn, t.study)
            if studies:
                where = t.study.c.pk == r.choice(studies)
                if kind == "move-study":
                    conn.execute(update(t.study).where(where).values(patient_pk=r.choice(pks)))
                elif kind == "study-trust":
                    conn.execute(update(t.study).where(where).values(trust_code=r.choice(TRUSTS)))
                else:
                    conn.execute(delete(t.study).where(where))
        elif kind == "order":
            self.add_order(conn)
        elif kind in ("order-fix", "drop-order"):
            o = t.orders.c
            orders = list(conn.execute(select(o.accession_number, o.accession_issuer)))
            if orders:
                number, issuer = r.choice(orders)
                where = (o.accession_number == number) & (o.accession_issuer == issuer)
                if kind == "order-fix":
                    conn.execute(
                        update(t.orders)
                        .where(where)
                        .values(
                            nhs_number=r.choice(NUMBERS),
                            patient_birth_date=r.choice(["19700101", "19811224"]),
                        )
                    )
                else:
                    conn.execute(delete(t.orders).where(where))
        elif kind == "record":
            self.add_record(conn)
        else:  # a record nothing refers to any more
            used = select(t.study.c.patient_pk).union(
                select(t.patient_link.c.patient_a), select(t.patient_link.c.patient_b)
            )
            free = [pk for pk in pks if pk not in set(conn.scalars(used))]
            if free:
                conn.execute(delete(t.patient).where(p.pk == r.choice(free)))
        return kind

    def build(self, records: int) -> None:
        def fill(conn: Connection) -> None:
            for _ in range(records):
                self.add_record(conn)
            for _ in range(records):
                self.add_study(conn)
            for _ in range(records // 6):
                self.add_order(conn)
            pks = self._pks(conn)
            for _ in range(records // 5):
                a, b = sorted(self.rng.sample(pks, 2))
                store.set_link(conn, a, b, self.rng.choice(["linked", "unlinked"]), "t", "t")

        self.index.write(fill)


def _mismatches(index: Index) -> list[str]:
    """Where the kept rows and the rule disagree, per trust and for a two-trust user."""
    out = []
    now = _now()
    with index.read() as conn:
        for trusts in ([code] for code in TRUSTS):
            kept = set(conn.scalars(visible_patient_pks(trusts, None, now, "postgresql")))
            rule = set(conn.scalars(evaluated_patient_pks(trusts, None, now, "postgresql")))
            if kept != rule:
                out.append(f"{trusts}: shown only kept {kept - rule}, only by rule {rule - kept}")
        pair = ["ZZB", "ZZD"]
        kept = set(conn.scalars(visible_patient_pks(pair, None, now, "postgresql")))
        rule = set(conn.scalars(evaluated_patient_pks(pair, None, now, "postgresql")))
        if kept != rule:
            out.append(f"{pair}: only kept {kept - rule}, only by rule {rule - kept}")
    return out


@pytest.mark.parametrize("seed", [11, 12])
def test_the_kept_rows_follow_the_rule_through_every_kind_of_change(
    index: Index, seed: int
) -> None:
    region = Region(index, random.Random(seed))
    region.build(records=40)
    assert _mismatches(index) == []
    with index.read() as conn:
        shown = {c: len(list(conn.scalars(visible_patient_pks([c], None, _now(), "postgresql"))))
                 for c in TRUSTS}  # fmt: skip
        total = len(list(conn.scalars(select(t.patient.c.pk))))
    # Links and orders widen what each trust sees, but no trust sees everything.
    assert all(0 < n < total for n in shown.values()), (shown, total)
    for step in range(160):
        kind = index.write(region.change)
        assert _mismatches(index) == [], f"after change {step}: {kind}"


def test_a_break_glass_grant_opens_the_record_and_its_linked_records_for_that_user(
    index: Index,
) -> None:
    def fill(conn: Connection) -> dict[str, int]:
        same = {"nhs_number": NUMBERS[0], "nhs_number_valid": True, "nhs_number_verified": True}
        b = store.insert_patient(conn, "ZZB", "B1", dict(same))
        c = store.insert_patient(conn, "ZZC", "C1", dict(same))
        d = store.insert_patient(conn, "ZZD", "D1", {"nhs_number": NUMBERS[1]})
        e = store.insert_patient(conn, "ZZD", "E1", {})
        store.set_link(conn, d, b, "linked", "hl7:A24", "test")
        conn.execute(
            insert(t.break_glass).values(
                user_name="dr.who",
                user_trust="ZZA",
                patient_pk=b,
                reason_code="emergency",
                reason_text="test",
                granted_at=_now(),
                expires_at=_now() + timedelta(hours=1),
            )
        )
        return {"b": b, "c": c, "d": d, "e": e}

    pks = index.write(fill)
    now = _now()
    with index.read() as conn:
        granted = granted_pks(conn, "dr.who", now)
        assert granted == sorted([pks["b"], pks["c"], pks["d"]])  # NHS number, A24 link
        assert granted_pks(conn, "someone.else", now) == []
        assert granted_pks(conn, "dr.who", now + timedelta(hours=2)) == []  # expired
        kept = set(conn.scalars(visible_patient_pks(["ZZA"], "dr.who", now, "postgresql", granted)))
        rule = set(conn.scalars(evaluated_patient_pks(["ZZA"], "dr.who", now, "postgresql")))
    assert kept == rule == {pks["b"], pks["c"], pks["d"]}


def test_changes_committed_at_once_from_several_connections_leave_no_stale_row(
    index: Index,
) -> None:
    """Four writers change the same few people at once (each change its own transaction, as
    four nodes' feeds and ingests would, committing a little later as a busy node does):
    afterwards what is kept is what the rule says, and no writer failed on a lock."""
    from concurrent.futures import ThreadPoolExecutor

    Region(index, random.Random(5)).build(records=30)

    def writer(seed: int) -> None:
        region = Region(index, random.Random(seed))
        region.serial = seed * 10_000  # unique UIDs and accession numbers per writer

        def change(conn: Connection) -> str:
            kind = region.change(conn)
            conn.exec_driver_sql("SELECT pg_sleep(0.01)")
            return kind

        for _ in range(30):
            index.write(change)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(writer, range(1, 5)))
    assert _mismatches(index) == []


def test_solent_check_finds_kept_rows_out_of_date_and_repair_rebuilds_them(
    index: Index, tmp_path: Any
) -> None:
    """A bulk load or a partial restore with the triggers off leaves the kept rows stale:
    `solent check` says so (hidden and wrongly shown pairs) and `--repair` rebuilds them."""
    from solent.services.check import check_archive
    from solent.storage.filesystem import FileBlobStore

    Region(index, random.Random(3)).build(records=20)
    store = FileBlobStore(tmp_path / "blobs")
    assert check_archive(index, store).visibility_drift == {"missing": 0, "extra": 0}

    def behind_the_triggers(conn: Connection) -> None:
        conn.exec_driver_sql("ALTER TABLE study DISABLE TRIGGER solent_visibility")
        conn.execute(delete(t.study))  # every anchoring by a study at another trust goes
        conn.exec_driver_sql("ALTER TABLE study ENABLE TRIGGER solent_visibility")

    index.write(behind_the_triggers)
    report = check_archive(index, store)
    assert report.visibility_drift["extra"] > 0 and not report.clean
    repaired = check_archive(index, store, repair=True)
    assert repaired.repaired["visibility_rebuilt"] == 1
    assert check_archive(index, store).visibility_drift == {"missing": 0, "extra": 0}
    assert _mismatches(index) == []


def test_an_order_does_not_anchor_a_record_unlinked_from_its_own(index: Index) -> None:
    """Migration 0015: ZZB's order for B1 does not open ZZA's A1 (same traced number, agreeing
    demographics) at ZZB once an A37 has separated A1 from B1."""
    person = {
        "nhs_number": NUMBERS[0],
        "nhs_number_valid": True,
        "nhs_number_verified": True,
        "birth_date": "19700101",
        "sex": "M",
    }

    def fill(conn: Connection) -> dict[str, int]:
        pks = {
            code: store.insert_patient(conn, code, f"{code[-1]}1", dict(person))
            for code in ("ZZA", "ZZB")
        }
        store.set_link(conn, pks["ZZA"], pks["ZZB"], "unlinked", "hl7:A37", "test")
        return pks

    def order(conn: Connection) -> None:
        conn.execute(
            insert(t.orders).values(
                accession_number="ZZB25000123",
                accession_issuer="ZZB",
                patient_issuer="ZZB",
                patient_id="B1",
                nhs_number=NUMBERS[0],
                patient_birth_date="19700101",
                patient_sex="M",
                study_instance_uid="2.25.161918240158374290112345678901234567",
                modality="CT",
                scheduled_start_date="20250314",
                status="SCHEDULED",
                created_at=_now(),
                updated_at=_now(),
            )
        )

    pks = index.write(fill)
    index.write(order)
    now = _now()
    with index.read() as conn:
        kept = set(conn.scalars(visible_patient_pks(["ZZB"], None, now, "postgresql")))
        rule = set(conn.scalars(evaluated_patient_pks(["ZZB"], None, now, "postgresql")))
    assert kept == rule == {pks["ZZB"]}
    assert _mismatches(index) == []
