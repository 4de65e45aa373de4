"""Migration state without a network: folder sources into an embedded archive.

The identity decisions are the identity service's; these tests check that migration asks it
before anything moves, holds what it queues, and that a dry run changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import tracemalloc
from pathlib import Path

import pydicom
import pytest
from bench.migration_data import Patient, Study, instance_bytes
from pydicom.dataset import FileMetaDataset
from sqlalchemy import select

from solent.app import Archive
from solent.domain import nhs_number as nhs
from solent.domain.principal import Principal, PrincipalKind
from solent.importers.migration.sources import FolderSource, parse_dimse_address
from solent.importers.migration.transfer import batches, run_transfer
from solent.index import schema as t
from solent.services.access import AccessDenied
from solent.services.migration import Entry, Item, Source, content_digest, within_hours
from solent.services.migration import reconcile as reconcile_module

IMPORTER = Principal(PrincipalKind.IMPORTER, "solent-migrate", "ZZA")
N1 = nhs.complete("943476591") or ""
N2 = nhs.complete("943476592") or ""


def write_study(folder: Path, study: Study, *, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for series, sop in study.instances():
        (folder / f"{sop}.dcm").write_bytes(instance_bytes(study, series, sop, seed=seed))


def folder_source(archive: Archive, folder: Path, name: str = "cd", trust: str = "ZZA") -> Source:
    src = Source(name=name, kind="folder", address=str(folder), trust=trust, nhs_traced=True)
    archive.services.migration.add_source(IMPORTER, src)
    entries = FolderSource(folder).inventory()
    archive.services.migration.record_inventory(IMPORTER, name, entries)
    return src


def test_transfer_window_may_wrap_midnight() -> None:
    assert within_hours(None, 12 * 60)
    assert within_hours("19:00-07:00", 23 * 60) and within_hours("19:00-07:00", 6 * 60 + 59)
    assert not within_hours("19:00-07:00", 7 * 60) and not within_hours("19:00-07:00", 12 * 60)
    assert within_hours("08:00-18:00", 9 * 60) and not within_hours("08:00-18:00", 18 * 60)


def test_dimse_address_is_checked() -> None:
    assert parse_dimse_address("LEGACY@10.0.0.5:104") == ("LEGACY", "10.0.0.5", 104)
    for bad in ("LEGACY10.0.0.5:104", "LEGACY@host", "@h:104", "A@h:0", "WAYTOOLONGAETITLE1@h:1"):
        with pytest.raises(Exception, match="AE@host:port"):
            parse_dimse_address(bad)


def test_batches_keep_order_and_split_per_series() -> None:
    items = [
        Item(f"1.{i}", "9", "s1" if i < 70 else "s2", None, "P", None, None) for i in range(75)
    ]
    got = batches(items)
    assert [len(b) for b in got] == [64, 6, 5]
    assert [i for b in got for i in b] == items


def test_copies_compare_by_pixels_not_by_relabelled_header(tmp_path: Path) -> None:
    a = Study(Patient("A1", "X^Y", "19700101", "F"), "20200101")
    a.add_series(1)
    relabelled = Study(
        Patient("B-EXT-99", "X^Y", "19700101", "F"), "20200101", uid=a.uid,
        series=a.series, series_uids=a.series_uids,
    )  # fmt: skip
    series, sop = a.instances()[0]
    paths = []
    for name, study, seed in (("a", a, 0), ("b", relabelled, 0), ("c", a, 1)):
        path = tmp_path / name
        path.write_bytes(instance_bytes(study, series, sop, seed=seed))
        paths.append(path)
    assert paths[0].read_bytes() != paths[1].read_bytes()
    assert content_digest(paths[0]) == content_digest(paths[1])
    assert content_digest(paths[0]) != content_digest(paths[2])


def test_dry_run_says_what_waits_and_changes_nothing(archive: Archive, tmp_path: Path) -> None:
    good = Study(Patient("P1", "GOOD^ONE", "19700101", "F", N1), "20200101")
    good.add_series(2)
    invalid = N1[:-1] + ("0" if N1[-1] != "0" else "1")
    assert not nhs.is_valid(invalid)
    bad = Study(Patient("P2", "BAD^NUMBER", "19600101", "M", invalid), "20210101")
    bad.add_series(1)
    for study in (good, bad):
        write_study(tmp_path / "cd", study)
    folder_source(archive, tmp_path / "cd")
    migration, identity = archive.services.migration, archive.identity

    plan = migration.reconcile(IMPORTER, "cd", dry_run=True)
    assert (plan.move_studies, plan.move_instances) == (1, 2)
    assert [w["study_uid"] for w in plan.waiting] == [bad.uid]
    assert "invalid-nhs-number" in plan.waiting[0]["reason"]
    assert identity.work_queue() == []
    assert identity.resolve("ZZA", "P1") is None  # no record created
    assert migration.progress(IMPORTER, "cd") == {"pending": 3}

    migration.reconcile(IMPORTER, "cd")
    queue = identity.work_queue()
    # N1 (943...) passes the check digit but is outside the issued ranges: a warning (R2)
    # that holds back nothing; only the invalid number makes its study wait.
    assert sorted(q["kind"] for q in queue) == ["invalid-nhs-number", "nhs-number-range"]
    assert migration.progress(IMPORTER, "cd") == {"pending": 2, "waiting": 1}

    # A person resolves the item (the number is corrected at the trust): the study moves.
    invalid = next(q for q in queue if q["kind"] == "invalid-nhs-number")
    identity.resolve_work_item(invalid["pk"], IMPORTER)
    plan = migration.reconcile(IMPORTER, "cd")
    assert plan.waiting == [] and plan.move_instances == 3


def test_two_nhs_numbers_for_one_local_id_hold_its_studies(
    archive: Archive, tmp_path: Path
) -> None:
    first = Study(Patient("P1", "SAME^ID", "19700101", "F", N1), "20190101")
    first.add_series(1)
    second = Study(Patient("P1", "SAME^ID", "19700101", "F", N2), "20200101")
    second.add_series(1)
    for study in (first, second):
        write_study(tmp_path / "cd", study)
    folder_source(archive, tmp_path / "cd")
    plan = archive.services.migration.reconcile(IMPORTER, "cd")
    assert {w["study_uid"] for w in plan.waiting} == {first.uid, second.uid}
    assert all("nhs-number-changed" in w["reason"] for w in plan.waiting)
    assert plan.move_instances == 0


def test_folder_transfer_is_audited_resumable_and_picks_up_changed_demographics(
    archive: Archive, tmp_path: Path
) -> None:
    study = Study(Patient("P1", "CD^PATIENT", "19700101", "F", N1), "20200101")
    study.add_series(3)
    write_study(tmp_path / "cd", study)
    src = folder_source(archive, tmp_path / "cd")
    migration = archive.services.migration
    migration.reconcile(IMPORTER, "cd")
    client = FolderSource(tmp_path / "cd")
    stats = run_transfer(migration, IMPORTER, src, client, tmp_path / "work")
    assert dict(stats.states) == {"stored": 3}
    again = run_transfer(migration, IMPORTER, src, client, tmp_path / "work")
    assert again.total == 0  # nothing left, nothing fetched twice
    assert all(p.is_file() for p in (tmp_path / "cd").iterdir())  # a CD is read in place
    with archive.index.read() as conn:
        details = [
            json.loads(d)
            for (d,) in conn.execute(
                select(t.audit_log.c.detail).where(t.audit_log.c.action == "import")
            )
        ]
    assert sorted(d["sop_instance_uid"] for d in details if d["channel"] == "migration") == sorted(
        sop for _, sop in study.instances()
    )

    # The source corrects the date of birth: the delta inventory sees it, reconcile applies it.
    for path in (tmp_path / "cd").iterdir():
        path.unlink()
    write_study(tmp_path / "cd", Study(Patient("P1", "CD^PATIENT", "19700102", "F", N1),
                                       "20200101", uid=study.uid, series=study.series,
                                       series_uids=study.series_uids))  # fmt: skip
    delta = migration.record_inventory(IMPORTER, "cd", FolderSource(tmp_path / "cd").inventory())
    assert (delta.new, delta.changed) == (0, 3)
    assert migration.reconcile(IMPORTER, "cd").demographics_applied == 1
    resolved = archive.identity.resolve("ZZA", "P1")
    assert resolved is not None
    record = archive.identity.record(resolved.patient_pk)
    assert record is not None and record["record"]["birth_date"] == "19700102"


def test_callers_need_the_right_permission(archive: Archive, tmp_path: Path) -> None:
    admin = Principal(PrincipalKind.USER, "ann", "ZZA", frozenset({"pacs_admin"}))
    clinician = Principal(PrincipalKind.USER, "bob", "ZZA", frozenset({"clinician"}))
    src = Source(name="cd", kind="folder", address=str(tmp_path), trust="ZZA")
    with pytest.raises(AccessDenied):
        archive.services.migration.add_source(clinician, src)
    archive.services.migration.add_source(admin, src)
    with pytest.raises(AccessDenied):
        archive.services.migration.pending(admin, "cd")
    with pytest.raises(Exception, match="no trust"):
        archive.services.migration.add_source(admin, Source("x", "folder", "/", "NOPE"))


def test_legacy_data_never_overwrites_the_trusts_own_record(
    archive: Archive, tmp_path: Path
) -> None:
    from solent.services.identity import Change, Demographics, PatientKey

    identity = archive.identity
    pas = Principal(PrincipalKind.NODE, "pas", "ZZA")
    identity.update_record(
        PatientKey("ZZA", "P1"),
        Demographics(name="PAS^NAME", birth_date="19700101", sex="F", nhs_number=N1),
        Change(pas),
    )
    study = Study(Patient("P1", "LEGACY^NAME", "19710101", "F", N1), "20200101")
    study.add_series(1)
    write_study(tmp_path / "cd", study)
    folder_source(archive, tmp_path / "cd")
    plan = archive.services.migration.reconcile(IMPORTER, "cd")
    assert [w["study_uid"] for w in plan.waiting] == [study.uid]
    assert "birth_date 19710101 (record: 19700101)" in plan.waiting[0]["reason"]
    resolved = identity.resolve("ZZA", "P1")
    assert resolved is not None
    record = identity.record(resolved.patient_pk)
    assert record is not None
    assert (record["record"]["birth_date"], record["record"]["name"]) == ("19700101", "PAS^NAME")


def test_a_closed_transfer_window_stops_the_run_with_nothing_lost(
    archive: Archive, tmp_path: Path
) -> None:
    from datetime import datetime

    study = Study(Patient("P1", "NIGHT^ONLY", "19700101", "F", N1), "20200101")
    study.add_series(2)
    write_study(tmp_path / "cd", study)
    folder_source(archive, tmp_path / "cd")
    migration = archive.services.migration
    night = Source(
        "cd", "folder", str(tmp_path / "cd"), "ZZA", nhs_traced=True, hours="19:00-07:00"
    )
    migration.add_source(IMPORTER, night)
    migration.reconcile(IMPORTER, "cd")
    client = FolderSource(tmp_path / "cd")
    noon = run_transfer(
        migration, IMPORTER, night, client, tmp_path / "w", clock=lambda: datetime(2026, 1, 1, 12)
    )
    assert noon.stopped.startswith("outside the source's working hours") and noon.done == 0
    assert migration.progress(IMPORTER, "cd") == {"pending": 2}
    late = run_transfer(
        migration, IMPORTER, night, client, tmp_path / "w", clock=lambda: datetime(2026, 1, 1, 23)
    )
    assert (late.stopped, dict(late.states)) == ("", {"stored": 2})


def test_an_unlinked_copy_of_a_stored_study_waits_and_the_original_moves(
    archive: Archive, tmp_path: Path
) -> None:
    original = Study(Patient("A1", "ORIG^INAL", "19700101", "F", N1), "20190101")
    original.add_series(2)
    copy = Study(
        Patient("B-EXT-99", "ORIG^INAL", "19700101", "F"), "20190101", uid=original.uid,
        series=[original.series[0]], series_uids=[original.series_uids[0]],
    )  # fmt: skip
    write_study(tmp_path / "a", original)
    write_study(tmp_path / "b", copy)
    migration = archive.services.migration
    src_a = folder_source(archive, tmp_path / "a", "a", "ZZA")
    folder_source(archive, tmp_path / "b", "b", "ZZB")
    plan_a = migration.reconcile(IMPORTER, "a")
    assert plan_a.waiting == [] and plan_a.move_instances == 2
    assert plan_a.merge_studies[0]["with"] == "at source b"
    assert plan_a.merge_studies[0]["linked"] is False
    run_transfer(migration, IMPORTER, src_a, FolderSource(tmp_path / "a"), tmp_path / "w")

    plan_b = migration.reconcile(IMPORTER, "b")
    assert plan_b.move_instances == 0
    assert "already in the archive under A1/ZZA" in plan_b.waiting[0]["reason"]
    kinds = [q["kind"] for q in archive.identity.work_queue()]
    assert "migration-study-elsewhere" in kinds


def test_one_sop_uid_listed_twice_is_held_and_reported_not_crashed_or_overwritten(
    archive: Archive, tmp_path: Path
) -> None:
    """A CD with two files of one SOP Instance UID (two encodings, or one UID reused for two
    patients): the inventory used to crash (same batch) or let the second file silently
    replace the first (later batch), so one copy was never migrated nor reported."""
    study = Study(Patient("P1", "TWO^FILES", "19700101", "F", N1), "20200101")
    study.add_series(2)
    write_study(tmp_path / "cd", study)
    series, sop = study.instances()[0]
    other = Study(
        Patient("P9", "OTHER^PERSON", "19800101", "M"), "20200101", uid=study.uid,
        series=study.series, series_uids=study.series_uids,
    )  # fmt: skip
    (tmp_path / "cd" / "zz-copy.dcm").write_bytes(instance_bytes(other, series, sop, seed=1))
    src = folder_source(archive, tmp_path / "cd")
    migration = archive.services.migration
    assert migration.progress(IMPORTER, "cd") == {"pending": 1, "conflict": 1}
    plan = migration.reconcile(IMPORTER, "cd")
    assert plan.conflicts == 1
    stats = run_transfer(migration, IMPORTER, src, FolderSource(tmp_path / "cd"), tmp_path / "w")
    assert stats.total == 1 and dict(stats.states) == {"stored": 1}
    report = migration.verification(IMPORTER, "cd")
    assert report["unresolved"] == 1 and report["counts"]["conflict"] == 1
    held = next(i for i in report["items"] if i["sop_uid"] == sop)
    assert "zz-copy.dcm" in held["reason"] and f"{sop}.dcm" in held["reason"]
    assert "P9" in held["reason"] and "P1" in held["reason"]
    assert archive.index.instance_digest(sop) is None  # neither copy filed under a patient

    # Far apart in one listing (different upsert batches): still both seen, still held.
    first = next(r for r in migration.inventory(IMPORTER, "cd") if r["sop_uid"] == sop)
    filler = [
        Entry("P1", study.uid, series, f"2.25.{i}", locator=str(tmp_path / f"f{i}"))
        for i in range(600)
    ]
    keys = ("patient_id", "study_uid", "series_uid", "sop_uid", "locator")
    again = Entry(**{k: first[k] for k in keys})
    twin = Entry("P9", study.uid, series, sop, locator=str(tmp_path / "cd" / "zz-copy.dcm"))
    delta = migration.record_inventory(IMPORTER, "cd", [again, *filler, twin])
    assert delta.conflicts == 1
    assert migration.progress(IMPORTER, "cd")["conflict"] == 1

    # The source is corrected (one copy left): the next inventory releases it.
    (tmp_path / "cd" / "zz-copy.dcm").unlink()
    migration.record_inventory(IMPORTER, "cd", FolderSource(tmp_path / "cd").inventory())
    state = {r["sop_uid"]: r["state"] for r in migration.inventory(IMPORTER, "cd")}
    assert state[sop] == "pending"


def test_instances_without_patient_id_move_each_study_under_its_own_record(
    archive: Archive, tmp_path: Path
) -> None:
    """Reconcile used to crash (KeyError) on a source patient without Patient ID, and the
    empty ID collided with the counter of applied demographics."""
    studies = []
    for date in ("20200101", "20210101"):
        study = Study(Patient("", "NO^ID", "19700101", "F"), date)
        study.add_series(1)
        write_study(tmp_path / "cd", study)
        studies.append(study)
    named = Study(Patient("P1", "NAMED^ONE", "19700101", "F", N1), "20220101")
    named.add_series(1)
    write_study(tmp_path / "cd", named)
    src = folder_source(archive, tmp_path / "cd")
    migration = archive.services.migration
    plan = migration.reconcile(IMPORTER, "cd")
    assert (plan.move_studies, plan.waiting, plan.demographics_applied) == (3, [], 1)
    stats = run_transfer(migration, IMPORTER, src, FolderSource(tmp_path / "cd"), tmp_path / "w")
    assert dict(stats.states) == {"stored": 3}
    with archive.index.read() as conn:
        owners = {
            r.study_uid: (r.issuer, r.local_id)
            for r in conn.execute(
                select(t.study.c.study_uid, t.patient.c.issuer, t.patient.c.local_id).join(
                    t.patient, t.study.c.patient_pk == t.patient.c.pk
                )
            )
        }
    unidentified = [owners[s.uid] for s in studies]
    assert len(set(unidentified)) == 2  # never one record for unrelated people
    assert all(i == "ZZA" and lid.startswith("UNIDENTIFIED-") for i, lid in unidentified)
    assert owners[named.uid] == ("ZZA", "P1")


def test_a_name_the_legacy_listing_lost_letters_of_is_taken_from_the_instance(
    archive: Archive, tmp_path: Path
) -> None:
    """A legacy PACS answers C-FIND in its own character set (Orthanc: Latin-1): the listing
    names a Cyrillic name with Latin look-alikes by those alone ('ceyp') and an Arabic name
    as '^'. Records used to keep those; the instance's own header (ISO_IR 192) has the name,
    and a record whose name is exactly a lossy rendering of it now takes it. A name that
    merely differs is left alone."""
    cyrillic = "\u041b\u044e\u043a" + "ce" + "\u043c\u0431" + "yp" + "\u0433"
    arabic = "\u0642\u0628\u0627\u0646\u064a^\u0644\u0646\u0632\u0627\u0631"
    greek = "\u0394\u03b9\u03bf\u03bd\u03c5\u03c3\u03b9\u03bf\u03c2"
    names = {"P1": cyrillic, "P2": arabic, "P3": "SMYTH^JOHN", "P4": greek}
    # P3: another spelling, not lossy; P4: every letter lost, so no name listed at all
    listed = {"P1": "ceyp", "P2": "^", "P3": "SMITH^JOHN", "P4": None}
    for pid, name in names.items():
        study = Study(Patient(pid, "X^Y", "19700101", "F"), "20200101")
        study.add_series(1)
        write_study(tmp_path / "cd", study)
        for _, sop in study.instances():
            path = tmp_path / "cd" / f"{sop}.dcm"
            ds = pydicom.dcmread(path)
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.PatientName = name
            ds.save_as(path)
    src = Source(name="cd", kind="folder", address=str(tmp_path / "cd"), trust="ZZA")
    migration = archive.services.migration
    migration.add_source(IMPORTER, src)
    entries = [
        dataclasses.replace(e, patient_name=listed[e.patient_id])
        for e in FolderSource(tmp_path / "cd").inventory()
    ]
    migration.record_inventory(IMPORTER, "cd", entries)
    migration.reconcile(IMPORTER, "cd")

    def record_name(pid: str) -> str | None:
        resolved = archive.identity.resolve("ZZA", pid)
        assert resolved is not None
        record = archive.identity.record(resolved.patient_pk)
        assert record is not None
        return record["record"]["name"]  # type: ignore[no-any-return]

    assert record_name("P1") == "ceyp"
    stats = run_transfer(migration, IMPORTER, src, FolderSource(tmp_path / "cd"), tmp_path / "w")
    assert dict(stats.states) == {"stored": 4}
    assert record_name("P1") == names["P1"] and record_name("P2") == names["P2"]
    assert record_name("P4") == greek
    assert record_name("P3") == "SMITH^JOHN"
    # A delta run that re-applies the listing (its date of birth changed) keeps the name.
    migration.record_inventory(
        IMPORTER, "cd", [dataclasses.replace(e, birth_date="19700102") for e in entries]
    )
    migration.reconcile(IMPORTER, "cd")
    assert record_name("P1") == names["P1"]


def _nested(depth: int) -> bytes:
    """An explicit VR little endian (0008,0001) SQ nested ``depth`` deep, never closed."""
    level = b"\x08\x00\x01\x00SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    return level * depth


def test_a_cd_with_hostile_truncated_and_preambleless_files_reports_each_and_finishes(
    archive: Archive, tmp_path: Path
) -> None:
    """A folder source used to drop a DICOM file it could not list without a word (or end
    the inventory with RecursionError), to skip files without preamble, and a file whose
    pixel hash pydicom could not compute stopped every run. Each is now listed, tried,
    and reported with the file's path; the other instances move."""
    study = Study(Patient("P1", "CD^PATIENT", "19700101", "F", N1), "20200101")
    study.add_series(4)
    write_study(tmp_path / "cd", study)
    (series, good), (_, bare), (_, late), (_, early) = study.instances()
    cd = tmp_path / "cd"
    data = (cd / f"{early}.dcm").read_bytes()
    body = 144 + int.from_bytes(data[140:144], "little")
    (cd / f"{early}.dcm").write_bytes(data[:body] + _nested(3000) + data[body:])  # in header
    (cd / f"{late}.dcm").write_bytes(
        (cd / f"{late}.dcm").read_bytes()
        + b"\xfa\xff\xfa\xffSQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff"
        + _nested(3000)
    )  # after the pixel data: listed fine, only the pixel hash reads that far
    (cd / "truncated.dcm").write_bytes(data[: body + 10])
    ds = pydicom.dcmread(cd / f"{bare}.dcm")
    (cd / f"{bare}.dcm").unlink()
    ds.file_meta, ds.preamble = FileMetaDataset(), None  # written with no preamble, no meta
    ds.save_as(cd / "nopreamble", implicit_vr=True, little_endian=True)
    assert (cd / "nopreamble").read_bytes()[:2] == b"\x08\x00"
    (cd / "README.TXT").write_text("Viewer: run setup.exe\n")

    src = folder_source(archive, cd)
    migration = archive.services.migration
    assert sum(migration.progress(IMPORTER, "cd").values()) == 5  # not the README
    migration.reconcile(IMPORTER, "cd")
    stats = run_transfer(migration, IMPORTER, src, FolderSource(cd), tmp_path / "w")
    assert stats.total == 5
    report = migration.verification(IMPORTER, "cd")
    by_file = {Path(i["locator"]).name: i for i in report["items"]}
    assert by_file[f"{good}.dcm"]["verdict"] == "verified"
    assert by_file["nopreamble"]["verdict"] == "verified"
    for name in (f"{early}.dcm", f"{late}.dcm", "truncated.dcm"):
        assert by_file[name]["verdict"] == "failed", by_file[name]
        assert by_file[name]["reason"]
    assert "nested" in by_file[f"{early}.dcm"]["reason"]
    assert archive.index.instance_digest(bare) is not None
    assert series == study.series_uids[0]


