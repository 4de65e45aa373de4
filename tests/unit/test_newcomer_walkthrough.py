"""What a newcomer meets running the README and docs/*.md as written (the docs walk-through):
errors that say what to do next instead of a traceback, a piped password, `solent demo` run
twice, study thumbnails that are revalidated, and FHIR's accession search explained.
"""

from __future__ import annotations

import errno
import io
import socket
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from solent.app import Archive, build_archive
from solent.cli import main
from solent.demo import DEMO_ROOT
from solent.domain.principal import SYSTEM
from solent.errors import ListenerUnavailable
from solent.serve import bind_http, start_listeners
from solent.settings import load_settings
from tests.unit.security_fixtures import add_user, cli_env, demo, demo_client, demo_template

__all__ = ["demo", "demo_client", "demo_template"]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "var"
    cli_env(monkeypatch, data)
    return data


# -- solent user add: the password -------------------------------------------------------------


def test_user_add_reads_a_piped_password(
    data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _run(capsys, "trust", "add", "ZZA", "--name", "A")[0] == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("piped-password-123\n"))
    code, _out, err = _run(capsys, "user", "add", "alice", "--trust", "ZZA", "--role", "clinician")
    assert code == 0, err
    archive = build_archive(load_settings(environ={}, data_dir=data_dir))
    try:
        users = archive.services.users
        assert users.login("alice", "piped-password-123", None) is not None
        assert users.login("alice", "piped-password-123\n", None) is None
    finally:
        archive.close()


