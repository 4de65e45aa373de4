"""Every HL7 v2 message type the handler applies, generated from its own table
(``handler.MESSAGE_TYPES``), sent about Bob (records at ZZB only) — issue 11, "one guarded door":

* by ZZA's registered feed: refused (AE/AR) with a reason a person can read, and nothing stored
  changes (every table but the message journal and the audit trail compared row for row);
* by ZZB's own feed, the very same message: accepted (AA), and audited naming Bob.

A message type added to the handler whose kind has no message here fails
``test_every_message_type_is_classified``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from solent.app import Archive
from solent.index import schema as t
from solent.protocols.hl7.handler import MESSAGE_TYPES, Hl7Handler
from solent.protocols.hl7.senders import SenderGate
from tests.unit.security_fixtures import demo, demo_template

__all__ = ["demo", "demo_template"]

LOCAL = "127.0.0.1:40000"  # the demo feeds are registered from this machine
BOB = "B7730444^^^ZZB^MR"
OTHER = "B7730021^^^ZZB^MR"  # Alice's record at ZZB: the other record of a link
NEW_ID = "B7730555"
#: Tables a refused message may write to: its journal entry, the audit record of the refusal
#: and the work item a person must look at (R8: a merge across issuers is queued).
JOURNAL = {"hl7_message", "audit_log", "audit_head", "data_quality"}


def _msh(facility: str, code: str, trigger: str, control: str) -> str:
    return f"MSH|^~\\&|PAS|{facility}|PACS|ZZX|20250314120000||{code}^{trigger}|{control}|P|2.5\r"


def _pid(n: int, ident: str) -> str:
    return f"PID|{n}||{ident}||DEMO^BOB^CHANGED||19710101|M\r"


def _order(trigger: str) -> str:
    return (
        _pid(1, BOB) + "ORC|NW|P1|ZZB0001||SC||^^^20250314113500^^S\r"
        "OBR|1|P1|ZZB0001|XR^Chest XR|||20250314113500|||||||||||ZZB0001|RP1|SPS1||||CR\r"
    )


#: kind (the handler's table) -> the segments after MSH of a message about Bob, by trigger.
BODIES: dict[str, Callable[[str], str]] = {
    "update": lambda trig: f"EVN|{trig}|20250314120000\r" + _pid(1, BOB),
    "link": lambda trig: f"EVN|{trig}|20250314120000\r" + _pid(1, BOB) + _pid(2, OTHER),
    "unlink": lambda trig: f"EVN|{trig}|20250314120000\r" + _pid(1, BOB) + _pid(2, OTHER),
    "merge": lambda trig: (
        f"EVN|{trig}|20250314120000\r" + _pid(1, f"{NEW_ID}^^^ZZB^MR") + f"MRG|{BOB}\r"
    ),
    "renumber": lambda trig: (
        f"EVN|{trig}|20250314120000\r" + _pid(1, f"{NEW_ID}^^^ZZB^MR") + f"MRG|{BOB}\r"
    ),
    "order": _order,
    "report": lambda trig: (
        _pid(1, BOB) + "OBR|1|P1|ZZB0001|XR^Chest XR|||20250314113500||||||||||||ZZB0001"
        "|||||||F\r"
        "OBX|1|TX|||Chest clear.\r"
    ),
}
#: ZZA's feed naming its own record where the message has a target, and Bob as the record to
#: merge away or renumber: refused as well (the identity service, not only the PID check).
OWN_TARGET: dict[str, Callable[[str], str]] = {
    "merge": lambda trig: (
        f"EVN|{trig}|20250314120000\r" + _pid(1, "A100001^^^ZZA^MR") + f"MRG|{BOB}\r"
    ),
    "renumber": lambda trig: (
        f"EVN|{trig}|20250314120000\r" + _pid(1, "A555555^^^ZZA^MR") + f"MRG|{BOB}\r"
    ),
}

CASES = sorted(MESSAGE_TYPES)


def _message(facility: str, code: str, trigger: str, body: Callable[[str], str]) -> str:
    return _msh(facility, code, trigger, f"{facility}-{code}{trigger}") + body(trigger)


def _handler(archive: Archive) -> Hl7Handler:
    s = archive.services
    return Hl7Handler(s, gate=SenderGate(s.directory, s.audit))


def _ack(reply: str) -> tuple[str, str]:
    msa = next(seg for seg in reply.split("\r") if seg.startswith("MSA|")).split("|")
    return msa[1], msa[3] if len(msa) > 3 else ""


def _snapshot(archive: Archive) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table a patient change could touch."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with archive.index.read() as conn:
        for table in t.metadata.sorted_tables:
            if table.name not in JOURNAL:
                rows = conn.execute(select(table)).all()
                out[table.name] = sorted((tuple(map(repr, r)) for r in rows), key=repr)
    return out


def _linked(archive: Archive) -> None:
    """Bob linked with ZZB's other record by ZZB's own feed (what A37 then undoes)."""
    msg = _message("ZZB", "ADT", "A24", BODIES["link"]).replace("ZZB-ADTA24", "SETUP-A24")
    code, text = _ack(_handler(archive).handle(msg, LOCAL))
    assert code == "AA", text


def test_every_message_type_is_classified() -> None:
    kinds = set(MESSAGE_TYPES.values())
    assert not kinds - set(BODIES), f"message kinds without a place in the matrix: {kinds}"
    assert not set(BODIES) - kinds, "the matrix names kinds the handler no longer has"


@pytest.mark.parametrize(("code", "trigger"), CASES)
def test_another_trusts_feed_changes_nothing(demo: Archive, code: str, trigger: str) -> None:
    kind = MESSAGE_TYPES[code, trigger]
    if kind == "unlink":
        _linked(demo)
    handler = _handler(demo)
    bodies = [BODIES[kind], *([OWN_TARGET[kind]] if kind in OWN_TARGET else [])]
    for n, body in enumerate(bodies):
        before = _snapshot(demo)
        # Each body its own control ID: a reused one is refused before the rules are reached.
        msg = _message("ZZA", code, trigger, body).replace(f"ZZA-{code}{trigger}", f"ZZA-{n}")
        ack, reason = _ack(handler.handle(msg, LOCAL))
        assert ack in ("AE", "AR"), (code, trigger, reason)
        assert len(reason) > 20 and "Traceback" not in reason, reason
        assert _snapshot(demo) == before, f"{code}^{trigger} from ZZA changed stored data"


@pytest.mark.parametrize(("code", "trigger"), CASES)
def test_the_own_trusts_feed_is_applied_and_audited(demo: Archive, code: str, trigger: str) -> None:
    kind = MESSAGE_TYPES[code, trigger]
    if kind == "unlink":
        _linked(demo)
    after_seq = max([0, *(int(r["seq"]) for r in demo.audit.search(limit=100000))])
    ack, reason = _ack(_handler(demo).handle(_message("ZZB", code, trigger, BODIES[kind]), LOCAL))
    assert ack == "AA", (code, trigger, reason)
    rows = demo.audit.search(after_seq=after_seq, limit=1000)
    naming_bob = [
        r
        for r in rows
        if r["patient_issuer"] == "ZZB"
        and r["patient_id"] in ("B7730444", NEW_ID)
        and r["actor_name"] == "hl7:PAS"
    ]
    assert len(naming_bob) == 1, [
        (r["action"], r["patient_id"], r["actor_name"], r["detail"]) for r in rows
    ]
