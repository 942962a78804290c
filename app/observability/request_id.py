"""`X-Request-ID` on every request and every response, as plain ASGI middleware.

Written here rather than taken from `asgi-correlation-id`: it is twenty lines, Parley's ids have their own
shape (`req_` + 32 hex, or a client's id of at most 128 safe characters rather than only UUIDs), and this
wraps even Starlette's `ServerErrorMiddleware` (see `main.ParleyAPI`), so an unhandled error's 500 and its
log line carry the id too.
"""

from __future__ import annotations

from collections.abc import Awaitable

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.context import REQUEST_ID_HEADER, is_valid_request_id, new_request_id, request_id_var


class RequestIdMiddleware:
    """Keeps a valid incoming `X-Request-ID` (else makes one), binds it for the request's log lines, and
    sends it back on the response, JSON, error or event stream alike."""

    def __init__(self, app: ASGIApp, *, exclude_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        # Apps mounted here that are not Parley (the embedded simulator answers with an upstream's own
        # x-request-id, which must reach Parley's client unchanged).
        self.exclude_prefixes = exclude_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._excluded(scope["path"]):
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get(REQUEST_ID_HEADER)
        request_id = incoming if incoming is not None and is_valid_request_id(incoming) else new_request_id()
        token = request_id_var.set(request_id)

        def send_with_id(message: Message) -> Awaitable[None]:
            # Not a coroutine: body messages go straight to the server's `send`, with no frame of this
            # middleware on the way.
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            return send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)

    def _excluded(self, path: str) -> bool:
        return any(path == prefix or path.startswith(prefix + "/") for prefix in self.exclude_prefixes)
