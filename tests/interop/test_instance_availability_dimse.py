"""IHE Instance Availability Notification over the network (R20): DCMTK's storescu stores a
series into a running `solent serve`; once the study is quiet, the archive sends an N-CREATE of
the Instance Availability Notification SOP Class to the RIS registered with ``--allow notify``
(a pynetdicom SCP here, the way a RIS or EPR would implement it), and not to another trust's
RIS. An IOCM rejection note sent with dcmsend is then notified as UNAVAILABLE."""

from __future__ import annotations

import os
import queue
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import InstanceAvailabilityNotification  # type: ignore[attr-defined]

from tests.conftest import SOLENT, RunningServer, require_tool, start_server
from tests.interop.test_dimse_dcmtk import free_port
from tests.unit.stow_support import ct_instance, rejection_note

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


class Ris:
    """An Instance Availability Notification SCP that keeps what it was sent."""

    def __init__(self, ae_title: str) -> None:
        self.port = free_port()
        self.received: queue.Queue[tuple[str, Dataset]] = queue.Queue()
        ae = AE(ae_title=ae_title)
        ae.add_supported_context(InstanceAvailabilityNotification)
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_N_CREATE, self._created)],
        )

    def _created(self, event: evt.Event) -> tuple[int, Dataset]:
        self.received.put((event.assoc.requestor.ae_title, event.attribute_list))
        return 0x0000, Dataset()

    def next(self, timeout: float) -> tuple[str, Dataset]:
        return self.received.get(timeout=timeout)


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[tuple[RunningServer, Ris, Ris]]:
    require_tool("storescu")
    data = tmp_path / "srv"
    base = {k: v for k, v in os.environ.items() if not k.startswith("SOLENT_")}
    for code in ("ZZA", "ZZB"):
        subprocess.run(
            [str(SOLENT), "trust", "add", code, "--name", f"Trust {code}"],
            env={**base, "SOLENT_DATA_DIR": str(data)},
            check=True,
            capture_output=True,
        )
    ris_a, ris_b = Ris("RIS_ZZA"), Ris("RIS_ZZB")
    srv = start_server(
        data,
        {
            "SOLENT_JOBS_CONSUMERS": "ian",
            "SOLENT_IAN_DELAY_SECONDS": "1",
            "SOLENT_JOBS_POLL_SECONDS": "0.2",
        },
    )
    try:
        srv.cli("ae", "add", "CT_ZZA", "--host", "127.0.0.1", "--port", "104", "--trust", "ZZA")
        for ris, trust in ((ris_a, "ZZA"), (ris_b, "ZZB")):
            srv.cli("ae", "add", f"RIS_{trust}", "--host", "127.0.0.1", "--port",
                    str(ris.port), "--trust", trust, "--allow", "notify")  # fmt: skip
        yield srv, ris_a, ris_b
    finally:
        srv.stop()
        ris_a.server.shutdown()
        ris_b.server.shutdown()


def _send(srv: RunningServer, *files: Path) -> None:
    done = subprocess.run(
        ["storescu", "-aet", "CT_ZZA", "-aec", "SOLENT", "127.0.0.1", str(srv.ports["dicom"]),
         *map(str, files)],
        env=DCMTK_ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def _sops(ds: Dataset) -> dict[str, str]:
    return {
        str(ref.ReferencedSOPInstanceUID): str(ref.InstanceAvailability)
        for series in ds.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }


def test_a_stored_study_and_its_rejection_are_notified_to_the_trust_ris(
    archive: tuple[RunningServer, Ris, Ris], tmp_path: Path
) -> None:
    srv, ris_a, ris_b = archive
    study, wrong, right = generate_uid(), generate_uid(), generate_uid()
    wrong_sops, right_sop = [generate_uid(), generate_uid()], generate_uid()
    files = []
    for series, sop in [(wrong, wrong_sops[0]), (wrong, wrong_sops[1]), (right, right_sop)]:
        path = tmp_path / f"{sop}.dcm"
        path.write_bytes(ct_instance("X3001", "ZZA", study, series=series, sop=sop))
        files.append(path)
    _send(srv, *files)

    calling, ds = ris_a.next(timeout=60)
    assert calling == "SOLENT"
    assert ds.StudyInstanceUID == study
    assert _sops(ds) == {wrong_sops[0]: "ONLINE", wrong_sops[1]: "ONLINE", right_sop: "ONLINE"}
    assert {str(s.SeriesInstanceUID) for s in ds.ReferencedSeriesSequence} == {wrong, right}
    refs = [r for s in ds.ReferencedSeriesSequence for r in s.ReferencedSOPSequence]
    assert {r.RetrieveAETitle for r in refs} == {"SOLENT"}
    assert {r.ReferencedSOPClassUID for r in refs} == {"1.2.840.10008.5.1.4.1.1.2"}

    note, note_uid = rejection_note("X3001", "ZZA", study, {wrong: wrong_sops})
    note_path = tmp_path / "note.dcm"
    note_path.write_bytes(note)
    _send(srv, note_path)
    _, after = ris_a.next(timeout=60)
    assert _sops(after) == {
        wrong_sops[0]: "UNAVAILABLE",
        wrong_sops[1]: "UNAVAILABLE",
        right_sop: "ONLINE",
        note_uid: "ONLINE",
    }
    # The other trust's RIS was never told of this patient's study.
    with pytest.raises(queue.Empty):
        ris_b.next(timeout=2)
    assert ris_a.received.empty()
