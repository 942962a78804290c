"""Aggregates over the cost ledger for usage reports."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ColumnElement, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import UsageRecord

GROUP_COLUMNS = ("day", "model", "session", "prompt", "user", "kind")


def _day(dialect: str) -> ColumnElement[Any]:
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", UsageRecord.created_at), "YYYY-MM-DD")
    # SQLite keeps UTC timestamps as "YYYY-MM-DD HH:MM:SS…" text.
    return func.substr(UsageRecord.created_at, 1, 10)


def _keys(group_by: str | None, dialect: str) -> list[ColumnElement[Any]]:
    if group_by == "day":
        return [_day(dialect).label("day")]
    if group_by == "model":
        return [UsageRecord.model.label("model")]
    if group_by == "session":
        return [UsageRecord.session_id.label("session_id")]
    if group_by == "prompt":
        return [UsageRecord.prompt_id.label("prompt_id"), UsageRecord.prompt_version.label("prompt_version")]
    if group_by == "user":
        return [UsageRecord.user_id.label("user_id")]
    if group_by == "kind":
        return [UsageRecord.kind.label("kind")]
    return []


async def aggregate(
    db: AsyncSession,
    *,
    start: dt.datetime,
    end: dt.datetime,
    user_id: str | None,
    group_by: str | None,
) -> list[dict[str, Any]]:
    """One row per group (or a single totals row when `group_by` is None). `user_id=None` means all users."""
    dialect = db.get_bind().dialect.name
    keys = _keys(group_by, dialect)
    measures = [
        func.count(UsageRecord.id).label("requests"),
        func.coalesce(func.sum(UsageRecord.input_tokens), literal(0)).label("input_tokens"),
        func.coalesce(func.sum(UsageRecord.cached_input_tokens), literal(0)).label("cached_input_tokens"),
        func.coalesce(func.sum(UsageRecord.output_tokens), literal(0)).label("output_tokens"),
        func.coalesce(func.sum(UsageRecord.reasoning_tokens), literal(0)).label("reasoning_tokens"),
        func.sum(UsageRecord.cost_usd).label("cost_usd"),
        func.count(UsageRecord.id).filter(UsageRecord.cost_usd.is_(None)).label("unpriced_requests"),
    ]
    statement = select(*keys, *measures).where(UsageRecord.created_at >= start, UsageRecord.created_at < end)
    if user_id is not None:
        statement = statement.where(UsageRecord.user_id == user_id)
    if keys:
        statement = statement.group_by(*keys).order_by(*keys)
    return [dict(row) for row in (await db.execute(statement)).mappings().all()]
