"""`create_simulator_app`: one independent simulator instance, ready to serve or to mount under a prefix."""

from __future__ import annotations

from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.simulator import control, routes_conversations, routes_models, routes_responses
from app.simulator.api_errors import SimulatorError
from app.simulator.middleware import SimulatorMiddleware, relative_path
from app.simulator.prompts import DEFAULT_PROMPTS_PATH, PromptLibrary
from app.simulator.state import SimulatorState


def create_simulator_app(
    *, prompts_path: Path | None = None, control_routes: bool = True, control_token: str | None = None
) -> FastAPI:
    """An offline OpenAI API (Responses + Conversations) with control routes under `/_control`.

    The control routes are open by default (the standalone simulator on loopback, tests); `control_token`
    puts them behind `Authorization: Bearer <control_token>`, and `control_routes=False` leaves them out
    (404, as any unknown path). All state lives on the returned app, so two instances never share anything.
    """
    state = SimulatorState(PromptLibrary.load(prompts_path or DEFAULT_PROMPTS_PATH))
    app = FastAPI(title="Parley OpenAI simulator", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.simulator = state
    for router in (routes_responses.router, routes_conversations.router, routes_models.router):
        app.include_router(router)
    if control_routes:
        guard = [] if control_token is None else [Depends(control.require_control_token(control_token))]
        app.include_router(control.router, dependencies=guard)
    app.add_exception_handler(SimulatorError, _simulator_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(SimulatorMiddleware, state=state)
    return app


async def _simulator_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SimulatorError)
    return exc.to_response()


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "Invalid request."}
    param = ".".join(str(part) for part in first["loc"] if part != "body") or None
    message = f"Invalid '{param}': {first['msg']}." if param else f"{first['msg']}."
    return SimulatorError(400, message, param=param, code="invalid_value").to_response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code in (404, 405):
        message = f"Invalid URL ({request.method} {relative_path(request.scope)})"
        return SimulatorError(404, message).to_response()
    return SimulatorError(exc.status_code, str(exc.detail)).to_response()
