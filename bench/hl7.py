"""HL7 v2 throughput: ADT messages per second end to end (MLLP in, journalled, applied,
committed, ACK back), against a real `solent serve`.

    python -m bench hl7 [--messages 2000] [--connections 1 4] [--database-url postgresql://...]

Each connection is one sender (python-hl7's MLLPClient) sending ADT^A28/A08 in lock-step
(next message after the ACK), as a PAS interface engine does. Half the messages register new
patients with a traced NHS number (so the cross-trust link check runs), half update them.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from hl7.client import MLLPClient

from bench.solent_server import SolentServer

TRUSTS = {"ZZA": "Trust A", "ZZB": "Trust B", "ZZC": "Trust C", "ZZD": "Trust D"}


def _nhs(n: int) -> str:
    from solent.domain import nhs_number

    base = 999_000_000 + n
    while True:
        number = nhs_number.complete(str(base))
        if number:
            return number
        base += 1


def _adt(trust: str, control: str, local_id: str, nhs: str, event: str) -> str:
    return (
        f"MSH|^~\\&|PAS|{trust}|PACS|ZZX|20250101000000||ADT^{event}^ADT_A05|{control}|P|2.4\r"
        f"EVN|{event}|20250101000000\r"
        f"PID|1||{local_id}^^^{trust}^MR~{nhs}^^^NHS^NH||BENCH^PATIENT^{control}||19700101|F|||"
        f"1 ROAD^^TOWN^^XX1 1XX^GBR^H||01632 960000|||||||||||||||||||NSTS01\r"
    )


def _sender(
    port: int, run: int, worker: int, count: int, latencies: list[float], errors: list[str]
) -> None:
    trust = list(TRUSTS)[worker % len(TRUSTS)]
    with MLLPClient("127.0.0.1", port) as client:
        for i in range(count):
            patient = i // 2
            event = "A28" if i % 2 == 0 else "A08"
            msg = _adt(
                trust,
                f"R{run}W{worker}-{i}",
                f"R{run}P{worker}-{patient}",
                _nhs(run * 300_000 + worker * 50_000 + patient),
                event,
            )
            start = time.perf_counter()
            ack = client.send_message(msg).decode("utf-8", "replace")
            latencies.append(time.perf_counter() - start)
            if "MSA|AA" not in ack:
                errors.append(ack)


def run(server: SolentServer, run_no: int, messages: int, connections: int) -> dict[str, float]:
    port = int(server.ports["hl7"])
    per = max(1, messages // connections)
    latencies: list[float] = []
    errors: list[str] = []
    threads = [
        threading.Thread(target=_sender, args=(port, run_no, w, per, latencies, errors))
        for w in range(connections)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} messages not acknowledged AA; first: {errors[0]!r}")
    latencies.sort()
    return {
        "messages": per * connections,
        "seconds": elapsed,
        "per_second": per * connections / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p95_ms": latencies[int(len(latencies) * 0.95) - 1] * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench hl7", description=__doc__)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--connections", type=int, nargs="+", default=[1, 4])
    p.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite)")
    args = p.parse_args(argv)
    backend = "PostgreSQL" if args.database_url else "SQLite"
    print(f"HL7 ADT throughput, end to end with ACK ({backend}, {args.messages} messages/run)")
    print(f"{'connections':>11}  {'msg/s':>8}  {'p50 ms':>7}  {'p95 ms':>7}  {'seconds':>8}")
    with SolentServer(TRUSTS, database_url=args.database_url) as server:
        for run_no, connections in enumerate(args.connections):
            r = run(server, run_no, args.messages, connections)
            print(
                f"{connections:>11}  {r['per_second']:>8.1f}  {r['p50_ms']:>7.1f}  "
                f"{r['p95_ms']:>7.1f}  {r['seconds']:>8.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
