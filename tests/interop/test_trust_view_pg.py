"""The one-statement trust view on PostgreSQL (index/trust_view_pg.py) shows every record as the
Python walk of the identity service does (issue 16): same person, same record of the caller's
trust, on random identity graphs with the cases that decide a link — explicit links and
"unlinked" decisions, NHS numbers shared untraced or invalid, dates of birth and sexes that
conflict or are missing, placeholders, and chains across three trusts.
"""

from __future__ import annotations

import random

import pytest
from sqlalchemy import update

from solent.index import identity as store
from solent.index import schema as t
from solent.index import trust_view_pg
from solent.index.sql import Index
from solent.services.identity import IdentityService

TRUSTS = ("ZZA", "ZZB", "ZZC", "ZZD")


@pytest.fixture
def index(regional_pg_index: Index) -> Index:
    return regional_pg_index


def _random_graph(index: Index, rng: random.Random, people: int) -> None:
    numbers = [f"9{n:09d}" for n in rng.sample(range(10**8), people)]

    def fill(conn: object) -> None:
        pks: list[int] = []
        persons: list[list[int]] = []
        for person, number in enumerate(numbers):
            birth = f"19{rng.randint(20, 99)}0{rng.randint(1, 9)}1{rng.randint(0, 9)}"
            sex = rng.choice("MF")
            persons.append([])
            for n, trust in enumerate(rng.sample(TRUSTS, rng.randint(1, 4))):
                values = {
                    "name": f"P{person}^{trust}",
                    # Mostly agreeing, sometimes missing or conflicting.
                    "birth_date": rng.choice([birth] * 6 + ["", None, "19000101"]),
                    "sex": rng.choice([sex] * 6 + ["", "O", "U", "F" if sex == "M" else "M"]),
                    "nhs_number": rng.choice([number] * 8 + [None, "9999999999"]),
                    "nhs_number_valid": rng.random() > 0.1,
                    "nhs_number_verified": rng.random() > 0.2,
                }
                pks.append(store.insert_patient(conn, trust, f"L{person}-{n}", values))  # type: ignore[arg-type]
                persons[-1].append(pks[-1])
        several = [p for p in persons if len(p) > 1]
        for _ in range(people // 2):  # decisions within one person's records, or any two
            a, b = rng.sample(rng.choice(several) if rng.random() < 0.6 else pks, 2)
            store.set_link(conn, a, b, rng.choice(["linked", "unlinked"]), "test", "test")  # type: ignore[arg-type]
        for pk in rng.sample(pks, len(pks) // 15):
            conn.execute(update(t.patient).where(t.patient.c.pk == pk).values(placeholder=True))  # type: ignore[attr-defined]

    index.write(fill)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_statement_picks_the_record_the_identity_walk_picks(index: Index, seed: int) -> None:
    _random_graph(index, random.Random(seed), people=120)
    identity = IdentityService(index)
    with index.read() as conn:
        records = [dict(r) for r in conn.execute(store._patient_select()).mappings()]
        compared = shown = 0
        for trust in TRUSTS:
            others = [r for r in records if r["issuer"] != trust]
            walked = identity.records_seen_from_rows(others, trust, conn=conn)
            expected = {
                (r["issuer"], r["local_id"]): walked[r["pk"]]["pk"]
                for r in others
                if r["pk"] in walked
            }
            got = trust_view_pg.records_seen_from(
                conn, [(r["issuer"], r["local_id"]) for r in others], trust
            )
            assert got is not None
            assert {k: v["pk"] for k, v in got.items()} == expected, trust
            compared += len(others)
            shown += len(expected)
    # The graphs exercise both outcomes, not only "no record of the caller's trust".
    assert compared > 300 and 0.1 * compared < shown < 0.9 * compared, (compared, shown)


def test_a_chain_across_trusts_and_an_unlinked_decision(index: Index) -> None:
    """ZZB's record reaches ZZA's through ZZC's (NHS number, then an explicit link); an
    "unlinked" decision between two records of the same number stops that step."""

    def fill(conn: object) -> dict[str, int]:
        same = {"nhs_number": "9434765919", "nhs_number_valid": True, "nhs_number_verified": True}
        b = store.insert_patient(conn, "ZZB", "B1", {**same, "birth_date": "19700101"})  # type: ignore[arg-type]
        c = store.insert_patient(conn, "ZZC", "C1", {**same, "birth_date": ""})  # type: ignore[arg-type]
        a = store.insert_patient(conn, "ZZA", "A1", {"name": "SMITH^JO"})  # type: ignore[arg-type]
        d = store.insert_patient(conn, "ZZD", "D1", {**same, "sex": "F"})  # type: ignore[arg-type]
        store.set_link(conn, c, a, "linked", "hl7:A24", "test")  # type: ignore[arg-type]
        store.set_link(conn, d, b, "unlinked", "admin", "test")  # type: ignore[arg-type]
        store.set_link(conn, d, c, "unlinked", "admin", "test")  # type: ignore[arg-type]
        return {"a": a, "b": b, "c": c, "d": d}

    pks = index.write(fill)
    with index.read() as conn:
        seen = trust_view_pg.records_seen_from(
            conn, [("ZZB", "B1"), ("ZZC", "C1"), ("ZZD", "D1"), ("ZZA", "A1")], "ZZA"
        )
    assert seen is not None
    assert {k: v["pk"] for k, v in seen.items()} == {
        ("ZZB", "B1"): pks["a"],
        ("ZZC", "C1"): pks["a"],
    }
    assert seen[("ZZB", "B1")]["name"] == "SMITH^JO"


def test_a_page_whose_records_share_one_number_with_hundreds_is_left_to_the_walk(
    index: Index,
) -> None:
    """Hundreds of records under one traced NHS number (a default number a feed marked
    verified) would make the statement's work grow with page x group: such a page is
    counted first and goes to the walk."""
    same = {"nhs_number": "9434765919", "nhs_number_valid": True, "nhs_number_verified": True}

    def fill(conn: object) -> None:
        for i in range(trust_view_pg.CROWD // 10 + 5):
            store.insert_patient(conn, TRUSTS[i % 4], f"X{i}", dict(same))  # type: ignore[arg-type]
        store.insert_patient(conn, "ZZB", "ALONE", {"nhs_number": "9434765870"})  # type: ignore[arg-type]

    index.write(fill)
    crowd = [(TRUSTS[i % 4], f"X{i}") for i in range(1, 40) if TRUSTS[i % 4] != "ZZA"]
    with index.read() as conn:
        assert trust_view_pg.records_seen_from(conn, crowd, "ZZA") is None  # ~29 x 105 records
        assert trust_view_pg.records_seen_from(conn, crowd[:5], "ZZA") is not None
        assert trust_view_pg.records_seen_from(conn, [("ZZB", "ALONE")], "ZZA") == {}
