"""/v1/admin: users and API keys, behind the admin token."""

from __future__ import annotations

from fastapi import APIRouter, status

from app.api.deps import AdminDep, DbDep, ListDep, StateDep
from app.api.routes.common import KeyId, UserId, errors, links, list_response
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
from app.services import api_keys, users

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    dependencies=[AdminDep],
    responses=errors(401, 403, 422),
)


BY_USER_ID = {"user_id": "$response.body#/id"}
USER_LINKS = links(
    SetBudget=("PUT", "/v1/admin/users/{user_id}/budget", BY_USER_ID),
    GetBudget=("GET", "/v1/admin/users/{user_id}/budget", BY_USER_ID),
    CreateKey=("POST", "/v1/admin/users/{user_id}/keys", BY_USER_ID),
    ListKeys=("GET", "/v1/admin/users/{user_id}/keys", BY_USER_ID),
)
BY_KEY_ID = {"key_id": "$response.body#/id"}
KEY_LINKS = links(
    RevokeKey=("POST", "/v1/admin/keys/{key_id}/revoke", BY_KEY_ID),
    DeleteKey=("DELETE", "/v1/admin/keys/{key_id}", BY_KEY_ID),
)


@router.post(
    "/users",
    status_code=status.HTTP_201_CREATED,
    responses={201: {"description": "The user.", "links": USER_LINKS}, **errors(400, 409, 413, 415)},
)
async def create_user(body: UserCreate, db: DbDep) -> UserRead:
    return UserRead.of(await users.create_user(db, name=body.name))


@router.get("/users")
async def list_users(db: DbDep, page: ListDep) -> ListResponse[UserRead]:
    result = await users.list_users(db, limit=page.limit, after=page.after, order=page.order or "desc")
    return list_response(result.items, result.has_more, UserRead.of, lambda u: u.id)


@router.put("/users/{user_id}/budget", responses=errors(400, 404, 413, 415))
async def set_budget(user_id: UserId, body: BudgetUpdate, db: DbDep, state: StateDep) -> BudgetRead:
    """Set a user's monthly budget; over it, new turns get 402 `budget_exceeded` before any upstream call."""
    budget = await users.set_budget(db, settings=state.settings, user_id=user_id, budget=body.monthly_budget_usd)
    return BudgetRead.of(budget)


@router.get("/users/{user_id}/budget", responses=errors(404))
async def get_budget(user_id: UserId, db: DbDep, state: StateDep) -> BudgetRead:
    return BudgetRead.of(await users.get_budget(db, settings=state.settings, user_id=user_id))


@router.post(
    "/users/{user_id}/keys",
    status_code=status.HTTP_201_CREATED,
    responses={201: {"description": "The key, shown this once.", "links": KEY_LINKS}, **errors(400, 404, 413, 415)},
)
async def create_key(user_id: UserId, body: ApiKeyCreate, db: DbDep) -> ApiKeyCreated:
    """Create an API key. The response is the only time the key itself is shown."""
    issued = await api_keys.issue_key_for_user_id(db, user_id=user_id, key_name=body.name)
    return ApiKeyCreated(**ApiKeyRead.of(issued.record).model_dump(), key=issued.secret)


@router.get("/users/{user_id}/keys", responses=errors(404))
async def list_keys(user_id: UserId, db: DbDep, page: ListDep) -> ListResponse[ApiKeyRead]:
    result = await users.list_keys(db, user_id=user_id, limit=page.limit, after=page.after, order=page.order or "desc")
    return list_response(result.items, result.has_more, ApiKeyRead.of, lambda k: k.id)


@router.post("/keys/{key_id}/revoke", responses=errors(404))
async def revoke_key(key_id: KeyId, db: DbDep, state: StateDep) -> ApiKeyRead:
    """Revoke a key at once; requests with it answer 401 from then on, on every replica (on Postgres, told
    to the others as the revoke commits; a replica that cannot hear it stops trusting its cache within
    PARLEY_AUTH_CACHE_TTL_S). Revoking twice is harmless."""
    return ApiKeyRead.of(await users.revoke_key(db, authenticator=state.authenticator, key_id=key_id))


@router.delete("/keys/{key_id}", responses=errors(404))
async def delete_key(key_id: KeyId, db: DbDep, state: StateDep) -> ApiKeyRead:
    """Same as revoke: the record stays for the audit trail."""
    return ApiKeyRead.of(await users.revoke_key(db, authenticator=state.authenticator, key_id=key_id))
