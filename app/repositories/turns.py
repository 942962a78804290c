"""Turns, their ledger rows, and the runners' heartbeats."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import (
    TURN_IN_FLIGHT_STATUSES,
    TURN_OPEN_STATUSES,
    ChatSession,
    RunnerHeartbeat,
    Turn,
    UsageRecord,
    UserMonthlySpend,
)
from app.repositories.pagination import Order, Page, paginate


async def get_owned_turn(db: AsyncSession, *, user_id: str, session_id: str, turn_id: str) -> Turn | None:
    statement = (
        select(Turn)
        .join(ChatSession, ChatSession.id == Turn.session_id)
        .where(
            Turn.id == turn_id,
            Turn.session_id == session_id,
            Turn.user_id == user_id,
            ChatSession.deleted_at.is_(None),
        )
    )
    turn: Turn | None = await db.scalar(statement)
    return turn


async def get_turn(db: AsyncSession, turn_id: str) -> Turn | None:
    return await db.get(Turn, turn_id, populate_existing=True)


async def list_turns(db: AsyncSession, *, session_id: str, limit: int, after: str | None, order: Order) -> Page[Turn]:
    return await paginate(
        db, select(Turn).where(Turn.session_id == session_id), Turn.id, limit=limit, after=after, order=order
    )


async def find_by_idempotency_key(db: AsyncSession, *, user_id: str, key: str) -> Turn | None:
    turn: Turn | None = await db.scalar(select(Turn).where(Turn.user_id == user_id, Turn.idempotency_key == key))
    return turn


async def find_open(db: AsyncSession, *, session_id: str) -> Turn | None:
    """The session's turn that is running or waiting for tool outputs, if any."""
    statement = select(Turn).where(Turn.session_id == session_id, Turn.status.in_(TURN_OPEN_STATUSES))
    turn: Turn | None = await db.scalar(statement)
    return turn


async def resume_waiting_turn(db: AsyncSession, *, turn_id: str, runner_id: str) -> bool:
    result = await db.execute(
        update(Turn)
        .where(Turn.id == turn_id, Turn.status == "requires_action")
        .values(
            status="in_progress",
            runner_id=runner_id,
            required_action=None,
            pending_tool_outputs=None,
            cancel_requested_at=None,
        )
    )
    return bool(getattr(result, "rowcount", 0))


async def cancel_waiting_turn(db: AsyncSession, *, turn_id: str, at: dt.datetime) -> bool:
    result = await db.execute(
        update(Turn)
        .where(Turn.id == turn_id, Turn.status == "requires_action")
        .values(status="cancelled", required_action=None, pending_tool_outputs=None, completed_at=at)
    )
    return bool(getattr(result, "rowcount", 0))


async def add_turn(db: AsyncSession, turn: Turn) -> None:
    db.add(turn)
    await db.flush()


async def set_response_ids(db: AsyncSession, *, turn_id: str, response_ids: list[str]) -> None:
    await db.execute(
        update(Turn)
        .where(Turn.id == turn_id, Turn.status.in_(TURN_IN_FLIGHT_STATUSES))
        .values(response_ids=response_ids)
    )


async def request_cancel(db: AsyncSession, *, turn_id: str, at: dt.datetime) -> None:
    await db.execute(
        update(Turn)
        .where(Turn.id == turn_id, Turn.status.in_(TURN_IN_FLIGHT_STATUSES), Turn.cancel_requested_at.is_(None))
        .values(cancel_requested_at=at)
    )


async def cancel_requested_among(db: AsyncSession, turn_ids: Sequence[str]) -> list[str]:
    if not turn_ids:
        return []
    statement = select(Turn.id).where(Turn.id.in_(turn_ids), Turn.cancel_requested_at.is_not(None))
    return list((await db.scalars(statement)).all())


async def finish_turn_row(db: AsyncSession, *, turn_id: str, values: dict[str, Any]) -> bool:
    """Write the final state once: only a turn still in flight is finished (a second finisher loses)."""
    result = await db.execute(
        update(Turn).where(Turn.id == turn_id, Turn.status.in_(TURN_IN_FLIGHT_STATUSES)).values(**values)
    )
    return bool(getattr(result, "rowcount", 0))


