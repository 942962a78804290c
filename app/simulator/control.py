"""Control routes beside `/v1` (no auth): faults, pacing, the request log and reset, for tests and benchmarks."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from app.simulator.deps import StateDep
from app.simulator.faults import FaultList
from app.simulator.json_types import json_response
from app.simulator.state import SimulatorConfig

router = APIRouter(prefix="/_control")


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
    state.reset()
    return json_response({"reset": True})
