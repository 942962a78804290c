"""How an event stream's messages leave Parley: the response start through every middleware (X-Request-ID,
nosniff, no-store, CORS); the body messages straight to the server's `send` when no middleware in between
reads bodies, and through all of them when one does."""

from __future__ import annotations

import contextlib
import gc
from collections import Counter
from types import CoroutineType

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.middleware import ServerSendMiddleware
from app.main import create_app
from app.observability.request_id import RequestIdMiddleware
from tests.conftest import create_api_user, make_settings, run_parley
from tests.servers import free_port, serve
from tests.turns.helpers import Simulator, new_session, open_stream, send

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
    assert isinstance(stack, RequestIdMiddleware)
    assert isinstance(stack.app, ServerSendMiddleware)
    assert stack.app.enabled


def _request_stack_frames(path_prefix: str) -> Counter[str]:
    """Suspended coroutines handling requests under `path_prefix` (those with the request's scope), by name."""
    gc.collect()
    frames: Counter[str] = Counter()
    for thing in gc.get_objects():
        if isinstance(thing, CoroutineType) and thing.cr_frame is not None:
            scope = thing.cr_frame.f_locals.get("scope")
            if isinstance(scope, dict) and str(scope.get("path", "")).startswith(path_prefix):
                frames[thing.cr_code.co_qualname] += 1
    return frames


async def test_an_open_stream_keeps_no_middleware_or_routing_frames_below_the_outer_layers(
    database_url: str, backend: str
) -> None:
    # A stream lasts minutes, and suspended inside the stack each one held ~20 coroutines (middleware, routing,
    # FastAPI's wrappers) and their closures: objects that every full collection walks, pausing every stream.
    # Now only the server's outer layers wait while the stream is sent: the stack below has returned.
    streams = 8
    with run_parley(database_url, backend) as running:
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            await Simulator(client, running.simulator_url).configure(tokens_per_second=2, output_tokens=12)
            person = await create_api_user(client)
            sessions = [await new_session(client, person) for _ in range(streams)]
            readers = []  # each stream's reader kept: a dropped one closes its stream
            async with contextlib.AsyncExitStack() as open_streams:
                for session_id in sessions:
                    stream, source = await open_streams.enter_async_context(
                        open_stream(
                            client,
                            "POST",
                            f"/v1/sessions/{session_id}/messages",
                            json={"input": "Hello!"},
                            headers=person.headers,
                        )
                    )
                    assert stream.status == 200
                    readers.append(source.aiter_sse())
                    first = await anext(readers[-1])
                    assert first.event == "turn.created"
                frames = _request_stack_frames("/v1/sessions/")
    assert frames["ServerSendMiddleware.__call__"] == streams  # every stream still open
    # Per stream: uvicorn's proxy headers, FastAPI's and Starlette's entry, the request id, the server send.
    assert frames.total() <= 5 * streams, frames
