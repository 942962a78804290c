"""Plain ASGI middleware (no per-chunk overhead on streams): OpenAI's response headers on everything, and for
`/v1` the bearer-token check and the request log behind `/_control/requests`."""

from __future__ import annotations

import time

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.simulator.ids import new_request_id
from app.simulator.state import RecordedRequest, SimulatorState

_STATIC_HEADERS = [
    (b"openai-version", b"2020-10-01"),
    (b"openai-organization", b"parley-simulator"),
    (b"openai-project", b"proj_parley_simulator"),
    (b"x-ratelimit-limit-requests", b"10000"),
    (b"x-ratelimit-limit-tokens", b"10000000"),
    (b"x-ratelimit-remaining-requests", b"9999"),
    (b"x-ratelimit-remaining-tokens", b"9999850"),
    (b"x-ratelimit-reset-requests", b"6ms"),
    (b"x-ratelimit-reset-tokens", b"0s"),
    (b"access-control-expose-headers", b"X-Request-ID"),
]
_MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer "
    "auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're "
    "accessing the API from your browser and are prompted for a username. You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)


class SimulatorMiddleware:
    def __init__(self, app: ASGIApp, *, state: SimulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = new_request_id().encode()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed_ms = str(int((time.perf_counter() - started) * 1000)).encode()
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id),
                    (b"openai-processing-ms", elapsed_ms),
                    *_STATIC_HEADERS,
                ]
            await send(message)

        path = relative_path(scope)
        if path == "/v1" or path.startswith("/v1/"):
            body = await _read_body(receive)
            self.state.requests.append(RecordedRequest(scope["method"], path, scope.get("query_string", b""), body))
            if not _has_bearer_token(scope):
                await _send_unauthorized(send_with_headers)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send_with_headers)


def relative_path(scope: Scope) -> str:
    """The path below the simulator's root, also when it is mounted under a prefix such as `/simulator`."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        return path[len(root_path) :] or "/"
    return path


def _has_bearer_token(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credential = value.decode("latin-1").partition(" ")
            return scheme.lower() == "bearer" and bool(credential.strip())
    return False


async def _send_unauthorized(send: Send) -> None:
    body = orjson.dumps(
        {"error": {"message": _MISSING_KEY_MESSAGE, "type": "invalid_request_error", "param": None, "code": None}}
    )
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """Hand the already-read body to the app once; after that, the real channel (for disconnects)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