def test_user_add_without_any_password_says_how_to_give_one(
    data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _run(capsys, "trust", "add", "ZZA", "--name", "A")[0] == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _out, err = _run(capsys, "user", "add", "bob", "--trust", "ZZA", "--role", "clinician")
    assert code == 2
    assert "--password" in err and "standard input" in err
    code, _out, err = _run(
        capsys, "user", "add", "bob", "--trust", "ZZA", "--role", "clinician",
        "--no-password", "--password", "abcdefghijklmn",
    )  # fmt: skip
    assert code == 2 and "exclude each other" in err
    assert "configuration error" not in err  # a usage error, not a setting to fix
    assert "bob" not in _run(capsys, "user", "list")[1]


# -- settings that cannot work ----------------------------------------------------------------


def test_a_data_dir_that_cannot_be_created_names_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    cli_env(monkeypatch, a_file / "var")
    code, _out, err = _run(capsys, "stats")
    assert code == 2
    assert "SOLENT_DATA_DIR" in err and "Traceback" not in err


def test_an_unreachable_database_names_the_setting_and_hides_the_password(
    data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _free_port()  # nothing listens there
    monkeypatch.setenv("SOLENT_DATABASE_URL", f"postgresql://solent:s3cret@127.0.0.1:{port}/x")
    code, _out, err = _run(capsys, "stats")
    assert code == 1
    assert "SOLENT_DATABASE_URL" in err and f"127.0.0.1:{port}" in err
    assert "s3cret" not in err


# -- solent serve: ports taken ----------------------------------------------------------------


def test_http_port_in_use_names_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ListenerUnavailable) as caught:
            bind_http("127.0.0.1", port)
    text = str(caught.value)
    assert f"127.0.0.1:{port}" in text and "already in use" in text
    assert "SOLENT_HTTP_PORT" in text


class _Listener:
    def __init__(self, name: str, fail: bool) -> None:
        self.name, self.fail, self.stopped = name, fail, False

    def start(self) -> int:
        if self.fail:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        return 4242

    def stop(self) -> None:
        self.stopped = True


def test_a_listener_port_in_use_stops_the_start_and_what_started(tmp_path: Path) -> None:
    settings = load_settings(environ={}, data_dir=tmp_path / "var", hl7_port=2599)
    archive = build_archive(settings)
    try:
        dicom, hl7 = _Listener("dicom", fail=False), _Listener("hl7", fail=True)
        archive.listeners = [dicom, hl7]
        http = socket.socket()
        ports: dict[str, int | str] = {}
        with pytest.raises(ListenerUnavailable) as caught:
            start_listeners(archive, http, ports)
        assert "SOLENT_HL7_PORT" in str(caught.value) and ":2599" in str(caught.value)
        assert dicom.stopped and hl7.stopped and http.fileno() == -1
    finally:
        archive.close()


# -- solent hl7 send, solent demo ------------------------------------------------------------


def test_hl7_send_without_a_server_or_file_says_what_to_check(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = tmp_path / "a08.hl7"
    message.write_text("MSH|^~\\&|PAS|ZZA|SOLENT|SOLENT|20261205||ADT^A08|1|P|2.5\r")
    port = str(_free_port())
    code, _out, err = _run(capsys, "hl7", "send", "--port", port, str(message))
    assert code == 1 and "solent serve" in err and "Traceback" not in err
    code, _out, err = _run(capsys, "hl7", "send", "--port", port, str(tmp_path / "none.hl7"))
    assert code == 1 and "none.hl7" in err


def test_demo_twice_loads_once(
    demo: Archive, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = demo.services.access.stats(SYSTEM)["instances"]
    assert before > 0
    cli_env(monkeypatch, demo.settings.data_dir)
    code, _out, err = _run(capsys, "demo")
    assert code == 0 and "already loaded" in err
    assert demo.services.access.stats(SYSTEM)["instances"] == before


# -- DICOMweb and FHIR as the docs say ---------------------------------------------------------


def test_study_and_series_thumbnails_are_revalidated(
    demo: Archive, demo_client: TestClient
) -> None:
    h = add_user(demo, "drza", "ZZA", "clinician")
    study = f"{DEMO_ROOT}1.2"
    [row] = demo_client.get(f"/dicomweb/studies/{study}/instances", headers=h).json()
    series, sop = row["0020000E"]["Value"][0], row["00080018"]["Value"][0]
    base = f"/dicomweb/studies/{study}"
    for path in (f"{base}/thumbnail", f"{base}/series/{series}/thumbnail"):
        r = demo_client.get(path, headers=h)
        assert r.status_code == 200, path
        assert r.headers["cache-control"] == "private, no-cache", path
        again = demo_client.get(path, headers={**h, "If-None-Match": r.headers["etag"]})
        assert again.status_code == 304, path
    r = demo_client.get(f"{base}/series/{series}/instances/{sop}/thumbnail", headers=h)
    assert "immutable" in r.headers["cache-control"]


def test_fhir_accession_search_is_explained_and_works(
    demo: Archive, demo_client: TestClient
) -> None:
    h = add_user(demo, "drza", "ZZA", "clinician")
    study = demo_client.get(f"/api/studies/{DEMO_ROOT}1.2", headers=h).json()
    accession = study["accession_number"]
    bare = demo_client.get("/fhir/ImagingStudy", params={"identifier": accession}, headers=h)
    assert bare.status_code == 400
    said = bare.json()["issue"][0]["diagnostics"]
    system = "https://solent-pacs.nhs.example/Id/ZZA/accession"
    assert "https://solent-pacs.nhs.example/Id/<ODS code>/accession|" in said
    found = demo_client.get(
        "/fhir/ImagingStudy", params={"identifier": f"{system}|{accession}"}, headers=h
    )
    assert found.status_code == 200 and found.json()["total"] == 1


def test_audit_seal_on_a_keyed_trail_rewrites_nothing(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # README: `solent audit seal` "once, after upgrading a pre-HMAC trail"; run again by
    # mistake it must not take the audit lock to rewrite every record.
    assert _run(capsys, "trust", "add", "ZZA", "--name", "A")[0] == 0
    code, out, err = _run(capsys, "audit", "seal")
    assert code == 0
    assert "already sealed" in out and "nothing changed" in out
    assert "re-chained" not in err
    assert _run(capsys, "audit", "verify")[0] == 0


def test_an_unreachable_dicomweb_source_is_one_line(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # docs/migration.md: `solent migrate source add ... --dicomweb URL`, then inventory/run.
    assert _run(capsys, "trust", "add", "ZZB", "--name", "B")[0] == 0
    url = f"http://127.0.0.1:{_free_port()}/dicom-web"
    assert (
        _run(capsys, "migrate", "source", "add", "web", "--dicomweb", url, "--trust", "ZZB")[0] == 0
    )
    code, _out, err = _run(capsys, "migrate", "inventory", "web")
    assert code == 1
    assert f"DICOMweb source {url} cannot be reached" in err and "Traceback" not in err


def test_an_interrupted_demo_load_is_completed_never_doubled(
    data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `make run` stopped with Ctrl-C while the demo loads: the next start finishes it.
    from solent import demo as demo_data

    archive = build_archive(load_settings(environ={}, data_dir=data_dir))
    try:
        with monkeypatch.context() as m:
            m.setattr(demo_data, "STUDIES", demo_data.STUDIES[:2])  # stopped after two studies
            demo_data.load_demo(archive)
        assert demo_data.demo_state(archive) == "partial"
        code, out, _err = _run(capsys, "demo")
        assert code == 0 and "loaded" in out
        assert demo_data.demo_state(archive) == "complete"
        total = archive.services.access.stats(SYSTEM)["instances"]
        assert total == demo_data.DEMO_INSTANCES
        demo_data.load_demo(archive)  # the same fixed UIDs and bytes: duplicates of themselves
        assert archive.services.access.stats(SYSTEM)["instances"] == total
    finally:
        archive.close()


def test_the_first_start_hint_can_be_pasted_as_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `make run` runs .venv/bin/solent, which is not on the PATH: the hint says that path.
    from solent.security.cli import login_hint

    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    script = tmp_path / ".venv" / "bin" / "solent"
    script.write_text("#!/bin/sh\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [".venv/bin/solent", "serve"])
    archive = build_archive(load_settings(environ={}, data_dir=tmp_path / "var", http_port=8042))
    try:
        hint = login_hint(archive)
    finally:
        archive.close()
    assert "  .venv/bin/solent user add alice --trust ZZA --role clinician" in hint
    assert "  .venv/bin/solent token create --user alice" in hint
    assert "http://127.0.0.1:8042/api/studies" in hint
    monkeypatch.setattr(sys, "argv", ["solent", "serve"])  # found on the PATH
    archive = build_archive(load_settings(environ={}, data_dir=tmp_path / "var"))
    try:
        assert "\n  solent user add alice" in login_hint(archive)
    finally:
        archive.close()
