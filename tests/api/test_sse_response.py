"""The event-stream response on its own, driven as the ASGI server drives it: what goes into each body
message, the keep-alives, a client that goes away or stops reading, HEAD. (Against a real server, with real
turns: tests/turns/test_event_stream.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.types import Message

from app.api.middleware import SERVER_SEND
from app.api.sse_response import event_stream_response
from app.observability.metrics import Metrics
from app.settings import Settings
from app.streaming.event_log import EventLog
from app.streaming.sse import PING

PING_S = 0.05
SEND_TIMEOUT_S = 0.3


def _settings(ping_s: float = PING_S) -> Settings:
    return Settings(_env_file=None, sse_ping_interval_s=ping_s, sse_send_timeout_s=SEND_TIMEOUT_S)  # type: ignore[call-arg]


def _open_streams(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("parley_open_streams")
    assert value is not None
    return value


class Client:
    """The server side of one connection: records what the response sends; `gone` is the disconnect."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.gone = asyncio.Event()
        self.bodies_changed = asyncio.Event()
        self.stalled = False  # a client that stopped reading: sends wait for buffers that never drain
        self.reading = asyncio.Event()  # a client slow for a while: sends wait until it reads again
        self.reading.set()
        self.fails_with: Exception | None = None

    async def send(self, message: Message) -> None:
        if self.stalled:
            await asyncio.Event().wait()
        await self.reading.wait()
        if self.fails_with is not None:
            raise self.fails_with
        self.messages.append(message)
        self.bodies_changed.set()

    async def receive(self) -> Message:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    @property
    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.messages if m["type"] == "http.response.body" and m["body"]]

    @property
    def completed(self) -> bool:
        last = self.messages[-1] if self.messages else {}
        return last.get("type") == "http.response.body" and not last.get("more_body", False)

    async def until(self, seen: Any) -> None:
        while not seen(self.bodies):
            self.bodies_changed.clear()
            await asyncio.wait_for(self.bodies_changed.wait(), 5)


async def _run(response: Any, client: Client, method: str = "POST") -> None:
    scope = {"type": "http", "method": method, "path": "/v1/sessions/s/messages"}
    await asyncio.wait_for(response(scope, client.receive, client.send), 10)


def _log_with(count: int) -> EventLog:
    log = EventLog("turn_1")
    for n in range(count):
        log.append("response.output_text.delta", b'{"delta":"%d"}' % n)
    return log


async def test_frames_already_in_the_log_go_out_in_one_message_and_live_ones_as_they_come() -> None:
    log, metrics, client = _log_with(5), Metrics(process=False), Client()
    backlog = b"".join(log._frames)
    running = asyncio.create_task(_run(event_stream_response(log.reader(0), _settings(), metrics), client))
    await client.until(lambda bodies: bodies)
    assert client.bodies == [backlog]
    assert _open_streams(metrics) == 1

    log.append("response.output_text.delta", b'{"delta":"5"}')
    await client.until(lambda bodies: len(bodies) == 2)
    log.append("turn.completed", b"{}")
    log.close()
    await running

    frames = [body for body in client.bodies if body != PING]
    assert frames == [backlog, log._frames[5], log._frames[6]]
    assert client.messages[0]["type"] == "http.response.start"
    assert client.completed
    assert _open_streams(metrics) == 0


async def test_a_resumed_stream_starts_after_the_last_event_id() -> None:
    log, client = _log_with(4), Client()
    log.close()
    await _run(event_stream_response(log.reader(2), _settings(), Metrics(process=False)), client)
    assert client.bodies == [b"".join(log._frames[2:])]
    assert client.bodies[0].startswith(b"id: 3\n")


async def test_keep_alives_go_out_while_nothing_happens_also_before_the_first_event() -> None:
    log, client = EventLog("turn_1"), Client()
    running = asyncio.create_task(
        _run(event_stream_response(log.reader(0), _settings(), Metrics(process=False)), client)
    )
    await client.until(lambda bodies: len(bodies) >= 2)
    assert client.bodies[:2] == [PING, PING]
    log.append("turn.created", b"{}")
    log.close()
    await running
    assert client.bodies[-1] == log._frames[0]
    assert client.completed


async def test_a_client_that_goes_away_ends_the_stream_though_the_turn_goes_on() -> None:
    log, metrics, client = _log_with(1), Metrics(process=False), Client()
    running = asyncio.create_task(_run(event_stream_response(log.reader(0), _settings(), metrics), client))
    await client.until(lambda bodies: bodies)
    client.gone.set()
    await running
    assert not log.closed
    assert not log._waiters  # nobody is left waiting on the log
    assert _open_streams(metrics) == 0
    log.append("response.output_text.delta", b"{}")  # the turn is unaffected


