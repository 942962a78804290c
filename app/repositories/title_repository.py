"""A session's automatic title, written only where nobody has named the session."""

from __future__ import annotations

import datetime as dt
from typing import cast

from sqlalchemy import Table, bindparam, literal, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import ChatSession

SESSIONS = cast(Table, ChatSession.__table__)

# One conditional statement: a title the user gave meanwhile is never overwritten (row locking orders it after a
# concurrent PATCH, whose title it then sees).
SET_AUTO_TITLE = (
    update(SESSIONS)
    .where(
        SESSIONS.c.id == bindparam("session_key"),
        SESSIONS.c.title.is_(None),
        SESSIONS.c.title_source.is_(None),
        SESSIONS.c.deleted_at.is_(None),
    )
    .values(title=bindparam("title"), title_source=literal("auto"), updated_at=bindparam("at"))
)


async def set_auto_title(db: AsyncSession, *, session_id: str, title: str, at: dt.datetime) -> bool:
    """Whether the title was written (False: the session has a title, or was named or deleted meanwhile)."""
    connection = await db.connection()
    result = await connection.execute(SET_AUTO_TITLE, {"session_key": session_id, "title": title, "at": at})
    return bool(getattr(result, "rowcount", 0))
