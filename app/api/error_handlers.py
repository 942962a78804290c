"""Render every error in the contract's envelope: {"error": {type, code, message, param}}."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from app.errors import ParleyError

logger = logging.getLogger(__name__)

_HTTP_CODES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_credentials"),
    403: ("permission_error", "forbidden"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "payload_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
}
_UNION_MEMBER = re.compile(r"^([a-z][a-z-]*\[.*\]|str|int|float|bool)$", re.DOTALL)
# The methods a 405's Allow may name, in this order.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def error_response(
    status: int,
    type_: str,
    code: str,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"type": type_, "code": code, "message": message, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _parley_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ParleyError)
    return JSONResponse(exc.to_body(), status_code=exc.status_code, headers=exc.headers or None)


def _location(loc: tuple[int | str, ...]) -> str | None:
    # Drop the "body"/"query"/"path" source so `param` names the field as the client wrote it, and pydantic's
    # labels of a union's members, which are no field (`function-after[<function … at 0x…>]`, `list[…]`).
    parts = [str(part) for part in loc[1:]] if len(loc) > 1 else [str(part) for part in loc]
    return ".".join(part for part in parts if not _UNION_MEMBER.match(part)) or None


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    # The deepest error says what is wrong: a union reports every member's failure, and the shallow ones (an
    # `input` that is not a string, when it is a list with one bad URL) say only which form was not meant.
    first = max(errors, key=lambda e: len(e.get("loc", ()))) if errors else {"msg": "Invalid request.", "loc": ()}
    if first.get("type") == "json_invalid":
        return error_response(400, "invalid_request_error", "invalid_json", "The request body is not valid JSON.")
    param = _location(tuple(first.get("loc", ())))
    code = "unknown_parameter" if first.get("type") == "extra_forbidden" else "invalid_value"
    message = f"Invalid '{param}': {first.get('msg')}." if param else f"{first.get('msg')}."
    if len(errors) > 1:
        message += f" ({len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return error_response(422, "invalid_request_error", code, message, param)


def _serves(route: BaseRoute, scope: Scope) -> bool:
    if isinstance(route, Mount) and (not isinstance(route.app, StaticFiles) or scope["method"] not in ("GET", "HEAD")):
        # A mount matches every method; of Parley's, only the static files answer a 405 here.
        return False
    match, _ = route.matches(scope)
    return match == Match.FULL


def _allowed_methods(request: Request) -> list[str]:
    """Every method the path serves. Starlette's own 405 names only the methods of the first route that
    matched the path, where a path served by several routes (GET and POST /v1/sessions) has more."""
    routes = request.app.router.routes
    served = {m for m in _METHODS if any(_serves(route, {**request.scope, "method": m}) for route in routes)}
    return [m for m in _METHODS if m in served]


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    type_, code = _HTTP_CODES.get(exc.status_code, ("invalid_request_error", "http_error"))
    message = exc.detail if isinstance(exc.detail, str) else "Request failed."
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and message == "Not Found":
        message = "No such route."
    allowed = _allowed_methods(request) if exc.status_code == 405 else []
    if allowed:
        headers["Allow"] = ", ".join(allowed)
        message = f"This method is not allowed on this path; it accepts {', '.join(allowed)}."
    return error_response(exc.status_code, type_, code, message, headers=headers)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # The database is down or its pool exhausted: the client may retry; nothing was half-done (every write is
    # one transaction).
    logger.warning("request.database_unavailable", extra={"path": request.url.path, "error": type(exc).__name__})
    return error_response(
        503,
        "service_unavailable",
        "database_unavailable",
        "The database is unavailable; retry shortly.",
        headers={"Retry-After": "2"},
    )


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    # A connection that broke in use (the server restarted, the network cut it): SQLAlchemy has invalidated the
    # pool, so a retry gets a fresh connection. Any other driver error is a bug.
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return await _database_unavailable(request, exc)
    return await _unexpected_error(request, exc)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("request.unhandled_error", extra={"path": request.url.path})
    return error_response(500, "server_error", "internal_error", "Parley hit an unexpected error.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ParleyError, _parley_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(SQLAlchemyTimeoutError, _database_unavailable)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(InterfaceError, _database_unavailable)
    app.add_exception_handler(ConnectionError, _database_unavailable)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)
