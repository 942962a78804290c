"""What a client may choose: models and dashboard prompts (PARLEY_ALLOWED_MODELS / _PROMPTS), Responses options
(PARLEY_ALLOWED_OPTIONS) and the upstream's built-in tools (PARLEY_ALLOWED_BUILTIN_TOOLS).

An empty list lets clients pick only the deployment's defaults, because a client choosing the model is
a client choosing the bill. `*` allows anything. On the embedded default (the simulator, which costs
nothing) an empty list allows anything.
"""

from __future__ import annotations

from typing import Any

from app.errors import ValidationFailed
from app.settings import Settings


def _allowed(value: str, allowed: list[str], default: str | None, settings: Settings) -> bool:
    if "*" in allowed or value in allowed or value == default:
        return True
    return not allowed and settings.uses_simulator


def check_model(settings: Settings, model: str | None) -> None:
    if model is not None and not _allowed(model, settings.allowed_models, settings.default_model, settings):
        raise ValidationFailed(
            f"Model '{model}' is not allowed on this deployment.", param="model", code="model_not_allowed"
        )


def check_prompt(settings: Settings, prompt_id: str | None) -> None:
    if prompt_id is not None and not _allowed(
        prompt_id, settings.allowed_prompts, settings.default_prompt_id, settings
    ):
        raise ValidationFailed(
            f"Prompt '{prompt_id}' is not allowed on this deployment.",
            param="prompt.id",
            code="prompt_not_allowed",
        )


def check_options(settings: Settings, options: dict[str, Any], *, param: str = "options") -> None:
    """Every option set is one this deployment allows (the schema has already checked its value)."""
    refused = sorted(set(options) - set(settings.allowed_options))
    if refused:
        allowed = ", ".join(settings.allowed_options) or "none"
        raise ValidationFailed(
            f"This deployment does not allow the option '{refused[0]}' (allowed: {allowed}).",
            param=f"{param}.{refused[0]}",
            code="option_not_allowed",
        )


def check_tools(settings: Settings, tools: list[dict[str, Any]], *, param: str = "tools") -> None:
    """Every built-in tool is of a type this deployment allows; function tools always are."""
    for index, tool in enumerate(tools):
        kind = tool.get("type")
        if kind != "function" and kind not in settings.allowed_builtin_tools:
            allowed = ", ".join(settings.allowed_builtin_tools) or "none"
            raise ValidationFailed(
                f"This deployment does not allow the built-in tool '{kind}' (allowed: {allowed}).",
                param=f"{param}.{index}.type",
                code="tool_not_allowed",
            )
