"""Control routes beside `/v1`: faults, pacing, the request log and reset, for tests and benchmarks.

They let anyone who reaches them read every request (every user's messages) and break every session, so
`create_simulator_app` can leave them out or put them behind a bearer token (`require_control_token`).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from app.simulator.api_errors import SimulatorError
from app.simulator.deps import StateDep
from app.simulator.faults import FaultList
from app.simulator.json_types import json_response
from app.simulator.state import SimulatorConfig

router = APIRouter(prefix="/_control")


def require_control_token(token: str) -> Callable[[Request], Awaitable[None]]:
    """A route dependency: `Authorization: Bearer <token>`, else 401 (no bearer credential) or 403 (another)."""
    expected = token.encode()

    async def check(request: Request) -> None:
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise SimulatorError(
                401,
                "The simulator's control routes need its control token as 'Authorization: Bearer <token>' "
                "(inside Parley: the admin token).",
                code="missing_control_token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(credential.encode(), expected):
            raise SimulatorError(
                403, "This is not the simulator's control token.", type="permission_error", code="invalid_control_token"
            )

    return check


class ConfigUpdate(BaseModel):
    """Fields left out keep their value; `output_tokens: null` goes back to the input-dependent default."""

    model_config = ConfigDict(extra="forbid")

    tokens_per_second: float = Field(default=0.0, ge=0)
    first_token_delay_ms: float = Field(default=0.0, ge=0)
    output_tokens: int | None = Field(default=None, ge=1)


@router.post("/next")
async def queue_faults(faults: FaultList, state: StateDep) -> Response:
    state.faults.extend(faults.faults)
    return json_response({"pending": [fault.model_dump() for fault in state.faults]})


@router.get("/config")
async def get_config(state: StateDep) -> Response:
    return json_response(state.config.to_json())


@router.post("/config")
async def update_config(update: ConfigUpdate, state: StateDep) -> Response:
    current = state.config.to_json()
    current.update(update.model_dump(include=update.model_fields_set))
    state.config = SimulatorConfig(**current)
    return json_response(state.config.to_json())


@router.get("/requests")
async def list_requests(state: StateDep) -> Response:
    return json_response([request.to_json() for request in state.requests])


@router.post("/reset")
async def reset(state: StateDep) -> Response:
    await state.reset()
    return json_response({"reset": True})
