"""Input items as the real service stores them: every item gets an id, a status and its full content shape."""

from __future__ import annotations

from collections.abc import Container, Iterable
from typing import Any

from app.simulator.api_errors import SimulatorError, invalid_type, invalid_value, missing_parameter
from app.simulator.generation import count_tokens
from app.simulator.ids import new_id
from app.simulator.json_types import JsonObject

MESSAGE_ROLES = ["assistant", "system", "developer", "user"]
IMAGE_TOKENS = 85
_ID_PREFIXES = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "reasoning": "rs",
}


def parse_input(value: object, *, param: str = "input") -> list[JsonObject]:
    """A request's `input` (a string or a list of items) as stored conversation items."""
    if value is None:
        return []
    if isinstance(value, str):
        return [message_item("user", value)]
    if not isinstance(value, list):
        raise invalid_type(param, "one of a string or array of input items", value)
    return [stored_item(raw, param=f"{param}[{index}]") for index, raw in enumerate(value)]


def message_item(role: str, text: str) -> JsonObject:
    return {
        "type": "message",
        "id": new_id("msg"),
        "status": "completed",
        "role": role,
        "content": [_text_part(role, text)],
    }


def stored_item(raw: object, *, param: str) -> JsonObject:
    if not isinstance(raw, dict):
        raise invalid_type(param, "an object", raw)
    kind = raw.get("type", "message")
    if kind == "message":
        return _message(raw, param=param)
    if kind == "function_call_output":
        call_id = _required_str(raw, "call_id", param=param)
        output = raw.get("output")
        if output is None:
            raise missing_parameter(f"{param}.output")
        if not isinstance(output, str | list):
            raise invalid_type(f"{param}.output", "a string or an array of content parts", output)
        return {
            "type": "function_call_output",
            "id": raw.get("id") or new_id("fco"),
            "call_id": call_id,
            "output": output,
            "status": "completed",
        }
    if kind == "function_call":
        return {
            **raw,
            "type": "function_call",
            "id": raw.get("id") or new_id("fc"),
            "call_id": _required_str(raw, "call_id", param=param),
            "name": _required_str(raw, "name", param=param),
            "arguments": _required_str(raw, "arguments", param=param),
            "status": raw.get("status") or "completed",
        }
    if not isinstance(kind, str):
        raise invalid_type(f"{param}.type", "a string", kind)
    if kind == "reasoning":
        # Required, though it may be empty (the real service's words: microsoft/agent-framework-go#784).
        summary = raw.get("summary")
        if summary is None:
            raise missing_parameter(f"{param}.summary")
        if not isinstance(summary, list):
            raise invalid_type(f"{param}.summary", "an array", summary)
    item = dict(raw)
    item.setdefault("id", new_id(_ID_PREFIXES.get(kind, "item")))
    return item


def _message(raw: JsonObject, *, param: str) -> JsonObject:
    role = raw.get("role")
    if role is None:
        raise missing_parameter(f"{param}.role")
    if role not in MESSAGE_ROLES:
        raise invalid_value(f"{param}.role", role, MESSAGE_ROLES)
    content = raw.get("content")
    if content is None:
        raise missing_parameter(f"{param}.content")
    if isinstance(content, str):
        parts = [_text_part(role, content)]
    elif isinstance(content, list):
        parts = [_content_part(part, role=role, param=f"{param}.content[{i}]") for i, part in enumerate(content)]
    else:
        raise invalid_type(f"{param}.content", "one of a string or array of content parts", content)
    item: JsonObject = {
        "type": "message",
        "id": raw.get("id") or new_id("msg"),
        "status": "completed",
        "role": role,
        "content": parts,
    }
    if "phase" in raw:
        item["phase"] = raw["phase"]
    return item


def _text_part(role: str, text: str) -> JsonObject:
    if role == "assistant":
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    return {"type": "input_text", "text": text}


