"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol): <VT> message <FS><CR>."""

from __future__ import annotations

START = b"\x0b"
END = b"\x1c\x0d"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
HEAD_BYTES = 4096  # enough of a refused message to read its MSH


class FramingError(Exception):
    """The peer sent bytes that are not MLLP, or a message larger than we accept."""


class MessageTooLarge(FramingError):
    """A message is larger than the limit (whole or still arriving); ``head`` is its first
    bytes (its MSH), so that the refusal can name it, and ``before`` the whole messages that
    came ahead of it in the same read."""

    def __init__(self, message: str, head: bytes, before: list[bytes]) -> None:
        super().__init__(message)
        self.head = head
        self.before = before


def frame(message: bytes) -> bytes:
    return START + message + END


class Deframer:
    """Collects received bytes and yields whole messages (without the framing)."""

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.buffer = bytearray()
        self.max_bytes = max_bytes

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        out: list[bytes] = []
        while True:
            start = self.buffer.find(START)
            if start < 0:
                if self.buffer.strip():
                    raise FramingError("data outside an MLLP frame")
                self.buffer.clear()
                return out
            if self.buffer[:start].strip():
                raise FramingError("data before the MLLP start block")
            # The end block is <FS><CR>; some senders omit the <CR>, and <FS> never occurs in
            # a message, so <FS> ends it and a <CR> after it (maybe in the next read) is dropped
            # with the whitespace between frames.
            end = self.buffer.find(END[:1], start + 1)
            if (end if end >= 0 else len(self.buffer)) - start - 1 > self.max_bytes:
                head = bytes(self.buffer[start + 1 : start + 1 + HEAD_BYTES])
                why = f"message larger than {self.max_bytes} bytes"
                raise MessageTooLarge(why, head, out)
            if end < 0:
                del self.buffer[:start]
                return out
            out.append(bytes(self.buffer[start + 1 : end]))
            del self.buffer[: end + (2 if self.buffer[end + 1 : end + 2] == END[1:] else 1)]
