"""Query plans that stay flat as the archive grows (issue 16), checked with EXPLAIN on
PostgreSQL for the main QIDO/C-FIND shapes, with a ZZA node's access rule as a real caller has.

What "flat" needs, and what each test asserts of the plan:
* date range + modality, limit 100: walk the (study_date_key, pk) index backwards in the sort
  order and stop at the limit: a Limit on top, that index scan under it, no Sort, no scan of
  every study or series, and the access rule as a per-row semi-join, not a materialised set;
* by patient, by accession: straight to the patient / accession index.
The index holds 20k synthetic studies (ANALYZEd), enough for the planner to choose as it does at
scale (the same shapes were checked at 300k; `python -m bench query` measures the latencies).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from solent.domain.attributes import Level
from solent.domain.matching import parse_query, scope_patient_identity
from solent.domain.principal import Principal, PrincipalKind
from solent.index import query as compiled
from solent.index.bulk import fill_synthetic
from solent.index.sql import Index
from solent.services.access import AccessService
from solent.services.audit import AuditTrail

NODE = Principal(PrincipalKind.NODE, "PLANS_ZZA", "ZZA")


@pytest.fixture(scope="module")
def filled(postgres_url: str) -> Iterator[Index]:
    import uuid

    import psycopg
    from psycopg import sql

    name = f"solent_plans_{uuid.uuid4().hex[:12]}"
    admin = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    index = Index(admin.rsplit("/", 1)[0] + "/" + name)
    try:
        index.migrate()
        fill_synthetic(index, 20_000, seed=7)
        with index.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
        yield index
    finally:
        index.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def plan(index: Index, keys: dict[str, str], limit: int = 101) -> dict[str, Any]:
    """The JSON plan PostgreSQL chooses for the study query QueryService.find would run."""
    query = scope_patient_identity(parse_query(Level.STUDY, keys), NODE.trust)
    visible = AccessService(index, AuditTrail(index)).visible_patients(NODE)
    stmt = compiled.build(query, "postgresql", visible_patients=visible).limit(limit)
    sql_text = stmt.compile(
        dialect=index.engine.dialect, compile_kwargs={"render_postcompile": True}
    )
    with index.engine.connect() as conn:
        raw = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + str(sql_text), sql_text.params)
        value = raw.scalar_one()
    doc = value if isinstance(value, list) else json.loads(value)
    top: dict[str, Any] = doc[0]["Plan"]
    return top


def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from nodes(child)


def scans(top: dict[str, Any], relation: str) -> list[str]:
    """'<node type> <index>' of every scan of ``relation`` in the plan."""
    return [
        f"{n['Node Type']} {n.get('Index Name', '')}".strip()
        for n in nodes(top)
        if n.get("Relation Name") == relation
    ]


def test_date_range_and_modality_stops_at_the_limit_in_index_order(filled: Index) -> None:
    top = plan(filled, {"StudyDate": "20190101-20191231", "ModalitiesInStudy": "CT"})
    assert top["Node Type"] == "Limit"
    assert not [n for n in nodes(top) if n["Node Type"] in ("Sort", "Incremental Sort")]
    main = [n for n in nodes(top) if n.get("Alias") == "study"]
    assert [(n["Node Type"], n.get("Index Name"), n.get("Scan Direction")) for n in main] == [
        ("Index Scan", "ix_study_date_key_pk", "Backward")
    ]
    assert not [s for s in scans(top, "study") + scans(top, "series") if s.startswith("Seq Scan")]
    # The access rule is checked per candidate row: no scan of every patient, no hashed set.
    assert not [s for s in scans(top, "patient") if s.startswith("Seq Scan")]
    assert not [n for n in nodes(top) if n["Node Type"] in ("Hash", "Materialize")]
    # "Has it a study at the caller's trust?" is answered from one index, without heap reads
    # (revision 0006): the scans of study other than the main walk use only that index.
    checks = [s for s in scans(top, "study") if "ix_study_date_key_pk" not in s]
    assert checks and all(s.endswith("ix_study_patient_pk_trust_code") for s in checks), checks


def test_all_studies_landing_page_stops_at_the_limit_in_index_order(filled: Index) -> None:
    top = plan(filled, {})
    assert top["Node Type"] == "Limit"
    assert not [n for n in nodes(top) if n["Node Type"] in ("Sort", "Incremental Sort")]
    main = [n for n in nodes(top) if n.get("Alias") == "study"]
    assert [n.get("Index Name") for n in main] == ["ix_study_date_key_pk"]


def test_by_patient_goes_through_the_patient_index(filled: Index) -> None:
    with filled.read() as conn:
        issuer, local_id = conn.exec_driver_sql(
            "SELECT issuer, local_id FROM patient ORDER BY pk LIMIT 1 OFFSET 500"
        ).one()
    top = plan(filled, {"PatientID": local_id, "IssuerOfPatientID": issuer}, limit=1001)
    assert top["Node Type"] == "Limit"
    outer = [n for n in nodes(top) if n.get("Alias") == "patient"]
    assert [n.get("Index Name") for n in outer] == ["uq_patient_issuer_local_id"]
    assert [n.get("Index Name") for n in nodes(top) if n.get("Alias") == "study"] == [
        "ix_study_patient_pk"
    ]


def test_by_accession_goes_through_the_accession_index(filled: Index) -> None:
    with filled.read() as conn:
        accession = conn.exec_driver_sql(
            "SELECT accession_number FROM study ORDER BY pk LIMIT 1 OFFSET 700"
        ).scalar_one()
    top = plan(filled, {"AccessionNumber": accession})
    assert top["Node Type"] == "Limit"
    main = [n for n in nodes(top) if n.get("Alias") == "study"]
    assert [n.get("Index Name") for n in main] == ["ix_study_accession_number"]
