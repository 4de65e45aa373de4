"""An explicit link between two records must widen visibility by exactly that record.

Regression: the link EXISTS once lost its correlation to the candidate record, so a single
A24 link anywhere made every patient of every trust visible to every caller.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select

from solent.app import Archive
from solent.domain.attributes import Level
from solent.domain.matching import parse_query
from solent.domain.principal import Principal, PrincipalKind
from solent.index import identity
from solent.index import schema as t
from solent.index.bulk import fill_synthetic
from solent.services.trust_view import OTHER_IDS


def _issuers(archive: Archive, principal: Principal) -> Counter[str]:
    query = parse_query(Level.STUDY, {"StudyInstanceUID": None}, ignore_unknown=True)
    result = archive.query.find(principal, query, limit=None, max_results=1000)
    # The issuer of the record each study is filed under: a linked study is shown under the
    # caller's own record (services/trust_view), its own IDs under OTHER_IDS.
    return Counter(
        (row.get(OTHER_IDS) or [(None, row["IssuerOfPatientID"])])[0][1] for row in result.rows
    )


def test_one_link_reveals_one_record_not_the_region(archive: Archive) -> None:
    for code in ("ZZC", "ZZD"):
        archive.index.add_trust(code, f"Trust {code}")
    fill_synthetic(archive.index, 40, studies_per_patient=1, series_per_study=1, seed=1)
    node = Principal(PrincipalKind.NODE, "SCANNER", "ZZA", frozenset({"query"}))
    assert _issuers(archive, node) == Counter({"ZZA": 10})

    with archive.index.read() as conn:
        rows = conn.execute(select(t.patient.c.pk, t.patient.c.issuer)).all()
    zza = next(r.pk for r in rows if r.issuer == "ZZA")
    zzb = next(r.pk for r in rows if r.issuer == "ZZB")
    archive.index.write(lambda c: identity.set_link(c, zza, zzb, "linked", "test", "test"))

    assert _issuers(archive, node) == Counter({"ZZA": 10, "ZZB": 1})

    archive.index.write(lambda c: identity.set_link(c, zza, zzb, "unlinked", "test", "test"))
    assert _issuers(archive, node) == Counter({"ZZA": 10})
