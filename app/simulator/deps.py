"""Route dependencies: the simulator instance's state and its JSON request bodies."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from app.simulator.json_types import JsonObject
from app.simulator.state import SimulatorState
from app.simulator.validation import parse_json_object


async def get_state(request: Request) -> SimulatorState:
    return cast(SimulatorState, request.app.state.simulator)


async def get_json_body(request: Request) -> JsonObject:
    return parse_json_object(await request.body())


StateDep = Annotated[SimulatorState, Depends(get_state)]
JsonBodyDep = Annotated[JsonObject, Depends(get_json_body)]
