"""Which tools a deployment runs: PARLEY_TOOLS (built-in names and `package.module:attribute` import paths) and
the installed packages' entry points in the group `parley.tools`. Every mistake is an error at startup."""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterable, Mapping, Sequence
from types import ModuleType

from app.tools.core import Tool

ENTRY_POINT_GROUP = "parley.tools"
BUILTIN_TOOLS = {"current_time": "app.tools.builtin:current_time", "calculator": "app.tools.builtin:calculator"}


class ToolConfigError(ValueError):
    """PARLEY_TOOLS, PARLEY_PROMPT_TOOLS or an entry point names something that is not a tool."""


def load_tools(entries: Sequence[str], *, entry_points: bool = True) -> list[Tool]:
    """The tools of PARLEY_TOOLS, in its order, then those the installed packages offer."""
    found: list[tuple[Tool, str]] = []
    for entry in entries:
        where = f"PARLEY_TOOLS: {entry!r}"
        if entry in BUILTIN_TOOLS:
            found.extend((tool, where) for tool in _tools_of(_import(BUILTIN_TOOLS[entry], entry), where))
        elif ":" in entry:
            found.extend((tool, where) for tool in _tools_of(_import(entry, entry), where))
        else:
            raise ToolConfigError(
                f"PARLEY_TOOLS: {entry!r} is neither a built-in tool ({', '.join(BUILTIN_TOOLS)}) nor an import "
                "path such as mypackage.tools:weather."
            )
    if entry_points:
        for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            where = f"the entry point {point.name} = {point.value} ({ENTRY_POINT_GROUP})"
            try:
                loaded = point.load()
            except Exception as error:
                raise ToolConfigError(f"{where} could not be loaded: {type(error).__name__}: {error}") from error
            found.extend((tool, where) for tool in _tools_of(loaded, where))
    by_name: dict[str, tuple[Tool, str]] = {}
    for tool, where in found:
        earlier = by_name.get(tool.name)
        if earlier is not None and earlier[0] is not tool:
            raise ToolConfigError(f"Two tools are named {tool.name!r}: from {earlier[1]} and from {where}.")
        by_name.setdefault(tool.name, (tool, where))
    return [tool for tool, _ in by_name.values()]


def check_prompt_tools(prompt_tools: Mapping[str, Iterable[str]], tools: Iterable[Tool]) -> None:
    """PARLEY_PROMPT_TOOLS may name only tools the deployment has."""
    known = {tool.name for tool in tools}
    for prompt_id, names in prompt_tools.items():
        unknown = sorted(set(names) - known)
        if unknown:
            raise ToolConfigError(
                f"PARLEY_PROMPT_TOOLS: prompt {prompt_id!r} names {', '.join(unknown)}, which PARLEY_TOOLS does "
                f"not load (loaded: {', '.join(sorted(known)) or 'none'})."
            )


def _import(path: str, entry: str) -> object:
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise ToolConfigError(
            f"PARLEY_TOOLS: {entry!r}: the module {module_name!r} could not be imported: "
            f"{type(error).__name__}: {error}"
        ) from error
    if not attribute:
        return module
    value: object = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            # `package:module` names a module of the package that nothing has imported yet.
            try:
                value = importlib.import_module(f"{module_name}.{attribute}")
            except ModuleNotFoundError as error:
                raise ToolConfigError(f"PARLEY_TOOLS: {entry!r}: {module_name} has no {attribute!r}.") from error
            break
    return value


def _tools_of(value: object, where: str) -> list[Tool]:
    """A tool, a list or tuple of tools, or a module: every tool defined in it."""
    if isinstance(value, Tool):
        return [value]
    if isinstance(value, list | tuple):
        strays = [repr(item) for item in value if not isinstance(item, Tool)]
        if strays:
            raise ToolConfigError(f"{where}: not tools (use the @tool decorator): {', '.join(strays)[:300]}")
        return list(value)
    if isinstance(value, ModuleType):
        tools = [
            item
            for item in vars(value).values()
            if isinstance(item, Tool) and getattr(item.function, "__module__", None) == value.__name__
        ]
        if not tools:
            raise ToolConfigError(f"{where}: the module {value.__name__} defines no tool (use the @tool decorator).")
        return tools
    raise ToolConfigError(
        f"{where}: {type(value).__name__} {value!r:.100} is not a tool; decorate the function with "
        "@tool (from app.tools import tool), or name a list of tools or a module."
    )
