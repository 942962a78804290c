"""Chat sessions and their message history. Every query names the owner."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Boolean, Select, and_, bindparam, delete, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import ChatSession, Message, User
from app.repositories import search_repository
from app.repositories.pagination import Order, Page, paginate


def _owned(user_id: str) -> Select[ChatSession]:
    return select(ChatSession).where(ChatSession.user_id == user_id, ChatSession.deleted_at.is_(None))


async def get_owned_session(db: AsyncSession, *, user_id: str, session_id: str) -> ChatSession | None:
    session: ChatSession | None = await db.scalar(_owned(user_id).where(ChatSession.id == session_id))
    return session


@dataclass(frozen=True, slots=True)
class SessionForTurn:
    """What starting a turn needs of its session, and its owner's own monthly budget."""

    id: str
    conversation_id: str
    prompt: dict[str, Any] | None
    model: str | None
    options: dict[str, Any]
    tools: list[dict[str, Any]]
    server_tools: list[str] | None
    owner_budget_usd: Decimal | None
    # Untitled, no title of its user's, and no turn yet: the turn starting now is its first, titled once it ends.
    title_wanted: bool = False


SESSION_FOR_TURN = (
    select(
        ChatSession.id,
        ChatSession.conversation_id,
        ChatSession.prompt,
        ChatSession.model,
        ChatSession.options,
        ChatSession.tools,
        ChatSession.server_tools,
        User.monthly_budget_usd,
        # Boolean-typed, so SQLite's 0/1 comes back as a bool.
        type_coerce(
            and_(ChatSession.title.is_(None), ChatSession.title_source.is_(None), ChatSession.turn_count == 0),
            Boolean,
        ).label("title_wanted"),
    )
    .join(User, User.id == ChatSession.user_id)
    .where(
        ChatSession.id == bindparam("session_key"),
        ChatSession.user_id == bindparam("user_key"),
        ChatSession.deleted_at.is_(None),
    )
)
# The session's row is locked for the start, as a branch operation locks it (`branch_repository.lock_session`):
# a start never adds its message to a branch that is being moved. NO KEY UPDATE: rows that only reference the
# user or the session (a turn's ledger rows, a new session) need not wait.
SESSION_FOR_TURN_LOCKED = SESSION_FOR_TURN.with_for_update(of=ChatSession, key_share=True)
SESSION_FOR_TURN_LOCKED_WITH_USER = SESSION_FOR_TURN.with_for_update(of=[User, ChatSession], key_share=True)


async def get_owned_session_for_turn(
    db: AsyncSession, *, user_id: str, session_id: str, lock_user: bool
) -> SessionForTurn | None:
    """The session (the caller's own, not deleted) in one prebuilt query of plain columns, its row locked for
    the transaction; with `lock_user`, the owner's row too (it serialises one user's turn starts, so limits count
    what nobody else is changing)."""
    statement = SESSION_FOR_TURN_LOCKED_WITH_USER if lock_user else SESSION_FOR_TURN_LOCKED
    # On the session's connection: plain columns need none of the ORM's execution.
    connection = await db.connection()
    row = (await connection.execute(statement, {"session_key": session_id, "user_key": user_id})).first()
    return SessionForTurn(*row) if row is not None else None


async def list_owned_sessions(
    db: AsyncSession, *, user_id: str, limit: int, after: str | None, order: Order, q: str | None = None
) -> Page[ChatSession]:
    """With `q`, only the sessions whose title or messages match it (as search does)."""
    statement = _owned(user_id)
    if q is not None:
        dialect = (await db.connection()).dialect.name
        matching = search_repository.matching_session_ids(dialect, user_id=user_id, text=q)
        if matching is None:
            return Page(items=[], has_more=False)
        statement = statement.where(ChatSession.id.in_(matching))
    return await paginate(db, statement, ChatSession.id, limit=limit, after=after, order=order)


async def add_session(db: AsyncSession, session: ChatSession) -> ChatSession:
    db.add(session)
    await db.flush()
    return session


async def add_messages(db: AsyncSession, messages: Sequence[Message]) -> None:
    db.add_all(messages)
    await db.flush()


async def list_messages(
    db: AsyncSession, *, session_id: str, limit: int, after: str | None, order: Order
) -> Page[Message]:
    statement = select(Message).where(Message.session_id == session_id)
    return await paginate(db, statement, Message.id, limit=limit, after=after, order=order)


async def list_session_messages(db: AsyncSession, *, session_id: str, active_branch_only: bool) -> Sequence[Message]:
    """All of a session's messages, or only its active branch's, oldest first (ids sort by creation)."""
    statement = select(Message).where(Message.session_id == session_id)
    if active_branch_only:
        statement = statement.where(Message.on_active_branch)
    return (await db.scalars(statement.order_by(Message.id))).all()


async def soft_delete_session(db: AsyncSession, session: ChatSession, *, at: dt.datetime) -> None:
    """Keep the row for the ledger's sake; drop what the user wrote."""
    await db.execute(delete(Message).where(Message.session_id == session.id))
    session.deleted_at = at
    session.title = None
    session.metadata_ = {}
    await db.flush()
