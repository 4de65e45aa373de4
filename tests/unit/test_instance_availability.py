"""IHE Instance Availability Notification (R20, R56 scenario 2.8): a node registered with
``--allow notify`` is told, once a study has been quiet, which instances it holds (ONLINE) and,
after an IOCM rejection, which are withdrawn (UNAVAILABLE); only nodes whose trust may see the
study are told, every telling is audited, and an unreachable node is tried again.

The DIMSE N-CREATE itself is exercised against a real peer in
tests/interop/test_instance_availability_dimse.py; here the job's sender is a recorder."""

from __future__ import annotations

import threading
from dataclasses import replace

from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

from solent.app import Archive
from solent.domain.principal import SYSTEM, Principal, PrincipalKind
from solent.index import schema as t
from solent.index.jobs import FeedEvent
from solent.jobs.queue import InProcessQueue
from solent.jobs.tasks import consumers_named
from solent.protocols.dimse.ian import ian_dataset
from solent.services.availability import Notice
from solent.services.performed_steps import StepReport
from tests.unit.security_fixtures import add_user, demo, demo_client, demo_template
from tests.unit.stow_support import ct_instance, rejection_note, stow_body

__all__ = ["demo", "demo_client", "demo_template"]


class Recorder:
    """The job's DICOM sender, recording what each node would be sent."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.sent: list[tuple[str, Notice]] = []
        self.fail = fail or set()

    def __call__(self, ae_title: str, notice: Notice) -> int:
        if notice.node.ae_title in self.fail:
            raise ConnectionRefusedError(f"{notice.node.ae_title} is down")
        self.sent.append((ae_title, notice))
        return 0

    def to(self, ae: str) -> list[Notice]:
        return [n for _, n in self.sent if n.node.ae_title == ae]


def _queue(archive: Archive, recorder: Recorder, **kw: float) -> InProcessQueue:
    return InProcessQueue(
        archive.index,
        archive.store,
        consumers=consumers_named("ian", {"ian": 0.0}),
        settings=archive.settings,
        notify=recorder,
        backoff_seconds=0.0,
        **kw,  # type: ignore[arg-type]
    )


def _stow(client: TestClient, headers: dict[str, str], *parts: bytes) -> None:
    body, content_type = stow_body(*parts)
    r = client.post("/dicomweb/studies", content=body, headers={**headers, **content_type})
    assert r.status_code == 200, r.text


def _nodes(archive: Archive) -> None:
    d = archive.services.directory
    d.add_node(SYSTEM, "RIS_ZZA", "127.0.0.1", 11112, "ZZA", ["notify"])
    d.add_node(SYSTEM, "RIS_ZZB", "127.0.0.1", 11113, "ZZB", ["notify", "query"])
    d.add_node(SYSTEM, "CT_ZZA", "127.0.0.1", 11114, "ZZA", ["store", "query", "retrieve"])


def test_a_study_is_notified_once_to_the_nodes_that_may_see_it(
    demo: Archive, demo_client: TestClient
) -> None:
    _nodes(demo)
    recorder = Recorder()
    queue = _queue(demo, recorder)
    # Added to an archive with history: the demo's studies are not notified.
    queue.dispatch()
    assert recorder.sent == []

    radiographer = add_user(demo, "rad.zza", "ZZA", "clinician")
    study, series = generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(3)]
    # The CT reported its step (MPPS): the notification names it.
    step_uid = generate_uid()
    ct = Principal(PrincipalKind.NODE, "CT_ZZA", "ZZA", roles=frozenset({"store"}))
    report = StepReport("IN PROGRESS", "X2001", study, "", "CT", "PPS1", "", (("", study),), {})
    demo.services.performed_steps.create(ct, step_uid, report)
    _stow(demo_client, radiographer, *[ct_instance("X2001", "ZZA", study, series=series, sop=s)
                                        for s in sops[:2]])  # fmt: skip
    _stow(demo_client, radiographer, ct_instance("X2001", "ZZA", study, series=series, sop=sops[2]))
    queue.dispatch()

    # One notification for the two stores, to the ZZA subscriber only (not ZZB's RIS, not the
    # modality that did not subscribe).
    assert [n.node.ae_title for _, n in recorder.sent] == ["RIS_ZZA"]
    ae_title, notice = recorder.sent[0]
    assert ae_title == demo.settings.ae_title
    assert {(i.sop_instance_uid, i.availability) for i in notice.study.instances} == {
        (s, "ONLINE") for s in sops
    }
    ds = ian_dataset(notice, ae_title)
    assert ds.StudyInstanceUID == study
    [step] = ds.ReferencedPerformedProcedureStepSequence
    assert step.ReferencedSOPInstanceUID == step_uid
    assert step.ReferencedSOPClassUID == "1.2.840.10008.3.1.2.3.3"
    [item] = ds.ReferencedSeriesSequence
    assert item.SeriesInstanceUID == series
    assert sorted(r.ReferencedSOPInstanceUID for r in item.ReferencedSOPSequence) == sorted(sops)
    assert {r.ReferencedSOPClassUID for r in item.ReferencedSOPSequence} == {
        "1.2.840.10008.5.1.4.1.1.2"
    }
    assert {r.InstanceAvailability for r in item.ReferencedSOPSequence} == {"ONLINE"}
    assert {r.RetrieveAETitle for r in item.ReferencedSOPSequence} == {ae_title}

    # Audited: the node received the study's UIDs (a disclosure like any other).
    with demo.index.read() as conn:
        rows = (
            conn.execute(select(t.audit_log).where(t.audit_log.c.study_uid == study))
            .mappings()
            .all()
        )
    exports = [r for r in rows if r["action"] == "export"]
    assert len(exports) == 1
    assert exports[0]["actor_name"] == "RIS_ZZA" and exports[0]["actor_kind"] == "node"
    assert exports[0]["outcome"] == "success"
    assert exports[0]["patient_id"] == "X2001"

    # Nothing new: nothing sent again.
    queue.dispatch()
    assert len(recorder.sent) == 1


def test_a_rejection_is_notified_as_unavailable(demo: Archive, demo_client: TestClient) -> None:
    _nodes(demo)
    recorder = Recorder()
    queue = _queue(demo, recorder)
    queue.dispatch()
    radiographer = add_user(demo, "rad.zza", "ZZA", "clinician")
    study, wrong, right = generate_uid(), generate_uid(), generate_uid()
    wrong_sops, right_sop = [generate_uid(), generate_uid()], generate_uid()
    _stow(demo_client, radiographer,
          *[ct_instance("X2002", "ZZA", study, series=wrong, sop=s) for s in wrong_sops],
          ct_instance("X2002", "ZZA", study, series=right, sop=right_sop))  # fmt: skip
    queue.dispatch()
    assert len(recorder.to("RIS_ZZA")) == 1

    note, note_uid = rejection_note("X2002", "ZZA", study, {wrong: wrong_sops})
    _stow(demo_client, radiographer, note)
    queue.dispatch()
    notices = recorder.to("RIS_ZZA")
    assert len(notices) == 2
    state = {i.sop_instance_uid: i for i in notices[1].study.instances}
    assert {s: state[s].availability for s in [*wrong_sops, right_sop, note_uid]} == {
        wrong_sops[0]: "UNAVAILABLE",
        wrong_sops[1]: "UNAVAILABLE",
        right_sop: "ONLINE",
        note_uid: "ONLINE",
    }
    assert state[wrong_sops[0]].sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert state[wrong_sops[0]].series_uid == wrong


def test_an_unreachable_node_is_tried_again_and_each_attempt_audited(
    demo: Archive, demo_client: TestClient
) -> None:
    _nodes(demo)
    recorder = Recorder(fail={"RIS_ZZA"})
    queue = _queue(demo, recorder, max_attempts=2)
    queue.dispatch()
    radiographer = add_user(demo, "rad.zza", "ZZA", "clinician")
    study = generate_uid()
    _stow(demo_client, radiographer, ct_instance("X2003", "ZZA", study))
    queue.dispatch()
    assert recorder.sent == [] and queue.failed == 1
    with demo.index.read() as conn:
        rows = (
            conn.execute(select(t.audit_log).where(t.audit_log.c.study_uid == study))
            .mappings()
            .all()
        )
    failures = [r for r in rows if r["action"] == "export"]
    assert [r["outcome"] for r in failures] == ["failure", "failure"]
    assert "is down" in (failures[0]["detail"] or "")


def test_a_node_that_never_answers_does_not_hold_up_the_others(
    demo: Archive, demo_client: TestClient
) -> None:
    """Before: nodes were told one after another, so a node that accepted the connection and
    then said nothing (ordered first, by AE title) kept every other node waiting for its
    DIMSE timeout, on every attempt of every study's job."""
    _nodes(demo)
    demo.services.directory.add_node(SYSTEM, "AAA_SILENT", "127.0.0.1", 11115, "ZZA", ["notify"])
    told = threading.Event()
    heard_while_waiting: list[bool] = []

    def notify(ae_title: str, notice: Notice) -> int:
        if notice.node.ae_title == "AAA_SILENT":
            heard_while_waiting.append(told.wait(timeout=3.0))
            raise TimeoutError("AAA_SILENT did not answer")
        told.set()
        return 0

    queue = _queue(demo, Recorder(), max_attempts=1)
    queue.ctx = replace(queue.ctx, notify=notify)
    queue.dispatch()
    radiographer = add_user(demo, "rad.zza", "ZZA", "clinician")
    _stow(demo_client, radiographer, ct_instance("X2004", "ZZA", generate_uid()))
    queue.dispatch()
    assert heard_while_waiting == [True]  # RIS_ZZA was told while the silent node kept quiet
    assert queue.failed == 1  # and the silent node's job is still tried again


def test_jobs_of_one_batch_collapse_to_the_last_of_each_study() -> None:
    [consumer] = consumers_named("ian")
    events = [
        FeedEvent(1, "instance.stored", "1.2.3", "1.2.3.1", "1.2.3.1.1"),
        FeedEvent(2, "instance.stored", "1.2.4", "1.2.4.1", "1.2.4.1.1"),
        FeedEvent(3, "instance.stored", "1.2.3", "1.2.3.1", "1.2.3.1.2"),
    ]
    assert consumer.batch_jobs(events) == [
        ("notify_availability", {"study_uid": "1.2.4", "seq": 2}),
        ("notify_availability", {"study_uid": "1.2.3", "seq": 3}),
    ]
    assert consumer.settle_seconds == 10.0 and consumer.from_head
