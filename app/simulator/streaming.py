"""The HTTP side of streams: plain ASGI responses that write SSE frames, notice a client leaving, and can drop
the connection on purpose (the `cut` fault).

Dropping works by returning without finishing the body: the server then closes the connection without the
final chunk, which a client sees as a network failure mid-stream (uvicorn logs one line about it). A
non-background response lives only as long as its connection, as on the real service: a client that leaves
and a cut both stop it, and its id is unknown from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.simulator.runner import Generation
from app.simulator.state import EventLog

SSE_CONTENT_TYPE = b"text/event-stream; charset=utf-8"
_SSE_HEADERS = [(b"content-type", SSE_CONTENT_TYPE)]


class _AsgiResponse(Response):
    """A Response that FastAPI passes through untouched; subclasses write the body themselves."""

    def __init__(self) -> None:
        self.status_code = 200
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class GenerationStream(_AsgiResponse):
    """A non-background stream: the request drives the generation, and the connection ending (the client
    leaving, or a `cut`) stops it."""

    def __init__(self, generation: Generation) -> None:
        super().__init__()
        self._generation = generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        batches = self._generation.batches()
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        outcome = await _until_disconnect(self._send(batches, send), receive)
        if outcome is None:
            # The real service stops generating when a non-background stream's client leaves, and keeps nothing
            # of it: the response ends `cancelled` (the conversation is unlocked, nothing added) and is forgotten.
            await batches.aclose()
            self._generation.abandon()
        elif outcome:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send(self, batches: AsyncGenerator[list[bytes], None], send: Send) -> bool:
        sent = 0
        async for batch in batches:
            cut_at = self._generation.cut_at
            if cut_at is not None and sent + len(batch) >= cut_at:
                if cut_at > sent:
                    await send(
                        {"type": "http.response.body", "body": b"".join(batch[: cut_at - sent]), "more_body": True}
                    )
                # The connection is lost, so the response is: stopped before the client can see the drop.
                await batches.aclose()
                self._generation.abandon()
                return False
            await send({"type": "http.response.body", "body": b"".join(batch), "more_body": True})
            sent += len(batch)
        return True


class LogStream(_AsgiResponse):
    """A background response's events from frame `start` on: replay, then live until the log closes."""

    def __init__(self, log: EventLog, *, start: int, cut_by: Generation | None = None) -> None:
        super().__init__()
        self._log = log
        self._start = start
        self._cut_by = cut_by

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        if await _until_disconnect(self._send(send), receive):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send(self, send: Send) -> bool:
        async for position, frames in self._log.follow(self._start):
            cut_at = self._cut_by.cut_at if self._cut_by is not None else None
            if cut_at is not None and position + len(frames) >= cut_at:
                if cut_at > position:
                    body = b"".join(frames[: cut_at - position])
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                return False
            await send({"type": "http.response.body", "body": b"".join(frames), "more_body": True})
        return True


class DroppedResponse(_AsgiResponse):
    """Headers, then the connection drops before the body: a non-streamed call cut by the network."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"4096")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})


async def pump_into_log(batches: AsyncIterator[list[bytes]], log: EventLog) -> None:
    try:
        async for batch in batches:
            log.extend(batch)
    finally:
        log.close()


async def _until_disconnect(sending: Coroutine[Any, Any, bool], receive: Receive) -> bool | None:
    """Run `sending` until it finishes (its result) or the client disconnects first (None)."""
    sender = asyncio.ensure_future(sending)
    listener = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        await asyncio.wait((sender, listener), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        sender.cancel()
        listener.cancel()
        raise
    listener.cancel()
    if sender.done():
        return sender.result()
    sender.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sender
    return None


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
