"""multipart/related: writing responses part by part, and spooling STOW-RS request parts.

The reader feeds python-multipart's streaming parser (which parses any multipart body given
its boundary) and writes each part straight to a temp file, so a request is never held in
memory whatever its size.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError


def new_boundary() -> str:
    return uuid.uuid4().hex


def part_head(boundary: str, content_type: str, location: str | None = None) -> bytes:
    lines = [f"--{boundary}", f"Content-Type: {content_type}"]
    if location:
        lines.append(f"Content-Location: {location}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode()


def content_type(inner: str, boundary: str, transfer_syntax: str | None = None) -> str:
    ts = f"; transfer-syntax={transfer_syntax}" if transfer_syntax else ""
    return f'multipart/related; type="{inner}"; boundary={boundary}{ts}'


PREAMBLE_MAX = 64 * 1024


class BadMultipart(Exception):
    """The request body is not a usable multipart/related message."""


class TooLarge(Exception):
    """The request body exceeds the configured limit."""


@dataclass
class SpooledPart:
    path: Path
    content_type: str
    size: int = 0


@dataclass
class _State:
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict[str, str] = field(default_factory=dict)
    fp: Any = None
    current: SpooledPart | None = None


class PartSpooler:
    """Feed the body in chunks; each part lands in a temp file under ``directory``."""

    def __init__(self, boundary: str, directory: Path, max_bytes: int, max_parts: int) -> None:
        self._delimiter = b"--" + boundary.encode("latin-1")
        # What came before the first delimiter: RFC 2046 5.1.1 lets a body open with a
        # preamble its reader ignores (python-multipart wants the delimiter first). Kept until
        # the delimiter shows, at most PREAMBLE_MAX bytes; None once the parts began.
        self._preamble: bytearray | None = bytearray()
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_parts = max_parts
        self.parts: list[SpooledPart] = []
        self.received = 0
        self._s = _State()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": lambda d, s, e: self._s.header_field.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._s.header_value.extend(d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_done,
                "on_part_data": self._data,
                "on_part_end": self._end,
            },
        )

    def _begin(self) -> None:
        self._s = _State()

    def _header_end(self) -> None:
        name = self._s.header_field.decode("latin-1").strip().lower()
        self._s.headers[name] = self._s.header_value.decode("latin-1").strip()
        self._s.header_field.clear()
        self._s.header_value.clear()

    def _headers_done(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise TooLarge(f"more than {self.max_parts} parts in one request")
        fd, name = tempfile.mkstemp(dir=self.directory, prefix="stow-", suffix=".dcm")
        self._s.fp = os.fdopen(fd, "wb")
        part = SpooledPart(Path(name), self._s.headers.get("content-type", ""))
        self._s.current = part
        self.parts.append(part)

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._s.fp is not None and self._s.current is not None:
            self._s.fp.write(data[start:end])
            self._s.current.size += end - start

    def _end(self) -> None:
        if self._s.fp is not None:
            self._s.fp.close()
            self._s.fp = None

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.max_bytes:
            raise TooLarge(f"the request body exceeds {self.max_bytes} bytes")
        if self._preamble is not None:
            chunk = self._after_preamble(chunk)
            if not chunk:
                return
        try:
            self._parser.write(chunk)
        except (TooLarge, BadMultipart):
            raise
        except MultipartParseError as exc:
            raise BadMultipart(f"the multipart body is malformed: {exc}") from exc

    def _after_preamble(self, chunk: bytes) -> bytes:
        """The body from its first delimiter on (b"" while it has not come yet)."""
        assert self._preamble is not None
        seen = self._preamble
        seen += chunk
        if seen.startswith(self._delimiter):
            at = 0
        else:  # a delimiter starts a line (the CRLF before it belongs to the preamble)
            found = seen.find(b"\n" + self._delimiter)
            at = found + 1 if found >= 0 else -1
        if at >= 0:
            self._preamble = None
            return bytes(seen[at:])
        if len(seen) > PREAMBLE_MAX:
            raise BadMultipart(
                f"the multipart body has no boundary delimiter in its first {PREAMBLE_MAX} bytes "
                "(is the boundary right?)"
            )
        return b""

    def finish(self) -> list[SpooledPart]:
        if self._preamble is not None:
            raise BadMultipart("the multipart body holds no parts (is the boundary right?)")
        try:
            self._parser.finalize()
        except MultipartParseError as exc:
            raise BadMultipart(f"the multipart body is malformed: {exc}") from exc
        if self._s.fp is not None:
            self._s.fp.close()
            raise BadMultipart("the multipart body ends inside a part (no closing boundary)")
        if not self.parts:
            raise BadMultipart("the multipart body holds no parts (is the boundary right?)")
        return self.parts

    def discard(self) -> None:
        if self._s.fp is not None:
            self._s.fp.close()
            self._s.fp = None
        for part in self.parts:
            part.path.unlink(missing_ok=True)
