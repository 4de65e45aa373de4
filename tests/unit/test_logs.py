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
    # Another test in this process may have built a uvicorn.Config, which sets uvicorn's
    # loggers to its own level: as `solent serve` leaves them, they follow the root.
    uvicorn = logging.getLogger("uvicorn.error")
    uvicorn_state = uvicorn.level, uvicorn.propagate, uvicorn.disabled
    uvicorn.setLevel(logging.NOTSET)
    uvicorn.propagate, uvicorn.disabled = True, False
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    uvicorn.setLevel(uvicorn_state[0])
    uvicorn.propagate, uvicorn.disabled = uvicorn_state[1], uvicorn_state[2]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_bearer_token_in_a_websocket_url_is_not_logged(
    fmt: str, configured_root: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The MDT live room takes its bearer token in the query string (browsers cannot send
    headers on a WebSocket), and uvicorn logs each WebSocket's path with its query at INFO: the
    token, a credential valid for an hour, must not reach the log."""
    logs.configure(fmt, "INFO")
    path = f"/api/mdt/meetings/7/live?token={TOKEN}"
    logging.getLogger("uvicorn.error").info(
        '%s - "WebSocket %s" [accepted]', "127.0.0.1:40680", path
    )
    logging.getLogger("solent.test").warning("refused %s&x=1", f"/live?a=b&token={TOKEN}")
    err = capsys.readouterr().err
    assert TOKEN not in err and TOKEN[:20] not in err
    assert '"WebSocket /api/mdt/meetings/7/live?token=[redacted]" [accepted]' in err.replace(
        '\\"', '"'
    )
    assert "/live?a=b&token=[redacted]&x=1" in err
