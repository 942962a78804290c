"""Users and their API keys."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db.ids import new_id
from app.db.models import ApiKey, User
from app.repositories.pagination import Order, Page, paginate


async def get_user(db: AsyncSession, user_id: str) -> User | None:
    return await db.get(User, user_id)


async def get_user_by_name(db: AsyncSession, *, source: str, name: str) -> User | None:
    """The user of this name in one namespace (`User.source`): names are unique per source only."""
    return await db.scalar(select(User).where(User.source == source, User.name == name))


async def create_user(db: AsyncSession, *, source: str, name: str) -> User:
    user = User(id=new_id("user"), source=source, name=name)
    db.add(user)
    await db.flush()
    return user


async def get_or_create_user(db: AsyncSession, *, source: str, name: str) -> User:
    """Race-safe: two first requests of one new JWT subject create exactly one user."""
    user = await get_user_by_name(db, source=source, name=name)
    if user is not None:
        return user
    try:
        async with db.begin_nested():
            return await create_user(db, source=source, name=name)
    except IntegrityError:
        existing = await get_user_by_name(db, source=source, name=name)
        if existing is None:
            raise
        return existing


async def list_users(db: AsyncSession, *, limit: int, after: str | None, order: Order) -> Page[User]:
    return await paginate(db, select(User), User.id, limit=limit, after=after, order=order)


async def create_api_key(db: AsyncSession, *, user_id: str, key_hash: str, prefix: str, name: str | None) -> ApiKey:
    key = ApiKey(id=new_id("key"), user_id=user_id, key_hash=key_hash, prefix=prefix, name=name)
    db.add(key)
    await db.flush()
    return key


@dataclass(frozen=True, slots=True)
class KeyOwner:
    user_id: str
    name: str
    key_id: str
    key_hash: str


_KEY_OWNER_COLUMNS = (User.id, User.name, ApiKey.id, ApiKey.key_hash)
# Every request with an API key not in the authentication cache runs it, before anything else.
KEY_OWNER = (
    select(*_KEY_OWNER_COLUMNS)
    .join(ApiKey, ApiKey.user_id == User.id)
    .where(ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None))
)
# A stream token names the key it was made with by id.
KEY_OWNER_BY_ID = (
    select(*_KEY_OWNER_COLUMNS)
    .join(ApiKey, ApiKey.user_id == User.id)
    .where(ApiKey.id == bindparam("key_id"), ApiKey.revoked_at.is_(None))
)


async def find_key_owner(engine: AsyncEngine, key_hash: str) -> KeyOwner | None:
    """Who holds the unrevoked API key with this hash, on a pooled connection (no ORM session or loaded
    `User`: it runs before every request whose key is not in the authentication cache)."""
    async with engine.connect() as connection:
        found = (await connection.execute(KEY_OWNER, {"key_hash": key_hash})).first()
    return None if found is None else KeyOwner(found[0], found[1], found[2], found[3])


async def find_key_owner_by_id(engine: AsyncEngine, key_id: str) -> KeyOwner | None:
    """As `find_key_owner`, for the unrevoked key with this id."""
    async with engine.connect() as connection:
        found = (await connection.execute(KEY_OWNER_BY_ID, {"key_id": key_id})).first()
    return None if found is None else KeyOwner(found[0], found[1], found[2], found[3])


async def list_api_keys(db: AsyncSession, *, user_id: str, limit: int, after: str | None, order: Order) -> Page[ApiKey]:
    statement = select(ApiKey).where(ApiKey.user_id == user_id)
    return await paginate(db, statement, ApiKey.id, limit=limit, after=after, order=order)


async def all_api_keys(db: AsyncSession, *, user_id: str) -> Sequence[ApiKey]:
    """Every key of the user, oldest first (ids are time-ordered)."""
    return (await db.scalars(select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.id))).all()


async def revoked_key_hashes_since(engine: AsyncEngine, since: dt.datetime) -> list[tuple[str, dt.datetime]]:
    """(hash, when) of the keys revoked at or after `since`."""
    statement = select(ApiKey.key_hash, ApiKey.revoked_at).where(ApiKey.revoked_at >= since)
    async with engine.connect() as connection:
        return [(key_hash, at) for key_hash, at in (await connection.execute(statement)).all() if at is not None]


async def revoke_api_key(db: AsyncSession, *, key_id: str, at: dt.datetime) -> ApiKey | None:
    await db.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=at))
    return await db.get(ApiKey, key_id, populate_existing=True)


# Postgres delivers a notification on this channel to every listening replica when the revoke commits.
KEY_REVOKED_CHANNEL = "parley_key_revoked"


async def announce_revoked(db: AsyncSession, key_hash: str) -> None:
    """Tell every listening replica of a revoked key, when this transaction commits (Postgres only: SQLite has
    one process, the embedded default)."""
    if db.get_bind().dialect.name == "postgresql":
        await db.execute(select(func.pg_notify(KEY_REVOKED_CHANNEL, key_hash)))


async def lock_user(db: AsyncSession, user_id: str) -> User | None:
    """The user's row, locked for this transaction: serialises one user's turn starts across processes,
    so limits and budgets are checked against a count nobody else is changing. NO KEY UPDATE, as a counted
    start takes it: a final write adding to the user's monthly spend (a row that references the user) need not
    wait for it."""
    user: User | None = await db.scalar(select(User).where(User.id == user_id).with_for_update(key_share=True))
    return user


async def set_monthly_budget(db: AsyncSession, *, user_id: str, budget: Decimal | None) -> User | None:
    user = await db.get(User, user_id)
    if user is None:
        return None
    user.monthly_budget_usd = budget
    await db.flush()
    return user
