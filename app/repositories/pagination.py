"""Cursor pagination over time-ordered ids (see app/db/ids.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

T = TypeVar("T")
Order = Literal["asc", "desc"]


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: Sequence[T]
    has_more: bool


async def paginate(
    db: AsyncSession,
    statement: Select[T],
    id_column: InstrumentedAttribute[str],
    *,
    limit: int,
    after: str | None,
    order: Order,
) -> Page[T]:
    if after is not None:
        statement = statement.where(id_column > after if order == "asc" else id_column < after)
    ordering: Any = id_column.asc() if order == "asc" else id_column.desc()
    rows = (await db.scalars(statement.order_by(ordering).limit(limit + 1))).all()
    return Page(items=rows[:limit], has_more=len(rows) > limit)
