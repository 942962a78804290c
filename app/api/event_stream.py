"""A turn's `text/event-stream` response: sse-starlette's `EventSourceResponse`, set up for the contract.

The frames come pre-encoded (`streaming.frames`) and pass through as bytes. `: ping` comments keep an idle
connection open; the frames' own iterator sends the first one at once when it has nothing yet (sse-starlette's
first ping waits a full interval). A client that stops reading is cut after `sse_send_timeout_s`. On SIGTERM
the stream is given the runner's grace period and a little more, within which the runner ends every turn and
so every stream gets its terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable
from typing import Any

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Message, Receive, Scope, Send

from app.observability.metrics import Metrics
from app.services.open_streams import KeyStreams
from app.settings import Settings

logger = logging.getLogger(__name__)

# After the runner's grace period, the runner waits this long for interrupted turns' final writes.
SHUTDOWN_MARGIN_S = 5.0


class EventStreamResponse(EventSourceResponse):
    """`EventSourceResponse` counted in the open-streams gauge while it is sent; that ends quietly, with a log
    line, when the client stops reading (instead of raising out of the application); and that, opened by an
    API key (`key_hash`), ends cleanly when the key is revoked: a browser's EventSource reconnects, and gets
    401."""

    def __init__(
        self, *args: Any, metrics: Metrics, key_streams: KeyStreams, key_hash: str | None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = metrics
        self.key_streams = key_streams
        self.key_hash = key_hash

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.metrics.stream_opened()
        try:
            if self.key_hash is None:
                await super().__call__(scope, receive, send)
            else:
                await self._until_revoked(self.key_hash, scope, receive, send)
        except SendTimeoutError:
            logger.warning("sse.slow_client_cut", extra={"send_timeout_s": self.send_timeout})
        finally:
            self.metrics.stream_closed()

    async def _until_revoked(self, key_hash: str, scope: Scope, receive: Receive, send: Send) -> None:
        started = ended = False

        def noting(message: Message) -> Awaitable[None]:
            # Not a coroutine: no frame of its own per event, only what the stream sent so far noted.
            nonlocal started, ended
            if message["type"] == "http.response.start":
                started = True
            elif not message.get("more_body", False):
                ended = True
            return send(message)

        with self.key_streams.open(key_hash) as stream:
            try:
                await super().__call__(scope, receive, noting)
                return
            except asyncio.CancelledError:
                task = asyncio.current_task()
                # Cancelled by the revoke alone: this task goes on to end the response; by anything else, as well.
                if not stream.revoked or task is None or task.uncancel() > 0:
                    raise
        logger.info("sse.key_revoked_cut")
        if ended:
            return
        with contextlib.suppress(OSError):
            if not started:
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def ping_comment() -> ServerSentEvent:
    """`: ping`, as `streaming.frames.PING` (sse-starlette encodes it with the event's own separator)."""
    return ServerSentEvent(comment="ping", sep="\n")


def event_stream(
    frames: AsyncGenerator[bytes, None],
    *,
    settings: Settings,
    metrics: Metrics,
    key_streams: KeyStreams,
    key_hash: str | None,
    shutdown: anyio.Event | None = None,
) -> EventStreamResponse:
    """The response for a stream of encoded frames. `shutdown` is set when the server starts shutting down;
    `key_hash`, the API key that opened the stream (or its stream token), ends it when the key is revoked."""
    return EventStreamResponse(
        frames,
        metrics=metrics,
        key_streams=key_streams,
        key_hash=key_hash,
        headers={"Cache-Control": "no-store"},
        ping=settings.sse_ping_interval_s,
        ping_message_factory=ping_comment,
        sep="\n",
        send_timeout=settings.sse_send_timeout_s,
        shutdown_event=shutdown,
        shutdown_grace_period=settings.shutdown_grace_s + SHUTDOWN_MARGIN_S,
    )
