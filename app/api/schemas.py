"""Request and response bodies of the HTTP API (see ../shared/docs/api-contract.md)."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

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


class _NoNulInSchema:
    """Says in the JSON Schema what `_reject_nul` enforces."""

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["not"] = {"pattern": "\\x00"}
        return json_schema


class _KeysByPropertyNames:
    """Pydantic writes a dict whose keys have a pattern as `patternProperties`, which lets any other key through
    with any value; the server refuses those keys, so the schema says `propertyNames` and `additionalProperties`."""

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        patterns = json_schema.pop("patternProperties", None)
        if patterns:
            ((pattern, values),) = patterns.items()
            json_schema["propertyNames"] = {**json_schema.get("propertyNames", {}), "pattern": pattern}
            json_schema["additionalProperties"] = values
        return json_schema


SafeStr = Annotated[str, AfterValidator(_reject_nul), _NoNulInSchema()]
MetadataKey = Annotated[SafeStr, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[SafeStr, StringConstraints(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA_PAIRS)]
Title = Annotated[SafeStr, StringConstraints(max_length=MAX_TITLE_CHARS)]
# Constraints before any validator: pydantic leaves a pattern that follows an AfterValidator out of the JSON
# Schema (it still enforces it), and the schema must say what the server refuses. The pattern excludes NUL.
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")]
PromptVariables = Annotated[
    dict[Identifier, Annotated[SafeStr, StringConstraints(max_length=8_000)]],
    Field(max_length=64),
    _KeysByPropertyNames(),
]
MoneyStr = Annotated[Decimal, PlainSerializer(lambda v: f"{v:.8f}", return_type=str)]
# Money in is a decimal string too (never a float): up to 9999.99999999, at most 8 decimal places.
MONEY_PATTERN = r"^[0-9]{1,4}(\.[0-9]{1,8})?$"


def _money_string(value: object) -> object:
    if not isinstance(value, str) or not re.fullmatch(MONEY_PATTERN, value):
        raise ValueError('must be a decimal string of US dollars, e.g. "25.00" (at most 9999.99999999)')
    return value


BudgetUsd = Annotated[
    Decimal,
    BeforeValidator(_money_string),
    WithJsonSchema({"type": "string", "pattern": MONEY_PATTERN, "examples": ["25.00"]}),
]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptRef(StrictModel):
    id: Identifier
    version: Identifier | None = None
    variables: PromptVariables | None = None


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
    # No blank ends, no NUL, no line break inside: the pattern says all of it (see Identifier).
    name: Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\s\x00]([^\n\x00]*[^\s\x00])?$")]


class UserRead(BaseModel):
    id: str
    object: Literal["user"] = "user"
    name: str
    source: str = Field(
        description='Where the name comes from, the namespace it is unique in: "api_key" (users of the admin API '
        'and `parley keys create`), or "jwt:<issuer>" ("jwt" when no issuer is configured) for a JWT\'s `sub`.'
    )
    monthly_budget_usd: MoneyStr | None = Field(description="None: the deployment's default budget applies.")
    created_at: dt.datetime

    @classmethod
    def of(cls, user: User) -> UserRead:
        return cls(
            id=user.id,
            name=user.name,
            source=user.source,
            monthly_budget_usd=user.monthly_budget_usd,
            created_at=user.created_at,
        )


class BudgetUpdate(StrictModel):
    monthly_budget_usd: BudgetUsd | None = Field(
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
