"""What the upstream HTTP transport (aiohttp under the SDK) must keep doing for a turn: errors the client can
act on, no request sent twice, and bodies relayed whatever their encoding."""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
from collections.abc import Iterator

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.simulator import create_simulator_app
from tests.conftest import create_api_user, run_parley
from tests.servers import free_port, serve
from tests.turns.helpers import new_session, send


@contextlib.contextmanager
def hang_up_server(port: int) -> Iterator[list[str]]:
    """Accept on `port`, read each request's head, then close without answering; yields the request lines."""
    requests: list[str] = []
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    listener.settimeout(0.1)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head:
                    data = connection.recv(65536)
                    if not data:
                        break
                    head += data
                if head:
                    requests.append(head.split(b"\r\n", 1)[0].decode())

    thread = threading.Thread(target=run, name=f"hang-up-{port}", daemon=True)
    thread.start()
    try:
        yield requests
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


async def test_an_upstream_that_hangs_up_unanswered_is_502_and_not_asked_twice(database_url: str, backend: str) -> None:
    port = free_port()
    with run_parley(
        database_url, backend, openai_api_key="sk-test", openai_base_url=f"http://127.0.0.1:{port}/v1"
    ) as running:
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            person = await create_api_user(client)
            with serve(create_simulator_app(), port=port):
                session_id = await new_session(client, person)
            with hang_up_server(port) as requests:
                response = await client.post(
                    f"/v1/sessions/{session_id}/messages", json={"input": "hello"}, headers=person.headers
                )
            # Not a timeout, and not retried: the upstream may have started on the request before it hung up.
            assert response.status_code == 502
            assert response.json()["error"]["code"] == "upstream_unreachable"
            assert requests == ["POST /v1/responses HTTP/1.1"]
            turns = (await client.get(f"/v1/sessions/{session_id}/turns", headers=person.headers)).json()["data"]
            assert turns[0]["status"] == "failed"


class GzipResponses:
    """The simulator with its streamed `POST /v1/responses` bodies gzip-compressed, as a server may send them
    to a client that accepts gzip (the SDK does)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/v1/responses":
            await self.app(scope, receive, send)
            return
        start: Message = {}
        body = bytearray()

        async def collect(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))

        await self.app(scope, receive, collect)
        headers = [(name, value) for name, value in start["headers"] if name.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-encoding", b"gzip")]})
        compressed = gzip.compress(bytes(body))
        # In pieces, so the decompressor sees a body that arrives in several reads.
        for offset in range(0, len(compressed), 64):
            await send({"type": "http.response.body", "body": compressed[offset : offset + 64], "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def test_a_gzip_encoded_upstream_stream_is_relayed_decoded(database_url: str, backend: str) -> None:
    port = free_port()
    with run_parley(
        database_url, backend, openai_api_key="sk-test", openai_base_url=f"http://127.0.0.1:{port}/v1"
    ) as running:
        async with httpx.AsyncClient(base_url=running.base_url, timeout=30) as client:
            person = await create_api_user(client)
            with serve(GzipResponses(create_simulator_app()), port=port):
                session_id = await new_session(client, person)
                stream = await send(client, person, session_id)
    assert stream.status == 200
    assert stream.names[0] == "turn.created"
    assert "response.created" in stream.names
    assert stream.names[-2:] == ["response.completed", "turn.completed"]
    final = stream.terminal.data["turn"]
    assert stream.text
    assert final["output_text"] == stream.text
    assert final["usage"]["output_tokens"] > 0
