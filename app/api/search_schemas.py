"""Response bodies and query parameters of search (GET /v1/search, GET /v1/sessions?q=)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, Field

from app.services.search_service import MAX_QUERY_CHARS, SearchResult

# Documents what `search_service.checked_query` checks (something besides spaces, no NUL), which answers in
# plainer words than pydantic's.
QUERY_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"
SEARCH_DESCRIPTION = (
    'Words to find in your session titles and messages. Postgres reads it as a web search ("a phrase", or, '
    "-word); SQLite finds the messages that have every word."
)


def _search_text(description: str) -> Any:
    return Query(
        min_length=1, max_length=MAX_QUERY_CHARS, description=description, json_schema_extra={"pattern": QUERY_PATTERN}
    )


SearchText = Annotated[str, _search_text(SEARCH_DESCRIPTION)]
SessionFilter = Annotated[
    str | None, _search_text("Only the sessions whose title or messages match these words (as `GET /v1/search`).")
]
SearchCursor = Annotated[
    str | None,
    Query(
        min_length=4,
        max_length=128,
        pattern=r"^sr_[A-Za-z0-9_-]+$",
        description="Return the results after this one (a search result's `id`).",
    ),
]


class SearchResultRead(BaseModel):
    id: str = Field(description="Opaque; pass it as `after` for the results after this one.")
    object: Literal["search_result"] = "search_result"
    session_id: str
    session_title: str | None
    message_id: str | None = Field(description="null when the session's title matched.")
    role: Literal["system", "developer", "user", "assistant"] | None
    snippet: str = Field(description="The matching text, shortened around the matches.")
    highlights: list[tuple[int, int]] = Field(
        description="[start, end) of each match in `snippet`, in UTF-16 code units (as JavaScript counts)."
    )
    created_at: dt.datetime

    @classmethod
    def of(cls, result: SearchResult) -> SearchResultRead:
        return cls(
            id=result.id,
            session_id=result.session_id,
            session_title=result.session_title,
            message_id=result.message_id,
            role=result.role,
            snippet=result.snippet,
            highlights=result.highlights,
            created_at=result.created_at,
        )
