"""Encoding Parley's outgoing SSE frames: `id` / `event` / `data`, encoded once per event."""

from __future__ import annotations

import functools

RETRY_MS = 2000
PING = b": ping\n\n"


def encode_frame(event_id: int, name: str, data: bytes, *, retry_ms: int | None = None) -> bytes:
    if b"\n" in data:
        # A multi-line payload becomes several data lines, so no payload can inject an event.
        data = data.replace(b"\n", b"\ndata: ")
    if b"\r" in data:
        data = data.replace(b"\r", b"")
    if retry_ms is None:
        return b"id: %d\nevent: %b\ndata: %b\n\n" % (event_id, _safe_name(name), data)
    return b"retry: %d\nid: %d\nevent: %b\ndata: %b\n\n" % (retry_ms, event_id, _safe_name(name), data)


# Runs for every relayed event, and a stream uses a handful of names: cached (bounded, as names come from
# the upstream).
@functools.lru_cache(maxsize=256)
def _safe_name(name: str) -> bytes:
    return name.encode().replace(b"\n", b" ").replace(b"\r", b" ")
