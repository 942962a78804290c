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
from collections.abc import AsyncIterator, Awaitable
from types import CoroutineType
from typing import Protocol

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.api.middleware import DETACHED_STREAM, SERVER_SEND
from app.coroutines import Resumed
from app.observability.metrics import Metrics
from app.settings import Settings
from app.streaming.event_log import LogReader, Waiter
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

    def wait(self, waiter: Waiter) -> None: ...

    def close(self) -> None: ...


class IteratorFrames:
    """Frames from an async iterator (a turn replayed from the database), run in a task of its own so that
    the keep-alives go on while it waits."""

    __slots__ = ("_chunks", "_iterator", "_task", "_waiter")

    def __init__(self, iterator: AsyncIterator[bytes]) -> None:
        self._iterator = iterator
        self._chunks: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self._waiter: Waiter | None = None

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

    def wait(self, waiter: Waiter) -> None:
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
        # What the stream registers with its frames while it waits (see `_Parked`), and the body's `send`.
        self._parked = _Parked(self)
        self._send: Send | None = None
        # A send begun from `_send_now` that could not finish at once, for the task to finish (or its error).
        self._held: Awaitable[None] | None = None
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
        try:
            # The start through every middleware, which add their headers to it.
            await send(start)
        except BaseException:
            self._frames.close()
            raise
        # The body messages straight to the server when the stack allows it, and the stream run from outside
        # the stack once it has returned (see `ServerSendMiddleware`).
        body_send = scope.get(SERVER_SEND, send)
        if DETACHED_STREAM in scope:
            scope[DETACHED_STREAM] = self._stream(body_send, receive)
            return
        await self._stream(body_send, receive)

    async def _stream(self, send: Send, receive: Receive) -> None:
        loop = asyncio.get_running_loop()
        request_task = asyncio.current_task()
        assert request_task is not None
        self._loop = loop
        listener: asyncio.Task[None] | None = None
        self._metrics.stream_opened()
        try:
            try:
                self._next_ping = loop.time() + self._ping_interval
                # The body in a task of its own, so that each event wakes that task alone: the request's
                # task would resume through every frame above this (a few when the stream runs detached,
                # about 25 when not: server, middleware, routing) and suspend back through them, per event. A
                # cancel of the request's task reaches the body's through this await.
                self._task = loop.create_task(self._pump(send, loop))
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
            held, self._held = self._held, None
            if held is not None:
                _discard(held)
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
        parked = self._parked
        time = loop.time
        create_future = loop.create_future
        self._send = send
        while True:
            held = self._held
            if held is not None:
                self._held = None
                await held  # `_send_started` was set when it began
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
                parked.future = waiter
                frames.wait(parked)
                self._waiter = waiter
                await waiter
                self._waiter = None
        self._send_started = time()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _send_now(self) -> bool:
        """New frames while the stream's task waits: send them from here, in the caller's callback (the
        upstream's data, the log's append), instead of waking the task to send them, a task step per event
        saved. True when sent and waiting again; False when the task has to act: the stream's end, a ping
        due, a send that could not finish at once (the client's buffers are full: it goes on in the task,
        which the slow-client cut then watches), or an error, which the task raises. Never raises: an error
        here would land in the upstream's relay."""
        if self._over or self._cut_reason is not None or self._ping_due or self._send is None:
            return False
        try:
            chunk = self._frames.take()
            if chunk is None:
                return False  # the end, or nothing new: the task looks
            sending = self._send({"type": "http.response.body", "body": chunk, "more_body": True})
            if type(sending) is not CoroutineType:
                held: Awaitable[None] = sending  # not a coroutine (no server's send is): the task awaits it
            else:
                # Driven by hand, as a task would drive it: with room in the socket's buffers it returns at once.
                try:
                    blocked_on = sending.send(None)
                except StopIteration:
                    self._frames.wait(self._parked)
                    return True
                held = Resumed(sending, blocked_on)
            # Timed for the slow-client cut only when the task has to finish it; one that ended here never is.
            self._send_started = self._loop.time() if self._loop is not None else 0.0
            self._held = held
        except Exception as error:
            self._held = _raise(error)
        return False

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


class _Parked:
    """What a waiting stream registers with its frames: new frames are sent at once (`_send_now`) where the
    connection takes them, and wake the stream's task (`future`) otherwise. Done once that future is: a
    woken task is on its way and sends what there is itself."""

    __slots__ = ("future", "response")

    def __init__(self, response: EventStreamResponse) -> None:
        self.response = response
        self.future: asyncio.Future[None] | None = None

    def done(self) -> bool:
        future = self.future
        return future is None or future.done()

    def set_result(self, result: None, /) -> None:
        if not self.response._send_now():
            future = self.future
            if future is not None and not future.done():
                future.set_result(None)


async def _raise(error: Exception) -> None:
    raise error


def _discard(held: Awaitable[None]) -> None:
    """A send the stream ended before finishing: closed, not left for the collector to warn about."""
    if isinstance(held, CoroutineType | Resumed):
        held.close()


def event_stream_response(
    frames: LogReader | AsyncIterator[bytes], settings: Settings, metrics: Metrics
) -> EventStreamResponse:
    source: FrameSource = frames if isinstance(frames, LogReader) else IteratorFrames(frames)
    return EventStreamResponse(source, settings=settings, metrics=metrics)
