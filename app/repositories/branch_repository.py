"""A session's message tree: paths, subtrees, versions, the active branch and every conversation it made."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from typing import cast

from sqlalchemy import Table, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import ChatSession, Message, SessionConversation
from app.repositories.pagination import Order, Page, paginate

MESSAGES = cast(Table, Message.__table__)


async def get_message(db: AsyncSession, *, session_id: str, message_id: str) -> Message | None:
    """One message of the session (the caller checked that the session is theirs)."""
    message: Message | None = await db.scalar(
        select(Message).where(Message.id == message_id, Message.session_id == session_id)
    )
    return message


async def path_to(db: AsyncSession, *, session_id: str, message_id: str | None) -> list[Message]:
    """The messages from the top of the tree down to `message_id`, in order (none for None)."""
    if message_id is None:
        return []
    start = select(MESSAGES.c.id, MESSAGES.c.parent_id).where(
        MESSAGES.c.id == message_id, MESSAGES.c.session_id == session_id
    )
    path = start.cte("path", recursive=True)
    path = path.union_all(select(MESSAGES.c.id, MESSAGES.c.parent_id).join(path, MESSAGES.c.id == path.c.parent_id))
    # Ids are time-ordered and a parent is older than its children: id order is the path's order.
    statement = select(Message).where(Message.id.in_(select(path.c.id))).order_by(Message.id)
    return list((await db.scalars(statement)).all())


async def newest_leaf_under(db: AsyncSession, *, session_id: str, message_id: str) -> Message | None:
    """The most recent leaf of the subtree at `message_id` (itself, when it has no children): the newest message of
    the subtree is always a leaf, since every child is newer than its parent."""
    start = select(MESSAGES.c.id).where(MESSAGES.c.id == message_id, MESSAGES.c.session_id == session_id)
    subtree = start.cte("subtree", recursive=True)
    subtree = subtree.union_all(select(MESSAGES.c.id).join(subtree, MESSAGES.c.parent_id == subtree.c.id))
    newest = select(func.max(subtree.c.id)).scalar_subquery()
    leaf: Message | None = await db.scalar(select(Message).where(Message.id == newest))
    return leaf


async def versions_of(
    db: AsyncSession, *, session_id: str, parent_ids: Collection[str | None]
) -> dict[str | None, list[str]]:
    """For each parent, the ids of its children in creation order (None: the messages at the top)."""
    if not parent_ids:
        return {}
    named = [parent for parent in parent_ids if parent is not None]
    conditions = [Message.parent_id.in_(named)] if named else []
    if None in parent_ids:
        conditions.append(Message.parent_id.is_(None))
    rows = await db.execute(
        select(Message.id, Message.parent_id)
        .where(Message.session_id == session_id, or_(*conditions))
        .order_by(Message.id)
    )
    children: dict[str | None, list[str]] = {}
    for message_id, parent_id in rows.all():
        children.setdefault(parent_id, []).append(message_id)
    return children


async def lock_session(db: AsyncSession, *, user_id: str, session_id: str) -> ChatSession | None:
    """The caller's session, its row locked for the transaction: a turn's start locks it too, so a branch
    operation and a start in the same session happen one after the other."""
    session: ChatSession | None = await db.scalar(
        select(ChatSession)
        .where(ChatSession.id == session_id, ChatSession.user_id == user_id, ChatSession.deleted_at.is_(None))
        .with_for_update(key_share=True)
    )
    return session


async def make_active(
    db: AsyncSession, *, session_id: str, path_ids: Sequence[str], conversation_id: str, at: dt.datetime
) -> None:
    """`path_ids` (top to leaf) become the active branch, and `conversation_id` the session's conversation."""
    await db.execute(
        update(Message)
        .where(Message.session_id == session_id, or_(Message.on_active_branch, Message.id.in_(path_ids)))
        .values(on_active_branch=Message.id.in_(path_ids))
        .execution_options(synchronize_session=False)
    )
    await db.execute(
        update(ChatSession)
        .where(ChatSession.id == session_id)
        .values(conversation_id=conversation_id, updated_at=at)
        .execution_options(synchronize_session=False)
    )


async def add_conversation(db: AsyncSession, *, session_id: str, conversation_id: str, at: dt.datetime) -> None:
    db.add(SessionConversation(conversation_id=conversation_id, session_id=session_id, created_at=at))
    await db.flush()


async def conversations_of(db: AsyncSession, *, session_id: str) -> list[str]:
    """Every conversation the session made, oldest first."""
    rows = await db.scalars(
        select(SessionConversation.conversation_id)
        .where(SessionConversation.session_id == session_id)
        .order_by(SessionConversation.created_at)
    )
    return list(rows.all())


async def active_leaf_id(db: AsyncSession, *, session_id: str) -> str | None:
    """The newest message on the session's active branch (None in a session with no messages)."""
    leaf: str | None = await db.scalar(
        select(Message.id)
        .where(Message.session_id == session_id, Message.on_active_branch)
        .order_by(Message.id.desc())
        .limit(1)
    )
    return leaf


async def list_active_branch(
    db: AsyncSession, *, session_id: str, limit: int, after: str | None, order: Order
) -> Page[Message]:
    """A page of the session's active branch, oldest first with `order="asc"`."""
    statement = select(Message).where(Message.session_id == session_id, Message.on_active_branch)
    return await paginate(db, statement, Message.id, limit=limit, after=after, order=order)


async def is_on_active_branch(db: AsyncSession, *, session_id: str, message_id: str) -> bool:
    found = await db.scalar(
        select(Message.id).where(Message.id == message_id, Message.session_id == session_id, Message.on_active_branch)
    )
    return found is not None
