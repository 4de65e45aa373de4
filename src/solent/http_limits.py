"""Bounds on an HTTP request: its head's size, the time a client may take to send the head,
and how long its body (or the response to it) may stand still.

uvicorn's httptools protocol has neither: a header of any length is buffered until its line
ends, and a connection that never finishes its request line holds a connection slot for ever
(uvicorn's keep-alive timer only runs between requests). ``limit_concurrency`` (set by
serve.py from ``http_max_connections``) then counts those stalled connections, so a few
hundred silent sockets would make every real request a 503. This protocol counts the bytes
of each request head as they arrive and answers 431 beyond ``max_head_bytes``; a head not
complete ``head_timeout`` seconds after the connection opened (or the previous response
ended) closes the connection. Written by hand because no option of uvicorn or httptools
bounds either (uvicorn's ``h11_max_incomplete_event_size`` applies to its h11 protocol only).

The same holds once the head is in: a client that announces a body and stops sending it (or
stops reading a response) kept its connection slot, and the request its thread, for ever; an
authenticated caller could fill ``http_max_connections`` that way. A body that moves no byte
for ``stall_timeout`` seconds while the server waits for it, or a response the client has not
taken a byte of for as long, closes the connection (the app sees a disconnect and cleans up).
Time the server itself spends (reading paused because the app has not consumed what came, an
ingest running after the body) is never counted against the client.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

BODY_431 = b"Request header fields too large"


class HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops parsing this connection."""


class LimitedHttpProtocol(HttpToolsProtocol):
    max_head_bytes = 32 * 1024
    head_timeout = 30.0
    stall_timeout = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # counted in parser callbacks (complete lines)
        self._head_bytes_unparsed = 0  # bytes fed while the head was still incomplete
        self._in_head = True
        self._boundaries = 0  # heads completed + messages completed, to spot one in a chunk
        self._too_large = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_body = False  # between a head and the end of its message
        self._body_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None

    # -- the head timer ----------------------------------------------------------------------

    def _start_head_timer(self) -> None:
        self._cancel_head_timer()
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            log.info("HTTP connection closed: request head not complete in %gs", self.head_timeout)
            self.transport.close()

    # -- the stall timers: a body that stops coming, a response that stops being read -------

    def _start_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
        loop = asyncio.get_running_loop()
        self._body_timer = loop.call_later(self.stall_timeout, self._body_stalled)

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_stalled(self) -> None:
        self._body_timer = None
        if not self._in_body or self.transport.is_closing():
            return
        if self.flow is not None and self.flow.read_paused:
            self._start_body_timer()  # the app has not taken what came: not the client's delay
            return
        log.info("HTTP connection closed: request body stalled for %gs", self.stall_timeout)
        self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            loop = asyncio.get_running_loop()
            self._write_timer = loop.call_later(self.stall_timeout, self._write_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_stalled(self) -> None:
        self._write_timer = None
        if not self.transport.is_closing():
            log.info("HTTP connection closed: response not read for %gs", self.stall_timeout)
            self.transport.abort()  # close() would wait for the buffer the client never reads

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().connection_lost(exc)

    # -- the head size -----------------------------------------------------------------------

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > self.max_head_bytes:
            self._too_large = True
            raise HeadTooLarge

    def data_received(self, data: bytes) -> None:
        if self._too_large:
            return
        pending_before, boundaries = self._in_head, self._boundaries
        super().data_received(data)
        if self._in_body:
            self._start_body_timer()  # bytes of the body came: the client is not stalled
        # A chunk that began and ended inside one request head was head only (a header line
        # httptools is still buffering never reaches on_header, so it is counted here). A chunk
        # in which a head or a message ended also carries body bytes: it is not counted.
        if (
            pending_before
            and self._in_head
            and self._boundaries == boundaries
            and not self._too_large
        ):
            self._head_bytes_unparsed += len(data)
            if self._head_bytes_unparsed > self.max_head_bytes:
                self._too_large = True
                self.send_400_response("")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True  # until on_message_complete, which a body-less request has at once
        self._boundaries += 1
        self._head_bytes_unparsed = 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_body = False
        self._cancel_body_timer()
        self._in_head = True
        self._boundaries += 1
        self._head_bytes_unparsed = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._start_head_timer()  # the next request's head has the same time to arrive

    def send_400_response(self, msg: str) -> None:
        """uvicorn answers any parser error with 400; a head over the limit gets 431."""
        if not self._too_large:
            super().send_400_response(msg)
            return
        log.warning("HTTP request refused: head larger than %d bytes", self.max_head_bytes)
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(BODY_431)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + BODY_431
        )
        self.transport.close()
