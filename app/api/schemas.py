"""Request and response bodies of the HTTP API (see ../shared/docs/api-contract.md)."""

from __future__ import annotations

import datetime as dt
import math
import re
from decimal import Decimal
from typing import Annotated, Any, Generic, Literal, TypeVar, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PlainSerializer,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError
from typing_extensions import TypeAliasType

from app.db.models import ApiKey, ChatSession, Message, User
from app.services.client_config import ClientConfig
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


# --- Responses options and tools, for a message or a session ------------------------------------------------


def _finite_numbers(value: Any) -> Any:
    """Python reads 1e400 as infinity and accepts NaN and Infinity, none of which JSON can carry on upstream."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise PydanticCustomError(
                "non_finite_number", "numbers must be finite (1e400, NaN and Infinity cannot be sent on)"
            )
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


def _no_nul(value: Any) -> Any:
    """Postgres stores no NUL in text, JSON included (the turn keeps what it sent upstream): refuse it in every
    key and string of a free-form value, as every other input string does (a 500 on Postgres otherwise)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and "\x00" in item:
            raise PydanticCustomError("nul_character", "must not contain NUL characters")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


def _json_number(value: object) -> object:
    """A JSON number only: pydantic would also take "16" or true, which the schema does not offer (16.0 is an
    integer to JSON Schema, and to pydantic's int)."""
    if isinstance(value, str | bool):
        raise PydanticCustomError("int_type", "must be an integer")
    return value


# Any JSON, as the schema says it: strings and keys without NUL, finite numbers, at any depth.
JsonValue = TypeAliasType(
    "JsonValue",
    "SafeStr | StrictInt | Annotated[StrictFloat, Field(allow_inf_nan=False)] | StrictBool"
    " | list[JsonValue] | dict[SafeStr, JsonValue] | None",
)
_ANY_JSON_OBJECT = TypeAdapter(dict[SafeStr, JsonValue])


class _AnyJsonObjectInSchema:
    """Says in the JSON Schema what a free-form object's validators enforce (which word its errors better than a
    recursive union would: "must not contain NUL characters" rather than "should be a valid string")."""

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return handler(_ANY_JSON_OBJECT.core_schema)


JsonObject = Annotated[
    dict[str, Any], AfterValidator(_finite_numbers), AfterValidator(_no_nul), _AnyJsonObjectInSchema()
]


class FunctionToolIn(StrictModel):
    """A function the client answers itself: calls to it end the stream with `turn.requires_action`."""

    type: Literal["function"]
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: Annotated[SafeStr, StringConstraints(max_length=1024)] | None = None
    parameters: JsonObject | None = Field(default=None, description="A JSON Schema object.")
    strict: StrictBool | None = None


class WebSearchToolIn(StrictModel):
    """The upstream searches the web (`web_search`)."""

    type: Literal["web_search"]
    search_context_size: Literal["low", "medium", "high"] | None = None
    user_location: JsonObject | None = None
    filters: JsonObject | None = None


class FileSearchToolIn(StrictModel):
    """The upstream searches vector stores of the OpenAI account (`file_search`)."""

    type: Literal["file_search"]
    vector_store_ids: Annotated[list[Identifier], Field(min_length=1, max_length=2)]
    max_num_results: Annotated[int, Field(ge=1, le=50), BeforeValidator(_json_number)] | None = None
    filters: JsonObject | None = None
    ranking_options: JsonObject | None = None


class CodeInterpreterToolIn(StrictModel):
    """The upstream runs Python in a container (`code_interpreter`); `auto` makes one per turn."""

    type: Literal["code_interpreter"]
    container: JsonObject | Identifier = Field(default_factory=lambda: {"type": "auto"})


class ImageGenerationToolIn(StrictModel):
    """The upstream draws images (`image_generation`)."""

    type: Literal["image_generation"]
    size: Literal["auto", "1024x1024", "1024x1536", "1536x1024"] | None = None
    quality: Literal["auto", "low", "medium", "high"] | None = None
    background: Literal["auto", "transparent", "opaque"] | None = None


