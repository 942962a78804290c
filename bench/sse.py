"""Incremental parsers for the load generator: an HTTP/1.1 response (status, headers, chunked or
length-delimited or close-delimited body) and the Server-Sent Events inside its body.

Both work on bytes and are fed whatever one socket read returned, so a line, a chunk header or an event
may be split anywhere. They are written for speed (a few `bytes.find` calls per event, no `str` decoding
of data) because the load generator must stay far from being the bottleneck.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

# An event as the load generator sees it: its name (the `event:` field, or the data's JSON `type`) and data.
Event = tuple[str, bytes]


class SSEParser:
    """Splits an SSE byte stream into events (https://html.spec.whatwg.org/#event-stream-interpretation).

    Comments and events without data are dropped; `id:` and `retry:` are ignored. CRLF, CR and LF line
    ends are accepted. An event without an `event:` field is named after its JSON `type` (LiteLLM and other
    relays send `data:`-only frames), else "message".
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[Event]:
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):
                # Maybe half of a CRLF: wait for the next read.
                self._buffer = buffer
                return []
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events: list[Event] = []
        start = 0
        find = buffer.find
        while True:
            end = find(b"\n\n", start)
            if end < 0:
                break
            event = parse_block(buffer[start:end])
            if event is not None:
                events.append(event)
            start = end + 2
        self._buffer = buffer[start:] if start else buffer
        return events

    @property
    def pending(self) -> bytes:
        return self._buffer


def parse_block(block: bytes) -> Event | None:
    """One event's lines (without the blank line that ended it)."""
    # Fast path for the usual framing: optional id/retry lines, then "event: NAME\ndata: JSON".
    at = block.find(b"event: ")
    if at == 0 or (at > 0 and block[at - 1] == 10):
        newline = block.find(b"\n", at)
        one_data_line = newline > 0 and block.startswith(b"data: ", newline + 1) and block.find(b"\n", newline + 1) < 0
        if one_data_line and (
            at == 0 or all(line.startswith((b"id:", b"retry:")) for line in block[: at - 1].split(b"\n"))
        ):
            return block[at + 7 : newline].decode(), block[newline + 7 :]
    name = ""
    data_lines: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name_part, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name_part == b"event":
            name = value.decode(errors="replace")
        elif name_part == b"data":
            data_lines.append(value)
    if not data_lines:
        return None
    data = b"\n".join(data_lines)
    if not name:
        name = type_of(data)
    return name, data


def type_of(data: bytes) -> str:
    if data == b"[DONE]":
        return "[DONE]"
    if data.startswith(b'{"type":"'):
        # Relays that serialise the event model put its `type` first: no need to parse the JSON.
        end = data.find(b'"', 9)
        if end > 9 and data.find(b"\\", 9, end) < 0:
            return data[9:end].decode()
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "message"
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    return kind if isinstance(kind, str) else "message"


class HTTPError(Exception):
    pass


@dataclass(slots=True)
class HTTPResponseParser:
    """Feeds body bytes out of a raw HTTP/1.1 response as they arrive; `done` once the body ended."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    done: bool = False
    _head: bytes = b""
    _mode: str = "head"  # head | chunked | length | close
    _remaining: int = 0  # bytes left in the current chunk (chunked) or in the body (length)
    _chunk_buffer: bytes = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The body bytes in `data` (possibly none)."""
        if self._mode == "head":
            head = self._head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                if len(head) > 65536:
                    raise HTTPError("response head too large")
                self._head = head
                return []
            self._parse_head(head[:end])
            self._head = b""
            data = head[end + 4 :]
            if self.done or not data:
                return []
        if self._mode == "chunked":
            return self._feed_chunked(data)
        if self._mode == "length":
            piece = data[: self._remaining]
            self._remaining -= len(piece)
            if self._remaining <= 0:
                self.done = True
            return [piece] if piece else []
        return [data] if data else []

    def eof(self) -> None:
        """The connection closed: that ends a close-delimited body, and is an error anywhere else."""
        if self._mode == "close":
            self.done = True
        elif not self.done:
            raise HTTPError(f"connection closed mid-response (status {self.status or 'none'})")

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HTTPError(f"bad status line {lines[0][:80]!r}")
        self.status = int(parts[1])
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._mode = "chunked"
        elif "content-length" in self.headers:
            self._mode = "length"
            self._remaining = int(self.headers["content-length"])
            self.done = self._remaining == 0
        elif self.status in (204, 304) or 100 <= self.status < 200:
            self._mode = "length"
            self.done = True
        else:
            self._mode = "close"

    def _feed_chunked(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        buffer = self._chunk_buffer + data if self._chunk_buffer else data
        position = 0
        size = len(buffer)
        while position < size and not self.done:
            if self._remaining > 0:
                take = min(self._remaining, size - position)
                out.append(buffer[position : position + take])
                position += take
                self._remaining -= take
                if self._remaining == 0:
                    self._remaining = -2  # the CRLF after the chunk data is still to come
                continue
            if self._remaining < 0:
                # Skip the CRLF (maybe split across reads) that ends a chunk's data.
                skip = min(-self._remaining, size - position)
                position += skip
                self._remaining += skip
                continue
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                break
            size_field = buffer[position:line_end].split(b";", 1)[0].strip()
            try:
                chunk_size = int(size_field, 16)
            except ValueError as error:
                raise HTTPError(f"bad chunk size {size_field[:20]!r}") from error
            position = line_end + 2
            if chunk_size == 0:
                # Trailers are not expected from any peer; the last chunk ends the body.
                self.done = True
                break
            self._remaining = chunk_size
        self._chunk_buffer = buffer[position:] if not self.done and position < size else b""
        return out
