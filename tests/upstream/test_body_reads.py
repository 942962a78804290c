"""Reading a streamed upstream body as the runner does (`open_stream`, `deliver()`, `aclose()`) from a real
server on loopback: the bytes as sent, the stall bound (a silence longer than the read timeout fails the
read as a timeout; a slow but steady stream does not), and the connection afterwards (back in the pool when
the body was read to the end, closed when the turn left it half read)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import openai
import pytest
from starlette.types import Message, Receive, Scope, Send

from app.upstream.client import build_openai_client
from app.upstream.errors import STREAM_READ_ERRORS, timed_out
from app.upstream.responses import StreamPolicy, UpstreamStream, open_stream
from tests.conftest import make_settings
from tests.servers import serve

READ_TIMEOUT_S = 0.6
POLICY = StreamPolicy(read_timeout_s=READ_TIMEOUT_S, connect_timeout_s=5.0, max_attempts=1)
BODY = {"model": "gpt-4.1-mini", "input": "hello", "stream": True}


def _frame(number: int) -> bytes:
    return b'event: response.output_text.delta\ndata: {"delta":"%d"}\n\n' % number


class Upstream:
    """`POST /v1/responses` answering an SSE body of `frames` frames, `gap_s` apart, then silent for
    `silence_s` (or not at all) before it ends; notes each request's client port (one per connection)."""

    def __init__(self) -> None:
        self.frames = 3
        self.gap_s = 0.0
        self.silence_s = 0.0
        self.ports: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.ports.append(scope["client"][1])
        while (await receive()).get("more_body", False):
            pass
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"x-request-id", b"req_upstream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for number in range(self.frames):
            if number and self.gap_s:
                await asyncio.sleep(self.gap_s)
            await send({"type": "http.response.body", "body": _frame(number), "more_body": True})
        if self.silence_s:
            await self._silent(receive)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _silent(self, receive: Receive) -> None:
        with_disconnect: asyncio.Task[Message] = asyncio.create_task(receive())
        await asyncio.wait([with_disconnect], timeout=self.silence_s)
        with_disconnect.cancel()


@pytest.fixture
def upstream() -> Iterator[tuple[Upstream, str]]:
    app = Upstream()
    with serve(app, lifespan="off") as base_url:
        yield app, base_url


@pytest.fixture
async def client(upstream: tuple[Upstream, str]) -> AsyncIterator[openai.AsyncOpenAI]:
    settings = make_settings("sqlite+aiosqlite:///unused.db", openai_api_key="sk-test")
    client = build_openai_client(settings, base_url=f"{upstream[1]}/v1")
    yield client
    await client.close()


async def _read(stream: UpstreamStream, arrivals: list[tuple[float, bytes]] | None = None) -> bytes:
    """The body, as the runner reads it; `arrivals` gets each chunk with when it came, even if a read fails."""
    arrivals = [] if arrivals is None else arrivals
    try:
        await stream.deliver(lambda chunk: arrivals.append((time.monotonic(), chunk)))
    finally:
        await stream.aclose()
    return b"".join(chunk for _, chunk in arrivals)


async def test_a_slow_but_steady_stream_is_read_whole_past_the_read_timeout(
    upstream: tuple[Upstream, str], client: openai.AsyncOpenAI
) -> None:
    app, _ = upstream
    app.frames, app.gap_s = 8, READ_TIMEOUT_S / 2  # every gap well under the bound, the whole stream well over it
    started = time.monotonic()
    body = await _read(await open_stream(client, BODY, POLICY))
    assert time.monotonic() - started > 2 * READ_TIMEOUT_S
    assert body == b"".join(_frame(n) for n in range(8))


async def test_a_silence_past_the_read_timeout_fails_the_read_as_a_timeout(
    upstream: tuple[Upstream, str], client: openai.AsyncOpenAI
) -> None:
    app, _ = upstream
    app.frames, app.silence_s = 2, 30.0
    stream = await open_stream(client, BODY, POLICY)
    arrivals: list[tuple[float, bytes]] = []
    with pytest.raises(STREAM_READ_ERRORS) as failure:
        await _read(stream, arrivals)
    waited = time.monotonic() - arrivals[-1][0]
    assert b"".join(chunk for _, chunk in arrivals) == _frame(0) + _frame(1)
    assert timed_out(failure.value)  # what the runner counts as "stalled"
    assert READ_TIMEOUT_S - 0.05 <= waited < READ_TIMEOUT_S + 1.5


async def test_a_body_read_to_the_end_leaves_its_connection_for_the_next_stream(
    upstream: tuple[Upstream, str], client: openai.AsyncOpenAI
) -> None:
    app, _ = upstream
    for _ in range(2):
        assert await _read(await open_stream(client, BODY, POLICY)) == b"".join(_frame(n) for n in range(3))
    assert app.ports[0] == app.ports[1]


async def test_a_stream_cancelled_half_read_closes_its_connection(
    upstream: tuple[Upstream, str], client: openai.AsyncOpenAI
) -> None:
    app, _ = upstream
    app.frames, app.silence_s = 1, 30.0
    stream = await open_stream(client, BODY, POLICY)
    first = asyncio.Event()

    async def pump() -> None:
        await stream.deliver(lambda _chunk: first.set())

    # As the runner cancels a turn: the reading task is cancelled while it waits for the next bytes, then
    # the stream is closed.
    reading = asyncio.create_task(pump())
    await asyncio.wait_for(first.wait(), 5)
    await asyncio.sleep(0.05)
    reading.cancel()
    await asyncio.wait([reading])
    await stream.aclose()

    app.frames, app.silence_s = 3, 0.0
    assert await _read(await open_stream(client, BODY, POLICY)) == b"".join(_frame(n) for n in range(3))
    # Not back in the pool with the rest of the first body still on it: the next stream had a new connection.
    assert app.ports[1] != app.ports[0]


async def test_bytes_that_came_before_the_reading_began_are_delivered_first_and_in_order(
    upstream: tuple[Upstream, str], client: openai.AsyncOpenAI
) -> None:
    app, _ = upstream
    app.frames, app.gap_s = 4, 0.0
    stream = await open_stream(client, BODY, POLICY)
    await asyncio.sleep(0.3)  # the whole body is in by now, waiting in aiohttp's buffer
    assert await _read(stream) == b"".join(_frame(n) for n in range(4))

    app.frames, app.gap_s = 6, 0.05
    stream = await open_stream(client, BODY, POLICY)
    await asyncio.sleep(0.12)  # some of it in, the rest pushed as it comes
    assert await _read(stream) == b"".join(_frame(n) for n in range(6))


async def test_an_error_in_the_reader_ends_the_body_with_that_error_and_closes_the_connection(
    upstream: tuple[Upstream, str], client: openai.AsyncOpenAI
) -> None:
    app, _ = upstream
    app.frames, app.gap_s = 5, 0.05
    stream = await open_stream(client, BODY, POLICY)
    seen: list[bytes] = []

    def sink(chunk: bytes) -> None:
        seen.append(chunk)
        if len(seen) == 2:
            raise ValueError("the reader failed")

    try:
        with pytest.raises(ValueError, match="the reader failed"):
            await asyncio.wait_for(stream.deliver(sink), 5)
    finally:
        await stream.aclose()
    assert len(seen) == 2  # nothing handed over after the failure

    app.frames, app.gap_s = 3, 0.0
    assert await _read(await open_stream(client, BODY, POLICY)) == b"".join(_frame(n) for n in range(3))
    assert app.ports[1] != app.ports[0]  # the half-read connection was not put back in the pool
