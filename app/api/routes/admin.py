"""/v1/admin: users and API keys, behind the admin token."""

from __future__ import annotations

from fastapi import APIRouter, status
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.deps import AdminDep, DbDep, ListDep, StateDep
from app.api.routes.common import KeyId, UserId, errors, list_response
from app.api.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    BudgetRead,
    BudgetUpdate,
    ListResponse,
    UserCreate,
    UserRead,
)
from app.db.base import utcnow
from app.db.models import User
from app.errors import Conflict, NotFound
from app.repositories import turns as turns_repo
from app.repositories import users as users_repo
from app.services import api_keys
from app.services.limits import budget_of, month_of
from app.services.revocations import announce_revoked
from app.state import AppState

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    dependencies=[AdminDep],
    responses=errors(401, 403, 422),
)


@router.post("/users", status_code=status.HTTP_201_CREATED, responses=errors(400, 409, 413, 415))
async def create_user(body: UserCreate, db: DbDep) -> UserRead:
    if await users_repo.get_user_by_name(db, body.name) is not None:
        raise Conflict(f"A user named '{body.name}' already exists.", code="user_exists", param="name")
    return UserRead.of(await users_repo.create_user(db, name=body.name))


@router.get("/users")
async def list_users(db: DbDep, page: ListDep) -> ListResponse[UserRead]:
    result = await users_repo.list_users(db, limit=page.limit, after=page.after, order=page.order or "desc")
    return list_response(result.items, result.has_more, UserRead.of, lambda u: u.id)


@router.put("/users/{user_id}/budget", responses=errors(400, 404, 413, 415))
async def set_budget(user_id: UserId, body: BudgetUpdate, db: DbDep, state: StateDep) -> BudgetRead:
    """Set a user's monthly budget; over it, new turns get 402 `budget_exceeded` before any upstream call."""
    user = await users_repo.set_monthly_budget(db, user_id=user_id, budget=body.monthly_budget_usd)
    if user is None:
        raise NotFound(f"No user with id '{user_id}'.", param="user_id")
    return await _budget(db, state, user)


@router.get("/users/{user_id}/budget", responses=errors(404))
async def get_budget(user_id: UserId, db: DbDep, state: StateDep) -> BudgetRead:
    user = await users_repo.get_user(db, user_id)
    if user is None:
        raise NotFound(f"No user with id '{user_id}'.", param="user_id")
    return await _budget(db, state, user)


async def _budget(db: AsyncSession, state: AppState, user: User) -> BudgetRead:
    month = month_of(utcnow())
    return BudgetRead(
        user_id=user.id,
        monthly_budget_usd=budget_of(user.monthly_budget_usd, state.settings),
        month=month,
        spent_usd=await turns_repo.monthly_spend(db, user_id=user.id, month=month),
    )


@router.post("/users/{user_id}/keys", status_code=status.HTTP_201_CREATED, responses=errors(400, 404, 413, 415))
async def create_key(user_id: UserId, body: ApiKeyCreate, db: DbDep) -> ApiKeyCreated:
    """Create an API key. The response is the only time the key itself is shown."""
    issued = await api_keys.issue_key_for_user_id(db, user_id=user_id, key_name=body.name)
    return ApiKeyCreated(**ApiKeyRead.of(issued.record).model_dump(), key=issued.secret)


@router.get("/users/{user_id}/keys", responses=errors(404))
async def list_keys(user_id: UserId, db: DbDep, page: ListDep) -> ListResponse[ApiKeyRead]:
    if await users_repo.get_user(db, user_id) is None:
        raise NotFound(f"No user with id '{user_id}'.", param="user_id")
    result = await users_repo.list_api_keys(
        db, user_id=user_id, limit=page.limit, after=page.after, order=page.order or "desc"
    )
    return list_response(result.items, result.has_more, ApiKeyRead.of, lambda k: k.id)


@router.post("/keys/{key_id}/revoke", responses=errors(404))
async def revoke_key(key_id: KeyId, db: DbDep, state: StateDep) -> ApiKeyRead:
    """Revoke a key at once; requests with it answer 401 from then on, on every replica (on Postgres, told
    to the others as the revoke commits; a replica that cannot hear it stops trusting its cache within
    PARLEY_AUTH_CACHE_TTL_S). Revoking twice is harmless."""
    key = await users_repo.revoke_api_key(db, key_id=key_id, at=utcnow())
    if key is None:
        raise NotFound(f"No API key with id '{key_id}'.", param="key_id")
    await announce_revoked(db, key.key_hash)
    state.authenticator.forget_key(key.key_hash)
    return ApiKeyRead.of(key)


@router.delete("/keys/{key_id}", responses=errors(404))
async def delete_key(key_id: KeyId, db: DbDep, state: StateDep) -> ApiKeyRead:
    """Same as revoke: the record stays for the audit trail."""
    return await revoke_key(key_id, db, state)
