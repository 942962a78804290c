"""Chat sessions and their message history. Every query names the owner."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal

from sqlalchemy import Select, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import ChatSession, Message, User
from app.repositories.pagination import Order, Page, paginate


def _owned(user_id: str) -> Select[ChatSession]:
    return select(ChatSession).where(ChatSession.user_id == user_id, ChatSession.deleted_at.is_(None))


async def get_owned_session(db: AsyncSession, *, user_id: str, session_id: str) -> ChatSession | None:
    session: ChatSession | None = await db.scalar(_owned(user_id).where(ChatSession.id == session_id))
    return session


async def get_owned_session_for_turn(
    db: AsyncSession, *, user_id: str, session_id: str, lock_user: bool
) -> tuple[ChatSession, Decimal | None] | None:
    """The session and its owner's own monthly budget, in one query; with `lock_user`, the owner's row is
    locked for the transaction (it serialises one user's turn starts, so limits count what nobody else is
    changing)."""
    statement = (
        _owned(user_id)
        .add_columns(User.monthly_budget_usd)
        .join(User, User.id == ChatSession.user_id)
        .where(ChatSession.id == session_id)
    )
    if lock_user:
        statement = statement.with_for_update(of=User)
    row = (await db.execute(statement)).first()
    return (row[0], row[1]) if row is not None else None


async def list_owned_sessions(
    db: AsyncSession, *, user_id: str, limit: int, after: str | None, order: Order
) -> Page[ChatSession]:
    return await paginate(db, _owned(user_id), ChatSession.id, limit=limit, after=after, order=order)


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


async def soft_delete_session(db: AsyncSession, session: ChatSession, *, at: dt.datetime) -> None:
    """Keep the row for the ledger's sake; drop what the user wrote."""
    await db.execute(delete(Message).where(Message.session_id == session.id))
    session.deleted_at = at
    session.title = None
    session.metadata_ = {}
    await db.flush()
