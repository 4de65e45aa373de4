"""Query plans that stay flat as the archive grows (issue 16), checked with EXPLAIN on
PostgreSQL for the main QIDO/C-FIND shapes, with a ZZA node's access rule as a real caller has.

What "flat" needs, and what each test asserts of the plan:
* date range + modality, limit 100: walk the (study_date_key, pk) index backwards in the sort
  order and stop at the limit: a Limit on top, that index scan under it, no Sort, no scan of
  every study or series, and the access rule as a per-row semi-join, not a materialised set;
* by patient, by accession: straight to the patient / accession index.
The index holds 300k studies of the benchmark's regional shape (bulk_pg, ANALYZEd; ~10 s): at
20k PostgreSQL rightly hashes a trust's kept rows and sorts the few matches, which says nothing
of 10 M, where it walks as here (checked there too; `python -m bench query` measures latencies).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from solent.domain.attributes import Level
from solent.domain.matching import parse_query, scope_patient_identity
from solent.domain.principal import Principal, PrincipalKind
from solent.index import query as compiled
from solent.index.access import visible_patient_pks
from solent.index.bulk_pg import fill_region
from solent.index.identity import linkable_select
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
        fill_region(index, 300_000, seed=7)  # ANALYZEd
        yield index
    finally:
        index.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def plan(
    index: Index, keys: dict[str, str], limit: int = 101, visible: Any = None
) -> dict[str, Any]:
    """The JSON plan PostgreSQL chooses for the study query QueryService.find would run
    (``visible``: the access rule's SELECT; a ZZA node's by default)."""
    query = scope_patient_identity(parse_query(Level.STUDY, keys), NODE.trust)
    if visible is None:
        visible = AccessService(index, AuditTrail(index)).visible_patients(NODE)
    stmt = compiled.build(query, "postgresql", visible_patients=visible).limit(limit)
    return explain(index, stmt)


def explain(index: Index, stmt: Any) -> dict[str, Any]:
    """The JSON plan of a Core statement."""
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
    # Only CT studies are read, newest first: the CT index of revision 0010.
    assert [(n["Node Type"], n.get("Index Name"), n.get("Scan Direction")) for n in main] == [
        ("Index Scan", "ix_study_date_key_pk_ct", "Forward")
    ]
    assert not [s for s in scans(top, "study") + scans(top, "series") if s.startswith("Seq Scan")]
    # The access rule is checked per candidate row: no scan of every patient, no hashed set,
    # one probe of the kept rows' primary key (revision 0009) and nothing else of the rule.
    assert not [s for s in scans(top, "patient") if s.startswith("Seq Scan")]
    assert not [n for n in nodes(top) if n["Node Type"] in ("Hash", "Materialize")]
    assert scans(top, "patient_visibility") == ["Index Only Scan pk_patient_visibility"]
    assert [s for s in scans(top, "study") if "ix_study_date_key_pk" not in s] == []


def test_a_modality_without_its_own_index_walks_the_date_index(filled: Index) -> None:
    top = plan(filled, {"StudyDate": "20190101-20191231", "ModalitiesInStudy": "SR"})
    assert top["Node Type"] == "Limit"
    assert not [n for n in nodes(top) if n["Node Type"] in ("Sort", "Incremental Sort")]
    main = [n for n in nodes(top) if n.get("Alias") == "study"]
    assert [(n["Node Type"], n.get("Index Name"), n.get("Scan Direction")) for n in main] == [
        ("Index Scan", "ix_study_date_key_pk", "Backward")
    ]


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


def test_a_users_rule_with_break_glass_still_stops_at_the_limit(filled: Index) -> None:
    """A clinician's QIDO-RS (what the HTTP benchmark sends): the rule with the user's
    break-glass grants keeps the date-ordered walk, per-row checks and no hashed set."""
    user_rule = visible_patient_pks(
        ["ZZA"], "plans-user", datetime.now(UTC), "postgresql", granted=[11, 12, 13]
    )
    top = plan(
        filled, {"StudyDate": "20190101-20191231", "ModalitiesInStudy": "CT"}, 101, user_rule
    )
    assert top["Node Type"] == "Limit"
    assert not [n for n in nodes(top) if n["Node Type"] in ("Sort", "Incremental Sort")]
    main = [n for n in nodes(top) if n.get("Alias") == "study"]
    assert [(n["Node Type"], n.get("Index Name"), n.get("Scan Direction")) for n in main] == [
        ("Index Scan", "ix_study_date_key_pk_ct", "Forward")
    ]
    assert not [s for s in scans(top, "patient") + scans(top, "study") if s.startswith("Seq")]
    assert not [n for n in nodes(top) if n["Node Type"] in ("Hash", "Materialize")]


def test_the_trust_view_link_check_of_a_page_reads_indexes_only(filled: Index) -> None:
    """QIDO-RS shows other trusts' records under the caller's linked record (trust_view):
    one query finds which records of a page have a link at all. Through the patient key,
    the link table's two patient indexes and the NHS number index: no scan of a table."""
    with filled.read() as conn:
        keys = [
            (r.issuer, r.local_id)
            for r in conn.exec_driver_sql(
                "SELECT p.issuer, p.local_id FROM study s JOIN patient p ON p.pk = s.patient_pk "
                "ORDER BY s.study_date_key DESC, s.pk DESC LIMIT 100"
            )
        ]
    top = explain(filled, linkable_select(keys, "postgresql"))
    assert not [s for s in scans(top, "patient") if "Seq" in s], scans(top, "patient")
    by_alias = {n.get("Alias"): n.get("Index Name") for n in nodes(top) if n.get("Index Name")}
    assert by_alias.get("p_same_nhs") == "ix_patient_nhs_number", by_alias
    keyed = [n for n in nodes(top) if n.get("Index Name") == "uq_patient_issuer_local_id"]
    assert keyed, "the page's records are found through their (issuer, local ID) key"
    # (The link table is small here (one link per 200 records), so its plan says little: at 1 M
    # studies PostgreSQL reads it once into a hash per EXISTS, which is what such a table is for.)
