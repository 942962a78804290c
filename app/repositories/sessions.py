"""Chat sessions and their message history. Every query names the owner."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import Select, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import ChatSession, Message
from app.repositories.pagination import Order, Page, paginate


def _owned(user_id: str) -> Select[ChatSession]:
    return select(ChatSession).where(ChatSession.user_id == user_id, ChatSession.deleted_at.is_(None))


async def get_owned_session(db: AsyncSession, *, user_id: str, session_id: str) -> ChatSession | None:
    session: ChatSession | None = await db.scalar(_owned(user_id).where(ChatSession.id == session_id))
    return session


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
