"""Deterministic "model output": tokens, the reply text, function-call arguments and reasoning effort.

A token is a word or a punctuation mark together with the whitespace before it, so the deltas of a text
concatenate back to exactly that text, and counting is the same cheap regex everywhere.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from app.simulator.json_types import JsonObject

_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])")
_ECHO_MAX_TOKENS = 24
_DEFAULT_MIN_TOKENS = 12
_DEFAULT_MAX_TOKENS = 40
_FILLER_SENTENCES = (
    "Here is a short, deterministic answer from the simulator.",
    "Each word arrives as its own token.",
    "The same input always gets the same reply.",
    "Nothing here comes from a real model.",
    "Tokens are counted as words and punctuation marks.",
    "Ask again and you will read these very sentences once more.",
)


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def split_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def stable_hash(text: str) -> int:
    """Stable across processes, unlike `hash()`."""
    return zlib.crc32(text.encode())


def reply_tokens(*, user_text: str | None, tool_outputs: list[str], output_tokens: int | None) -> list[str]:
    """The assistant's answer as tokens: a sentence about the input, padded to the target length.

    With `output_tokens` set the answer has exactly that many tokens; otherwise 12 to 40, chosen from the
    input so the same input always gets the same answer.
    """
    if tool_outputs:
        base = "The tool returned: " + "; ".join(_shorten(output) for output in tool_outputs) + "."
    elif user_text and user_text.strip():
        base = f'You said: "{_shorten(user_text)}".'
    else:
        base = "Hello! How can I help you today?"
    seed = stable_hash(base)
    tokens = split_tokens(base)
    if output_tokens is None:
        target = min(_DEFAULT_MAX_TOKENS, max(_DEFAULT_MIN_TOKENS, len(tokens) + 4 + seed % 9))
    else:
        target = output_tokens
    sentence = seed
    while len(tokens) < target:
        tokens.extend(split_tokens(" " + _FILLER_SENTENCES[sentence % len(_FILLER_SENTENCES)]))
        sentence += 1
    return tokens[:target]


def _shorten(text: str) -> str:
    tokens = split_tokens(" ".join(text.split()))
    shortened = "".join(tokens[:_ECHO_MAX_TOKENS]).strip()
    return shortened + (" …" if len(tokens) > _ECHO_MAX_TOKENS else "")


def reasoning_tokens(*, model: str, effort: str | None, seed_text: str) -> int:
    """Hidden reasoning for reasoning models (gpt-5*, o*): a count, never text."""
    if not is_reasoning_model(model) or effort == "none":
        return 0
    base = {"minimal": 8, "low": 32, "high": 192, "xhigh": 256}.get(effort or "medium", 64)
    return base + stable_hash(seed_text) % 32


def is_reasoning_model(model: str) -> bool:
    return model.startswith(("gpt-5", "o"))


@dataclass(frozen=True, slots=True)
class FunctionTool:
    name: str
    parameters: JsonObject | None


def tools_to_call(
    *, tools: list[FunctionTool], tool_choice: Any, user_text: str, parallel: bool, has_tool_outputs: bool
) -> list[FunctionTool]:
    """Which function tools the model calls this turn.

    A tool is called when the newest user message names it (and no tool output is being answered), when
    `tool_choice` names it, or when `tool_choice` is "required".
    """
    if not tools or tool_choice == "none":
        return []
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        return [tool for tool in tools if tool.name == tool_choice.get("name")][:1]
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "allowed_tools":
        allowed = {entry.get("name") for entry in tool_choice.get("tools") or [] if isinstance(entry, dict)}
        tools = [tool for tool in tools if tool.name in allowed]
        required = tool_choice.get("mode") == "required"
    else:
        required = tool_choice == "required"
    named = [] if has_tool_outputs else [tool for tool in tools if _mentions(user_text, tool.name)]
    if not named and required and tools:
        named = tools[:1]
    return named if parallel else named[:1]


def _mentions(text: str, name: str) -> bool:
    lowered = text.lower()
    return name.lower() in lowered or name.replace("_", " ").lower() in lowered


def function_arguments(tool: FunctionTool, user_text: str) -> str:
    """Arguments that fit the tool's JSON schema: every required property gets a value from the message."""
    schema = tool.parameters
    if schema is None:
        return orjson.dumps({"query": user_text}).decode()
    properties = schema.get("properties") or {}
    required = schema.get("required")
    names = required if isinstance(required, list) else list(properties)
    arguments = {name: _value_for(properties.get(name) or {}, user_text) for name in names}
    return orjson.dumps(arguments).decode()


def _value_for(schema: JsonObject, user_text: str) -> object:
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return user_text
