"""The built-in tools, enabled by name (PARLEY_TOOLS=current_time,calculator); the template for a deployer's own."""

from __future__ import annotations

import ast
import datetime as dt
import operator
import re
from collections.abc import Callable
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field

from app.tools import ToolError, tool


@tool
def current_time(
    timezone: Annotated[str, Field(description="An IANA time zone, e.g. Europe/Lisbon; UTC if empty.")] = "UTC",
) -> dict[str, str]:
    """The current date and time, in a given IANA time zone (UTC by default)."""
    zone_name = timezone.strip() or "UTC"
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ToolError(f"Unknown time zone {zone_name!r}; use an IANA name such as 'Europe/Lisbon'.") from error
    now = dt.datetime.now(zone)
    return {"timezone": zone_name, "iso": now.isoformat(), "weekday": now.strftime("%A")}


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


@tool
def calculator(
    expression: Annotated[str, Field(description="e.g. (12 + 30) * 7 / 3")],
) -> dict[str, Any]:
    """Evaluates an arithmetic expression exactly, e.g. '(12 + 30) * 7 / 3'."""
    # Models (and the simulator) sometimes wrap the arithmetic in words: take the longest arithmetic run.
    candidates = sorted(_ARITHMETIC.findall(expression), key=len, reverse=True)
    if not candidates or len(expression) > 1_000:
        raise ToolError("No arithmetic expression found.")
    arithmetic = candidates[0].strip()
    try:
        value = _evaluate(ast.parse(arithmetic, mode="eval"))
    except (SyntaxError, ZeroDivisionError, OverflowError) as error:
        raise ToolError(f"Cannot evaluate {arithmetic!r}: {error}") from error
    return {"expression": arithmetic, "result": value}
