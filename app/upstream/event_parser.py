"""Split an upstream Server-Sent Events byte stream into (event name, data bytes) pairs.

Written by hand because the relay must keep each event's data bytes exactly as they arrived: SSE
libraries (httpx-sse, the SDK's own decoder) decode every line to `str` and build an object per event,
which is both slower on the hot path and not byte-preserving.
"""

from __future__ import annotations

import orjson

Event = tuple[str, bytes]


class SSESplitter:
    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[Event]:
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            normalised = self._normalise_newlines(buffer)
            if normalised is None:
                return []
            buffer = normalised
        events: list[Event] = []
        start = 0
        find = buffer.find
        while True:
            end = find(b"\n\n", start)
            if end < 0:
                break
            event = _parse_block(buffer[start:end])
            if event is not None:
                events.append(event)
            start = end + 2
        self._buffer = buffer[start:]
        return events

    def _normalise_newlines(self, buffer: bytes) -> bytes | None:
        # CRLF and lone CR are legal SSE line ends. A CR at the very end may be half of a CRLF split
        # across reads, so it waits for the next chunk.
        if buffer.endswith(b"\r"):
            self._buffer = buffer
            return None
        return buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet terminated by a blank line (left over when a stream is cut)."""
        return self._buffer


def _parse_block(block: bytes) -> Event | None:
    # Fast path for the upstream's own framing: "event: NAME\ndata: JSON".
    if block.startswith(b"event: "):
        newline = block.find(b"\n")
        if newline > 0 and block.startswith(b"data: ", newline + 1) and block.find(b"\n", newline + 1) < 0:
            return block[7:newline].decode(), block[newline + 7 :]
    name = ""
    data_lines: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"event":
            name = value.decode(errors="replace")
        elif field == b"data":
            data_lines.append(value)
    if not data_lines:
        return None
    data = b"\n".join(data_lines)
    if not name:
        name = _type_of(data)
    return name, data


def _type_of(data: bytes) -> str:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "message"
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    return kind if isinstance(kind, str) else "message"
