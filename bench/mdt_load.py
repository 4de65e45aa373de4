"""MDT live rooms under load: many meetings at once, each presenter followed by its followers,
over real WebSockets on loopback against a real `solent serve` (demo data, SQLite).

    python -m bench mdt [--meetings 12] [--followers 10] [--changes 40] [--rate 4]

Each presenter sends ``--changes`` view changes (scrolling: image_index 1, 2, ...) at ``--rate``
per second; the figure is the time from a presenter's send to each follower's receipt, over
every (change, follower): p50/p95/max. The server's CPU is read from /proc/<pid>/stat (user +
system time of the `solent serve` process) over the load phase, with what other processes
used meanwhile (a shared machine is noisy). Bounded: at most ``--timeout`` seconds of load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench.cpuwatch import CpuWatch
from bench.solent_server import SolentServer

TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    rest = stat[stat.rfind(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / TICK


def _users(server: SolentServer, meetings: int, followers: int) -> dict[str, str]:
    """Users and their bearer tokens, made in-process (the CLI costs ~2 s per call)."""
    from solent.domain.principal import SYSTEM
    from solent.index.sql import Index
    from solent.security.users import UserService
    from solent.services.audit import AuditTrail
    from solent.settings import load_settings

    settings = load_settings(
        environ={k: v for k, v in server.env.items() if k.startswith("SOLENT_")}
    )
    index = Index(settings.effective_database_url)
    try:
        users = UserService(index, settings, AuditTrail(index))
        tokens = {}
        names = ["coord"] + [f"m{m}p" for m in range(meetings)]
        names += [f"m{m}f{f}" for m in range(meetings) for f in range(followers)]
        for name in names:
            role = "mdt_coordinator" if name == "coord" else "clinician"
            users.add(SYSTEM, name, "ZZA", (role,), None, ())
            tokens[name] = users.issue(name).token
        return tokens
    finally:
        index.close()


def _meetings(server: SolentServer, coord: str, count: int) -> list[dict[str, Any]]:
    h = {"Authorization": f"Bearer {coord}"}
    with httpx.Client(base_url=server.base_url, headers=h, timeout=60) as http:
        timeline = http.get("/api/viewer/patients/ZZA/A100001/timeline").json()
        uids = [s["study_uid"] for s in timeline["studies"]]
        out = []
        for m in range(count):
            body = {
                "title": f"Bench MDT {m}",
                "date": "2026-12-07",
                "team": f"team {m}",
                "items": [{"issuer": "ZZA", "patient_id": "A100001", "study_uids": uids}],
            }
            r = http.post("/api/mdt/meetings", json=body)
            r.raise_for_status()
            out.append(r.json())
        return out


async def _load(
    server: SolentServer,
    tokens: dict[str, str],
    meetings: list[dict[str, Any]],
    followers: int,
    changes: int,
    rate: float,
    timeout: float,
) -> tuple[list[float], int, float]:
    """(latencies in s, messages missed, wall seconds of the send phase)."""
    ws_base = server.base_url.replace("http://", "ws://")
    sent: dict[tuple[int, int], float] = {}
    latencies: list[float] = []
    received = 0

    def url(meeting: dict[str, Any], name: str) -> str:
        return f"{ws_base}/api/mdt/meetings/{meeting['id']}/live?token={tokens[name]}"

    async def follow(ws: ClientConnection, m: int) -> None:
        nonlocal received
        got = 0
        while got < changes:
            msg = json.loads(await ws.recv())
            if msg["type"] == "view":
                at = time.perf_counter()
                latencies.append(at - sent[(m, int(msg["state"]["image_index"]))])
                got += 1
                received += 1

    async def present(ws: ClientConnection, m: int, item: int, study: str) -> None:
        for n in range(1, changes + 1):
            state = {"item_id": item, "study_uid": study, "image_index": n}
            sent[(m, n)] = time.perf_counter()
            await ws.send(json.dumps({"type": "view", "state": state}))
            await asyncio.sleep(1 / rate)

    async def joined(address: str) -> ClientConnection:
        """Connected and in the room (the welcome comes once the server has seated us)."""
        ws = await connect(address, max_queue=None)
        conns.append(ws)
        while json.loads(await ws.recv())["type"] != "welcome":
            pass
        return ws

    conns: list[ClientConnection] = []
    try:
        rooms = []
        for m, meeting in enumerate(meetings):
            p = await joined(url(meeting, f"m{m}p"))
            fs = [await joined(url(meeting, f"m{m}f{f}")) for f in range(followers)]
            await p.send(json.dumps({"type": "claim"}))
            while json.loads(await p.recv()) != {"type": "presenter", "presenter": f"m{m}p"}:
                pass
            item = meeting["items"][0]
            rooms.append((m, p, fs, item["id"], item["study_uids"][0]))
        print(f"  {len(conns)} WebSockets open; presenters claimed; sending...", flush=True)
        start = time.perf_counter()
        tasks = [asyncio.create_task(follow(ws, m)) for m, _, fs, _, _ in rooms for ws in fs]
        tasks += [asyncio.create_task(present(p, m, i, s)) for m, p, _, i, s in rooms]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        failed = [t.exception() for t in done if not t.cancelled() and t.exception()]
        if failed or pending:
            print(f"  {len(failed)} clients failed ({failed[:3]!r}), {len(pending)} unfinished")
        wall = time.perf_counter() - start
    finally:
        for ws in conns:
            await ws.close()
    expected = len(meetings) * followers * changes
    return latencies, expected - received, wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench mdt", description=__doc__)
    p.add_argument("--meetings", type=int, default=12)
    p.add_argument("--followers", type=int, default=10)
    p.add_argument("--changes", type=int, default=40, help="view changes per presenter")
    p.add_argument("--rate", type=float, default=4.0, help="view changes per second")
    p.add_argument("--timeout", type=float, default=60.0, help="bound of the load phase (s)")
    args = p.parse_args(argv)
    from solent.demo import TRUSTS

    print(
        f"MDT live rooms: {args.meetings} meetings x {args.followers} followers, "
        f"{args.changes} view changes per presenter at {args.rate}/s, loopback"
    )
    server = SolentServer(dict(TRUSTS), extra_env={"SOLENT_DEMO_DATA": "true"})
    with server.start(timeout=600):
        print("  server up with the demo data; making users and meetings...", flush=True)
        tokens = _users(server, args.meetings, args.followers)
        meetings = _meetings(server, tokens["coord"], args.meetings)
        watch = CpuWatch({server.pid})
        before, cpu0 = watch.sample(), _cpu_seconds(server.pid)
        latencies, missed, wall = asyncio.run(
            _load(server, tokens, meetings, args.followers, args.changes, args.rate, args.timeout)
        )
        cpu = _cpu_seconds(server.pid) - cpu0
        use = CpuWatch.delta(before, watch.sample())
    if not latencies:
        print("no view change reached a follower", flush=True)
        return 1
    ms = sorted(x * 1000 for x in latencies)
    p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
    result = {
        "meetings": args.meetings,
        "followers_per_meeting": args.followers,
        "deliveries": len(ms),
        "missed": missed,
        "p50_ms": round(statistics.median(ms), 2),
        "p95_ms": round(p95, 2),
        "max_ms": round(ms[-1], 2),
        "seconds": round(wall, 1),
        "server_cpu_s": round(cpu, 2),
        "server_cpu_pct_of_one_core": round(100 * cpu / max(wall, 1e-9), 1),
        "other_processes_pct_of_machine": round(use.others_pct, 1),
    }
    print(
        f"  presenter -> follower latency: p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, "
        f"max {result['max_ms']} ms over {len(ms)} deliveries ({missed} missed)"
    )
    print(
        f"  server CPU: {result['server_cpu_s']} s in {result['seconds']} s = "
        f"{result['server_cpu_pct_of_one_core']}% of one core "
        f"(other processes used {result['other_processes_pct_of_machine']}% of the machine)"
    )
    print("RESULT " + json.dumps(result, sort_keys=True), flush=True)
    return 0 if missed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