async def insert_usage_records(db: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """One ledger row per upstream response; a row that already exists is left alone, never doubled."""
    if not rows:
        return
    insert = pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(UsageRecord).values(list(rows)).on_conflict_do_nothing(index_elements=["response_id"])
    await db.execute(statement)


async def claim_orphaned_turns(
    db: AsyncSession, *, runner_id: str, stale_before: dt.datetime, limit: int = 100
) -> list[Turn]:
    """Turns in flight whose runner stopped beating; claimed for this runner so only one replica
    reconciles each."""
    live = select(RunnerHeartbeat.id).where(RunnerHeartbeat.beat_at >= stale_before)
    candidates = (
        await db.scalars(
            select(Turn)
            .where(
                Turn.status.in_(TURN_IN_FLIGHT_STATUSES),
                (Turn.runner_id.is_(None)) | (Turn.runner_id.not_in(live)),
                Turn.runner_id.is_distinct_from(runner_id),
            )
            .limit(limit)
        )
    ).all()
    claimed: list[Turn] = []
    for turn in candidates:
        result = await db.execute(
            update(Turn)
            .where(
                Turn.id == turn.id,
                Turn.runner_id.is_not_distinct_from(turn.runner_id),
                Turn.status.in_(TURN_IN_FLIGHT_STATUSES),
            )
            .values(runner_id=runner_id)
        )
        if getattr(result, "rowcount", 0):
            turn.runner_id = runner_id
            claimed.append(turn)
    return claimed


async def beat(db: AsyncSession, *, runner_id: str, at: dt.datetime) -> None:
    result = await db.execute(update(RunnerHeartbeat).where(RunnerHeartbeat.id == runner_id).values(beat_at=at))
    if not getattr(result, "rowcount", 0):
        db.add(RunnerHeartbeat(id=runner_id, started_at=at, beat_at=at))
        await db.flush()


async def remove_heartbeat(db: AsyncSession, *, runner_id: str) -> None:
    await db.execute(delete(RunnerHeartbeat).where(RunnerHeartbeat.id == runner_id))


async def add_session_cost(db: AsyncSession, *, session_id: str, cost: Decimal | None, at: dt.datetime) -> None:
    values: dict[str, Any] = {"last_turn_at": at}
    if cost is not None:
        if db.get_bind().dialect.name == "sqlite":
            # Money is decimal text on SQLite, where `+` would go through float; the transaction holds
            # SQLite's write lock (BEGIN IMMEDIATE), so read-modify-write is safe there.
            current = await db.scalar(select(ChatSession.total_cost_usd).where(ChatSession.id == session_id))
            values["total_cost_usd"] = (current or Decimal(0)) + cost
        else:
            values["total_cost_usd"] = ChatSession.total_cost_usd + cost
    await db.execute(update(ChatSession).where(ChatSession.id == session_id).values(**values))


async def add_monthly_spend(db: AsyncSession, *, user_id: str, month: str, cost: Decimal, at: dt.datetime) -> None:
    """Add to a user's spend for one month (a row per user and month, created on first spend)."""
    existing = await db.get(UserMonthlySpend, (user_id, month), with_for_update=True)
    if existing is None:
        db.add(UserMonthlySpend(user_id=user_id, month=month, cost_usd=cost, updated_at=at))
        await db.flush()
        return
    if db.get_bind().dialect.name == "sqlite":
        existing.cost_usd = existing.cost_usd + cost
    else:
        existing.cost_usd = UserMonthlySpend.cost_usd + cost
    existing.updated_at = at
    await db.flush()


async def monthly_spend(db: AsyncSession, *, user_id: str, month: str) -> Decimal:
    spend = await db.scalar(
        select(UserMonthlySpend.cost_usd).where(UserMonthlySpend.user_id == user_id, UserMonthlySpend.month == month)
    )
    return spend if spend is not None else Decimal(0)


async def count_turns_since(db: AsyncSession, *, user_id: str, since: dt.datetime) -> tuple[int, dt.datetime | None]:
    """How many turns the user started since `since`, and when the oldest of them started."""
    row = (
        await db.execute(
            select(func.count(Turn.id), func.min(Turn.created_at)).where(
                Turn.user_id == user_id, Turn.created_at >= since
            )
        )
    ).one()
    oldest = row[1]
    if isinstance(oldest, str):  # SQLite hands MIN() back untyped
        oldest = dt.datetime.fromisoformat(oldest)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=dt.UTC)
    return int(row[0]), oldest


async def count_in_flight_for_user(db: AsyncSession, *, user_id: str) -> int:
    count = await db.scalar(
        select(func.count(Turn.id)).where(Turn.user_id == user_id, Turn.status.in_(TURN_IN_FLIGHT_STATUSES))
    )
    return int(count or 0)
