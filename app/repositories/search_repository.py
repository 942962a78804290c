"""Full-text search over a user's session titles and messages: Postgres tsvector + GIN, SQLite FTS5."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Float,
    Select,
    Table,
    and_,
    case,
    func,
    literal,
    literal_column,
    or_,
    select,
    union,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.fulltext import MESSAGES_FTS, SEARCH_CONFIG, SESSIONS_FTS
from app.db.models import ChatSession, Message
from app.repositories.pagination import Page

MESSAGES = cast(Table, Message.__table__)
SESSIONS = cast(Table, ChatSession.__table__)

# Marks around each matched term in a snippet, removed again in Python (see `_marked`): control characters no
# chat text carries (Postgres strips them from the text first; on SQLite a stray one is merely dropped).
START, STOP = "\x02", "\x03"
# ts_headline drops what its parser takes for an HTML tag (`<b>`, the `<u8>` of `Vec<u8>`): each `<` goes in as
# this character and comes back out as `<`, one character for one, so the offsets stay right.
LESS_THAN = "\x04"
ELLIPSIS = "…"
# Postgres: about 30 words around the best match (the whole text when it is shorter); a title is shown whole.
HEADLINE_OPTIONS = f'StartSel="{START}", StopSel="{STOP}", MaxWords=30, MinWords=15'
TITLE_HEADLINE_OPTIONS = f'StartSel="{START}", StopSel="{STOP}", HighlightAll=true'
# SQLite: snippet() takes a number of tokens.
SNIPPET_TOKENS = 24


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A title (message_id None) or a message that matched, with its snippet and the matched spans in it
    (code point offsets, end exclusive)."""

    rank: float
    key: str  # the message's id, or the session's for a title: with rank, the position in the result order
    session_id: str
    session_title: str | None
    message_id: str | None
    role: str | None
    snippet: str
    highlights: list[tuple[int, int]]
    created_at: dt.datetime


def has_words(text: str) -> bool:
    """Whether `text` has anything to search for: a query of operators and punctuation alone matches nothing."""
    return any(character.isalnum() for character in text)


def _fts5_query(text: str) -> str:
    """The user's words as FTS5 phrases (all of them must match): quoted, so that no word is taken for FTS5
    syntax (AND, NEAR, `*`, `:`, a lone quote) and no search is a syntax error."""
    words = [word for word in text.split() if has_words(word)]
    return " ".join('"' + word.replace('"', '""') + '"' for word in words)


def _owned(user_id: str) -> ColumnElement[bool]:
    return and_(SESSIONS.c.user_id == user_id, SESSIONS.c.deleted_at.is_(None))


def _after(rank: Any, key: Any, after: tuple[float, str] | None) -> ColumnElement[bool] | None:
    """Keyset: best rank first, then the newest id first (ids are time-ordered)."""
    if after is None:
        return None
    after_rank, after_key = after
    return or_(rank < after_rank, and_(rank == after_rank, key < after_key))


async def search(
    db: AsyncSession, *, user_id: str, text: str, limit: int, after: tuple[float, str] | None
) -> Page[SearchHit]:
    """The user's titles and messages matching `text`, best first; `after` is a (rank, key) from an earlier page."""
    if not has_words(text):
        return Page(items=[], has_more=False)
    connection = await db.connection()
    statement = search_statement(connection.dialect.name, user_id=user_id, text=text, limit=limit, after=after)
    rows = (await connection.execute(statement)).all()
    postgres = connection.dialect.name == "postgresql"
    hits = [_hit(row, restore_less_than=postgres) for row in rows[:limit]]
    return Page(items=hits, has_more=len(rows) > limit)


def search_statement(
    dialect: str, *, user_id: str, text: str, limit: int, after: tuple[float, str] | None = None
) -> Select[Any]:
    """The one statement a search runs (one more row than `limit`, to tell whether there are more)."""
    if dialect == "postgresql":
        return _postgres_search(user_id, text, limit, after)
    return _sqlite_search(user_id, _fts5_query(text), limit, after)


