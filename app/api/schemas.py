"""Request and response bodies of the HTTP API (see ../shared/docs/api-contract.md)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, StringConstraints

from app.db.models import ApiKey, ChatSession, Message, User
from app.services.users import Budget

T = TypeVar("T")

MAX_METADATA_PAIRS = 16
MAX_TITLE_CHARS = 200
MAX_MESSAGE_CHARS = 32_000
MAX_IMPORTED_MESSAGES = 1_000


def _reject_nul(value: str) -> str:
    # Postgres cannot store NUL in text, and no human writes one: refuse it on every input string.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


SafeStr = Annotated[str, AfterValidator(_reject_nul)]
MetadataKey = Annotated[SafeStr, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[SafeStr, StringConstraints(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA_PAIRS)]
Title = Annotated[SafeStr, StringConstraints(max_length=MAX_TITLE_CHARS)]
Identifier = Annotated[SafeStr, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")]
MoneyStr = Annotated[Decimal, PlainSerializer(lambda v: f"{v:.8f}", return_type=str)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptRef(StrictModel):
    id: Identifier
    version: Identifier | None = None
    variables: (
        Annotated[dict[Identifier, Annotated[SafeStr, StringConstraints(max_length=8_000)]], Field(max_length=64)]
        | None
    ) = None


class ImportedMessageIn(StrictModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[SafeStr, StringConstraints(max_length=MAX_MESSAGE_CHARS)]


class SessionCreate(StrictModel):
    title: Title | None = None
    metadata: Metadata | None = None
    prompt: PromptRef | None = None
    model: Identifier | None = None
    messages: Annotated[list[ImportedMessageIn], Field(max_length=MAX_IMPORTED_MESSAGES)] | None = None

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "title": "Trip planning",
                    "metadata": {"project": "demo"},
                    "prompt": {"id": "pmpt_parley_demo", "variables": {"user_name": "Ada"}},
                }
            ]
        },
    )


class SessionUpdate(StrictModel):
    title: Title | None = None
    metadata: Metadata | None = None
    prompt: PromptRef | None = None


class SessionRead(BaseModel):
    id: str
    object: Literal["session"] = "session"
    title: str | None
    metadata: dict[str, str]
    prompt: dict[str, Any] | None
    model: str | None
    conversation_id: str
    created_at: dt.datetime
    updated_at: dt.datetime
    last_turn_at: dt.datetime | None
    turn_count: int
    total_cost_usd: MoneyStr | None

    @classmethod
    def of(cls, session: ChatSession) -> SessionRead:
        return cls(
            id=session.id,
            title=session.title,
            metadata=session.metadata_ or {},
            prompt=session.prompt,
            model=session.model,
            conversation_id=session.conversation_id,
            created_at=session.created_at,
            updated_at=session.updated_at,
            last_turn_at=session.last_turn_at,
            turn_count=session.turn_count,
            total_cost_usd=session.total_cost_usd,
        )


class SessionDeleted(BaseModel):
    id: str
    object: Literal["session.deleted"] = "session.deleted"
    deleted: Literal[True] = True


class MessageRead(BaseModel):
    id: str
    object: Literal["message"] = "message"
    session_id: str
    turn_id: str | None
    role: Literal["system", "developer", "user", "assistant"]
    content: str
    status: str
    created_at: dt.datetime

    @classmethod
    def of(cls, message: Message) -> MessageRead:
        return cls(
            id=message.id,
            session_id=message.session_id,
            turn_id=message.turn_id,
            role=message.role,
            content=message.content,
            status=message.status,
            created_at=message.created_at,
        )


class ListResponse(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    first_id: str | None
    last_id: str | None
    has_more: bool


class UserCreate(StrictModel):
    name: Annotated[SafeStr, StringConstraints(min_length=1, max_length=255, pattern=r"^\S(.*\S)?$")]


class UserRead(BaseModel):
    id: str
    object: Literal["user"] = "user"
    name: str
    monthly_budget_usd: MoneyStr | None = Field(description="None: the deployment's default budget applies.")
    created_at: dt.datetime

    @classmethod
    def of(cls, user: User) -> UserRead:
        return cls(id=user.id, name=user.name, monthly_budget_usd=user.monthly_budget_usd, created_at=user.created_at)


class BudgetUpdate(StrictModel):
    monthly_budget_usd: Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=8)] | None = Field(
        description="USD per calendar month (UTC), as a decimal string; null: the deployment's default."
    )


class BudgetRead(BaseModel):
    object: Literal["budget"] = "budget"
    user_id: str
    monthly_budget_usd: MoneyStr | None = Field(description="The budget in force; null: unlimited.")
    month: str
    spent_usd: MoneyStr

    @classmethod
    def of(cls, budget: Budget) -> BudgetRead:
        return cls(
            user_id=budget.user_id,
            monthly_budget_usd=budget.monthly_budget_usd,
            month=budget.month,
            spent_usd=budget.spent_usd,
        )


class ApiKeyCreate(StrictModel):
    name: Annotated[SafeStr, StringConstraints(max_length=255)] | None = None


class ApiKeyRead(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    user_id: str
    name: str | None
    prefix: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> ApiKeyRead:
        return cls(
            id=key.id,
            user_id=key.user_id,
            name=key.name,
            prefix=key.prefix,
            created_at=key.created_at,
            revoked_at=key.revoked_at,
        )


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="The API key itself. Shown once: Parley stores only its hash.")


class ErrorBody(BaseModel):
    type: str
    code: str
    message: str
    param: str | None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok", "ready"]
    database: str | None = None
    revision: str | None = None
