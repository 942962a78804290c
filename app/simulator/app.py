"""`create_simulator_app`: one independent simulator instance, ready to serve or to mount under a prefix."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.simulator import control, routes_conversations, routes_files, routes_models, routes_responses
from app.simulator.api_errors import SimulatorError
from app.simulator.middleware import SimulatorMiddleware, relative_path
from app.simulator.prompts import DEFAULT_PROMPTS_PATH, PromptLibrary
from app.simulator.state import BACKGROUND_RETENTION_S, SimulatorConfig, SimulatorState
from app.simulator.state_database import StateDatabase


def create_simulator_app(
    *,
    prompts_path: Path | None = None,
    control_routes: bool = True,
    control_token: str | None = None,
    config: SimulatorConfig | None = None,
    state_database_url: str | None = None,
    background_retention_s: float = BACKGROUND_RETENTION_S,
    zero_data_retention: bool = False,
) -> FastAPI:
    """An offline OpenAI API (Responses + Conversations) with control routes under `/_control`.

    The control routes are open by default (the standalone simulator on loopback, tests); `control_token`
    puts them behind `Authorization: Bearer <control_token>`, and `control_routes=False` leaves them out
    (404, as any unknown path). All state lives on the returned app, so two instances never share anything.

    `config` is the pacing and size it starts with and goes back to at a reset (default: instant). With a
    `state_database_url` its conversations and finished responses are also kept in that database (tables of
    its own, created at start) and outlive the process; without one they live in memory only. The database
    opens and closes with the app's lifespan: an app that mounts this one runs it from its own
    (`simulator.router.lifespan_context(simulator)`), since a mounted app's lifespan does not run by itself.

    A background response's events can be streamed again for `background_retention_s` after it ended (about ten
    minutes, as OpenAI keeps them). `zero_data_retention` plays an organisation that stores nothing: it refuses
    background responses (400, `param: background`).
    """
    database = StateDatabase(state_database_url) if state_database_url is not None else None
    state = SimulatorState(
        PromptLibrary.load(prompts_path or DEFAULT_PROMPTS_PATH),
        config=config,
        database=database,
        background_retention_s=background_retention_s,
        zero_data_retention=zero_data_retention,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if database is None:
            yield
            return
        await database.open()
        try:
            yield
        finally:
            await database.close()

    app = FastAPI(title="Parley OpenAI simulator", openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.simulator = state
    for router in (routes_responses.router, routes_conversations.router, routes_models.router, routes_files.router):
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
