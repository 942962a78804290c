"""Per-user limits checked in the database before a turn starts, so they hold across processes:
turns per minute, turns in flight at once, and the monthly budget."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import User
from app.errors import PaymentRequired, RateLimited
from app.repositories import turns as turns_repo
from app.settings import Settings

WINDOW = dt.timedelta(minutes=1)


def month_of(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m")


def budget_of(user: User, settings: Settings) -> Decimal | None:
    return user.monthly_budget_usd if user.monthly_budget_usd is not None else settings.default_monthly_budget_usd


async def check_turn_allowed(db: AsyncSession, *, settings: Settings, user: User, now: dt.datetime) -> None:
    """Raise 429 or 402 before anything goes upstream. Call with the user's row locked."""
    if settings.rate_limit_concurrent_turns:
        in_flight = await turns_repo.count_in_flight_for_user(db, user_id=user.id)
        if in_flight >= settings.rate_limit_concurrent_turns:
            raise RateLimited(
                f"You have {in_flight} turns in progress, the most allowed at once; wait for one to finish.",
                code="too_many_concurrent_turns",
                headers={"Retry-After": "1"},
            )
    if settings.rate_limit_turns_per_minute:
        count, oldest = await turns_repo.count_turns_since(db, user_id=user.id, since=now - WINDOW)
        if count >= settings.rate_limit_turns_per_minute:
            wait = (oldest + WINDOW - now).total_seconds() if oldest else WINDOW.total_seconds()
            raise RateLimited(
                f"More than {settings.rate_limit_turns_per_minute} turns a minute; slow down.",
                code="rate_limited",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
    await check_turn_budget(db, settings=settings, user=user, now=now)


async def check_turn_budget(db: AsyncSession, *, settings: Settings, user: User, now: dt.datetime) -> None:
    budget = budget_of(user, settings)
    if budget is not None:
        spent = await turns_repo.monthly_spend(db, user_id=user.id, month=month_of(now))
        if spent >= budget:
            raise PaymentRequired(
                f"This month's budget of ${budget:.2f} is used up (${spent:.2f} spent).",
                code="budget_exceeded",
            )
