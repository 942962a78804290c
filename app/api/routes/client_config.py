"""/v1/config: what the caller may choose (models, prompts, options, tools) and the limits that apply to them."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import DbDep, StateDep, UserDep
from app.api.routes.common import errors
from app.api.schemas import ClientConfigRead
from app.services.client_config import client_config

router = APIRouter(prefix="/v1", tags=["config"], responses=errors(401, 422))


@router.get("/config", summary="What this caller may choose, and their limits")
async def read_config(db: DbDep, user: UserDep, state: StateDep) -> ClientConfigRead:
    """For a client's pickers: the models and prompts a session may use (`allowed: ["*"]`: any), the options and
    built-in tools a message may set, Parley's own tools, and the limits on the caller's messages and spend."""
    config = await client_config(db, settings=state.settings, principal=user, tools=state.tools)
    return ClientConfigRead.of(config)
