"""aiohttp's body stream, handing each chunk to a callback as the socket read brings it.

Written by hand because aiohttp has no push API: its `StreamReader` hands data over only to a read that
waits on a future. A paced stream reads once per token, so each token cost a future, a wake-up of the
reading task and `readany`'s bookkeeping (with the reader's own timer context and flow-control checks), a
sixth of a paced stream's CPU in the profile. `_PushedBody` is that class with the two methods the HTTP
parser calls per chunk overridden; a body is switched to it for as long as it is pushed (the same slots: a
`__class__` assignment) and back after, so whatever aiohttp does with it later (release, close) is its own.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

Sink = Callable[[bytes], None]

# The sink of each body being pushed, by the body's id: `StreamReader` has `__slots__` and no room for one.
# An entry lives exactly as long as `push_body` awaits its body, which holds the body alive meanwhile.
_SINKS: dict[int, Sink] = {}


class _PushedBody(aiohttp.StreamReader):
    __slots__ = ()

    def feed_data(self, data: bytes, size: int = 0) -> bool:
        sink = _SINKS.get(id(self))
        if sink is None:
            return super().feed_data(data, size)
        if data:
            self.total_bytes += len(data)
            try:
                sink(data)
            except Exception as error:
                # Raised out of here it would land in aiohttp's protocol callback; it ends the body instead,
                # and `push_body` raises it.
                del _SINKS[id(self)]
                self.set_exception(error)
        return False

    def end_http_chunk_receiving(self) -> None:
        # Not recorded: the chunk boundaries serve `readchunk()` alone, which no one calls on a body being
        # pushed, and left unread they would pause the socket.
        return


def can_push(body: object) -> bool:
    """A body `push_body` can take: aiohttp's own stream class exactly (its empty-body subclass has other
    slots, and is never a stream)."""
    return type(body) is aiohttp.StreamReader


async def push_body(body: aiohttp.StreamReader, sink: Sink) -> None:
    """Hand `body`'s bytes to `sink` as they arrive, in order, until the body ends; raises what a read would
    have raised (a timeout set on the body, the connection lost mid-body), or what `sink` raised.

    `sink` runs inside aiohttp's data callback: it must not block, and an error it raises ends the body."""
    assert can_push(body)
    _hand_over_buffered(body, sink)
    if body.is_eof():
        return
    key = id(body)
    _SINKS[key] = sink
    body.__class__ = _PushedBody
    try:
        await body.wait_eof()  # returns at the end of the body, raises the exception that ends it otherwise
    finally:
        _SINKS.pop(key, None)
        body.__class__ = aiohttp.StreamReader


def _hand_over_buffered(body: aiohttp.StreamReader, sink: Sink) -> None:
    """What came with the head, or before the push began (raises a failure already set). A function of its
    own so that those bytes go with its frame, not with `push_body`'s, which lasts as long as the stream (a
    few KiB per open stream: the upstream's first events)."""
    buffered = body.read_nowait(-1)
    if buffered:
        sink(buffered)
