"""How an event stream's messages leave Parley: the response start through every middleware (X-Request-ID,
nosniff, no-store, CORS); the body messages straight to the server's `send` when no middleware in between
reads bodies, and through all of them when one does."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.middleware import SERVER_SEND, ServerSendMiddleware
from app.api.sse_response import event_stream_response
from app.main import create_app
from app.observability.metrics import Metrics
from app.settings import Settings
from app.streaming.event_log import EventLog
from tests.conftest import create_api_user, make_settings, run_parley
from tests.servers import free_port, serve
from tests.turns.helpers import new_session, send

ORIGIN = "https://app.example"


async def test_an_event_stream_carries_every_header_and_every_event(database_url: str, backend: str) -> None:
    with run_parley(database_url, backend, cors_origins=[ORIGIN]) as running:
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            person = await create_api_user(client)
            session_id = await new_session(client, person)
            stream = await send(
                client, person, session_id, headers={"Origin": ORIGIN, "X-Request-ID": "client-request-42"}
            )
    assert stream.status == 200
    headers = stream.headers
    assert headers["access-control-allow-origin"] == ORIGIN
    assert "X-Request-ID" in headers["access-control-expose-headers"]
    assert headers["x-request-id"] == "client-request-42"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers.get_list("cache-control") == ["no-store"]
    assert stream.ids == list(range(1, len(stream.events) + 1))
    assert stream.names[0] == "turn.created"
    assert stream.names[-2:] == ["response.completed", "turn.completed"]
    assert stream.terminal.data["turn"]["output_text"] == stream.text


class BodyTap:
    """A middleware that reads response bodies, as one that compresses or logs them would."""

    def __init__(self, app: ASGIApp, *, tapped: dict[str, bytearray]) -> None:
        self.app = app
        self.tapped = tapped

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = self.tapped.setdefault(scope["path"], bytearray())

        async def tap(message: Message) -> None:
            if message["type"] == "http.response.body":
                seen.extend(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, tap)


async def test_a_middleware_that_reads_bodies_sees_every_event(database_url: str, backend: str) -> None:
    port = free_port()
    app = create_app(make_settings(database_url, openai_base_url=f"http://127.0.0.1:{port}/simulator/v1"))
    tapped: dict[str, bytearray] = {}
    app.add_middleware(BodyTap, tapped=tapped)
    with serve(app, port=port) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            person = await create_api_user(client)
            session_id = await new_session(client, person)
            path = f"/v1/sessions/{session_id}/messages"
            async with client.stream("POST", path, json={"input": "Hello!"}, headers=person.headers) as response:
                received = b"".join([chunk async for chunk in response.aiter_raw()])
    assert received.count(b"event: turn.completed") == 1
    assert bytes(tapped[path]) == received


def test_parleys_own_middleware_let_event_bodies_go_straight_to_the_server() -> None:
    # A FastAPI or Starlette release that adds a middleware or moves one turns the shortcut off (events then
    # cost more CPU, nothing breaks): this says when, so that the new one can be read and listed.
    app = create_app(make_settings("sqlite+aiosqlite:///unused.db", cors_origins=[ORIGIN]))
    stack = app.build_middleware_stack()
    assert isinstance(stack, ServerSendMiddleware)
    assert stack.enabled


class Server:
    """The server side of one connection, in process: the messages that reached it, in order."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.gone = asyncio.Event()

    async def send(self, message: Message) -> None:
        self.messages.append(message)

    async def receive(self) -> Message:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    @property
    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.messages if m["type"] == "http.response.body" and m["body"]]


def _settings() -> Settings:
    return Settings(_env_file=None, sse_ping_interval_s=15.0)  # type: ignore[call-arg]


async def _until(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_the_start_goes_through_the_middleware_and_the_body_straight_to_the_server() -> None:
    log, server, through_middleware = EventLog("turn_1"), Server(), []

    async def middleware_send(message: Message) -> None:
        through_middleware.append(message["type"])
        await server.send(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/sessions/s/messages", SERVER_SEND: server.send}
    response = event_stream_response(log.reader(0), _settings(), Metrics(process=False))
    running = asyncio.create_task(response(scope, server.receive, middleware_send))
    log.append("turn.created", b"{}")
    await _until(lambda: server.bodies)
    log.append("turn.completed", b"{}")
    log.close()
    await running
    assert through_middleware == ["http.response.start"]
    assert b"".join(server.bodies) == b"".join(log._frames)
    assert server.messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_a_request_cancelled_mid_stream_sends_nothing_more() -> None:
    # As the server's shutdown timeout cancels the request: the response goes on being cancelled, and the
    # task that sends its body ends with it.
    log, server, metrics = EventLog("turn_1"), Server(), Metrics(process=False)
    scope = {"type": "http", "method": "POST", "path": "/v1/sessions/s/messages", SERVER_SEND: server.send}
    response = event_stream_response(log.reader(0), _settings(), metrics)
    running = asyncio.create_task(response(scope, server.receive, server.send))
    log.append("turn.created", b"{}")
    await _until(lambda: server.bodies)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    sent = len(server.messages)
    log.append("response.output_text.delta", b"{}")
    await asyncio.sleep(0.05)
    assert len(server.messages) == sent
    assert not log._waiters
    assert metrics.registry.get_sample_value("parley_open_streams") == 0
