"""The Response object with the full field set the real service sends (including fields the SDK doesn't model)."""

from __future__ import annotations

import time
from typing import Any

from app.simulator.create_params import CreateParams
from app.simulator.generation import is_reasoning_model
from app.simulator.ids import new_id
from app.simulator.json_types import JsonObject
from app.simulator.model_catalog import snapshot
from app.simulator.prompts import ResolvedPrompt

_DEFAULT_TEXT: JsonObject = {"format": {"type": "text"}, "verbosity": "medium"}


def initial_response(
    *,
    params: CreateParams,
    model: str,
    instructions: str | list[JsonObject] | None,
    prompt: ResolvedPrompt | None,
    reasoning: JsonObject,
) -> JsonObject:
    """The Response as `response.created` shows it; `reasoning` is the request's merged over its prompt's."""
    body = params.body
    if is_reasoning_model(model):
        reasoning_echo = {"effort": reasoning.get("effort") or "medium", "summary": reasoning.get("summary")}
    else:
        reasoning_echo = {"effort": None, "summary": None}
    return {
        "id": new_id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "queued" if params.background else "in_progress",
        "background": params.background,
        "billing": {"payer": "developer"},
        "completed_at": None,
        "conversation": {"id": params.conversation_id} if params.conversation_id else None,
        "error": None,
        "frequency_penalty": 0.0,
        "incomplete_details": None,
        "instructions": instructions,
        "max_output_tokens": params.max_output_tokens,
        "max_tool_calls": body.get("max_tool_calls"),
        "metadata": params.metadata,
        "model": snapshot(model),
        "output": [],
        "parallel_tool_calls": params.parallel_tool_calls,
        "presence_penalty": 0.0,
        "previous_response_id": params.previous_response_id,
        "prompt": ({"id": prompt.id, "variables": prompt.variables, "version": prompt.version} if prompt else None),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "prompt_cache_retention": body.get("prompt_cache_retention"),
        "reasoning": reasoning_echo,
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": body.get("service_tier") or "auto",
        "store": params.store,
        "temperature": _number(body.get("temperature"), 1.0),
        "text": {**_DEFAULT_TEXT, **(body.get("text") or {})},
        "tool_choice": params.tool_choice,
        "tools": params.tools,
        "top_logprobs": body.get("top_logprobs") or 0,
        "top_p": _number(body.get("top_p"), 1.0),
        "truncation": body.get("truncation") or "disabled",
        "usage": None,
        "user": body.get("user"),
    }


def served_tier(requested: str) -> str:
    """The tier that actually served the request, as the finished Response reports it."""
    return {"auto": "default", "fast": "priority"}.get(requested, requested)


def _number(value: Any, default: float) -> float:
    return float(value) if value is not None else default