def _postgres_search(user_id: str, text: str, limit: int, after: tuple[float, str] | None) -> Select[Any]:
    query = func.websearch_to_tsquery(SEARCH_CONFIG, text)
    title_hits = select(
        literal("title").label("kind"),
        SESSIONS.c.id.label("key"),
        func.ts_rank_cd(SESSIONS.c.title_tsv, query).cast(Float).label("rank"),
        SESSIONS.c.id.label("session_id"),
    ).where(_owned(user_id), SESSIONS.c.title_tsv.op("@@")(query))
    message_hits = (
        select(
            literal("message").label("kind"),
            MESSAGES.c.id.label("key"),
            func.ts_rank_cd(MESSAGES.c.content_tsv, query).cast(Float).label("rank"),
            MESSAGES.c.session_id.label("session_id"),
        )
        .join_from(MESSAGES, SESSIONS, SESSIONS.c.id == MESSAGES.c.session_id)
        # Only the active branch's messages: a replaced message or a discarded answer is not the chat any more.
        .where(_owned(user_id), MESSAGES.c.on_active_branch, MESSAGES.c.content_tsv.op("@@")(query))
    )
    hits = union_all(title_hits, message_hits).subquery("hits")
    page = select(hits)
    keyset = _after(hits.c.rank, hits.c.key, after)
    if keyset is not None:
        page = page.where(keyset)
    page_rows = page.order_by(hits.c.rank.desc(), hits.c.key.desc()).limit(limit + 1).subquery("page")
    # Headlines for the page's rows only (ts_headline reparses the text: the costly part of a search).
    content = _headline_text(MESSAGES.c.content)
    title = _headline_text(func.coalesce(SESSIONS.c.title, ""))
    snippet = case(
        (page_rows.c.kind == "title", func.ts_headline(SEARCH_CONFIG, title, query, TITLE_HEADLINE_OPTIONS)),
        else_=func.ts_headline(SEARCH_CONFIG, content, query, HEADLINE_OPTIONS),
    )
    return (
        select(
            page_rows.c.rank,
            page_rows.c.key,
            page_rows.c.session_id,
            SESSIONS.c.title,
            MESSAGES.c.id,
            MESSAGES.c.role,
            snippet.label("snippet"),
            func.coalesce(MESSAGES.c.created_at, SESSIONS.c.created_at).label("created_at"),
        )
        .select_from(page_rows)
        .join(SESSIONS, SESSIONS.c.id == page_rows.c.session_id)
        .outerjoin(MESSAGES, and_(page_rows.c.kind == "message", MESSAGES.c.id == page_rows.c.key))
        .order_by(page_rows.c.rank.desc(), page_rows.c.key.desc())
    )


def _headline_text(value: ColumnElement[Any]) -> ColumnElement[Any]:
    """The text as ts_headline gets it: no characters of our own marks in it, and no `<` (see LESS_THAN)."""
    for character in (START, STOP, LESS_THAN):
        value = func.replace(value, character, "")
    return func.replace(value, "<", LESS_THAN)