BUILTIN_TOOL_TYPES = ("web_search", "file_search", "code_interpreter", "image_generation")
ToolIn = Annotated[
    FunctionToolIn | WebSearchToolIn | FileSearchToolIn | CodeInterpreterToolIn | ImageGenerationToolIn,
    Field(discriminator="type"),
]
Tools = Annotated[list[ToolIn], Field(max_length=32)]
# Names of Parley's own tools (`GET /v1/config`'s server_tools) a session may use; null: all of them.
ServerToolNames = Annotated[
    list[Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]],
    Field(max_length=128),
]
SERVER_TOOLS_DESCRIPTION = (
    "The names of Parley's own tools (`GET /v1/config`) the session's turns may use; null (the default): all "
    "of them. The prompt's own list (`PARLEY_PROMPT_TOOLS`) narrows it further."
)


class TextFormatText(StrictModel):
    type: Literal["text"]


class TextFormatJsonObject(StrictModel):
    type: Literal["json_object"]


class TextFormatJsonSchema(StrictModel):
    """Structured output: the answer is JSON that matches `schema` (with `strict`, exactly)."""

    type: Literal["json_schema"]
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    json_schema: JsonObject = Field(alias="schema", description="A JSON Schema object.")
    description: Annotated[SafeStr, StringConstraints(max_length=1024)] | None = None
    strict: StrictBool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TextOptions(StrictModel):
    format: TextFormatText | TextFormatJsonObject | TextFormatJsonSchema | None = Field(
        default=None, discriminator="type"
    )
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningOptions(StrictModel):
    effort: Literal["minimal", "low", "medium", "high"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class FunctionChoice(StrictModel):
    type: Literal["function"]
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class Options(StrictModel):
    """Responses parameters under their own names; which ones a caller may set is the deployment's choice
    (`PARLEY_ALLOWED_OPTIONS`), checked by the turn and session services."""

    text: TextOptions | None = None
    reasoning: ReasoningOptions | None = None
    max_output_tokens: Annotated[int, Field(ge=16, le=1_000_000), BeforeValidator(_json_number)] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    service_tier: Literal["auto", "default", "flex", "priority"] | None = None
    prompt_cache_key: Annotated[SafeStr, StringConstraints(min_length=1, max_length=64)] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    # Strict: a JSON number only (pydantic would also take "0.5" or true, which the schema does not offer).
    temperature: Annotated[StrictFloat, Field(ge=0, le=2, allow_inf_nan=False)] | None = None
    top_p: Annotated[StrictFloat, Field(ge=0, le=1, allow_inf_nan=False)] | None = None

    def upstream(self) -> dict[str, Any]:
        """The options that were set, as the Responses API names them."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


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
    options: Options | None = Field(default=None, description="Responses options for every turn of the session.")
    tools: Tools | None = Field(default=None, description="Tools for every turn of the session (as a message's).")
    server_tools: ServerToolNames | None = Field(default=None, description=SERVER_TOOLS_DESCRIPTION)
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
    options: Options | None = Field(default=None, description="Replaces the session's options (`{}` clears them).")
    tools: Tools | None = Field(default=None, description="Replaces the session's tools (`[]` clears them).")
    server_tools: ServerToolNames | None = Field(
        default=None, description=SERVER_TOOLS_DESCRIPTION + " Given, it replaces the session's (null: all again)."
    )


class SessionFork(StrictModel):
    message_id: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] | None = (
        Field(default=None, description="The last message to keep, on the active branch (default: all of it).")
    )
    title: Title | None = Field(default=None, description="The new session's title (default: this one's).")


class SessionRead(BaseModel):
    id: str
    object: Literal["session"] = "session"
    title: str | None
    title_source: Literal["user", "auto"] | None = Field(
        description=(
            "Who named the session: `user` (at create or PATCH; never replaced), `auto` (made by a small model "
            "after its first turn, `PARLEY_TITLE_MODEL`), or null (untitled)."
        )
    )
    metadata: dict[str, str]
    prompt: dict[str, Any] | None
    model: str | None
    options: dict[str, Any]
    tools: list[dict[str, Any]]
    server_tools: list[str] | None = Field(description=SERVER_TOOLS_DESCRIPTION)
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
            title_source=cast(Literal["user", "auto"] | None, session.title_source),
            metadata=session.metadata_ or {},
            prompt=session.prompt,
            model=session.model,
            options=session.options or {},
            tools=session.tools or [],
            server_tools=session.server_tools,
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


class Alternatives(BaseModel):
    """A message's versions: itself and the others with the same parent (edits of a user message, regenerated
    answers), in creation order."""

    index: int = Field(description="This message's place among `message_ids` (0 for the first version).")
    count: int = Field(description="How many versions there are (2 or more).")
    message_ids: list[str]


class MessageRead(BaseModel):
    id: str
    object: Literal["message"] = "message"
    session_id: str
    turn_id: str | None
    parent_id: str | None = Field(description="The message before it on its branch (null at the top).")
    alternatives: Alternatives | None = Field(
        description="Its versions, when it has others (`POST …/messages/{id}/activate` switches to one); else null."
    )
    role: Literal["system", "developer", "user", "assistant"]
    content: str = Field(description="The plain text.")
    items: list[dict[str, Any]] = Field(
        description="The Responses items that make it up, in order: a user message's input parts; an assistant "
        "message's reasoning summaries, function calls and outputs, built-in tool calls and message text with its "
        "annotations."
    )
    model: str | None = Field(description="An assistant message's model, as served.")
    status: str
    created_at: dt.datetime

    @classmethod
    def of(cls, message: Message, versions: dict[str | None, list[str]] | None = None) -> MessageRead:
        """`versions`: the ids of the children of each parent (`session_service.MessagePage`)."""
        siblings = (versions or {}).get(message.parent_id, [])
        alternatives = None
        if len(siblings) > 1 and message.id in siblings:
            alternatives = Alternatives(index=siblings.index(message.id), count=len(siblings), message_ids=siblings)
        return cls(
            id=message.id,
            session_id=message.session_id,
            turn_id=message.turn_id,
            parent_id=message.parent_id,
            alternatives=alternatives,
            role=message.role,
            content=message.content,
            items=served_items(message.items)
            if message.items is not None
            else text_items(message.role, message.content),
            model=message.model,
            status=message.status,
            created_at=message.created_at,
        )


def served_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A message's items as a client sees them: reasoning as its summary text only (its encrypted content is the
    upstream's to read, kept for branches), and none where it has no summary."""
    served = []
    for item in items:
        if item.get("type") == "reasoning":
            if not any(item.get("summary") or ()):
                continue
            item = {"type": "reasoning", "summary": item["summary"]}
        served.append(item)
    return served


