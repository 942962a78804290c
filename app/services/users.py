"""Users, their API keys and budgets, as the admin API manages them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.models import API_KEY_SOURCE, ApiKey, User
from app.errors import Conflict, NotFound
from app.repositories import turn_repository as turns_repo
from app.repositories import user_repository as users_repo
from app.repositories.pagination import Order, Page
from app.services.auth import Authenticator
from app.services.limits import budget_of, month_of
from app.settings import Settings


@dataclass(frozen=True, slots=True)
class Budget:
    """A user's monthly budget in force (None: unlimited) and what they spent this month."""

    user_id: str
    monthly_budget_usd: Decimal | None
    month: str
    spent_usd: Decimal


def _user_not_found(user_id: str) -> NotFound:
    return NotFound(f"No user with id '{user_id}'.", param="user_id")


async def create_user(db: AsyncSession, *, name: str) -> User:
    """An API-key user: the name is unique among them (a JWT subject of the same name is someone else)."""
    if await users_repo.get_user_by_name(db, source=API_KEY_SOURCE, name=name) is not None:
        raise Conflict(f"A user named '{name}' already exists.", code="user_exists", param="name")
    return await users_repo.create_user(db, source=API_KEY_SOURCE, name=name)


async def list_users(db: AsyncSession, *, limit: int, after: str | None, order: Order) -> Page[User]:
    return await users_repo.list_users(db, limit=limit, after=after, order=order)


async def get_budget(db: AsyncSession, *, settings: Settings, user_id: str) -> Budget:
    user = await users_repo.get_user(db, user_id)
    if user is None:
        raise _user_not_found(user_id)
    return await _budget(db, settings, user, now=utcnow())


async def set_budget(db: AsyncSession, *, settings: Settings, user_id: str, budget: Decimal | None) -> Budget:
    """Over it, new turns get 402 `budget_exceeded` before any upstream call."""
    user = await users_repo.set_monthly_budget(db, user_id=user_id, budget=budget)
    if user is None:
        raise _user_not_found(user_id)
    return await _budget(db, settings, user, now=utcnow())


async def _budget(db: AsyncSession, settings: Settings, user: User, *, now: dt.datetime) -> Budget:
    month = month_of(now)
    return Budget(
        user_id=user.id,
        monthly_budget_usd=budget_of(user.monthly_budget_usd, settings),
        month=month,
        spent_usd=await turns_repo.monthly_spend(db, user_id=user.id, month=month),
    )


async def list_keys(db: AsyncSession, *, user_id: str, limit: int, after: str | None, order: Order) -> Page[ApiKey]:
    if await users_repo.get_user(db, user_id) is None:
        raise _user_not_found(user_id)
    return await users_repo.list_api_keys(db, user_id=user_id, limit=limit, after=after, order=order)


async def keys_of_user_named(db: AsyncSession, *, name: str) -> tuple[User, Sequence[ApiKey]]:
    """`parley keys list --user NAME`: the API-key user of that name and every key of theirs, revoked ones too."""
    user = await users_repo.get_user_by_name(db, source=API_KEY_SOURCE, name=name)
    if user is None:
        raise NotFound(f"No user named '{name}' has API keys.", code="user_not_found", param="user")
    return user, await users_repo.all_api_keys(db, user_id=user.id)


async def revoke_key(db: AsyncSession, *, authenticator: Authenticator | None, key_id: str) -> ApiKey:
    """Requests with the key answer 401 from now on, and the streams it opened end, on every replica: on Postgres
    every replica is told as the revoke commits; on SQLite the server notices within a second or two (a revoke
    made in another process, such as `parley keys revoke`); one that hears of neither stops trusting its cache
    within PARLEY_AUTH_CACHE_TTL_S. `authenticator`: this process's, which forgets the key at once (None: a
    process that serves nothing). Revoking twice is harmless."""
    key = await users_repo.revoke_api_key(db, key_id=key_id, at=utcnow())
    if key is None:
        raise NotFound(f"No API key with id '{key_id}'.", param="key_id")
    await users_repo.announce_revoked(db, key.key_hash)
    if authenticator is not None:
        authenticator.forget_key(key.key_hash)
    return key
