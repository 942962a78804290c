"""Issuing and checking Parley API keys.

A key is 32 random bytes; only its SHA-256 is stored. A fast hash is right here (unlike passwords):
the key has 256 bits of entropy, so there is nothing to brute-force, and an indexed lookup by hash
keeps authentication to one query.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import API_KEY_SOURCE, ApiKey, User
from app.errors import NotFound
from app.repositories import user_repository as users_repo

KEY_PREFIX = "pk_"


@dataclass(frozen=True, slots=True)
class IssuedKey:
    record: ApiKey
    user: User
    secret: str  # shown once, never stored


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_api_key(credential: str) -> bool:
    return credential.startswith(KEY_PREFIX)


async def issue_key(db: AsyncSession, *, user: User, name: str | None = None) -> IssuedKey:
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    record = await users_repo.create_api_key(
        db, user_id=user.id, key_hash=hash_key(secret), prefix=secret[:10], name=name
    )
    return IssuedKey(record=record, user=user, secret=secret)


async def issue_key_for_name(db: AsyncSession, *, user_name: str, key_name: str | None = None) -> IssuedKey:
    """`parley keys create --user NAME`: the API-key user of that name, created on first use (a JWT subject
    of the same name is someone else)."""
    user = await users_repo.get_or_create_user(db, source=API_KEY_SOURCE, name=user_name)
    return await issue_key(db, user=user, name=key_name)


async def issue_key_for_user_id(db: AsyncSession, *, user_id: str, key_name: str | None) -> IssuedKey:
    user = await users_repo.get_user(db, user_id)
    if user is None:
        raise NotFound(f"No user with id '{user_id}'.", param="user_id")
    return await issue_key(db, user=user, name=key_name)