def _content_part(part: object, *, role: str, param: str) -> JsonObject:
    if not isinstance(part, dict):
        raise invalid_type(param, "an object", part)
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        text = _required_str(part, "text", param=param)
        if kind == "output_text":
            return {"annotations": [], "logprobs": [], **part, "text": text}
        return dict(part)
    if not isinstance(kind, str):
        raise missing_parameter(f"{param}.type")
    return dict(part)


def _required_str(raw: JsonObject, key: str, *, param: str) -> str:
    value = raw.get(key)
    if value is None:
        raise missing_parameter(f"{param}.{key}")
    if not isinstance(value, str):
        raise invalid_type(f"{param}.{key}", "a string", value)
    return value


def item_text(item: JsonObject) -> str:
    """The text a model would read from one item (what its tokens are counted from)."""
    kind = item.get("type")
    if kind == "message":
        content = item.get("content")
        if isinstance(content, str):
            return content
        return " ".join(_part_text(part) for part in content or [] if isinstance(part, dict))
    if kind == "function_call":
        return f"{item.get('name', '')} {item.get('arguments', '')}"
    if kind == "function_call_output":
        return output_text(item.get("output"))
    return ""


def output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return " ".join(_part_text(part) for part in output if isinstance(part, dict))
    return ""


def _part_text(part: JsonObject) -> str:
    text = part.get("text") or part.get("refusal")
    return text if isinstance(text, str) else ""


def count_item_tokens(items: Iterable[JsonObject]) -> int:
    total = 0
    for item in items:
        total += count_tokens(item_text(item))
        if item.get("type") == "message":
            total += IMAGE_TOKENS * sum(
                1 for part in item.get("content") or [] if isinstance(part, dict) and part.get("type") == "input_image"
            )
    return total


def check_tool_outputs_have_calls(items: list[JsonObject], *, earlier_call_ids: Container[str] = ()) -> None:
    """The real service refuses a function_call_output whose call it cannot find in the context: among `items`,
    or the calls before them (`earlier_call_ids`)."""
    call_ids = {item.get("call_id") for item in items if item.get("type") == "function_call"}
    for item in items:
        if item.get("type") != "function_call_output":
            continue
        call_id = item.get("call_id")
        if call_id not in call_ids and call_id not in earlier_call_ids:
            raise SimulatorError(
                400,
                f"No tool call found for function call output with call_id {call_id}.",
                param="input",
            )


def check_no_duplicate_ids(existing_ids: Container[str], new: list[JsonObject], *, param: str = "input") -> None:
    """An item whose id the conversation already holds, or that comes twice in one call, is refused (re-sending
    what a conversation holds is a classic tool-loop bug). The words are the real service's (quoted in
    microsoft/agent-framework-go#784); the `param` it names for the Conversations API is not documented."""
    seen: set[str] = set()
    for item in new:
        if item.get("type") == "item_reference":
            continue
        if item["id"] in seen or item["id"] in existing_ids:
            raise SimulatorError(
                400,
                f"Duplicate item found with id {item['id']}. Remove duplicate items from your input and try again.",
                param=param,
            )
        seen.add(item["id"])


def check_storable_in_conversation(raw_items: list[Any]) -> None:
    """The Conversations API refuses a `reasoning` item that carries neither its id (the item the service
    stored) nor its `encrypted_content`: there is nothing to keep of it. Checked on the items as sent, before
    the simulator gives them ids. Status and words as the real service answers (openai-agents-python#1709 and
    #3268; the SDKs drop such items since openai-agents-python#3352)."""
    for raw in raw_items:
        if not isinstance(raw, dict) or raw.get("type") != "reasoning":
            continue
        if not raw.get("id") and not raw.get("encrypted_content"):
            raise SimulatorError(400, "Invalid item", param="item", code="invalid_item")


def newest_user_text(items: list[JsonObject]) -> str | None:
    for item in reversed(items):
        if item.get("type") == "message" and item.get("role") == "user":
            return item_text(item)
    return None
