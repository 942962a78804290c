"""`POST /v1/responses` bodies, checked the way the real service checks them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.simulator.api_errors import SimulatorError, invalid_type, invalid_value, missing_parameter, unknown_parameter
from app.simulator.generation import FunctionTool
from app.simulator.items import parse_input
from app.simulator.json_types import JsonObject
from app.simulator.structured_output import TextFormat, check_json_word, parse_text_format
from app.simulator.validation import (
    metadata,
    optional_bool,
    optional_int,
    optional_list,
    optional_number,
    optional_str,
)

KNOWN_PARAMETERS = frozenset(
    {
        "access_programs",
        "background",
        "background_options",
        "context_management",
        "conversation",
        "image",
        "include",
        "input",
        "instructions",
        "max_output_tokens",
        "max_tool_calls",
        "metadata",
        "model",
        "moderation",
        "parallel_tool_calls",
        "previous_response_id",
        "prompt",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning",
        "safety_identifier",
        "service_tier",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "text",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "truncation",
        "user",
    }
)
TOOL_CHOICE_OPTIONS = ["none", "auto", "required"]
REASONING_EFFORTS = ["none", "minimal", "low", "medium", "high", "xhigh", "max"]
_TOOL_NAME_MAX = 64


@dataclass(frozen=True, slots=True)
class CreateParams:
    body: JsonObject
    model: str | None
    input_items: list[JsonObject]
    instructions: str | None
    prompt: object | None
    conversation_id: str | None
    previous_response_id: str | None
    store: bool
    stream: bool
    include_obfuscation: bool
    background: bool
    tools: list[JsonObject]
    function_tools: list[FunctionTool]
    tool_choice: Any
    parallel_tool_calls: bool
    metadata: dict[str, str]
    max_output_tokens: int | None
    reasoning: JsonObject | None
    include: frozenset[str]
    text_format: TextFormat | None
    """Set when the answer must be JSON (`text.format` of type json_schema or json_object)."""


def parse_create_params(body: JsonObject) -> CreateParams:
    for key in body:
        if key not in KNOWN_PARAMETERS:
            raise unknown_parameter(key)
    conversation_id = _conversation_id(body.get("conversation"))
    previous_response_id = optional_str(body, "previous_response_id")
    if conversation_id is not None and previous_response_id is not None:
        raise SimulatorError(
            400,
            "Mutually exclusive parameters: Ensure you are only providing one of: 'previous_response_id' or "
            "'conversation'.",
            param="conversation",
            code="mutually_exclusive_parameters",
        )
    store = optional_bool(body, "store")
    background = bool(optional_bool(body, "background"))
    if background and store is False:
        raise SimulatorError(
            400, "Background responses require 'store' to be true.", param="background", code="invalid_value"
        )
    tools, function_tools = _tools(body)
    tool_choice = _tool_choice(body.get("tool_choice"), function_tools)
    parallel = optional_bool(body, "parallel_tool_calls")
    _check_sampling(body)
    input_items = parse_input(body.get("input"))
    text_format = parse_text_format(body)
    if text_format is not None and text_format.type == "json_object":
        check_json_word(input_items)
    return CreateParams(
        body=body,
        model=optional_str(body, "model"),
        input_items=input_items,
        instructions=optional_str(body, "instructions"),
        prompt=body.get("prompt"),
        conversation_id=conversation_id,
        previous_response_id=previous_response_id,
        store=store is not False,
        stream=bool(optional_bool(body, "stream")),
        include_obfuscation=_include_obfuscation(body.get("stream_options")),
        background=background,
        tools=tools,
        function_tools=function_tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel is not False,
        metadata=metadata(body.get("metadata")),
        max_output_tokens=optional_int(body, "max_output_tokens", minimum=16),
        reasoning=_reasoning(body.get("reasoning")),
        include=_include(body),
        text_format=text_format,
    )


def _check_sampling(body: JsonObject) -> None:
    optional_number(body, "temperature")
    optional_number(body, "top_p")
    optional_int(body, "top_logprobs", minimum=0, maximum=20)
    optional_int(body, "max_tool_calls", minimum=1)
    truncation = body.get("truncation")
    if truncation is not None and truncation not in ("auto", "disabled"):
        raise invalid_value("truncation", truncation, ["auto", "disabled"])


def _conversation_id(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        conversation_id = value.get("id")
        if conversation_id is None:
            raise missing_parameter("conversation.id")
        if not isinstance(conversation_id, str):
            raise invalid_type("conversation.id", "a string", conversation_id)
        return conversation_id
    raise invalid_type("conversation", "a string or an object", value)


def _include_obfuscation(value: object) -> bool:
    if value is None:
        return True
    if not isinstance(value, dict):
        raise invalid_type("stream_options", "an object", value)
    include = value.get("include_obfuscation", True)
    if not isinstance(include, bool):
        raise invalid_type("stream_options.include_obfuscation", "a boolean", include)
    return include


def _tools(body: JsonObject) -> tuple[list[JsonObject], list[FunctionTool]]:
    raw_tools = optional_list(body, "tools") or []
    tools: list[JsonObject] = []
    function_tools: list[FunctionTool] = []
    for index, tool in enumerate(raw_tools):
        param = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise invalid_type(param, "an object", tool)
        kind = tool.get("type")
        if kind is None:
            raise missing_parameter(f"{param}.type")
        if kind != "function":
            tools.append(dict(tool))
            continue
        if "function" in tool and "name" not in tool:
            raise SimulatorError(
                400,
                f"Missing required parameter: '{param}.name'. (Function tools in the Responses API are flat: "
                "name, description and parameters sit beside 'type', not under 'function'.)",
                param=f"{param}.name",
                code="missing_required_parameter",
            )
        name = optional_str(tool, "name", param=f"{param}.name")
        if not name:
            raise missing_parameter(f"{param}.name")
        if len(name) > _TOOL_NAME_MAX or not all(char.isalnum() or char in "_-" for char in name):
            raise SimulatorError(
                400,
                f"Invalid '{param}.name': string does not match pattern. Expected a string that matches the "
                f"pattern '^[a-zA-Z0-9_-]+$' and is at most {_TOOL_NAME_MAX} characters.",
                param=f"{param}.name",
                code="invalid_value",
            )
        parameters = tool.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise invalid_type(f"{param}.parameters", "an object", parameters)
        tools.append(
            {"description": None, "parameters": parameters, "strict": True, **tool, "type": "function", "name": name}
        )
        function_tools.append(FunctionTool(name=name, parameters=parameters))
    return tools, function_tools


def _tool_choice(value: object, function_tools: list[FunctionTool]) -> Any:
    if value is None:
        return "auto"
    if isinstance(value, str):
        if value not in TOOL_CHOICE_OPTIONS:
            raise invalid_value("tool_choice", value, TOOL_CHOICE_OPTIONS)
        return value
    if not isinstance(value, dict):
        raise invalid_type("tool_choice", "a string or an object", value)
    if value.get("type") == "function" and value.get("name") not in {tool.name for tool in function_tools}:
        raise SimulatorError(
            400, "Tool choice 'function' not found in 'tools' parameter.", param="tool_choice", code=None
        )
    return value


def _include(body: JsonObject) -> frozenset[str]:
    values = optional_list(body, "include") or []
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise invalid_type(f"include[{index}]", "a string", value)
    return frozenset(values)


def _reasoning(value: object) -> JsonObject | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid_type("reasoning", "an object", value)
    effort = value.get("effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        raise invalid_value("reasoning.effort", effort, REASONING_EFFORTS)
    return value
