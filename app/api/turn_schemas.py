"""Bodies of the turn routes: sending a message, and the Turn object."""

from __future__ import annotations

import datetime as dt
import ipaddress
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from app.api.schemas import Identifier, Metadata, PromptRef, SafeStr, StrictModel

MAX_PART_CHARS = 32_000


def _public_https_url(value: str) -> str:
    """URLs the upstream will fetch: https to a public host only (no internal targets through OpenAI)."""
    if value.startswith("data:"):
        return value
    parts = urlsplit(value)
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" or not host:
        raise ValueError("must be an https:// URL or a data: URL")
    if host == "localhost" or host.endswith((".localhost", ".internal", ".local")):
        raise ValueError("must point at a public host")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return value
    if not address.is_global:
        raise ValueError("must point at a public host")
    return value


PublicUrl = Annotated[SafeStr, StringConstraints(max_length=20_000_000), AfterValidator(_public_https_url)]


class InputText(StrictModel):
    type: Literal["input_text"]
    text: Annotated[SafeStr, StringConstraints(min_length=1, max_length=MAX_PART_CHARS)]


class InputImage(StrictModel):
    type: Literal["input_image"]
    image_url: PublicUrl | None = None
    file_id: Identifier | None = None
    detail: Literal["low", "high", "auto", "original"] = "auto"


class InputFile(StrictModel):
    type: Literal["input_file"]
    file_id: Identifier | None = None
    file_url: PublicUrl | None = None
    file_data: Annotated[SafeStr, StringConstraints(max_length=20_000_000)] | None = None
    filename: Annotated[SafeStr, StringConstraints(max_length=255)] | None = None


ContentPart = Annotated[InputText | InputImage | InputFile, Field(discriminator="type")]


class InputMessage(StrictModel):
    """A Responses input message from the user (the only role a client speaks in)."""

    type: Literal["message"] = "message"
    role: Literal["user"]
    content: (
        Annotated[SafeStr, StringConstraints(min_length=1)]
        | Annotated[list[ContentPart], Field(min_length=1, max_length=32)]
    )


class FunctionToolIn(StrictModel):
    """A function the client answers itself: calls to it end the stream with `turn.requires_action`."""

    type: Literal["function"]
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: Annotated[SafeStr, StringConstraints(max_length=1024)] | None = None
    parameters: dict[str, Any] | None = Field(default=None, description="A JSON Schema object.")
    strict: bool | None = None


class MessageCreate(StrictModel):
    input: (
        Annotated[SafeStr, StringConstraints(min_length=1)]
        | Annotated[list[InputMessage], Field(min_length=1, max_length=64)]
    ) = Field(description="The user's message: text, or Responses input items (role `user`).")
    prompt_variables: (
        Annotated[dict[Identifier, Annotated[SafeStr, StringConstraints(max_length=8_000)]], Field(max_length=64)]
        | None
    ) = None
    prompt: PromptRef | None = None
    model: Identifier | None = None
    metadata: Metadata | None = None
    tools: Annotated[list[FunctionToolIn], Field(max_length=32)] | None = Field(
        default=None, description="Function tools the client runs (Responses' flat function tool shape)."
    )
    stream: bool = True

    model_config = {
        "extra": "forbid",
        "json_schema_extra": {
            "examples": [
                {"input": "What should I pack for Lisbon in May?"},
                {"input": "Summarise our chat.", "prompt_variables": {"user_name": "Ada"}, "stream": False},
            ]
        },
    }

    def input_payload(self) -> str | list[dict[str, Any]]:
        if isinstance(self.input, str):
            return self.input
        return [item.model_dump(exclude_none=True) for item in self.input]


class Usage(BaseModel):
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    total_tokens: int


class ToolCall(BaseModel):
    call_id: str
    name: str
    arguments: str = Field(description="A JSON string, as the model wrote it.")


class RequiredAction(BaseModel):
    type: Literal["submit_tool_outputs"]
    tool_calls: list[ToolCall]


class TurnRead(BaseModel):
    id: str
    object: Literal["turn"] = "turn"
    session_id: str
    status: Literal["queued", "in_progress", "requires_action", "completed", "incomplete", "failed", "cancelled"]
    input: Any
    output_text: str
    response_ids: list[str]
    usage: Usage | None
    cost_usd: str | None = Field(description="USD as a decimal string; null when unknown (never 0 for unknown).")
    error: dict[str, Any] | None
    required_action: RequiredAction | None = Field(
        default=None, description="With status requires_action: the function calls the client must answer."
    )
    metadata: dict[str, str]
    created_at: dt.datetime
    completed_at: dt.datetime | None
    ttft_ms: int | None
    duration_ms: int | None
    stream_url: str | None = Field(
        description="The turn's event stream, with a short-lived token scoped to this turn (for EventSource)."
    )


class ToolOutputIn(StrictModel):
    call_id: Annotated[SafeStr, StringConstraints(min_length=1, max_length=128)]
    output: Annotated[SafeStr, StringConstraints(max_length=100_000)]


class ToolOutputsCreate(StrictModel):
    tool_outputs: Annotated[list[ToolOutputIn], Field(min_length=1, max_length=64)]
    stream: bool = True

    model_config = {
        "extra": "forbid",
        "json_schema_extra": {"examples": [{"tool_outputs": [{"call_id": "call_abc123", "output": '{"temp_c": 21}'}]}]},
    }
