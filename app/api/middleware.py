"""Plain ASGI middleware (no BaseHTTPMiddleware: it would route every streamed chunk through an extra
stream on the SSE hot path)."""

from __future__ import annotations

from collections.abc import Awaitable

import orjson
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.routing import Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_BODY_METHODS = {"POST", "PUT", "PATCH"}

# The scope key under which `ServerSendMiddleware` leaves the `send` it was given.
SERVER_SEND = "parley.server_send"
# The scope key under which an event-stream response leaves the rest of its stream (a coroutine) for
# `ServerSendMiddleware` to run once the stack below it has returned. Present (as None) when it will.
DETACHED_STREAM = "parley.detached_stream"

# Middleware that leave body messages alone, by module and class name (a renamed or moved one is unknown, and
# unknown means not safe). Read in their source: each passes `send` through as it is, or wraps it only to
# note or edit `http.response.start` (the response started: ServerErrorMiddleware, ExceptionMiddleware and
# FastAPI's AppBodyLimitMiddleware, Starlette's RequestBodyLimitMiddleware; headers: CORSMiddleware and
# Parley's own) and hands every other message on unchanged. Not here, for example: GZipMiddleware (rewrites
# bodies), BaseHTTPMiddleware (moves them through a stream of its own).
_BODY_BLIND_MIDDLEWARE = frozenset(
    {
        "app.observability.request_id.RequestIdMiddleware",
        "app.api.middleware.SecurityHeadersMiddleware",
        "app.api.middleware.RequestGuardMiddleware",
        "starlette.middleware.errors.ServerErrorMiddleware",
        "starlette.middleware.exceptions.ExceptionMiddleware",
        "starlette.middleware.cors.CORSMiddleware",
        "starlette.middleware.body_limit.RequestBodyLimitMiddleware",
        "fastapi.telemetry._asgi.ExceptionTelemetryMiddleware",
        "fastapi._body_limit.AppBodyLimitMiddleware",
        "fastapi._body_limit._BodyLimitExceptionMiddleware",
        "fastapi.middleware.asyncexitstack.AsyncExitStackMiddleware",
    }
)


def _body_blind_down_to_router(app: ASGIApp) -> bool:
    """Whether every middleware from `app` down to the router is one of `_BODY_BLIND_MIDDLEWARE`. Below the
    router, FastAPI wraps each route's `send` to note the response start only, as ExceptionMiddleware does."""
    layer: object = app
    for _ in range(64):
        if isinstance(layer, Router):
            return True
        kind = type(layer)
        if f"{kind.__module__}.{kind.__qualname__}" not in _BODY_BLIND_MIDDLEWARE:
            return False
        layer = getattr(layer, "app", None)
    return False


class ServerSendMiddleware:
    """Near the outside of the stack: leaves the `send` it is given in the scope under SERVER_SEND, so that
    the event-stream response can send its body messages, one per streamed event, straight there instead of
    through every `send` wrapper in between: five calls per event (six with CORS), three or four of them
    coroutines, each of which only ever acts on the response start.

    And runs the rest of such a stream itself (DETACHED_STREAM), once everything below it has returned: a
    stream lasts seconds to minutes, and suspended inside the stack it held ~20 coroutines of middleware,
    routing and FastAPI's wrappers, with their closures and exit stacks, ~100 objects of ~280 per open
    stream for the collector to walk at every full collection, which pauses every stream in the process.

    Only when every middleware in between is known to leave body messages alone (`_BODY_BLIND_MIDDLEWARE`),
    decided once from the stack itself: a middleware added later that reads or rewrites bodies turns the
    shortcut off rather than being skipped without a word. The response start still goes through all of
    them (X-Request-ID, nosniff, no-store, CORS). What wraps this is not skipped, as it is outside: the
    request id (whose context the stream's log lines keep), uvicorn's proxy headers, and FastAPI's own
    telemetry, which does watch for the last body message when tracing is configured. The mounted apps (the
    playground's files, the embedded simulator) have middleware of their own that this does not check, and
    never send an event stream."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.enabled = _body_blind_down_to_router(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[SERVER_SEND] = send
        scope[DETACHED_STREAM] = None
        try:
            await self.app(scope, receive, send)
        except BaseException:
            rest = scope.pop(DETACHED_STREAM, None)
            if rest is not None:
                rest.close()  # never started: it holds nothing yet
            raise
        rest = scope.pop(DETACHED_STREAM, None)
        if rest is not None:
            await rest


class BodyTooLarge(HTTPException):
    """Raised from inside `receive`; FastAPI re-raises HTTPExceptions met while reading the body, so the
    413 reaches the error handlers instead of becoming a generic 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than {limit} bytes.")


async def _send_error(send: Send, status: int, code: str, message: str) -> None:
    body = orjson.dumps({"error": {"type": "invalid_request_error", "code": code, "message": message, "param": None}})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestGuardMiddleware:
    """Bounds request bodies (413, counting the bytes actually streamed, not trusting Content-Length
    alone) and requires JSON bodies on the API (415), before any handler parses anything."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, prefix: str = "/v1") -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = self.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _send_error(send, 413, "payload_too_large", f"The request body is larger than {limit} bytes.")
            return
        has_body = (declared not in (None, "0")) or "transfer-encoding" in headers
        if scope["method"] in _BODY_METHODS and has_body:
            media_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type != "application/json" and not media_type.endswith("+json"):
                await _send_error(send, 415, "unsupported_media_type", "Request bodies must be application/json.")
                return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


class SecurityHeadersMiddleware:
    """`nosniff` everywhere; `Cache-Control: no-store` on API responses, which carry user data."""

    def __init__(self, app: ASGIApp, *, prefix: str = "/v1") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_api = scope["path"].startswith(self.prefix)

        def send_with_headers(message: Message) -> Awaitable[None]:
            # Not a coroutine: body messages (one per streamed event) go straight to the next `send`, with
            # no frame of this middleware on the way.
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if is_api:
                    headers.setdefault("Cache-Control", "no-store")
            return send(message)

        await self.app(scope, receive, send_with_headers)
