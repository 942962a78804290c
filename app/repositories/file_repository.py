"""Uploaded files: each user's own, their bytes, and which live sessions still name them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection

from sqlalchemy import ColumnElement, LargeBinary, String, and_, cast, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import ChatSession, Message, StoredFile
from app.repositories.pagination import Order, Page, paginate


def _live(user_id: str) -> ColumnElement[bool]:
    return and_(StoredFile.user_id == user_id, StoredFile.deleted_at.is_(None))


async def add_file(db: AsyncSession, stored: StoredFile) -> StoredFile:
    db.add(stored)
    await db.flush()
    return stored


async def used_bytes(db: AsyncSession, *, user_id: str) -> int:
    """What the user's live files take together."""
    total = await db.scalar(select(func.coalesce(func.sum(StoredFile.size_bytes), 0)).where(_live(user_id)))
    return int(total or 0)


async def get_owned_file(db: AsyncSession, *, user_id: str, file_id: str) -> StoredFile | None:
    return (await db.scalars(select(StoredFile).where(StoredFile.id == file_id, _live(user_id)))).one_or_none()


async def get_owned_files(db: AsyncSession, *, user_id: str, file_ids: Collection[str]) -> dict[str, StoredFile]:
    rows = await db.scalars(select(StoredFile).where(StoredFile.id.in_(list(file_ids)), _live(user_id)))
    return {row.id: row for row in rows}


async def list_owned_files(
    db: AsyncSession, *, user_id: str, limit: int, after: str | None, order: Order
) -> Page[StoredFile]:
    return await paginate(
        db, select(StoredFile).where(_live(user_id)), StoredFile.id, limit=limit, after=after, order=order
    )


async def soft_delete_file(db: AsyncSession, stored: StoredFile, *, at: dt.datetime) -> None:
    stored.deleted_at = at
    await db.flush()


async def is_referenced(db: AsyncSession, *, user_id: str, file_id: str) -> bool:
    """Whether a message of one of the user's live sessions names the file in its items. Ids are unique random
    strings, so finding one in the items' JSON text is finding the reference (on either database)."""
    statement = (
        select(Message.id)
        .join(ChatSession, ChatSession.id == Message.session_id)
        .where(
            ChatSession.user_id == user_id,
            ChatSession.deleted_at.is_(None),
            cast(Message.items, String).contains(file_id, autoescape=True),
        )
        .limit(1)
    )
    return (await db.scalar(statement)) is not None


async def deleted_with_upstream_copy(db: AsyncSession, *, user_id: str) -> list[StoredFile]:
    """The user's deleted files whose upstream copy is still there."""
    rows = await db.scalars(
        select(StoredFile).where(
            StoredFile.user_id == user_id,
            StoredFile.deleted_at.is_not(None),
            StoredFile.upstream_file_id.is_not(None),
            StoredFile.upstream_deleted_at.is_(None),
        )
    )
    return list(rows)


async def mark_upstream_deleted(db: AsyncSession, *, file_id: str, at: dt.datetime) -> None:
    await db.execute(update(StoredFile).where(StoredFile.id == file_id).values(upstream_deleted_at=at))


async def upstream_ids(db: AsyncSession, *, user_id: str, file_ids: Collection[str]) -> dict[str, str]:
    """Parley id → upstream id of the user's files whose upstream copy is there, deleted files included (a live
    session that names one keeps its copy)."""
    rows = await db.execute(
        select(StoredFile.id, StoredFile.upstream_file_id).where(
            StoredFile.user_id == user_id,
            StoredFile.id.in_(list(file_ids)),
            StoredFile.upstream_file_id.is_not(None),
            StoredFile.upstream_deleted_at.is_(None),
        )
    )
    return {file_id: upstream_id for file_id, upstream_id in rows if upstream_id is not None}


async def read_chunk(db: AsyncSession, *, file_id: str, offset: int, length: int) -> bytes:
    """`length` bytes of the file's data from `offset` (substr counts from 1, on both databases)."""
    chunk = await db.scalar(
        select(func.substr(StoredFile.data, offset + 1, length, type_=LargeBinary)).where(StoredFile.id == file_id)
    )
    return bytes(chunk or b"")
