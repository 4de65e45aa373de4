"""Start and stop `solent serve` for benchmarks: fresh data dir, free loopback ports.

The embedded default (SQLite + files) unless a PostgreSQL URL is given. Before start it adds
the four bench trusts and registers the benchmark's DICOM client (AE title + address) so DIMSE
calls are accepted; when the build has local users and tokens, it creates a bench user and
sends its bearer token on every HTTP request.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from solent.serve_process import (
    ServeStartError,
    serve_env,
    solent_program,
    start_serve,
    stop_serve,
)

SOLENT = solent_program()


@dataclass
class SolentServer:
    """One `solent serve` process; use as a context manager or call start()/stop()."""

    trusts: dict[str, str]
    client_aet: str = "BENCH"
    client_port: int = 11113
    client_trust: str = "ZZA"
    database_url: str = ""
    workdir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, Any] = field(default_factory=dict)
    token: str = ""
    proc: subprocess.Popen[str] | None = None
    _own_dir: bool = field(default=False, repr=False)
    _prepared: bool = field(default=False, repr=False)
    _log: IO[str] | None = field(default=None, repr=False)

    @property
    def data_dir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "var"

    @property
    def env(self) -> dict[str, str]:
        # The per-user HTTP rate limit (500/s, issue 11) would cap the /frames phase (8 clients
        # of one service account) at the limiter instead of measuring the server: off here.
        extra = {
            "SOLENT_LOG_LEVEL": "WARNING",
            "TCP_NODELAY": "1",
            "SOLENT_RATE_LIMIT_PER_SECOND": "0",
        }
        if self.database_url:
            extra["SOLENT_DATABASE_URL"] = self.database_url
        return serve_env(self.data_dir, {**extra, **self.extra_env})

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    @property
    def dicomweb_url(self) -> str:
        return self.base_url + "/dicomweb"

    @property
    def dicom_port(self) -> int | None:
        port = self.ports.get("dicom")
        return int(port) if port else None

    @property
    def ae_title(self) -> str:
        return str(self.ports.get("ae_title", "SOLENT"))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def database_url_effective(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'solent.db').resolve()}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SOLENT), *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=3600,
        )

    def _prepare(self) -> None:
        """Trusts and the bench's DICOM node, written in-process (CLI start-up costs ~2 s each)."""
        from solent.app import build_archive
        from solent.settings import load_settings

        environ = {k: v for k, v in self.env.items() if k.startswith("SOLENT_")}
        archive = build_archive(load_settings(environ=environ))
        try:
            for code, name in self.trusts.items():
                archive.index.add_trust(code, name)
            archive.index.add_node(
                self.client_aet,
                "127.0.0.1",
                self.client_port,
                self.client_trust,
                ["store", "query", "retrieve"],
            )
            try:  # HL7 senders must be registered (issue 6): the bench sends from loopback
                from solent.index.hl7_senders import add_sender
            except ImportError:
                pass
            else:
                for code in self.trusts:
                    add_sender(archive.index, "*", code, ("127.0.0.1",), code)
        finally:
            archive.close()

    def _make_token(self) -> str:
        """An API token of a bench service account that belongs to every bench trust.

        Empty when this build has no `solent user` (HTTP then needs no authentication).
        """
        others = [f"--also-trust={code}" for code in self.trusts if code != self.client_trust]
        made = self.cli(
            "user",
            "add",
            "bench",
            "--trust",
            self.client_trust,
            *others,
            "--role",
            "integration,radiologist",
            "--no-password",
            check=False,
        )
        if made.returncode != 0:
            if "invalid choice" in made.stderr:
                return ""
            raise RuntimeError(f"solent user add failed: {made.stderr.strip()[-300:]}")
        out = self.cli("token", "create", "--user", "bench", "--api", "--label", "bench")
        return out.stdout.strip().splitlines()[-1].strip()

    def prepare(self) -> None:
        """A fresh data dir with the schema, the bench trusts and the bench's DICOM node."""
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="bench-solent-"))
            self._own_dir = True
        if not self._prepared:
            self._prepare()
            self._prepared = True

    def start(self, timeout: float = 120) -> SolentServer:
        first = not self._prepared
        self.prepare()
        assert self.workdir is not None
        self._log = (self.workdir / "solent.log").open("a", encoding="utf-8")
        with ThreadPoolExecutor(1) as pool:
            # The bench account's token is made by the CLI (~2 s) while the server boots.
            token = pool.submit(self._make_token) if first or not self.token else None
            try:
                self.proc, self.ports = start_serve(self.env, timeout, log=self._log)
            except ServeStartError:
                self.stop(remove=False)
                raise
            if token is not None:
                self.token = token.result()
        return self

    def stop(self, *, remove: bool = True) -> None:
        if self.proc is not None:
            stop_serve(self.proc, timeout=60)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if remove and self._own_dir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> SolentServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
