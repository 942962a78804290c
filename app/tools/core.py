"""The `tool` decorator: a typed Python function becomes a function tool with a strict JSON schema.

The schema is the SDK's own (`openai.pydantic_function_tool`) of the function's argument model: either its one
pydantic model parameter, or a model built from its annotated parameters. Parley validates the model's
arguments against that model before the function runs, so a function only ever sees typed values.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, overload

import openai
import orjson
from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic_core import to_jsonable_python

__all__ = ["Tool", "ToolError", "tool"]


class ToolError(Exception):
    """A tool could not do what was asked; the message goes to the model as the call's output."""


@dataclass(frozen=True, slots=True, eq=False)
class Tool:
    """A function tool Parley runs itself. Calling it calls the function, as if it were not decorated."""

    name: str
    description: str
    arguments: type[BaseModel]
    function: Callable[..., Any]
    # None: the deployment's PARLEY_TOOL_TIMEOUT_S.
    timeout_s: float | None = None
    # The function takes the argument model itself rather than its fields as keyword arguments.
    takes_model: bool = False
    definition: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        # The SDK builds a Chat Completions tool; the Responses API wants the same fields one level up.
        built = openai.pydantic_function_tool(self.arguments, name=self.name, description=self.description)
        function = dict(built["function"])
        object.__setattr__(self, "definition", {"type": "function", **function})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    async def invoke(self, arguments: dict[str, Any]) -> str:
        """Validate the model's arguments, run the function (a sync one in a worker thread) and return its
        result as the call's output: a string as it is, anything else as JSON. Raises `ToolError` for
        arguments the argument model refuses."""
        try:
            model = self.arguments.model_validate(arguments)
        except ValidationError as error:
            raise ToolError(describe_validation_error(error)) from error
        if self.takes_model:
            call = functools.partial(self.function, model)
        else:
            call = functools.partial(self.function, **{name: getattr(model, name) for name in type(model).model_fields})
        if inspect.iscoroutinefunction(self.function):
            result = await call()
        else:
            result = await asyncio.to_thread(call)
            if inspect.isawaitable(result):
                result = await result
        if isinstance(result, str):
            return result
        return orjson.dumps(result, default=to_jsonable_python).decode()


def describe_validation_error(error: ValidationError) -> str:
    """The argument model's complaints in words a model can act on: which argument, and what is wrong."""
    problems = []
    for problem in error.errors(include_url=False):
        where = ".".join(str(part) for part in problem["loc"]) or "arguments"
        problems.append(f"{where}: {problem['msg']}")
    return "Invalid arguments: " + "; ".join(problems) + "."


def _argument_model(function: Callable[..., Any], name: str) -> tuple[type[BaseModel], bool]:
    hints = typing.get_type_hints(function, include_extras=True)
    parameters = list(inspect.signature(function).parameters.values())
    if len(parameters) == 1:
        annotation = hints.get(parameters[0].name)
        if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
            return annotation, True
    fields: dict[str, Any] = {}
    for parameter in parameters:
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise TypeError(f"Tool {name!r}: *args and **kwargs cannot be described to a model; name each argument.")
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise TypeError(f"Tool {name!r}: parameter {parameter.name!r} is positional-only; tools take keywords.")
        if parameter.name not in hints:
            raise TypeError(f"Tool {name!r}: parameter {parameter.name!r} needs a type annotation.")
        default = ... if parameter.default is inspect.Parameter.empty else parameter.default
        fields[parameter.name] = (hints[parameter.name], default)
    model_name = "".join(part.capitalize() for part in name.split("_")) + "Arguments"
    model: type[BaseModel] = create_model(model_name, __config__=ConfigDict(extra="forbid"), **fields)
    return model, False


def _make(function: Callable[..., Any], *, name: str | None, description: str | None, timeout_s: float | None) -> Tool:
    tool_name = name or function.__name__
    text = description if description is not None else inspect.getdoc(function)
    if not text:
        raise TypeError(f"Tool {tool_name!r} needs a description: a docstring, or tool(description=...).")
    if timeout_s is not None and timeout_s <= 0:
        raise ValueError(f"Tool {tool_name!r}: timeout_s must be positive.")
    arguments, takes_model = _argument_model(function, tool_name)
    return Tool(
        name=tool_name,
        description=text,
        arguments=arguments,
        function=function,
        timeout_s=timeout_s,
        takes_model=takes_model,
    )


@overload
def tool(function: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *, name: str | None = None, description: str | None = None, timeout_s: float | None = None
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    function: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Declare a function tool: `@tool`, or `@tool(name=..., description=..., timeout_s=...)`.

    The function (sync or async) takes one pydantic model, or annotated parameters (`Annotated[int,
    Field(description=...)]` describes one to the model); its docstring is the description the model reads.
    It returns a string, or anything JSON-serialisable (pydantic models included); raising `ToolError` (or any
    exception) gives the model an error output instead.
    """
    if function is not None:
        return _make(function, name=name, description=description, timeout_s=timeout_s)
    return lambda decorated: _make(decorated, name=name, description=description, timeout_s=timeout_s)
