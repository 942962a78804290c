"""The outgoing stream as a browser gets it from a real server: the exact bytes and headers, keep-alives
before the first token, and a browser that goes away."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator

import httpx
import orjson
import pytest

from app.streaming.frames import PING
from tests.conftest import ApiUser, RunningParley, run_parley
from tests.observability.scrape import scrape_until
from tests.turns.helpers import Simulator, new_session, turn_of, wait_for_status

OPEN_STREAMS = "parley_open_streams"
FRAME = re.compile(rb"(?:retry: 2000\n)?id: (\d+)\nevent: ([a-z_.]+)\ndata: [^\n]+\n\n")


@pytest.fixture(scope="module")
def parley(database_url: str, backend: str) -> Iterator[RunningParley]:
    """This module's Parley (in place of the shared one, so `client`, `sim` and `user` use it): keep-alives
    every 0.2 s, so that a short wait shows them; a client that stops reading is cut off after 1 s."""
    with run_parley(database_url, backend, sse_ping_interval_s=0.2, sse_send_timeout_s=1.0) as running:
        yield running


async def _raw(client: httpx.AsyncClient, method: str, url: str, **kwargs: object) -> tuple[httpx.Response, bytes]:
    async with client.stream(method, url, **kwargs) as response:  # type: ignore[arg-type]
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    return response, body


def _frames(body: bytes) -> list[tuple[int, str]]:
    """The body without keep-alives must be nothing but whole frames, numbered 1, 2, 3 …"""
    events = body.replace(PING, b"")
    frames = [(int(m.group(1)), m.group(2).decode()) for m in FRAME.finditer(events)]
    assert b"".join(m.group(0) for m in FRAME.finditer(events)) == events
    return frames


async def test_the_bytes_of_a_stream_and_of_its_replays(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator
) -> None:
    session_id = await new_session(client, user)
    response, body = await _raw(
        client,
        "POST",
        f"/v1/sessions/{session_id}/messages",
        json={"input": "Tell me about Porto."},
        headers=user.headers,
    )

    assert response.status_code == 200
    headers = response.headers
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers.get_list("cache-control") == ["no-store"]
    assert headers["x-accel-buffering"] == "no"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-request-id"].startswith("req_")
    assert headers["transfer-encoding"] == "chunked"
    assert "content-length" not in headers
    assert "content-encoding" not in headers
    assert body.startswith(b"retry: 2000\nid: 1\nevent: turn.created\ndata: {")
    frames = _frames(body)
    assert [n for n, _ in frames] == list(range(1, len(frames) + 1))
    assert frames[-1][1] == "turn.completed"
    assert body.count(b"retry: ") == 1

    # Replays of the finished turn from its log: the same bytes, from the start or after any id.
    events = body.replace(PING, b"")
    turn_id = re.search(rb'"id":"(turn_[^"]+)"', events).group(1).decode()  # type: ignore[union-attr]
    url = f"/v1/sessions/{session_id}/turns/{turn_id}/events"
    _, replay = await _raw(client, "GET", url, headers=user.headers)
    assert replay.replace(PING, b"") == events
    middle = len(frames) // 2
    _, resumed = await _raw(client, "GET", url, headers=user.headers | {"Last-Event-ID": str(middle)})
    assert resumed.replace(PING, b"") == events[events.index(b"id: %d\n" % (middle + 1)) :]


async def test_keep_alives_go_out_before_the_first_token(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator
) -> None:
    await sim.configure(first_token_delay_ms=1000)
    session_id = await new_session(client, user)
    _, body = await _raw(
        client, "POST", f"/v1/sessions/{session_id}/messages", json={"input": "Think first."}, headers=user.headers
    )
    before_first_token = body[: body.index(b"event: response.output_text.delta")]
    assert PING in before_first_token
    assert _frames(body)[-1][1] == "turn.completed"


async def test_a_browser_that_goes_away_ends_its_stream_and_the_turn_goes_on(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator
) -> None:
    await sim.configure(tokens_per_second=25, output_tokens=150)
    session_id = await new_session(client, user)
    async with client.stream(
        "POST", f"/v1/sessions/{session_id}/messages", json={"input": "Talk slowly."}, headers=user.headers
    ) as response:
        seen = b""
        async for chunk in response.aiter_raw():
            seen += chunk
            if seen.count(b"event: response.output_text.delta") >= 2:
                break
    turn_id = re.search(rb'"id":"(turn_[^"]+)"', seen).group(1).decode()  # type: ignore[union-attr]
    # The connection is closed: the server stops sending to it then, not when the turn ends.
    await scrape_until(client, lambda s: s.value(OPEN_STREAMS) == 0)
    assert (await turn_of(client, user, session_id, turn_id))["status"] == "in_progress"
    turn = await wait_for_status(client, user, session_id, turn_id)
    assert turn["status"] == "completed"
    assert turn["output_text"]


async def test_a_browser_that_stops_reading_is_cut_off_and_the_turn_goes_on(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator, parley: RunningParley
) -> None:
    # Megabytes of events: more than the socket buffers between Parley and a browser that reads nothing.
    await sim.configure(output_tokens=30_000)
    session_id = await new_session(client, user)
    url = httpx.URL(parley.base_url)
    body = orjson.dumps({"input": "Tell me everything."})
    request = (
        f"POST /v1/sessions/{session_id}/messages HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
        f"Authorization: Bearer {user.key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    with socket.socket() as browser:
        browser.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        browser.setblocking(False)
        await loop.sock_connect(browser, (url.host, url.port))
        await loop.sock_sendall(browser, request)
        head = await loop.sock_recv(browser, 4096)
        assert head.startswith(b"HTTP/1.1 200 ")
        turn_id = re.search(rb'"id":"(turn_[^"]+)"', head + await loop.sock_recv(browser, 4096)).group(1).decode()  # type: ignore[union-attr]
        # ... and reads no more, but stays connected. Its stream is cut after sse_send_timeout_s.
        await scrape_until(client, lambda s: s.value(OPEN_STREAMS) == 0, timeout=30)
        turn = await wait_for_status(client, user, session_id, turn_id, timeout=30)
    assert turn["status"] == "completed"
