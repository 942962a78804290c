"""Plain ASGI middleware (no BaseHTTPMiddleware: it would route every streamed chunk through an extra
stream on the SSE hot path)."""

from __future__ import annotations

from collections.abc import Awaitable

import orjson
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_BODY_METHODS = {"POST", "PUT", "PATCH"}
# An upload's body is its file and the multipart framing around it (boundaries, a part's headers).
UPLOAD_FORM_OVERHEAD = 64 * 1024


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
    alone) and requires JSON bodies on the API (415), before any handler parses anything. An upload
    (`POST` to `upload_path`) is multipart instead, with its own limit: the file's, and room for the form's
    part headers."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        prefix: str = "/v1",
        upload_path: str | None = None,
        max_upload_bytes: int = 0,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.prefix = prefix
        self.upload_path = upload_path
        self.max_upload_bytes = max_upload_bytes + UPLOAD_FORM_OVERHEAD

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        # Any method: a multipart body sent with the wrong one is the router's 405, not a 415.
        upload = scope["path"] == self.upload_path
        limit = self.max_upload_bytes if upload else self.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _send_error(send, 413, "payload_too_large", f"The request body is larger than {limit} bytes.")
            return
        has_body = (declared not in (None, "0")) or "transfer-encoding" in headers
        if scope["method"] in _BODY_METHODS and has_body:
            media_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if upload:
                if media_type != "multipart/form-data":
                    await _send_error(
                        send, 415, "unsupported_media_type", "Upload a file as multipart/form-data (field `file`)."
                    )
                    return
            elif media_type != "application/json" and not media_type.endswith("+json"):
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
