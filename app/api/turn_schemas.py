"""Bodies of the turn routes: sending a message, and the Turn object."""

from __future__ import annotations

import datetime as dt
import ipaddress
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, Field, StrictBool, StringConstraints

from app.api.schemas import Identifier, Metadata, Options, PromptRef, PromptVariables, SafeStr, StrictModel, Tools

# Parley's own file ids only: a raw upstream id would name any file of the account, whoever uploaded it.
FILE_ID_DESCRIPTION = (
    "A file you uploaded (`POST /v1/files`), by its `pfile_…` id; another user's, a deleted one or an upstream "
    "`file-…` id is 404 `file_not_found`."
)


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
    # No length of its own: PARLEY_MAX_MESSAGE_CHARS counts all the text of a message together.
    type: Literal["input_text"]
    text: Annotated[SafeStr, StringConstraints(min_length=1)]


class InputImage(StrictModel):
    type: Literal["input_image"]
    image_url: PublicUrl | None = None
    file_id: Identifier | None = Field(default=None, description=FILE_ID_DESCRIPTION)
    detail: Literal["low", "high", "auto", "original"] = "auto"


class InputFile(StrictModel):
    type: Literal["input_file"]
    file_id: Identifier | None = Field(default=None, description=FILE_ID_DESCRIPTION)
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


# Booleans are JSON booleans only: pydantic would also take 0, 1, "yes" or "off", which the schema does not offer.


class MessageCreate(StrictModel):
    input: (
        Annotated[SafeStr, StringConstraints(min_length=1)]
        | Annotated[list[InputMessage], Field(min_length=1, max_length=64)]
    ) = Field(description="The user's message: text, or Responses input items (role `user`).")
    prompt_variables: PromptVariables | None = None
    prompt: PromptRef | None = None
    model: Identifier | None = None
    metadata: Metadata | None = None
    tools: Tools | None = Field(
        default=None,
        description="Function tools the client runs (Responses' flat function tool shape), and built-in tools "
        "(web_search, file_search, code_interpreter, image_generation) where this deployment allows their type.",
    )
    options: Options | None = Field(
        default=None,
        description="Responses options for this turn, over the session's (each as this deployment allows).",
    )
    stream: StrictBool = True

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


class RegenerateCreate(StrictModel):
    options: Options | None = Field(
        default=None,
        description="Responses options for the new answer, over the session's (each as this deployment allows).",
    )
    stream: StrictBool = True


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


class FeedbackRead(BaseModel):
    rating: Literal["up", "down"] | None
    comment: str | None
    updated_at: dt.datetime


class FeedbackUpdate(StrictModel):
    """What the person thought of the answer; it replaces any feedback they gave before (`rating: null` and no
    comment takes it back)."""

    rating: Literal["up", "down"] | None
    comment: Annotated[SafeStr, StringConstraints(max_length=4000)] | None = None


class TurnRead(BaseModel):
    id: str
    object: Literal["turn"] = "turn"
    session_id: str
    message_id: str | None = Field(
        default=None, description="The user message it answers (a regenerated answer's turn shares it)."
    )
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
    feedback: FeedbackRead | None = Field(default=None, description="What the person thought of the answer, if said.")


class ToolOutputIn(StrictModel):
    call_id: Annotated[SafeStr, StringConstraints(min_length=1, max_length=128)]
    output: Annotated[SafeStr, StringConstraints(max_length=100_000)]


class ToolOutputsCreate(StrictModel):
    tool_outputs: Annotated[list[ToolOutputIn], Field(min_length=1, max_length=64)]
    stream: StrictBool = True

    model_config = {
        "extra": "forbid",
        "json_schema_extra": {"examples": [{"tool_outputs": [{"call_id": "call_abc123", "output": '{"temp_c": 21}'}]}]},
    }
