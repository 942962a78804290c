"""Render every error in the contract's envelope: {"error": {type, code, message, param}}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from app.api.validation_messages import describe_validation_errors
from app.db.migrate import NOT_MIGRATED, schema_missing
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
# FastAPI's words for a body it could not decode.
FASTAPI_UNPARSABLE_BODY = "There was an error parsing the body"
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


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "invalid_request_error", "invalid_json", "The request body is not valid JSON.")
    if not errors:
        return error_response(422, "invalid_request_error", "invalid_value", "The request is not valid.")
    described = describe_validation_errors(errors, exc.body)
    return error_response(422, "invalid_request_error", described.code, described.message, described.param)


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
    if exc.status_code == 400 and message == FASTAPI_UNPARSABLE_BODY:
        # A body FastAPI could not decode (not UTF-8, say) before it could tell whether it was JSON.
        return error_response(400, type_, "invalid_json", "The request body is not valid JSON (UTF-8).")
    allowed = _allowed_methods(request) if exc.status_code == 405 else []
    if allowed:
        headers["Allow"] = ", ".join(allowed)
        message = f"This method is not allowed on this path; it accepts {', '.join(allowed)}."
    return error_response(exc.status_code, type_, code, message, headers=headers)


def _not_migrated(request: Request) -> JSONResponse:
    # A table or column this code needs is missing: a new database nobody has run `parley migrate` on yet. The log
    # says so once (SchemaWatch), not once per request.
    state = getattr(request.app.state, "parley", None)
    if state is not None:
        state.schema.behind()
    return error_response(503, "service_unavailable", "database_not_migrated", NOT_MIGRATED)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # The database is down or its pool exhausted: the client may retry; nothing was half-done (every write is
    # one transaction).
    if schema_missing(exc):
        return _not_migrated(request)
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
    if schema_missing(exc):
        return _not_migrated(request)
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
