"""`python -m bench [COMMAND] [ARGS]`: run one benchmark; no command runs `compare` (the
side-by-side comparison with Orthanc, what `make bench` runs); `all` runs every one in turn.

Each command is a module with ``main(argv: list[str] | None) -> int``; add yours with one line.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "compare": ("bench.compare", "Solent vs Orthanc side by side"),
    "query": (
        "bench.query_index",
        "query latency at 10k/100k (to 10 M) studies, SQLite + PostgreSQL, in process or HTTP",
    ),
    "hl7": ("bench.hl7", "HL7 ADT messages per second end to end with ACK"),
    "dicomweb": ("bench.dicomweb", "DICOMweb metadata, WADO-RS, frames, thumbnails vs Orthanc"),
    "import": ("bench.import_ct", "solent import of a 300-slice CT, SQLite and PostgreSQL"),
    "header_patch": ("bench.header_patch", "outgoing identity patch per instance, 300-slice CT"),
    "migration": ("bench.migration", "solent migrate from Orthanc vs Orthanc C-MOVE to storescp"),
    "mdt": ("bench.mdt_load", "MDT live rooms: 12 meetings x 10 followers over WebSockets"),
    "load": ("bench.load", "a scaled peak hour with locust on 1 and 3 nodes (PostgreSQL)"),
    "audit": ("bench.audit_verify", "solent audit verify: keyed (HMAC) vs plain chain, records/s"),
    "viewer": ("bench.viewer", "browser viewer: first image and full 100-slice CT, loopback + WAN"),
    "frames": ("bench.frames_cpu", "server CPU per /frames request, A/B against another tree"),
}
ALL = "all"  # every command above, in order, with its default arguments
DEFAULT = "compare"  # issue 7: `make bench` is Solent vs Orthanc side by side


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        for name, (_, about) in COMMANDS.items():
            print(f"  {name:<14} {about}")
        print(f"  {ALL:<14} every benchmark above, in turn")
        print(f"(no command: {DEFAULT}, what `make bench` runs; `make bench BENCH_ARGS=--quick`)")
        return 0
    name, rest = (argv[0], argv[1:]) if argv and not argv[0].startswith("-") else (DEFAULT, argv)
    if name == ALL:
        failed = [n for n in COMMANDS if main([n, *rest]) != 0]
        if failed:
            print(f"benchmarks failed: {', '.join(failed)}", file=sys.stderr)
        return 1 if failed else 0
    if name not in COMMANDS:
        print(f"unknown benchmark {name!r}; known: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
