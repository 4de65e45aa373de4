"""Retention in the index, on SQLite and PostgreSQL (R43, R44): a 113039 note filed by ingest
becomes one pending deletion and a warning; holds cover a study through the study, its patient
record or the person's NHS number until lifted; a deletion is decided once."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, update

from solent.domain.outcomes import Outcome
from solent.domain.principal import Channel, Principal, PrincipalKind, Provenance
from solent.index import retention
from solent.index import schema as t
from solent.index.sql import Index
from solent.ingest import Ingestor
from tests.contract.synthetic import write_instance
from tests.contract.test_index import index, index_url, ingest, ingestor, store
from tests.unit.stow_support import rejection_note

__all__ = ["index", "index_url", "ingestor", "store"]
NHS = "9990007772"


def test_holds_and_deletions(index: Index, ingestor: Ingestor, tmp_path: Path) -> None:
    image = write_instance(tmp_path / "ct.dcm", patient_id="H0001")
    assert ingest(ingestor, image).outcome is Outcome.STORED
    refs = {image.series_uid: [image.sop_instance_uid]}
    note, note_uid = rejection_note(
        "H0001", "ZZA", image.study_uid, refs, "113039", "Data Retention Policy Expired"
    )
    (tmp_path / "note.dcm").write_bytes(note)
    result = ingestor.ingest_file(
        tmp_path / "note.dcm",
        Principal(PrincipalKind.IMPORTER, "contract-test", "ZZA"),
        Provenance(Channel.IMPORT, source_path=str(tmp_path / "note.dcm")),
    )
    assert result.outcome is Outcome.STORED and "awaits approval" in result.warning

    def op(conn: Connection) -> None:
        conn.execute(
            update(t.patient).where(t.patient.c.local_id == "H0001").values(nhs_number=NHS)
        )
        owner = retention.study_owner(conn, image.study_uid)
        assert owner is not None and owner.nhs_number == NHS
        assert retention.holds_covering(conn, owner) == []
        pks = [
            retention.add_hold(conn, target, "inquiry", f"REF-{i}", "user:rm@ZZA")
            for i, target in enumerate(
                (
                    {"kind": "study", "study_uid": image.study_uid},
                    {"kind": "patient", "issuer": "ZZA", "patient_id": "H0001"},
                    {"kind": "nhs", "nhs_number": NHS},
                    {"kind": "patient", "issuer": "ZZB", "patient_id": "H0001"},  # another
                    {"kind": "study", "study_uid": "1.2.3"},  # another study
                )
            )
        ]
        assert [h["id"] for h in retention.holds_covering(conn, owner)] == pks[:3]
        for pk in pks[:2]:
            assert retention.lift_hold(conn, pk, "user:rm2@ZZA", "closed")
        assert not retention.lift_hold(conn, pks[0], "user:rm2@ZZA", "again")
        assert [h["id"] for h in retention.holds_covering(conn, owner)] == [pks[2]]
        # A trust's records managers see the holds on its records, whoever placed them.
        seen = retention.hold_rows(conn, active_only=False, trusts=frozenset({"ZZA"}))
        assert sorted(r["pk"] for r in seen) == sorted(pks[:3])
        seen = retention.hold_rows(conn, active_only=True, trusts=frozenset({"ZZB"}))
        assert [r["pk"] for r in seen] == [pks[3]]
        (pending,) = retention.deletion_rows(conn, status="pending", trusts=frozenset({"ZZA"}))
        assert pending["note_uid"] == note_uid and pending["requester_user"] is None
        assert retention.deletion_rows(conn, status=None, trusts=frozenset({"ZZB"})) == []
        assert retention.decide_deletion(conn, pending["pk"], "refused", "user:rm@ZZA", "no", None)
        assert not retention.decide_deletion(
            conn, pending["pk"], "approved", "user:x@ZZA", "", None
        )

    index.write(op)