def test_reconcile_holds_a_page_of_studies_in_memory_not_the_whole_inventory(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reconcile loaded every inventory row of the source at once (about 2.6 kB each: 26 GB
    for a legacy archive of 10 M instances). It now reads a page of studies at a time, so
    four times the inventory needs about the same memory."""
    monkeypatch.setattr(reconcile_module, "STUDY_PAGE", 20, raising=False)
    src = Source(name="big", kind="folder", address="/nowhere", trust="ZZA")
    migration = archive.services.migration
    migration.add_source(IMPORTER, src)

    def peak_for(studies: int, first: int) -> int:
        entries = [
            Entry("P1", f"2.25.{first + s}", f"2.25.{first + s}.1", f"2.25.{first + s}.1.{i}")
            for s in range(studies)
            for i in range(20)
        ]
        migration.record_inventory(IMPORTER, "big", entries)
        tracemalloc.start()
        try:
            plan = migration.reconcile(IMPORTER, "big", dry_run=True)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert plan.move_instances == 20 * (first + studies - 10**6)
        return peak

    small = peak_for(40, 10**6)  # 800 instances
    large = peak_for(120, 10**6 + 40)  # 3200 instances in all
    assert large < 1.5 * small, (small, large)


def test_an_instance_the_source_can_never_deliver_is_excluded_with_a_reason_and_audited(
    archive: Archive, tmp_path: Path
) -> None:
    """A truncated file on a legacy CD fails every run (exit 1, "unresolved" for ever) until a
    person leaves it out with a reason: then it is no longer fetched, the report counts it as
    excluded, not unresolved, and the audit trail says who decided and why. Include undoes it."""
    study = Study(Patient("P7", "CD^EXCLUDED", "19700101", "F", N1), "20200101")
    study.add_series(2)
    cd = tmp_path / "cd"
    write_study(cd, study)
    (_, good), (_, broken) = study.instances()
    data = (cd / f"{broken}.dcm").read_bytes()
    (cd / f"{broken}.dcm").write_bytes(data[: len(data) // 2])  # pixel data cut short
    src = folder_source(archive, cd)
    migration = archive.services.migration
    migration.reconcile(IMPORTER, "cd")
    run_transfer(migration, IMPORTER, src, FolderSource(cd), tmp_path / "w")
    report = migration.verification(IMPORTER, "cd")
    failed = [i["sop_uid"] for i in report["items"] if i["verdict"] == "failed"]
    assert report["unresolved"] == 1 and len(failed) == 1
    with pytest.raises(Exception, match="say why"):
        migration.exclude(IMPORTER, "cd", failed, "  ")
    with pytest.raises(Exception, match="only pending, failed"):
        migration.exclude(IMPORTER, "cd", [good], "operator error")  # already in the archive
    with pytest.raises(Exception, match="lists no instance"):
        migration.exclude(IMPORTER, "cd", ["1.2.3.999"], "typo")

    assert migration.exclude(IMPORTER, "cd", failed, "file truncated on the CD") == 1
    report = migration.verification(IMPORTER, "cd")
    assert report["unresolved"] == 0
    assert report["counts"] == {"excluded": 1, "verified": 1}
    (item,) = [i for i in report["items"] if i["verdict"] == "excluded"]
    assert item["reason"] == "excluded by solent-migrate: file truncated on the CD"
    assert migration.pending(IMPORTER, "cd") == []  # the next run does not fetch it
    with archive.index.read() as conn:
        audit = conn.execute(select(t.audit_log)).mappings().all()
    decided = [json.loads(r["detail"]) for r in audit if r["action"] == "import"]
    assert {"migration": "cd", "instances": failed, "excluded": True,
            "reason": "file truncated on the CD"} in decided  # fmt: skip

    assert migration.include(IMPORTER, "cd", failed) == 1
    assert [i.sop_uid for i in migration.pending(IMPORTER, "cd")] == failed
    assert migration.verification(IMPORTER, "cd")["unresolved"] == 1
