"""The HTTP side of a turn's event stream, on sse-starlette.

Frames come pre-encoded from the event log and go out as they are; sse-starlette adds the keep-alive
`: ping` comments (also before the first token), notices disconnects and drains streams on shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from app.observability.metrics import Metrics
from app.settings import Settings

SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def _ping() -> ServerSentEvent:
    return ServerSentEvent(comment="ping", sep="\n")


class CountedEventSourceResponse(EventSourceResponse):
    """Counted in the open-streams gauge for exactly as long as it is being sent. Counted here, around the
    whole response, rather than by wrapping the frames: that would add a generator hop per frame, and a
    generator abandoned on disconnect only runs its `finally` when it is garbage-collected."""

    def __init__(self, frames: AsyncIterator[bytes], settings: Settings, metrics: Metrics) -> None:
        super().__init__(
            frames,
            headers=SSE_HEADERS,
            ping=settings.sse_ping_interval_s,
            ping_message_factory=_ping,
            sep="\n",
            send_timeout=settings.sse_send_timeout_s,
            # On shutdown the runner finishes or interrupts every turn within its grace period, which ends
            # these streams with their terminal event; sse-starlette waits a little longer before cutting.
            shutdown_event=anyio.Event(),
            shutdown_grace_period=settings.shutdown_grace_s + 3,
        )
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._metrics.stream_opened()
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._metrics.stream_closed()


def event_stream_response(frames: AsyncIterator[bytes], settings: Settings, metrics: Metrics) -> EventSourceResponse:
    return CountedEventSourceResponse(frames, settings, metrics)
