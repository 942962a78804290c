"""Encoding Parley's outgoing SSE frames: `id` / `event` / `data`, encoded once per event."""

from __future__ import annotations

RETRY_MS = 2000
PING = b": ping\n\n"


def encode_frame(event_id: int, name: str, data: bytes, *, retry_ms: int | None = None) -> bytes:
    if b"\n" in data:
        # A multi-line payload becomes several data lines, so no payload can inject an event.
        data = data.replace(b"\n", b"\ndata: ")
    if b"\r" in data:
        data = data.replace(b"\r", b"")
    head = b"retry: %d\n" % retry_ms if retry_ms is not None else b""
    return b"%sid: %d\nevent: %s\ndata: %s\n\n" % (head, event_id, _safe_name(name), data)


def _safe_name(name: str) -> bytes:
    encoded = name.encode()
    if b"\n" in encoded or b"\r" in encoded:
        return encoded.replace(b"\n", b" ").replace(b"\r", b" ")
    return encoded
