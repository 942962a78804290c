"""The HTTP side of a turn's event stream: a small plain ASGI response.

Frames come pre-encoded from the event log and go out as they are; whatever is in the log when the stream
wakes up goes out as one body message. Around that: `: ping` comments every `sse_ping_interval_s` (also
before the first token), the end of the stream when the client disconnects, a cut-off for a client that
stops reading (`sse_send_timeout_s`), and the open-streams gauge. On shutdown the runner finishes or
interrupts every turn within its grace period, which ends these streams with their terminal event.

Why not sse-starlette's `EventSourceResponse`, as before: none of its public options removes what it costs
per event — an `anyio.move_on_after` cancel scope around every send, also with `send_timeout=None` — or per
stream — a task group of four tasks (data, ping, disconnect, shutdown watcher), an anyio lock and event.
Only overriding its private `_stream_response` and `__call__` would, and that breaks with its next release.
Here a stream is one task sending the body, one task waiting for the disconnect, and one timer that pings
and holds the send in progress to the timeout; the request's task waits for the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.api.middleware import SERVER_SEND
from app.observability.metrics import Metrics
from app.settings import Settings
from app.streaming.event_log import LogReader
from app.streaming.sse import PING

logger = logging.getLogger(__name__)

# As sse-starlette sent them, in its order: the bytes of the response head do not change.
_HEADERS = (
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
    (b"connection", b"keep-alive"),
    (b"content-type", b"text/event-stream; charset=utf-8"),
)
# A timer may fire this much before the time it was set for.
_TIMER_SLACK_S = 0.002


class FrameSource(Protocol):
    """Where a stream's frames come from: an event log reader, or `IteratorFrames`."""

    def take(self) -> bytes | None: ...

    @property
    def finished(self) -> bool: ...

    def wait(self, waiter: asyncio.Future[None]) -> None: ...

    def close(self) -> None: ...


class IteratorFrames:
    """Frames from an async iterator (a turn replayed from the database), run in a task of its own so that
    the keep-alives go on while it waits."""

    __slots__ = ("_chunks", "_iterator", "_task", "_waiter")

    def __init__(self, iterator: AsyncIterator[bytes]) -> None:
        self._iterator = iterator
        self._chunks: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None

    async def _run(self) -> None:
        try:
            async for chunk in self._iterator:
                self._chunks.append(chunk)
                self._wake()
        finally:
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def take(self) -> bytes | None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        if not self._chunks:
            return None
        chunk = b"".join(self._chunks)
        self._chunks.clear()
        return chunk

    @property
    def finished(self) -> bool:
        task = self._task
        if task is None or not task.done() or self._chunks:
            return False
        task.result()  # the iterator's error, if it failed, ends the response with it
        return True

    def wait(self, waiter: asyncio.Future[None]) -> None:
        self._waiter = waiter

    def close(self) -> None:
        self._waiter = None
        task = self._task
        if task is not None:
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()  # retrieved: a stream cut short does not leave it for the loop to report


class EventStreamResponse(Response):
    """One turn's `text/event-stream`, counted in the open-streams gauge for exactly as long as it is being
    sent."""

    media_type = "text/event-stream"

    def __init__(self, frames: FrameSource, *, settings: Settings, metrics: Metrics) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = list(_HEADERS)  # a list per response: middlewares add to it in place
        self._frames = frames
        self._metrics = metrics
        self._ping_interval = settings.sse_ping_interval_s
        self._send_timeout = settings.sse_send_timeout_s
        # The task that sends the body (`_pump`), which a cut cancels.
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        # While the stream's task is suspended: the future it waits on for frames, or None when it is in
        # a send, which began at `_send_started` (loop time).
        self._waiter: asyncio.Future[None] | None = None
        self._send_started = 0.0
        self._next_ping = 0.0
        self._ping_due = False
        self._cut_reason: str | None = None
        self._over = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        if scope.get("method") == "HEAD":
            # Headers only: a HEAD must not hold a connection open for a stream nobody reads.
            self._frames.close()
            await send(start)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        loop = asyncio.get_running_loop()
        request_task = asyncio.current_task()
        assert request_task is not None
        self._loop = loop
        listener: asyncio.Task[None] | None = None
        self._metrics.stream_opened()
        try:
            try:
                # The start through every middleware, which add their headers to it; the body messages
                # straight to the server when the stack allows it (see `ServerSendMiddleware`).
                await send(start)
                self._next_ping = loop.time() + self._ping_interval
                # The body in a task of its own, so that each event wakes that task alone: the request's
                # task would resume through every frame above this response (about 25: server, middleware,
                # routing) and suspend back through them, per event. A cancel of the request's task
                # reaches the body's through this await.
                self._task = loop.create_task(self._pump(scope.get(SERVER_SEND, send), loop))
                self._timer = loop.call_at(self._next_ping, self._tick)
                listener = loop.create_task(self._listen(receive))
                await self._task
            except asyncio.CancelledError:
                # Cut by this response (disconnect, slow client): end quietly. Cancelled by anyone else
                # (the server's shutdown timeout): go on being cancelled.
                if self._cut_reason is None or request_task.cancelling() > 0:
                    raise
                if self._cut_reason == "slow_client":
                    logger.warning("sse.slow_client_cut", extra={"send_timeout_s": self._send_timeout})
        finally:
            self._over = True
            if self._timer is not None:
                self._timer.cancel()
            if listener is not None:
                listener.cancel()
            if self._task is not None:
                self._task.cancel()  # done by now, unless this task failed before it awaited it
            self._frames.close()
            self._metrics.stream_closed()
        if self.background is not None:
            await self.background()

    async def _pump(self, send: Send, loop: asyncio.AbstractEventLoop) -> None:
        frames = self._frames
        time = loop.time
        create_future = loop.create_future
        while True:
            if self._ping_due:
                self._ping_due = False
                self._send_started = time()
                await send({"type": "http.response.body", "body": PING, "more_body": True})
            chunk = frames.take()
            if chunk is not None:
                self._send_started = time()
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            elif frames.finished:
                break
            else:
                waiter = create_future()
                frames.wait(waiter)
                self._waiter = waiter
                await waiter
                self._waiter = None
        self._send_started = time()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _tick(self) -> None:
        """The stream's one timer: a ping when one is due, and the cut-off for a send that does not end."""
        if self._over:
            return
        assert self._loop is not None
        now = self._loop.time()
        waiter = self._waiter
        in_send = waiter is None
        if in_send and now - self._send_started >= self._send_timeout:
            # The client stopped reading: its socket buffers are full and the send waits for them to drain.
            self._cut("slow_client")
            return
        if now >= self._next_ping - _TIMER_SLACK_S:
            self._next_ping = now + self._ping_interval
            self._ping_due = True
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        at = self._next_ping
        if in_send:
            at = min(at, self._send_started + self._send_timeout)
        self._timer = self._loop.call_at(at, self._tick)

    async def _listen(self, receive: Receive) -> None:
        with contextlib.suppress(Exception):
            while (await receive())["type"] != "http.disconnect":
                pass
        self._cut("disconnected")

    def _cut(self, reason: str) -> None:
        """End the stream now, whatever its task is waiting for."""
        if self._over or self._cut_reason is not None or self._task is None:
            return
        self._cut_reason = reason
        self._task.cancel()


def event_stream_response(
    frames: LogReader | AsyncIterator[bytes], settings: Settings, metrics: Metrics
) -> EventStreamResponse:
    source: FrameSource = frames if isinstance(frames, LogReader) else IteratorFrames(frames)
    return EventStreamResponse(source, settings=settings, metrics=metrics)
