"""The 10 M-study benchmark fill (solent.index.bulk_pg) leaves an ordinary, usable index: every
index and key it dropped is back, sequences continue after its rows, and the synthetic region
has what the queries need (several studies per person, cross-trust links, valid NHS numbers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from solent.domain.nhs_number import is_valid
from solent.index.bulk_pg import fill_region
from solent.index.sql import Index


@pytest.fixture
def index(fresh_postgres_url: str) -> Iterator[Index]:
    idx = Index(fresh_postgres_url)
    idx.migrate()
    yield idx
    idx.close()


def _schema(index: Index) -> set[tuple[str, ...]]:
    with index.read() as conn:
        indexes = conn.execute(
            text("SELECT 'i', indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
        ).all()
        keys = conn.execute(
            text(
                "SELECT 'c', conname, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE connamespace = 'public'::regnamespace"
            )
        ).all()
    return {tuple(r) for r in [*indexes, *keys]}


def test_fill_region_restores_the_schema_and_makes_a_linked_region(index: Index) -> None:
    before = _schema(index)
    summary = fill_region(index, 6000, seed=3)
    assert _schema(index) == before
    assert summary.studies == 6000 and summary.patients == 2000
    assert summary.series == summary.instances >= 6000
    with index.read() as conn:
        per_trust = dict(
            conn.execute(text("SELECT issuer, count(*) FROM patient GROUP BY issuer")).all()
        )
        shared = conn.execute(
            text(
                "SELECT count(*) FROM patient p JOIN patient q ON q.nhs_number = p.nhs_number"
                " AND q.issuer <> p.issuer AND q.pk > p.pk"
            )
        ).scalar_one()
        links = dict(
            conn.execute(text("SELECT status, count(*) FROM patient_link GROUP BY status")).all()
        )
        busiest = conn.execute(
            text("SELECT max(n) FROM (SELECT count(*) n FROM study GROUP BY patient_pk) s")
        ).scalar_one()
        numbers = conn.execute(
            text("SELECT nhs_number FROM patient WHERE nhs_number IS NOT NULL LIMIT 200")
        ).scalars()
        assert all(is_valid(n) for n in numbers)
    assert set(per_trust) == {"ZZA", "ZZB", "ZZC", "ZZD", "ZZE", "ZZF"}
    assert per_trust["ZZA"] > per_trust["ZZF"]
    assert shared > 100  # people with records at two trusts (derived links)
    assert links.get("linked", 0) > 0 and links.get("unlinked", 0) > 0
    assert busiest >= 4  # people with several studies
    # Sequences continue after the generated rows: an ordinary insert does not collide.
    added = index.add_trust("ZZX", "After the fill")
    assert added.code == "ZZX"
    with index.read() as conn:
        nxt = conn.execute(text("SELECT nextval(pg_get_serial_sequence('study', 'pk'))")).one()
    assert int(nxt[0]) > 6000
    # A filled index refuses a second fill (it generates pks from 1: appending is not supported).
    with pytest.raises(ValueError, match="empty index"):
        fill_region(index, 10)
