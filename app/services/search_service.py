"""Search over a user's own titles and messages: the query's rules, opaque cursors, UTF-16 highlight offsets."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
import re
import struct
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import ValidationFailed
from app.repositories import search_repository
from app.repositories.pagination import Page
from app.services.auth import Principal

MAX_QUERY_CHARS = 500
CURSOR_PREFIX = "sr_"
_RANK = struct.Struct(">d")
_KEY = re.compile(r"^(msg|sess)_[A-Za-z0-9_-]{1,60}$")


@dataclass(frozen=True, slots=True)
class SearchResult:
    id: str
    session_id: str
    session_title: str | None
    message_id: str | None
    role: str | None
    snippet: str
    highlights: list[tuple[int, int]]  # UTF-16 code unit offsets into `snippet`, end exclusive
    created_at: dt.datetime


def checked_query(q: str) -> str:
    """The search text, or a 422 in words: it must say something, and stay short."""
    if "\x00" in q:
        raise ValidationFailed("The search text must not contain NUL characters.", param="q")
    if not q.strip():
        raise ValidationFailed("The search text is empty: say what to look for.", param="q")
    if len(q) > MAX_QUERY_CHARS:
        raise ValidationFailed(f"The search text is longer than {MAX_QUERY_CHARS} characters.", param="q")
    return q


def encode_cursor(rank: float, key: str) -> str:
    raw = _RANK.pack(rank) + key.encode("ascii")
    return CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The (rank, key) a result's id stands for; anything that is no such id is a 422."""
    invalid = ValidationFailed("Invalid cursor: use the id of a search result.", param="after")
    if not cursor.startswith(CURSOR_PREFIX) or not cursor.isascii():
        raise invalid
    body = cursor[len(CURSOR_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise invalid from None
    if len(raw) <= _RANK.size:
        raise invalid
    (rank,) = _RANK.unpack(raw[: _RANK.size])
    try:
        key = raw[_RANK.size :].decode("ascii")
    except UnicodeDecodeError:
        raise invalid from None
    if not math.isfinite(rank) or not _KEY.match(key) or encode_cursor(rank, key) != cursor:
        raise invalid
    return rank, key


def utf16_spans(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Code point offsets as UTF-16 code unit offsets (what JavaScript strings count): a character beyond the
    Basic Multilingual Plane, such as most emoji, counts twice."""
    if text.isascii():
        return spans
    units = [0]
    for character in text:
        units.append(units[-1] + (2 if ord(character) > 0xFFFF else 1))
    return [(units[start], units[end]) for start, end in spans]


async def search(
    db: AsyncSession, *, principal: Principal, q: str, limit: int, after: str | None
) -> Page[SearchResult]:
    text = checked_query(q)
    position = decode_cursor(after) if after is not None else None
    page = await search_repository.search(db, user_id=principal.user_id, text=text, limit=limit, after=position)
    return Page(
        items=[
            SearchResult(
                id=encode_cursor(hit.rank, hit.key),
                session_id=hit.session_id,
                session_title=hit.session_title,
                message_id=hit.message_id,
                role=hit.role,
                snippet=hit.snippet,
                highlights=utf16_spans(hit.snippet, hit.highlights),
                created_at=hit.created_at,
            )
            for hit in page.items
        ],
        has_more=page.has_more,
    )
