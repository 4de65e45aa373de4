"""Killing the server (SIGKILL) never loses an acknowledged HL7 message, and a message whose
ACK never came is either fully applied or not at all (and applied once the sender resends)."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.conftest import start_server
from tests.interop.hl7_support import Api, er7, ingest, msa, prepare_data_dir, send, write_ct


def _a28(control: str, local_id: str) -> str:
    return (
        f"MSH|^~\\&|PAS|ZZA|PACS|ZZX|20250101000000||ADT^A28^ADT_A05|{control}|P|2.4\n"
        f"EVN|A28|20250101000000\n"
        f"PID|1||{local_id}^^^ZZA^MR||DURABLE^PAT||19700101|F\n"
    )


def _a40(control: str, target: str, source: str) -> str:
    return (
        f"MSH|^~\\&|PAS|ZZB|PACS|ZZX|20250101000000||ADT^A40^ADT_A39|{control}|P|2.4\n"
        f"EVN|A40|20250101000000\n"
        f"PID|1||{target}^^^ZZB^MR||SMITH^JOHN||19500101|M\n"
        f"MRG|{source}^^^ZZB^MR||||||UNKNOWN^MALE\n"
    )


def test_acknowledged_message_survives_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "var"
    prepare_data_dir(data, ("ZZA", "ZZB"))
    server = start_server(data)
    try:
        acks = send(int(server.ports["hl7"]), *(_a28(f"K-{i}", f"K{i:04d}") for i in range(5)))
        assert [msa(a)[0] for a in acks] == ["AA"] * 5
        server.proc.kill()  # SIGKILL: no shutdown, no flush
        server.proc.wait()
    finally:
        server.stop()
    again = start_server(data)
    try:
        api = Api(again.base_url, again.headers(), again.admin_headers())
        for i in range(5):
            (record,) = api.person(issuer="ZZA", patient_id=f"K{i:04d}")["records"]
            assert record["name"] == "DURABLE^PAT"
        journal = api.admin_json("/api/identity/hl7/messages")
        assert {m["control_id"] for m in journal} >= {f"K-{i}" for i in range(5)}
        assert all(m["status"] == "applied" for m in journal if m["control_id"].startswith("K-"))
        # The sender, unsure, resends: nothing changes.
        (ack,) = send(int(again.ports["hl7"]), _a28("K-0", "K0000"))
        assert msa(ack)[0] == "AA"
        history = api.json("/api/identity/history", issuer="ZZA", patient_id="K0000")
        assert [e["kind"] for e in history].count("create") == 1
    finally:
        again.stop()


def test_unacknowledged_merges_are_all_or_nothing(tmp_path: Path) -> None:
    data = tmp_path / "var"
    prepare_data_dir(data, ("ZZA", "ZZB"))
    count = 24
    files = []
    for i in range(count):
        files.append(
            write_ct(
                tmp_path / f"m{i}.dcm",
                patient_id=f"TMP{i:04d}",
                issuer="ZZB",
                name="UNKNOWN^MALE",
                birth_date="19650101",
                accession=f"M{i:04d}",
                study_uid=f"2.25.7000{i:04d}",
                study_date="20250101",
            )
        )
    ingest(data, "ZZB", *files)
    messages = [_a40(f"M-{i}", f"B{i:04d}", f"TMP{i:04d}") for i in range(count)]
    server = start_server(data)
    try:
        with socket.create_connection(("127.0.0.1", int(server.ports["hl7"]))) as sock:
            sock.sendall(b"".join(b"\x0b" + er7(m).encode() + b"\x1c\r" for m in messages))
            sock.recv(1)  # the first ACK is on its way: kill while the rest are in flight
            server.proc.kill()
            server.proc.wait()
    finally:
        server.stop()

    again = start_server(data)
    try:
        api = Api(again.base_url, again.headers(), again.admin_headers())
        applied = 0
        for i in range(count):
            uid = f"2.25.7000{i:04d}"
            view = api.get("/api/identity/person", issuer="ZZB", patient_id=f"B{i:04d}")
            old = api.person(issuer="ZZB", patient_id=f"TMP{i:04d}")
            if view.status_code == 200:
                # Applied: the study moved, the old ID retired, the merge recorded once.
                assert [s["study_uid"] for s in view.json()["studies"]] == [uid]
                assert old["records"][0]["local_id"] == f"B{i:04d}"
                assert old["retired_identifiers"][0]["local_id"] == f"TMP{i:04d}"
                applied += 1
            else:
                # Not applied at all: the study is where it was, nothing retired.
                assert view.status_code == 404
                assert old["records"][0]["local_id"] == f"TMP{i:04d}"
                assert [s["study_uid"] for s in old["studies"]] == [uid]
                assert old["retired_identifiers"] == []
        assert applied >= 1
        print(f"merges applied when the server was killed: {applied} of {count}")
        # The sender resends everything it has no ACK for: each merge happens exactly once.
        acks = send(int(again.ports["hl7"]), *messages)
        assert [msa(a)[0] for a in acks] == ["AA"] * count
        for i in range(count):
            history = api.json("/api/identity/history", issuer="ZZB", patient_id=f"B{i:04d}")
            assert [e["kind"] for e in history].count("merge") == 1
            assert api.study_uids(issuer="ZZB", patient_id=f"B{i:04d}") == [f"2.25.7000{i:04d}"]
    finally:
        again.stop()
