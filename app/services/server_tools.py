"""The function tools Parley runs itself (`app.tools`: PARLEY_TOOLS, entry points), as the runner's executor.

The runner calls them between upstream responses (`turn.tool_call.started` / `.completed` events) and sends
their outputs back up; tools the client declares instead are handed to the client (`turn.requires_action`).
Which of them a turn offers the model is `resolve_upstream_body`'s choice (`allowed_names`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from app.streaming.turn_runner import ToolResult
from app.tools import Tool, ToolError

logger = logging.getLogger(__name__)


class ServerTools:
    """The server-side tools this deployment loaded, with the default timeout of a call."""

    def __init__(
        self,
        tools: Sequence[Tool],
        *,
        timeout_s: float = 10.0,
        prompt_tools: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self._tools = {tool.name: tool for tool in tools}
        self._definitions = [tool.definition for tool in tools]
        self.timeout_s = timeout_s
        self._prompt_tools = {prompt: frozenset(names) for prompt, names in (prompt_tools or {}).items()}

    def definitions(self) -> list[dict[str, Any]]:
        return self._definitions

    def names(self) -> list[str]:
        return list(self._tools)

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": tool.name, "description": tool.description} for tool in self._tools.values()]

    def has(self, name: str) -> bool:
        return name in self._tools

    def allowed_names(self, prompt_id: str | None, session_names: Iterable[str] | None) -> frozenset[str] | None:
        """The tools a turn may use: all unless its prompt's PARLEY_PROMPT_TOOLS entry or the session's own list
        narrows them (both: what both allow). None: all of them."""
        allowed = self._prompt_tools.get(prompt_id) if prompt_id is not None else None
        if session_names is not None:
            allowed = frozenset(session_names) if allowed is None else allowed & frozenset(session_names)
        return allowed

    async def run(self, name: str, arguments: str) -> ToolResult:
        """The output goes back to the model either way; a failure is an output that says what went wrong."""
        tool = self._tools[name]
        timeout_s = tool.timeout_s or self.timeout_s
        try:
            parsed = orjson.loads(arguments or "{}")
            if not isinstance(parsed, dict):
                raise ToolError("The arguments must be a JSON object.")
            output = await asyncio.wait_for(tool.invoke(parsed), timeout=timeout_s)
        except orjson.JSONDecodeError:
            return _failure("The arguments are not valid JSON.")
        except TimeoutError:
            return _failure(f"The tool took longer than {timeout_s:g} s and was stopped.")
        except ToolError as error:
            return _failure(str(error))
        except Exception as error:  # a deployer's bug is the model's error output, never a crashed turn
            logger.warning("tool.failed", exc_info=True, extra={"tool": name})
            return _failure(f"The tool failed: {type(error).__name__}: {error}"[:1_000])
        return ToolResult(output=output)


def _failure(message: str) -> ToolResult:
    return ToolResult(output=orjson.dumps({"error": message}).decode(), error=message)
