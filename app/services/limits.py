"""Per-user limits checked in the database before a turn starts, so they hold across processes:
turns per minute, turns in flight at once, and the monthly budget (with what turns in flight hold of it)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Awaitable, Callable
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
    db: AsyncSession,
    *,
    settings: Settings,
    user_id: str,
    user_budget: Decimal | None,
    now: dt.datetime,
    reservation: Callable[[], Awaitable[Decimal]],
) -> Decimal | None:
    """Raise 429 or 402 before anything goes upstream; return what the turn reserves of the budget (None: no
    budget applies). The counts come from one query, made after the user's row is locked (by the caller when
    `limits_apply`, here otherwise), so that concurrent turn starts of one user, on any replica, are counted one
    after the other: under READ COMMITTED the count's snapshot is taken after the lock, and includes what the
    lock's previous holder committed (its turn, and what that turn reserved). `reservation` is asked only under a
    budget."""
    budget = budget_of(user_budget, settings)
    if not limits_apply(settings):
        if budget is None:
            return None
        await users_repo.lock_user(db, user_id)
    counts = await turns_repo.limit_counts(db, user_id=user_id, since=now - WINDOW, month=month_of(now))
    needs = await reservation() if budget is not None else None
    error = limit_error(counts, settings=settings, budget=budget, now=now, needs=needs)
    if error is not None:
        raise error
    return needs


def limit_error(
    counts: turns_repo.LimitCounts,
    *,
    settings: Settings,
    budget: Decimal | None,
    now: dt.datetime,
    needs: Decimal | None = None,
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
    return budget_error(
        budget, spent=counts.month_spend, held=counts.reserved, needs=needs or Decimal(0), what="this message"
    )


async def check_round_budget(
    db: AsyncSession,
    *,
    settings: Settings,
    user_id: str,
    user_budget: Decimal | None,
    now: dt.datetime,
    reservation: Callable[[], Awaitable[Decimal]],
    held_by_this_turn: Decimal = Decimal(0),
    what: str,
) -> Decimal | None:
    """The budget alone, for a later round of a turn that has started (after tool outputs): raise 402 when the
    round's reservation does not fit beside what the user's other turns hold; else return it (None: no budget).
    Call with the user's row locked. `held_by_this_turn` is what the turn itself holds now (the round replaces
    it)."""
    budget = budget_of(user_budget, settings)
    if budget is None:
        return None
    counts = await turns_repo.limit_counts(db, user_id=user_id, since=now - WINDOW, month=month_of(now))
    needs = await reservation()
    error = budget_error(
        budget, spent=counts.month_spend, held=counts.reserved - held_by_this_turn, needs=needs, what=what
    )
    if error is not None:
        raise error
    return needs


def budget_error(
    budget: Decimal | None, *, spent: Decimal, held: Decimal, needs: Decimal, what: str
) -> PaymentRequired | None:
    """The budget rule: a round goes upstream only when what was spent this month, what the user's turns in
    flight hold, and what the round may cost at most (`needs`) fit in the budget together. With nothing left,
    nothing goes (not even a round of a model with no known price, which reserves nothing)."""
    if budget is None:
        return None
    left = budget - spent - held
    if left > 0 and needs <= left:
        return None
    held_note = f", {usd(held)} held by turns in progress" if held > 0 else ""
    if left <= 0:
        return PaymentRequired(
            f"This month's budget of {usd(budget)} is used up ({usd(spent)} spent{held_note}).",
            code="budget_exceeded",
        )
    return PaymentRequired(
        f"{usd(left)} of this month's {usd(budget)} budget is left ({usd(spent)} spent{held_note}); "
        f"{what} needs up to {usd(needs)}.",
        code="budget_exceeded",
    )


def usd(amount: Decimal) -> str:
    """An exact amount in dollars, with cents at least: $5.00, $0.0001, $0.00802600 -> $0.008026."""
    whole, _, fraction = format(amount.normalize(), "f").partition(".")
    return f"${whole}.{fraction.ljust(2, '0')}"