def _sqlite_search(user_id: str, query: str, limit: int, after: tuple[float, str] | None) -> Select[Any]:
    messages_fts: ColumnElement[Any] = literal_column(MESSAGES_FTS.name)
    sessions_fts: ColumnElement[Any] = literal_column(SESSIONS_FTS.name)
    # bm25() is lower for a better match: negated, so that on both databases a higher rank is better.
    title_hits = (
        select(
            SESSIONS.c.id.label("key"),
            (-func.bm25(sessions_fts)).label("rank"),
            SESSIONS.c.id.label("session_id"),
            SESSIONS.c.title.label("session_title"),
            literal(None).label("message_id"),
            literal(None).label("role"),
            func.highlight(sessions_fts, 0, START, STOP).label("snippet"),
            SESSIONS.c.created_at.label("created_at"),
        )
        .select_from(SESSIONS_FTS)
        .join(SESSIONS, literal_column("sessions.rowid") == SESSIONS_FTS.c.rowid)
        .where(sessions_fts.op("MATCH")(query), _owned(user_id))
    )
    message_hits = (
        select(
            MESSAGES.c.id.label("key"),
            (-func.bm25(messages_fts)).label("rank"),
            SESSIONS.c.id.label("session_id"),
            SESSIONS.c.title.label("session_title"),
            MESSAGES.c.id.label("message_id"),
            MESSAGES.c.role.label("role"),
            func.snippet(messages_fts, 0, START, STOP, ELLIPSIS, SNIPPET_TOKENS).label("snippet"),
            MESSAGES.c.created_at.label("created_at"),
        )
        .select_from(MESSAGES_FTS)
        .join(MESSAGES, literal_column("messages.rowid") == MESSAGES_FTS.c.rowid)
        .join(SESSIONS, SESSIONS.c.id == MESSAGES.c.session_id)
        # Only the active branch's messages: a replaced message or a discarded answer is not the chat any more.
        .where(messages_fts.op("MATCH")(query), _owned(user_id), MESSAGES.c.on_active_branch)
    )
    # FTS5's auxiliary functions (bm25, snippet) work only in the query that MATCHes: computed in each arm, then
    # ordered and cut to the page outside.
    hits = union_all(title_hits, message_hits).subquery("hits")
    statement = select(
        hits.c.rank,
        hits.c.key,
        hits.c.session_id,
        hits.c.session_title,
        hits.c.message_id,
        hits.c.role,
        hits.c.snippet,
        hits.c.created_at,
    )
    keyset = _after(hits.c.rank.cast(Float), hits.c.key, after)
    if keyset is not None:
        statement = statement.where(keyset)
    return statement.order_by(hits.c.rank.desc(), hits.c.key.desc()).limit(limit + 1)


def _hit(row: Any, *, restore_less_than: bool) -> SearchHit:
    snippet, highlights = _marked(row.snippet or "")
    if restore_less_than:
        snippet = snippet.replace(LESS_THAN, "<")
    return SearchHit(
        rank=float(row.rank),
        key=row.key,
        session_id=row.session_id,
        session_title=row[3],
        message_id=row[4],
        role=row[5],
        snippet=snippet,
        highlights=highlights,
        created_at=row.created_at,
    )


def _marked(text: str) -> tuple[str, list[tuple[int, int]]]:
    """The snippet without its marks, and the spans the marks enclosed (code point offsets, end exclusive)."""
    plain: list[str] = []
    spans: list[tuple[int, int]] = []
    start: int | None = None
    length = 0
    for character in text:
        if character == START:
            start = length
        elif character == STOP:
            if start is not None and length > start:
                spans.append((start, length))
            start = None
        else:
            plain.append(character)
            length += 1
    return "".join(plain), spans


def matching_session_ids(dialect: str, *, user_id: str, text: str) -> Select[Any] | None:
    """The ids of the user's sessions whose title or messages match `text`; None when nothing can match."""
    if not has_words(text):
        return None
    if dialect == "postgresql":
        query = func.websearch_to_tsquery(SEARCH_CONFIG, text)
        by_title = select(SESSIONS.c.id).where(_owned(user_id), SESSIONS.c.title_tsv.op("@@")(query))
        by_message = (
            select(MESSAGES.c.session_id)
            .join_from(MESSAGES, SESSIONS, SESSIONS.c.id == MESSAGES.c.session_id)
            .where(_owned(user_id), MESSAGES.c.on_active_branch, MESSAGES.c.content_tsv.op("@@")(query))
        )
    else:
        fts5 = _fts5_query(text)
        by_title = (
            select(SESSIONS.c.id)
            .select_from(SESSIONS_FTS)
            .join(SESSIONS, literal_column("sessions.rowid") == SESSIONS_FTS.c.rowid)
            .where(literal_column(SESSIONS_FTS.name).op("MATCH")(fts5), _owned(user_id))
        )
        by_message = (
            select(MESSAGES.c.session_id)
            .select_from(MESSAGES_FTS)
            .join(MESSAGES, literal_column("messages.rowid") == MESSAGES_FTS.c.rowid)
            .join(SESSIONS, SESSIONS.c.id == MESSAGES.c.session_id)
            .where(literal_column(MESSAGES_FTS.name).op("MATCH")(fts5), _owned(user_id), MESSAGES.c.on_active_branch)
        )
    return select(union(by_title, by_message).subquery().c[0])
