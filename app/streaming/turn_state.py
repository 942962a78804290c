"""What a turn learns from the upstream events it relays, parsing only what it needs.

Most events pass through untouched; only these are decoded: `response.created` (the response id),
text deltas (the stored answer), each finished output item (the history's items) and the terminal events
(status, usage, error).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

TERMINAL_RESPONSE_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete"})


@dataclass(slots=True)
class ResponseOutcome:
    """The final state of one upstream response, from its terminal event or a later retrieve."""

    response_id: str
    status: str
    model: str | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    incomplete_reason: str | None = None
    output_text: str | None = None
    service_tier: str | None = None
    web_search_calls: int = 0
    function_calls: list[dict[str, str]] = field(default_factory=list)
    # From the HTTP response that carried it (set by the runner).
    upstream_request_id: str | None = None
    rate_limits: dict[str, str] | None = None

    @classmethod
    def from_response(cls, response: dict[str, Any]) -> ResponseOutcome:
        details = response.get("incomplete_details")
        error = response.get("error")
        tier = response.get("service_tier")
        return cls(
            response_id=str(response.get("id")),
            status=str(response.get("status")),
            model=response.get("model") if isinstance(response.get("model"), str) else None,
            usage=response.get("usage") if isinstance(response.get("usage"), dict) else None,
            error=error if isinstance(error, dict) else None,
            incomplete_reason=details.get("reason") if isinstance(details, dict) else None,
            output_text=output_text_of(response),
            service_tier=tier if isinstance(tier, str) else None,
            web_search_calls=sum(
                1
                for item in response.get("output") or ()
                if isinstance(item, dict) and item.get("type") == "web_search_call"
            ),
            function_calls=[
                {
                    "call_id": str(item.get("call_id")),
                    "name": str(item.get("name")),
                    "arguments": str(item.get("arguments") or ""),
                }
                for item in response.get("output") or ()
                if isinstance(item, dict) and item.get("type") == "function_call"
            ],
        )


# Built-in tool calls the history keeps as the upstream sent them (less an image's bytes).
BUILTIN_CALL_ITEMS = frozenset(
    {
        "web_search_call",
        "file_search_call",
        "code_interpreter_call",
        "image_generation_call",
        "mcp_call",
        "mcp_list_tools",
        "mcp_approval_request",
    }
)


def history_item(item: dict[str, Any]) -> dict[str, Any] | None:
    """An output item as a message's `items` keep it: a reasoning item's summary text (and its encrypted content,
    when the upstream sent it), a function call,
    a built-in tool call, a message's text parts with their annotations; None for what the history leaves out
    (reasoning with no summary, unknown types)."""
    kind = item.get("type")
    if kind == "reasoning":
        summary = [str(part.get("text", "")) for part in item.get("summary") or () if isinstance(part, dict)]
        encrypted = item.get("encrypted_content")
        if isinstance(encrypted, str) and encrypted:
            # Kept for a branch's conversation (`services.branch_service`), never served (`api.schemas.served_items`).
            return {"type": "reasoning", "summary": summary, "encrypted_content": encrypted}
        return {"type": "reasoning", "summary": summary} if any(summary) else None
    if kind == "message":
        content: list[dict[str, Any]] = []
        for part in item.get("content") or ():
            if not isinstance(part, dict):
                continue
            if part.get("type") == "output_text":
                content.append(
                    {
                        "type": "output_text",
                        "text": str(part.get("text", "")),
                        "annotations": part.get("annotations") or [],
                    }
                )
            elif part.get("type") == "refusal":
                content.append({"type": "refusal", "refusal": str(part.get("refusal", ""))})
        return {"type": "message", "role": "assistant", "content": content}
    if kind == "function_call":
        return {
            "type": "function_call",
            "call_id": str(item.get("call_id")),
            "name": str(item.get("name")),
            "arguments": str(item.get("arguments") or ""),
        }
    if kind in BUILTIN_CALL_ITEMS:
        return {key: value for key, value in item.items() if key != "result"}
    return None


def output_text_of(response: dict[str, Any]) -> str:
    """Every output_text part of every message item, joined (what the SDK's `output_text` does)."""
    parts: list[str] = []
    for item in response.get("output") or ():
        if isinstance(item, dict) and item.get("type") == "message":
            for content in item.get("content") or ():
                if isinstance(content, dict) and content.get("type") == "output_text":
                    parts.append(str(content.get("text", "")))
    return "".join(parts)


@dataclass(slots=True)
class TurnState:
    started_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    response_ids: list[str] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)
    outcomes: dict[str, ResponseOutcome] = field(default_factory=dict)
    error_event: dict[str, Any] | None = None
    terminal_event: str | None = None
    events_relayed: int = 0
    # The upstream HTTP response now being read: its x-request-id and x-ratelimit-* headers.
    stream_request_id: str | None = None
    stream_rate_limits: dict[str, str] | None = None
    response_meta: dict[str, tuple[str | None, dict[str, str] | None]] = field(default_factory=dict)
    # The data of the last event relayed, kept as it is: its sequence number is read only when asked for
    # (`last_sequence_number`), not on every event.
    last_data: bytes | None = None
    # The round being relayed (one upstream response): where its text starts in `text_parts`, and its id once
    # its `response.created` came.
    round_start: int = 0
    round_response_id: str | None = None
    # What the turn did, in order, as its assistant message's `items` (`history_item`), with the outputs of
    # the tools Parley ran between its rounds.
    items: list[dict[str, Any]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def begin_stream(self, request_id: str | None, rate_limits: dict[str, str] | None) -> None:
        """A new upstream response stream of the same turn (the next step of a tool loop)."""
        self.terminal_event = None
        self.error_event = None
        self.stream_request_id = request_id
        self.stream_rate_limits = rate_limits
        self.round_start = len(self.text_parts)
        self.round_response_id = None

    def function_calls(self) -> list[dict[str, str]]:
        """The function calls of the response that just completed."""
        last = self.outcomes.get(self.current_response_id or "")
        return list(last.function_calls) if last is not None else []

    @property
    def current_response_id(self) -> str | None:
        return self.response_ids[-1] if self.response_ids else None

    def observe(self, name: str, data: bytes) -> str | None:
        """Note what matters in one event; returns a new response id when one appears."""
        self.events_relayed += 1
        self.last_data = data
        if name == "response.output_text.delta":
            delta = orjson.loads(data).get("delta")
            if isinstance(delta, str):
                if self.first_token_at is None:
                    self.first_token_at = time.monotonic()
                self.text_parts.append(delta)
            return None
        if name == "response.created":
            response = orjson.loads(data).get("response") or {}
            response_id = response.get("id")
            if isinstance(response_id, str) and response_id not in self.response_ids:
                self.response_ids.append(response_id)
                self.response_meta[response_id] = (self.stream_request_id, self.stream_rate_limits)
                self.round_response_id = response_id
                return response_id
            return None
        if name in TERMINAL_RESPONSE_EVENTS:
            response = orjson.loads(data).get("response")
            if isinstance(response, dict):
                outcome = ResponseOutcome.from_response(response)
                self.outcomes[outcome.response_id] = outcome
            self.terminal_event = name
            return None
        if name == "response.output_item.done":
            item = orjson.loads(data).get("item")
            kept = history_item(item) if isinstance(item, dict) else None
            if kept is not None:
                self.items.append(kept)
            return None
        if name == "error":
            payload = orjson.loads(data)
            nested = payload.get("error")
            # The real service nests the fields; the SDK's type has them flat. Accept both.
            source = nested if isinstance(nested, dict) else payload
            self.error_event = {"code": source.get("code"), "message": source.get("message")}
        return None

    @property
    def text_before_round(self) -> str:
        return "".join(self.text_parts[: self.round_start])

    @property
    def round_text(self) -> str:
        """The text of the round being relayed (the turn's earlier rounds are in the conversation already)."""
        return "".join(self.text_parts[self.round_start :])

    @property
    def unfinished_response_id(self) -> str | None:
        """The response being relayed, while its terminal event has not come."""
        response_id = self.round_response_id
        return response_id if response_id is not None and response_id not in self.outcomes else None

    def last_sequence_number(self) -> int | None:
        """The upstream `sequence_number` of the last event relayed: where a re-attached stream goes on from."""
        if self.last_data is None:
            return None
        try:
            payload = orjson.loads(self.last_data)
        except orjson.JSONDecodeError:
            return None
        number = payload.get("sequence_number") if isinstance(payload, dict) else None
        return number if isinstance(number, int) and not isinstance(number, bool) else None

    @property
    def ttft_ms(self) -> int | None:
        if self.first_token_at is None:
            return None
        return int((self.first_token_at - self.started_at) * 1000)


def rate_limit_headers(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items() if name.lower().startswith("x-ratelimit-")}
