"""R6: demographics a trust's feed sent with the NHS number traced on PDS are not overwritten
by an untraced (local) update, however the record became PDS-sourced."""

from __future__ import annotations

from sqlalchemy import update

from solent.app import Archive
from solent.domain.principal import Principal, PrincipalKind
from solent.index import schema as t
from solent.services.identity import Change, Demographics, PatientKey

FEED = Change(Principal(PrincipalKind.NODE, "hl7:PAS", "ZZA"))
KEY = PatientKey("ZZA", "A601")
NUMBER = "9994001094"


def _send(archive: Archive, name: str, status: str) -> None:
    demo = Demographics(
        name=name, birth_date="19500101", sex="F", nhs_number=NUMBER, nhs_status=status
    )
    archive.identity.update_record(KEY, demo, FEED)


def _record(archive: Archive) -> dict[str, object]:
    found = archive.identity.resolve(KEY.issuer, KEY.local_id)
    assert found is not None
    record = archive.identity.record(found.patient_pk)
    assert record is not None
    return dict(record["record"])


def test_records_traced_before_the_upgrade_become_pds_sourced_quietly(archive: Archive) -> None:
    _send(archive, "TRACED^LIZ", "NSTS01")
    pk = int(_record(archive)["pk"])  # type: ignore[call-overload]
    # A record traced before migration 0021: nothing says where its demographics came from.
    archive.index.write(
        lambda c: c.execute(
            update(t.patient).where(t.patient.c.pk == pk).values(pds_demographics=False)
        )
    )
    before = _record(archive)["updated_at"]
    events = len(archive.identity.history(pk))
    _send(archive, "TRACED^LIZ", "NSTS01")  # its trust resends it traced, PDS agrees
    # PDS-sourced from now on, and nothing anyone sees changed: no event, same modified time.
    assert _record(archive)["updated_at"] == before
    assert len(archive.identity.history(pk)) == events

    _send(archive, "EDITED^LIZ", "NSTS03")  # a local edit: kept out, queued
    assert _record(archive)["name"] == "TRACED^LIZ"
    items = [i for i in archive.identity.work_queue() if i["kind"] == "pds-demographics-kept"]
    assert [i["local_id"] for i in items] == ["A601"]
    _send(archive, "TRACED^ELIZABETH", "NSTS01")  # traced on PDS: applied
    assert _record(archive)["name"] == "TRACED^ELIZABETH"