async def test_a_client_that_stops_reading_is_cut_off_after_the_send_timeout() -> None:
    log, metrics, client = _log_with(1), Metrics(process=False), Client()
    running = asyncio.create_task(_run(event_stream_response(log.reader(0), _settings(), metrics), client))
    await client.until(lambda bodies: bodies)
    client.stalled = True
    log.append("response.output_text.delta", b"{}")
    await running  # returns: the stream no longer holds its task, its reader and its buffers
    assert not client.completed
    assert not log._waiters
    assert _open_streams(metrics) == 0


async def test_a_stream_from_an_iterator_keeps_pinging_while_the_iterator_waits() -> None:
    release = asyncio.Event()

    async def stored_turn() -> AsyncIterator[bytes]:
        await release.wait()
        yield b"id: 9\nevent: turn.completed\ndata: {}\n\n"

    client = Client()
    running = asyncio.create_task(
        _run(event_stream_response(stored_turn(), _settings(), Metrics(process=False)), client)
    )
    await client.until(lambda bodies: len(bodies) >= 2)
    release.set()
    await running
    assert set(client.bodies[:-1]) == {PING}
    assert client.bodies[-1] == b"id: 9\nevent: turn.completed\ndata: {}\n\n"
    assert client.completed


async def test_head_gets_the_headers_and_no_stream() -> None:
    log, metrics, client = EventLog("turn_1"), Metrics(process=False), Client()
    await _run(event_stream_response(log.reader(0), _settings(), metrics), client, method="HEAD")
    start = client.messages[0]
    assert start["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    assert client.bodies == []
    assert client.completed
    assert _open_streams(metrics) == 0


async def test_the_start_goes_through_the_middleware_and_the_body_straight_to_the_server() -> None:
    log, client, through_middleware = EventLog("turn_1"), Client(), []

    async def middleware_send(message: Message) -> None:
        through_middleware.append(message["type"])
        await client.send(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/sessions/s/messages", SERVER_SEND: client.send}
    response = event_stream_response(log.reader(0), _settings(ping_s=15.0), Metrics(process=False))
    running = asyncio.create_task(response(scope, client.receive, middleware_send))
    log.append("turn.created", b"{}")
    await client.until(lambda bodies: bodies)
    log.append("turn.completed", b"{}")
    log.close()
    await running
    assert through_middleware == ["http.response.start"]
    assert b"".join(client.bodies) == b"".join(log._frames)
    assert client.messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_a_request_cancelled_mid_stream_sends_nothing_more() -> None:
    # As the server's shutdown timeout cancels the request: the response goes on being cancelled, and the
    # task that sends its body ends with it.
    log, client, metrics = EventLog("turn_1"), Client(), Metrics(process=False)
    scope = {"type": "http", "method": "POST", "path": "/v1/sessions/s/messages", SERVER_SEND: client.send}
    response = event_stream_response(log.reader(0), _settings(ping_s=15.0), metrics)
    running = asyncio.create_task(response(scope, client.receive, client.send))
    log.append("turn.created", b"{}")
    await client.until(lambda bodies: bodies)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    sent = len(client.messages)
    log.append("response.output_text.delta", b"{}")
    await asyncio.sleep(0.05)
    assert len(client.messages) == sent
    assert not log._waiters
    assert metrics.registry.get_sample_value("parley_open_streams") == 0


async def _waiting_stream(client: Client) -> tuple[EventLog, asyncio.Task[None]]:
    """A stream that sent `turn.created` and now waits for the next frame."""
    log = EventLog("turn_1")
    running = asyncio.create_task(
        _run(event_stream_response(log.reader(0), _settings(ping_s=15.0), Metrics(process=False)), client)
    )
    log.append("turn.created", b"{}")
    await client.until(lambda bodies: bodies)
    await asyncio.sleep(0.01)
    return log, running


async def test_a_live_frame_goes_out_from_the_append_itself_and_a_slow_client_gets_every_frame_once() -> None:
    client = Client()
    log, running = await _waiting_stream(client)
    log.append("response.output_text.delta", b'{"delta":"a"}')
    assert client.bodies[-1] == log._frames[-1]  # sent before the appending code went on

    client.reading.clear()  # the client's buffers are full for a while
    for n in range(5):
        log.append("response.output_text.delta", b'{"delta":"%d"}' % n)
    await asyncio.sleep(0.05)
    client.reading.set()
    log.append("turn.completed", b"{}")
    log.close()
    await running
    assert b"".join(client.bodies) == b"".join(log._frames)  # in order, none lost, none twice
    assert client.completed


async def test_a_failed_send_of_a_live_frame_ends_the_stream_not_the_turn() -> None:
    client = Client()
    log, running = await _waiting_stream(client)
    client.fails_with = ConnectionResetError("the connection broke")
    log.append("response.output_text.delta", b"{}")  # the turn's append goes on as if nothing happened
    with pytest.raises(ConnectionResetError):
        await running
    assert not log._waiters
    log.append("turn.completed", b"{}")
