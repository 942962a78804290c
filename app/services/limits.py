"""Per-user limits checked in the database before a turn starts, so they hold across processes:
turns per minute, turns in flight at once, and the monthly budget."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import PaymentRequired, RateLimited
from app.repositories import turn_repository as turns_repo
from app.repositories import user_repository as users_repo
from app.settings import Settings

WINDOW = dt.timedelta(minutes=1)


def month_of(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m")


def budget_of(user_budget: Decimal | None, settings: Settings) -> Decimal | None:
    return user_budget if user_budget is not None else settings.default_monthly_budget_usd


def limits_apply(settings: Settings) -> bool:
    """Whether every turn start counts something (and so must lock its user's row first). A budget set on
    one user only is found once the row is read; `check_turn_allowed` locks it then."""
    return bool(
        settings.rate_limit_concurrent_turns
        or settings.rate_limit_turns_per_minute
        or settings.default_monthly_budget_usd is not None
    )


async def check_turn_allowed(
    db: AsyncSession, *, settings: Settings, user_id: str, user_budget: Decimal | None, now: dt.datetime
) -> None:
    """Raise 429 or 402 before anything goes upstream. The counts come from one query, made after the user's
    row is locked (by the caller when `limits_apply`, here otherwise), so that concurrent turn starts of one
    user, on any replica, are counted one after the other: under READ COMMITTED the count's snapshot is taken
    after the lock, and includes what the lock's previous holder committed."""
    budget = budget_of(user_budget, settings)
    if not limits_apply(settings):
        if budget is None:
            return
        await users_repo.lock_user(db, user_id)
    counts = await turns_repo.limit_counts(db, user_id=user_id, since=now - WINDOW, month=month_of(now))
    error = limit_error(counts, settings=settings, budget=budget, now=now)
    if error is not None:
        raise error


def limit_error(
    counts: turns_repo.LimitCounts, *, settings: Settings, budget: Decimal | None, now: dt.datetime
) -> RateLimited | PaymentRequired | None:
    """The error for the first limit `counts` reach, if any: the one definition of the limit rule."""
    if settings.rate_limit_concurrent_turns and counts.in_flight >= settings.rate_limit_concurrent_turns:
        return RateLimited(
            f"You have {counts.in_flight} turns in progress, the most allowed at once; wait for one to finish.",
            code="too_many_concurrent_turns",
            headers={"Retry-After": "1"},
        )
    if settings.rate_limit_turns_per_minute and counts.recent >= settings.rate_limit_turns_per_minute:
        oldest = counts.oldest_recent
        wait = (oldest + WINDOW - now).total_seconds() if oldest else WINDOW.total_seconds()
        return RateLimited(
            f"More than {settings.rate_limit_turns_per_minute} turns a minute; slow down.",
            code="rate_limited",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return _spend_error(budget, counts.month_spend)


async def check_turn_budget(
    db: AsyncSession, *, settings: Settings, user_id: str, user_budget: Decimal | None, now: dt.datetime
) -> None:
    """The budget alone (a turn going on after tool outputs). Call with the user's row locked."""
    budget = budget_of(user_budget, settings)
    if budget is not None:
        error = _spend_error(budget, await turns_repo.monthly_spend(db, user_id=user_id, month=month_of(now)))
        if error is not None:
            raise error


def _spend_error(budget: Decimal | None, spent: Decimal) -> PaymentRequired | None:
    if budget is None or spent < budget:
        return None
    return PaymentRequired(
        f"This month's budget of ${budget:.2f} is used up (${spent:.2f} spent).", code="budget_exceeded"
    )
