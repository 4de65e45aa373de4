"""MDT live rooms under load: many meetings at once, each presenter followed by its followers,
over real WebSockets on loopback against a real `solent serve` (demo data, SQLite).

    python -m bench mdt [--meetings 12] [--followers 10] [--changes 40] [--rate 4]
    python -m bench mdt --nodes 2 [--postgres postgresql://postgres@127.0.0.1:5432/test]

With ``--nodes 2`` two `solent serve` processes share a scratch PostgreSQL database (made on the
server named by ``--postgres`` and dropped afterwards) and each room spans both: presenter m on
node m % 2, follower f on node f % 2, so half of the deliveries cross nodes (LISTEN/NOTIFY).
Latency is then also given for same-node and cross-node deliveries, and CPU per node.

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
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench.cpuwatch import CpuWatch
from bench.solent_server import SolentServer

TICK = os.sysconf("SC_CLK_TCK")
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
SHARED = {  # what every node of one archive must share (tokens and audit chain)
    "SOLENT_TOKEN_SECRET": "bench-mdt-secret-0123456789abcdef0123",
    "SOLENT_AUDIT_KEY": "bench-mdt audit key shared by the nodes",
}


@contextmanager
def scratch_database(admin: str) -> Iterator[str]:
    """A new PostgreSQL database for one run, dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"solent_bench_mdt_{uuid.uuid4().hex[:10]}"
    admin = admin.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield admin.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(drop.format(sql.Identifier(name)))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    rest = stat[stat.rfind(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / TICK


def _users(server: SolentServer, meetings: int, followers: int) -> dict[str, str]:
    """Users and their bearer tokens, made in-process (the CLI costs ~2 s per call)."""
    from solent.app import build_archive
    from solent.domain.principal import SYSTEM
    from solent.settings import load_settings

    settings = load_settings(
        environ={k: v for k, v in server.env.items() if k.startswith("SOLENT_")}
    )
    archive = build_archive(settings)  # loads the audit key the trail is sealed with
    try:
        users = archive.services.users
        tokens = {}
        names = ["coord"] + [f"m{m}p" for m in range(meetings)]
        names += [f"m{m}f{f}" for m in range(meetings) for f in range(followers)]
        for name in names:
            role = "mdt_coordinator" if name == "coord" else "clinician"
            users.add(SYSTEM, name, "ZZA", (role,), None, ())
            tokens[name] = users.issue(name, SYSTEM).token
        return tokens
    finally:
        archive.close()


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
    bases: list[str],
    tokens: dict[str, str],
    meetings: list[dict[str, Any]],
    followers: int,
    changes: int,
    rate: float,
    timeout: float,
) -> tuple[dict[bool, list[float]], int, float]:
    """(latencies in s by whether they crossed nodes, messages missed, wall seconds of the
    send phase). Presenter m is on node m % len(bases), follower f on node f % len(bases)."""
    ws_bases = [b.replace("http://", "ws://") for b in bases]
    sent: dict[tuple[int, int], float] = {}
    latencies: dict[bool, list[float]] = {False: [], True: []}
    received = 0

    def url(node: int, meeting: dict[str, Any], name: str) -> str:
        base = ws_bases[node % len(ws_bases)]
        return f"{base}/api/mdt/meetings/{meeting['id']}/live?token={tokens[name]}"

    async def follow(ws: ClientConnection, m: int, crossed: bool) -> None:
        nonlocal received
        got = 0
        while got < changes:
            msg = json.loads(await ws.recv())
            if msg["type"] == "view":
                at = time.perf_counter()
                latencies[crossed].append(at - sent[(m, int(msg["state"]["image_index"]))])
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
        nodes = len(ws_bases)
        for m, meeting in enumerate(meetings):
            p = await joined(url(m, meeting, f"m{m}p"))
            fs = [await joined(url(f, meeting, f"m{m}f{f}")) for f in range(followers)]
            await p.send(json.dumps({"type": "claim"}))
            while json.loads(await p.recv()) != {"type": "presenter", "presenter": f"m{m}p"}:
                pass
            item = meeting["items"][0]
            rooms.append((m, p, fs, item["id"], item["study_uids"][0]))
        if nodes > 1:  # every member of every room is known on both nodes before sending
            await asyncio.sleep(1.0)
        print(f"  {len(conns)} WebSockets open; presenters claimed; sending...", flush=True)
        start = time.perf_counter()
        tasks = [
            asyncio.create_task(follow(ws, m, m % nodes != f % nodes))
            for m, _, fs, _, _ in rooms
            for f, ws in enumerate(fs)
        ]
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


def _pct(ms: list[float], q: float) -> float:
    return round(ms[min(len(ms) - 1, int(q * len(ms)))], 2)


def _run(args: argparse.Namespace, database: str) -> dict[str, Any] | None:
    """Start the node(s), make users and meetings, run the load; the figures or None."""
    from solent.demo import TRUSTS
    from solent.serve_process import serve_env, start_serve, stop_serve

    env = {"SOLENT_DEMO_DATA": "true", **(SHARED if database else {})}
    server = SolentServer(dict(TRUSTS), database_url=database, extra_env=env)
    others: list[Any] = []
    work = Path(tempfile.mkdtemp(prefix="bench-mdt-"))
    with server.start(timeout=600):
        try:
            bases, pids = [server.base_url], [server.pid]
            for n in range(1, args.nodes):  # further nodes on the same database
                node_env = serve_env(work / f"node{n}", {"SOLENT_DATABASE_URL": database, **SHARED})
                proc, ports = start_serve({**node_env, "SOLENT_LOG_LEVEL": "WARNING"}, 300)
                others.append(proc)
                bases.append(f"http://127.0.0.1:{ports['http']}")
                pids.append(proc.pid)
            print(f"  {len(bases)} node(s) up with the demo data; users, meetings...", flush=True)
            tokens = _users(server, args.meetings, args.followers)
            meetings = _meetings(server, tokens["coord"], args.meetings)
            watch = CpuWatch(set(pids))
            before, cpu0 = watch.sample(), [_cpu_seconds(pid) for pid in pids]
            latencies, missed, wall = asyncio.run(
                _load(
                    bases,
                    tokens,
                    meetings,
                    args.followers,
                    args.changes,
                    args.rate,
                    args.timeout,
                )
            )
            cpu = [_cpu_seconds(pid) - c for pid, c in zip(pids, cpu0, strict=True)]
            use = CpuWatch.delta(before, watch.sample())
        finally:
            for proc in others:
                stop_serve(proc)
            shutil.rmtree(work, ignore_errors=True)
    every = sorted(x * 1000 for xs in latencies.values() for x in xs)
    if not every:
        return None
    result: dict[str, Any] = {
        "nodes": len(pids),
        "backend": "postgresql" if database else "sqlite",
        "meetings": args.meetings,
        "followers_per_meeting": args.followers,
        "deliveries": len(every),
        "missed": missed,
        "p50_ms": round(statistics.median(every), 2),
        "p95_ms": _pct(every, 0.95),
        "max_ms": round(every[-1], 2),
        "seconds": round(wall, 1),
        "server_cpu_s": [round(c, 2) for c in cpu],
        "server_cpu_pct_of_one_core": [round(100 * c / max(wall, 1e-9), 1) for c in cpu],
        "other_processes_pct_of_machine": round(use.others_pct, 1),
    }
    for crossed, label in ((False, "same_node"), (True, "cross_node")):
        ms = sorted(x * 1000 for x in latencies[crossed])
        if ms and len(pids) > 1:
            result[label] = {
                "deliveries": len(ms),
                "p50_ms": round(statistics.median(ms), 2),
                "p95_ms": _pct(ms, 0.95),
            }
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench mdt", description=__doc__)
    p.add_argument("--meetings", type=int, default=12)
    p.add_argument("--followers", type=int, default=10)
    p.add_argument("--changes", type=int, default=40, help="view changes per presenter")
    p.add_argument("--rate", type=float, default=4.0, help="view changes per second")
    p.add_argument("--timeout", type=float, default=60.0, help="bound of the load phase (s)")
    p.add_argument("--nodes", type=int, default=1, choices=(1, 2, 3), help="solent serve nodes")
    p.add_argument(
        "--postgres",
        default="",
        help=f"PostgreSQL server for a scratch database (default with --nodes > 1: {DEFAULT_PG})",
    )
    args = p.parse_args(argv)
    admin = args.postgres or (DEFAULT_PG if args.nodes > 1 else "")
    print(
        f"MDT live rooms: {args.meetings} meetings x {args.followers} followers, "
        f"{args.changes} view changes per presenter at {args.rate}/s, loopback, "
        f"{args.nodes} node(s) on {'PostgreSQL' if admin else 'SQLite'}"
    )
    if admin:
        with scratch_database(admin) as database:
            result = _run(args, database)
    else:
        result = _run(args, "")
    if result is None:
        print("no view change reached a follower", flush=True)
        return 1
    print(
        f"  presenter -> follower latency: p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, "
        f"max {result['max_ms']} ms over {result['deliveries']} deliveries "
        f"({result['missed']} missed)"
    )
    for label in ("same_node", "cross_node"):
        if label in result:
            part = result[label]
            print(
                f"    {label.replace('_', ' ')}: p50 {part['p50_ms']} ms, p95 {part['p95_ms']} ms "
                f"over {part['deliveries']}"
            )
    for n, (cpu, pct) in enumerate(
        zip(result["server_cpu_s"], result["server_cpu_pct_of_one_core"], strict=True), start=1
    ):
        print(f"  node {n} CPU: {cpu} s in {result['seconds']} s = {pct}% of one core")
    print(f"  (other processes used {result['other_processes_pct_of_machine']}% of the machine)")
    print("RESULT " + json.dumps(result, sort_keys=True), flush=True)
    return 0 if result["missed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
