"""The models the simulator lists, and the dated snapshot names responses report for them."""

from __future__ import annotations

from app.simulator.json_types import JsonObject

SNAPSHOTS = {
    "gpt-5": "gpt-5-2025-08-07",
    "gpt-5-mini": "gpt-5-mini-2025-08-07",
    "gpt-5-nano": "gpt-5-nano-2025-08-07",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "o4-mini": "o4-mini-2025-04-16",
}
_CREATED = 1_754_000_000


def snapshot(model: str) -> str:
    """A request for `gpt-5-mini` comes back as `gpt-5-mini-2025-08-07`; other names are echoed as sent."""
    return SNAPSHOTS.get(model, model)


def model_object(model_id: str) -> JsonObject:
    return {"id": model_id, "object": "model", "created": _CREATED, "owned_by": "system"}


def known_models() -> list[str]:
    return [*SNAPSHOTS, *SNAPSHOTS.values()]