def text_items(role: str, content: str) -> list[dict[str, Any]]:
    """The items of a message that has only text (imported from a Chat Completions history, or stored before
    messages had items)."""
    if role == "assistant":
        return [
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": content, "annotations": []}],
            }
        ]
    return [{"type": "input_text", "text": content}]


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


class ChoiceRead(BaseModel):
    default: str | None = Field(description="What a session gets without choosing.")
    allowed: list[str] = Field(description='What it may pick; ["*"]: anything.')


class ServerToolRead(BaseModel):
    name: str
    description: str | None


class LimitsRead(BaseModel):
    max_message_chars: int
    max_body_bytes: int
    turns_per_minute: int | None = Field(description="Turns a minute; null: no limit.")
    concurrent_turns: int | None = Field(description="Turns in flight at once; null: no limit.")
    monthly_budget_usd: MoneyStr | None = Field(description="The caller's budget in force; null: unlimited.")
    spent_this_month_usd: MoneyStr


class ClientConfigRead(BaseModel):
    object: Literal["config"] = "config"
    models: ChoiceRead
    prompts: ChoiceRead
    options: list[str] = Field(description="The Responses options a message or session may set.")
    builtin_tools: list[str] = Field(description="The upstream's built-in tool types a message or session may add.")
    server_tools: list[ServerToolRead] = Field(
        description=(
            "Parley's own tools, which it runs itself: a session may use all of them unless its prompt "
            "(`PARLEY_PROMPT_TOOLS`) or its own `server_tools` narrows them."
        )
    )
    limits: LimitsRead

    @classmethod
    def of(cls, config: ClientConfig) -> ClientConfigRead:
        return cls(
            models=ChoiceRead(**config.models),
            prompts=ChoiceRead(**config.prompts),
            options=config.options,
            builtin_tools=config.builtin_tools,
            server_tools=[ServerToolRead(**tool) for tool in config.server_tools],
            limits=LimitsRead(**config.limits),
        )
