"""Phase timers inside a Parley process, for `python -m bench.ttft_phases` (a development probe, not the harness).

Loaded by Python at start when this folder is on PYTHONPATH and PARLEY_PHASE_TIMERS names the file to write.
Once `app.main` is imported, it wraps the functions on the path to a turn's first token and records
(label, perf_counter) pairs, written as JSON at exit. It patches library and Parley internals by name: when
one moves, its phase is missing from the table (the probe says so), nothing else breaks.

Time is measured by function object, never by formatting a statement (`str(statement)` compiles it: an
earlier probe that did so made the turn's start look 4 ms slower than it was).

Each mark carries the client's port, the key of the turn it belongs to when turns overlap: read from the
server protocol for the request's first marks, then from a context variable set in the request's task, which
the runner's task inherits; the upstream body's first bytes arrive in a data callback, keyed by their splitter.
"""

from __future__ import annotations

import atexit
import builtins
import contextvars
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

_OUT = os.environ.get("PARLEY_PHASE_TIMERS")
_marks: list[tuple[str, float, int | None]] = []
_clock = time.perf_counter
_key: contextvars.ContextVar[int | None] = contextvars.ContextVar("phase_key", default=None)
_splitter_keys: dict[int, int | None] = {}


def _mark(label: str, key: int | None = None) -> None:
    _marks.append((label, _clock(), key if key is not None else _key.get()))


def _dump() -> None:
    if _OUT:
        with open(_OUT, "w") as out:
            json.dump(_marks, out)


def _around_async(owner: Any, name: str, label: str) -> None:
    target = getattr(owner, name)

    @functools.wraps(target)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        _mark(f"{label}>")
        try:
            return await target(*args, **kwargs)
        finally:
            _mark(f"{label}<")

    setattr(owner, name, timed)


def _after_async(owner: Any, name: str, label: str) -> None:
    target = getattr(owner, name)

    @functools.wraps(target)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        result = await target(*args, **kwargs)
        _mark(label)
        return result

    setattr(owner, name, timed)


def _before(owner: Any, name: str, label: str) -> None:
    target = getattr(owner, name)

    @functools.wraps(target)
    def timed(*args: Any, **kwargs: Any) -> Any:
        _mark(label)
        return target(*args, **kwargs)

    setattr(owner, name, timed)


def _before_async(owner: Any, name: str, label: str) -> None:
    target = getattr(owner, name)

    @functools.wraps(target)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        _mark(label)
        return await target(*args, **kwargs)

    setattr(owner, name, timed)


def _before_keyed_by_client(owner: Any, name: str, label: str) -> None:
    """A server protocol callback: the key is the client's port."""
    target = getattr(owner, name)

    @functools.wraps(target)
    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        client = getattr(self, "client", None)
        _mark(label, client[1] if client else None)
        return target(self, *args, **kwargs)

    setattr(owner, name, timed)


