"""A turn's `text/event-stream` response: sse-starlette's `EventSourceResponse`, set up for the contract.

The frames come pre-encoded (`streaming.frames`) and pass through as bytes. `: ping` comments keep an idle
connection open; the frames' own iterator sends the first one at once when it has nothing yet (sse-starlette's
first ping waits a full interval). A client that stops reading is cut after `sse_send_timeout_s`. On SIGTERM
the stream is given the runner's grace period and a little more, within which the runner ends every turn and
so every stream gets its terminal event.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from app.observability.metrics import Metrics
from app.settings import Settings

logger = logging.getLogger(__name__)

# After the runner's grace period, the runner waits this long for interrupted turns' final writes.
SHUTDOWN_MARGIN_S = 5.0


class EventStreamResponse(EventSourceResponse):
    """`EventSourceResponse` that ends quietly when the client stops reading, with a log line, instead of
    raising out of the application."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            logger.warning("sse.slow_client_cut", extra={"send_timeout_s": self.send_timeout})


def ping_comment() -> ServerSentEvent:
    """`: ping`, as `streaming.frames.PING` (sse-starlette encodes it with the event's own separator)."""
    return ServerSentEvent(comment="ping", sep="\n")


def event_stream(
    frames: AsyncGenerator[bytes, None], *, settings: Settings, metrics: Metrics, shutdown: anyio.Event | None = None
) -> EventStreamResponse:
    """The response for a stream of encoded frames. `shutdown` is set when the server starts shutting down."""
    return EventStreamResponse(
        _counted(frames, metrics),
        headers={"Cache-Control": "no-store"},
        ping=settings.sse_ping_interval_s,
        ping_message_factory=ping_comment,
        sep="\n",
        send_timeout=settings.sse_send_timeout_s,
        shutdown_event=shutdown,
        shutdown_grace_period=settings.shutdown_grace_s + SHUTDOWN_MARGIN_S,
    )


async def _counted(frames: AsyncGenerator[bytes, None], metrics: Metrics) -> AsyncGenerator[bytes, None]:
    """`frames`, counted in the open-streams gauge for as long as they are being sent, and closed with it."""
    metrics.stream_opened()
    try:
        async with contextlib.aclosing(frames):
            async for chunk in frames:
                yield chunk
    finally:
        metrics.stream_closed()
