"""What `solent serve` writes to its log (solent.logs)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from solent import logs

TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJyYWRhIn0.hHM94OeKXeK6pOC-A1XA2hC1xse3NOkuw"


@pytest.fixture
def configured_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_bearer_token_in_a_websocket_url_is_not_logged(
    fmt: str, configured_root: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The MDT live room takes its bearer token in the query string (browsers cannot send
    headers on a WebSocket), and uvicorn logs each WebSocket's path with its query at INFO: the
    token, a credential valid for an hour, must not reach the log."""
    logs.configure(fmt, "INFO")
    path = f"/api/mdt/meetings/7/live?token={TOKEN}"
    # uvicorn's own record, handed to the handler `configure` installed (the one every record
    # of `solent serve` reaches): not through uvicorn's logger, whose level and handlers other
    # tests of this process may have changed.
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, __file__, 0, '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1:40680", path), None,
    )  # fmt: skip
    for handler in logging.getLogger().handlers:
        handler.handle(record)
    logging.getLogger("solent.test").warning("refused %s&x=1", f"/live?a=b&token={TOKEN}")
    err = capsys.readouterr().err
    assert TOKEN not in err and TOKEN[:20] not in err
    assert '"WebSocket /api/mdt/meetings/7/live?token=[redacted]" [accepted]' in err.replace(
        '\\"', '"'
    )
    assert "/live?a=b&token=[redacted]&x=1" in err
