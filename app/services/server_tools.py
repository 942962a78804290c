"""Function tools that Parley runs itself, enabled by name with PARLEY_TOOLS (e.g. "current_time,calculator").

The runner calls them between upstream responses (`turn.tool_call.started` / `.completed` events) and sends
their outputs back up; tools the client declares instead are handed to the client (`turn.requires_action`).
"""

from __future__ import annotations

import ast
import asyncio
import datetime as dt
import operator
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from app.streaming.turn_runner import ToolResult

TOOL_TIMEOUT_S = 10.0


class ToolError(Exception):
    """A tool could not do what was asked; the message goes to the model as the call's output."""


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    run: Callable[[dict[str, Any]], Awaitable[str]]

    def definition(self) -> dict[str, Any]:
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "strict": False,
        }


async def _current_time(arguments: dict[str, Any]) -> str:
    zone_name = arguments.get("timezone") or "UTC"
    try:
        zone = ZoneInfo(str(zone_name))
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ToolError(f"Unknown time zone {zone_name!r}; use an IANA name such as 'Europe/Lisbon'.") from error
    now = dt.datetime.now(zone)
    return orjson.dumps({"timezone": str(zone_name), "iso": now.isoformat(), "weekday": now.strftime("%A")}).decode()


_OPERATORS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
_ARITHMETIC = re.compile(r"[(\-]*\d[\d\s.+\-*/%()]*[\d)]|\d")


def _evaluate(node: ast.AST) -> float | int:
    # A whitelist walk of the syntax tree: numbers and arithmetic only, never eval().
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 10**6):
            raise ToolError("That power is too large.")
        return _OPERATORS[type(node.op)](left, right)  # type: ignore[no-any-return]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand))  # type: ignore[no-any-return]
    raise ToolError("Only numbers and + - * / // % ** ( ) are allowed.")


async def _calculator(arguments: dict[str, Any]) -> str:
    expression = str(arguments.get("expression") or "")
    # Models (and the simulator) sometimes wrap the arithmetic in words: take the longest arithmetic run.
    candidates = sorted(_ARITHMETIC.findall(expression), key=len, reverse=True)
    if not candidates or len(expression) > 1_000:
        raise ToolError("No arithmetic expression found.")
    try:
        value = _evaluate(ast.parse(candidates[0].strip(), mode="eval"))
    except (SyntaxError, ZeroDivisionError, OverflowError) as error:
        raise ToolError(f"Cannot evaluate {candidates[0].strip()!r}: {error}") from error
    return orjson.dumps({"expression": candidates[0].strip(), "result": value}).decode()


BUILTIN_TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool(
            name="current_time",
            description="The current date and time, in a given IANA time zone (UTC by default).",
            parameters={
                "type": "object",
                "properties": {"timezone": {"type": "string", "description": "e.g. Europe/Lisbon"}},
                "required": [],
                "additionalProperties": False,
            },
            run=_current_time,
        ),
        Tool(
            name="calculator",
            description="Evaluates an arithmetic expression exactly, e.g. '(12 + 30) * 7 / 3'.",
            parameters={
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
                "additionalProperties": False,
            },
            run=_calculator,
        ),
    )
}


class ServerTools:
    """The server-side tools this deployment enabled."""

    def __init__(self, names: list[str]) -> None:
        unknown = [name for name in names if name not in BUILTIN_TOOLS]
        if unknown:
            raise ValueError(f"Unknown tools in PARLEY_TOOLS: {', '.join(unknown)}; known: {', '.join(BUILTIN_TOOLS)}")
        self._tools = {name: BUILTIN_TOOLS[name] for name in names}

    def definitions(self) -> list[dict[str, Any]]:
        return [tool.definition() for tool in self._tools.values()]

    def has(self, name: str) -> bool:
        return name in self._tools

    async def run(self, name: str, arguments: str) -> ToolResult:
        """The output goes back to the model either way; a failure is an output that says what went wrong."""
        try:
            parsed = orjson.loads(arguments or "{}")
            if not isinstance(parsed, dict):
                raise ToolError("The arguments must be a JSON object.")
            output = await asyncio.wait_for(self._tools[name].run(parsed), timeout=TOOL_TIMEOUT_S)
        except orjson.JSONDecodeError:
            return _failure("The arguments are not valid JSON.")
        except TimeoutError:
            return _failure(f"The tool took longer than {TOOL_TIMEOUT_S:.0f} s.")
        except ToolError as error:
            return _failure(str(error))
        return ToolResult(output=output)


def _failure(message: str) -> ToolResult:
    return ToolResult(output=orjson.dumps({"error": message}).decode(), error=message)
