"""Stored prompts, as the OpenAI dashboard keeps them: versions with a model and templated instructions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from app.simulator.api_errors import SimulatorError, invalid_type, missing_parameter, not_found

DEMO_PROMPT_ID = "pmpt_parley_demo"
DEFAULT_PROMPTS_PATH = Path(__file__).with_name("prompts.json")
_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@dataclass(frozen=True, slots=True)
class PromptVersion:
    model: str
    instructions: str
    variables: dict[str, str]
    reasoning: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ResolvedPrompt:
    id: str
    version: str
    model: str
    instructions: str
    variables: dict[str, Any] | None
    reasoning: dict[str, Any] | None = None
    """The prompt's reasoning options (`effort`, `summary`); a request's own override them field by field."""


class PromptLibrary:
    def __init__(self, prompts: dict[str, dict[str, PromptVersion]]) -> None:
        self._prompts = prompts

    @classmethod
    def load(cls, path: Path) -> PromptLibrary:
        raw = orjson.loads(path.read_bytes())
        prompts = {
            prompt_id: {
                version: PromptVersion(
                    model=spec["model"],
                    instructions=spec["instructions"],
                    variables=dict(spec.get("variables", {})),
                    reasoning=spec.get("reasoning"),
                )
                for version, spec in entry["versions"].items()
            }
            for prompt_id, entry in raw.items()
        }
        return cls(prompts)

    def resolve(self, prompt: object) -> ResolvedPrompt:
        """Pick the version (the latest when none is given) and substitute the variables."""
        if not isinstance(prompt, dict):
            raise invalid_type("prompt", "an object", prompt)
        prompt_id = prompt.get("id")
        if prompt_id is None:
            raise missing_parameter("prompt.id")
        if not isinstance(prompt_id, str):
            raise invalid_type("prompt.id", "a string", prompt_id)
        versions = self._prompts.get(prompt_id)
        if versions is None:
            raise not_found(f"Prompt with id '{prompt_id}' not found.", param="prompt.id")
        version = prompt.get("version")
        if version is None:
            version = max(versions, key=_version_key)
        elif not isinstance(version, str):
            raise invalid_type("prompt.version", "a string", version)
        spec = versions.get(version)
        if spec is None:
            raise not_found(f"Prompt '{prompt_id}' has no version '{version}'.", param="prompt.version")
        given = prompt.get("variables")
        if given is not None and not isinstance(given, dict):
            raise invalid_type("prompt.variables", "an object", given)
        values = {**spec.variables, **{name: _variable_text(name, value) for name, value in (given or {}).items()}}
        instructions = _VARIABLE.sub(lambda match: values.get(match.group(1), match.group(0)), spec.instructions)
        return ResolvedPrompt(
            id=prompt_id,
            version=version,
            model=spec.model,
            instructions=instructions,
            variables=given,
            reasoning=spec.reasoning,
        )


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


def _variable_text(name: str, value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and value.get("type") == "input_text" and isinstance(value.get("text"), str):
        return str(value["text"])
    if isinstance(value, dict) and value.get("type") in ("input_image", "input_file"):
        return f"[{value['type']}]"
    raise SimulatorError(
        400,
        f"Invalid type for 'prompt.variables.{name}': expected a string or an input_text, input_image or "
        "input_file object.",
        param=f"prompt.variables.{name}",
        code="invalid_type",
    )
