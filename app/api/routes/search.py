"""/v1/search: find words in the caller's own session titles and messages."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import DbDep, UserDep
from app.api.routes.common import errors, list_response
from app.api.schemas import ListResponse
from app.api.search_schemas import SearchCursor, SearchResultRead, SearchText
from app.services import search_service

router = APIRouter(prefix="/v1", tags=["search"], responses=errors(401, 422))


@router.get("/search")
async def search(
    q: SearchText,
    db: DbDep,
    user: UserDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size, 1-100.")] = 20,
    after: SearchCursor = None,
) -> ListResponse[SearchResultRead]:
    """Your session titles and the messages of your sessions that match `q`, best match first, each with a
    snippet and the matched spans in it. Deleted sessions are left out."""
    page = await search_service.search(db, principal=user, q=q, limit=limit, after=after)
    return list_response(page.items, page.has_more, SearchResultRead.of, lambda r: r.id)
