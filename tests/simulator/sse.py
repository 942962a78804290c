"""Reading the simulator's raw SSE bytes the strict way, and validating each event with the SDK's own types."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import pydantic
from openai.types.responses import ResponseStreamEvent

STREAM_EVENT = pydantic.TypeAdapter(ResponseStreamEvent)


class NestedErrorBody(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    type: str
    code: str | None
    message: str
    param: str | None


class NestedErrorEvent(pydantic.BaseModel):
    """The real service's `error` event (the SDK's `ResponseErrorEvent` declares these fields flat)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    type: Literal["error"]
    sequence_number: int
    error: NestedErrorBody


@dataclass(frozen=True)
class Event:
    type: str
    data: dict[str, Any]

    @property
    def sequence_number(self) -> int:
        return int(self.data["sequence_number"])


def parse_frames(raw: bytes) -> list[Event]:
    """Split a body into events, asserting the exact framing: `event:` line, one `data:` line, blank line."""
    text = raw.decode()
    assert "[DONE]" not in text
    if not text:
        return []
    assert text.endswith("\n\n"), "the body must end at a frame boundary"
    events = []
    for block in text[:-2].split("\n\n"):
        lines = block.split("\n")
        assert len(lines) == 2, f"expected exactly an event line and a data line, got {lines!r}"
        event_line, data_line = lines
        assert event_line.startswith("event: "), lines
        assert data_line.startswith("data: "), lines
        data = json.loads(data_line[len("data: ") :])
        assert event_line[len("event: ") :] == data["type"]
        assert data_line == "data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        events.append(Event(type=data["type"], data=data))
    return events


def assert_contiguous(events: list[Event], first: int = 0) -> None:
    assert [event.sequence_number for event in events] == list(range(first, first + len(events)))


def validate_with_sdk(event: Event) -> None:
    """Every event must parse with the SDK's models, except the two places where the real service differs."""
    if event.type == "error":
        NestedErrorEvent.model_validate(event.data)
        return
    if event.type == "response.function_call_arguments.done":
        assert "name" not in event.data
        STREAM_EVENT.validate_python({**event.data, "name": "added_for_older_sdks"})
        return
    STREAM_EVENT.validate_python(event.data)