def _accepted(owner: Any, name: str, label: str) -> None:
    """The listening socket's acceptor: the key is the accepted connection's peer port."""
    target = getattr(owner, name)

    @functools.wraps(target)
    def timed(self: Any, connection: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            key = connection.getpeername()[1]
        except OSError:
            key = None
        _mark(label, key)
        return target(self, connection, *args, **kwargs)

    setattr(owner, name, timed)


def _keying_middleware(owner: Any, name: str, label: str) -> None:
    """The first step in the request's task: the key goes into its context."""
    target = getattr(owner, name)

    @functools.wraps(target)
    async def timed(self: Any, scope: Any, *args: Any, **kwargs: Any) -> Any:
        client = scope.get("client")
        if client:
            _key.set(client[1])
        _mark(label)
        return await target(self, scope, *args, **kwargs)

    setattr(owner, name, timed)


def _keyed_splitter(owner: Any) -> None:
    """The splitter is made in the runner's task; its `feed` runs in a data callback, outside it."""
    init, feed = owner.__init__, owner.feed

    @functools.wraps(init)
    def keyed_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        _splitter_keys[id(self)] = _key.get()

    @functools.wraps(feed)
    def timed_feed(self: Any, *args: Any, **kwargs: Any) -> Any:
        _mark("first_upstream_chunk", _splitter_keys.get(id(self)))
        return feed(self, *args, **kwargs)

    owner.__init__, owner.feed = keyed_init, timed_feed


def _watch_the_loop(owner: Any) -> None:
    """From the acceptor's start on, a 5-ms sleep in a task of its own, marked `loop_late` with how late it
    woke (µs, as the mark's key): a task step of any request waits about as long."""
    target = owner.__init__

    @functools.wraps(target)
    def init(self: Any, loop: Any, *args: Any, **kwargs: Any) -> None:
        target(self, loop, *args, **kwargs)

        async def watch() -> None:
            import asyncio

            while True:
                before = _clock()
                await asyncio.sleep(0.005)
                now = _clock()
                _marks.append(("loop_late", now, round((now - before - 0.005) * 1e6)))

        self._phase_watch = loop.create_task(watch())

    owner.__init__ = init


def _time_collections() -> None:
    """Each run of the cyclic garbage collector, marked `gc` at its end with its generation and length (the
    key: µs * 10 + generation). A profiler puts a collection's time on whatever line allocated when it
    started, so this is how a long one is told apart from slow code."""
    import gc

    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        now = _clock()
        if phase == "start":
            started[0] = now
        else:
            _marks.append(("gc", now, round((now - started[0]) * 1e6) * 10 + info["generation"]))

    gc.callbacks.append(callback)


def _install() -> None:
    import aiohttp.client_reqrep as reqrep
    from uvicorn.protocols.http import httptools_impl

    import app.api.sse_response as sse_response
    import app.batch_accept as batch_accept
    import app.db.driver as driver
    import app.services.auth as auth
    import app.services.turns as turns
    import app.streaming.runner as runner
    import app.upstream.sse as upstream_sse
    from app.observability import request_id

    steps: list[Callable[[], None]] = [
        lambda: _accepted(batch_accept.BatchAcceptor, "_hand_over", "accepted"),
        lambda: _watch_the_loop(batch_accept.BatchAcceptor),
        lambda: _before_keyed_by_client(httptools_impl.HttpToolsProtocol, "on_message_begin", "request_begins"),
        lambda: _before_keyed_by_client(httptools_impl.HttpToolsProtocol, "on_message_complete", "request_read"),
        lambda: _keying_middleware(request_id.RequestIdMiddleware, "__call__", "middlewares"),
        lambda: _around_async(auth.Authenticator, "authenticate", "authenticate"),
        lambda: _around_async(turns, "start_turn", "start_turn"),
        lambda: _around_async(driver.DriverConnection, "fetchrow", "statement"),
        lambda: _before(runner.TurnRunner, "spawn", "spawn"),
        lambda: _around_async(runner, "open_stream", "open_stream"),
        lambda: _after_async(reqrep.ClientRequest, "send", "upstream_request_written"),
        lambda: _after_async(reqrep.ClientResponse, "start", "upstream_headers"),
        lambda: _before_async(sse_response.EventStreamResponse, "__call__", "response_starts"),
        lambda: _keyed_splitter(upstream_sse.SSESplitter),
        _time_collections,
    ]
    for step in steps:
        try:
            step()
        except AttributeError as error:
            sys.stderr.write(f"phase timers: {error}\n")


def _when_app_imported(original: Callable[..., Any]) -> Callable[..., Any]:
    installed = False

    def hook(*args: Any, **kwargs: Any) -> Any:
        nonlocal installed
        module = original(*args, **kwargs)
        if not installed and hasattr(sys.modules.get("app.main"), "create_app"):
            installed = True
            builtins.__import__ = original
            _install()
        return module

    return hook


if _OUT:
    atexit.register(_dump)
    builtins.__import__ = _when_app_imported(builtins.__import__)
