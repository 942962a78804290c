"""FastAPI dependencies as `Annotated` aliases. Values come from lifespan state, never module globals.

Every dependency is `async def`, even the trivial ones: FastAPI runs a plain `def` dependency in a worker
thread, a thread hop per dependency per request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Literal

import openai
from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import ValidationFailed
from app.services.auth import Authenticator, Principal
from app.services.server_tools import ServerTools
from app.services.turn_service import TurnService
from app.settings import Settings
from app.state import AppState

# auto_error=False: a missing header is answered by our own 401 envelope, not FastAPI's 403.
BEARER_DESCRIPTION = "A Parley API key (pk_…) or a JWT."
bearer_scheme = HTTPBearer(auto_error=False, description=BEARER_DESCRIPTION)
admin_scheme = HTTPBearer(auto_error=False, scheme_name="AdminToken", description="PARLEY_ADMIN_TOKEN")


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.parley
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_turn_service(state: StateDep) -> TurnService:
    return state.turns


TurnsDep = Annotated[TurnService, Depends(get_turn_service)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_upstream(state: StateDep) -> openai.AsyncOpenAI:
    return state.upstream


UpstreamDep = Annotated[openai.AsyncOpenAI, Depends(get_upstream)]


async def get_server_tools(state: StateDep) -> ServerTools:
    return state.tools


ServerToolsDep = Annotated[ServerTools, Depends(get_server_tools)]


async def get_db(state: StateDep) -> AsyncIterator[AsyncSession]:
    """One transaction per request, committed when the handler returns without error."""
    async with state.sessionmaker() as db:
        yield db
        await db.commit()


# scope="function": committed and closed when the handler returns, before the response is sent, so a client
# that has its 201 can rely on the row (and a stream never holds a connection).
DbDep = Annotated[AsyncSession, Depends(get_db, scope="function")]


async def get_authenticator(state: StateDep) -> Authenticator:
    return state.authenticator


class BearerPrincipal(HTTPBearer):
    """The caller, authenticated from the bearer credentials, as one dependency. FastAPI solves each dependency
    of a request anew (a few tens of µs each): reading the header and authenticating in the security scheme
    itself saves two on every authenticated request, and OpenAPI still documents the scheme."""

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        credentials = await super().__call__(request)
        authenticator: Authenticator = request.app.state.parley.authenticator
        return await authenticator.authenticate(credentials.credentials if credentials else None)


UserDep = Annotated[
    Principal,
    Depends(BearerPrincipal(auto_error=False, scheme_name="HTTPBearer", description=BEARER_DESCRIPTION)),
]


async def require_admin(
    authenticator: Annotated[Authenticator, Depends(get_authenticator)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(admin_scheme)],
) -> None:
    authenticator.check_admin(credentials.credentials if credentials else None)


AdminDep = Depends(require_admin)


CURSOR_PATTERN = r"^[\x01-\x7f]*$"


@dataclass(frozen=True, slots=True)
class ListParams:
    """`limit`, `after`, `order` of every list route."""

    limit: int
    after: str | None
    order: Literal["asc", "desc"] | None


async def list_params(
    limit: Annotated[int, Query(ge=1, le=100, description="Page size, 1-100.")] = 20,
    after: Annotated[
        str | None,
        # The pattern documents the check below (ASCII, no NUL), which answers in plainer words than pydantic's.
        Query(max_length=64, description="Return items after this id.", json_schema_extra={"pattern": CURSOR_PATTERN}),
    ] = None,
    order: Annotated[Literal["asc", "desc"] | None, Query(description="By creation time.")] = None,
) -> ListParams:
    if after is not None and ("\x00" in after or not after.isascii()):
        raise ValidationFailed("Invalid cursor.", param="after")
    return ListParams(limit=limit, after=after, order=order)


ListDep = Annotated[ListParams, Depends(list_params)]
