"""How a turn ended, handed from the runner to the store that persists it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.streaming.turn_state import ResponseOutcome

TERMINAL_EVENT_OF_STATUS = {
    "completed": "turn.completed",
    "incomplete": "turn.incomplete",
    "failed": "turn.failed",
    "cancelled": "turn.cancelled",
    "requires_action": "turn.requires_action",
}


@dataclass(slots=True)
class TurnOutcome:
    status: str
    output_text: str
    response_ids: list[str]
    responses: list[ResponseOutcome] = field(default_factory=list)
    error: dict[str, Any] | None = None
    ttft_ms: int | None = None
    duration_ms: int | None = None
    last_event_id: int | None = None
    # requires_action: the calls the client must answer, and the outputs of Parley's own tools to send with them.
    required_action: dict[str, Any] | None = None
    pending_tool_outputs: list[dict[str, Any]] | None = None
    # What this step of the turn did, as its assistant message's `items` (`turn_state.history_item`).
    items: list[dict[str, Any]] = field(default_factory=list)

    @property
    def usage(self) -> dict[str, int] | None:
        """Summed over the turn's responses, in the contract's shape; None when no usage is known."""
        known = [r.usage for r in self.responses if r.usage]
        if not known:
            return None
        return {
            "input_tokens": sum(int(u.get("input_tokens") or 0) for u in known),
            "cached_input_tokens": sum(_detail(u, "input_tokens_details", "cached_tokens") for u in known),
            "output_tokens": sum(int(u.get("output_tokens") or 0) for u in known),
            "reasoning_tokens": sum(_detail(u, "output_tokens_details", "reasoning_tokens") for u in known),
            "total_tokens": sum(int(u.get("total_tokens") or 0) for u in known),
        }

    @property
    def terminal_event(self) -> str:
        return TERMINAL_EVENT_OF_STATUS[self.status]


def _detail(usage: dict[str, Any], group: str, name: str) -> int:
    details = usage.get(group)
    return int(details.get(name) or 0) if isinstance(details, dict) else 0
