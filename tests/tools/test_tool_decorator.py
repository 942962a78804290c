"""The `tool` decorator and the registry a deployment's tools are loaded by (PARLEY_TOOLS, entry points)."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import BaseModel, Field

from app.services.server_tools import ServerTools
from app.tools import Tool, ToolError, tool
from app.tools.registry import ToolConfigError, check_prompt_tools, load_tools


class Forecast(BaseModel):
    city: str
    days: int = Field(ge=1, le=7)


@tool
async def forecast(arguments: Forecast) -> dict[str, object]:
    """The weather for the next days."""
    return {"city": arguments.city, "days": arguments.days}


@tool(name="shout", description="Upper-cases a word.", timeout_s=0.2)
def loud(word: Annotated[str, Field(description="One word.")], times: int = 1) -> str:
    return (word.upper() + " ") * times


def _module(directory: Path, source: str) -> str:
    """A module of the deployer's, in a directory on sys.path; returns its (unique) name."""
    name = f"deployer_tools_{uuid.uuid4().hex[:8]}"
    (directory / f"{name}.py").write_text(source)
    return name


DEPLOYER_TOOLS = """
from app.tools import tool

@tool
def weather(city: str) -> str:
    '''The weather in a city.'''
    return f"Sunny in {city}"

@tool
async def tide(port: str) -> dict[str, str]:
    '''High tide in a port.'''
    return {"port": port, "high": "06:12"}

helpers = [weather, tide]
not_a_tool = 42
"""


def test_the_definition_is_a_strict_function_tool() -> None:
    assert isinstance(forecast, Tool)
    definition = forecast.definition
    assert definition["type"] == "function"
    assert definition["name"] == "forecast"
    assert definition["description"] == "The weather for the next days."
    assert definition["strict"] is True
    assert definition["parameters"]["additionalProperties"] is False
    assert sorted(definition["parameters"]["required"]) == ["city", "days"]

    shout = loud.definition
    assert (shout["name"], shout["description"]) == ("shout", "Upper-cases a word.")
    assert shout["parameters"]["properties"]["word"]["description"] == "One word."
    # Strict: every property is required, the defaulted one too.
    assert sorted(shout["parameters"]["required"]) == ["times", "word"]
    # Decorated, the function is still callable as it was.
    assert loud("hi", times=2) == "HI HI "


async def test_invoking_validates_and_serialises() -> None:
    assert json.loads(await forecast.invoke({"city": "Porto", "days": 3})) == {"city": "Porto", "days": 3}
    assert await loud.invoke({"word": "hey", "times": 1}) == "HEY "
    with pytest.raises(ToolError) as refused:
        await forecast.invoke({"city": "Porto", "days": 9})
    assert "days" in str(refused.value)
    assert "less than or equal to 7" in str(refused.value)


async def test_a_sync_tool_runs_in_a_worker_thread() -> None:
    seen: list[int] = []

    @tool
    def where() -> str:
        """Which thread runs it."""
        seen.append(threading.get_ident())
        return "ok"

    assert await where.invoke({}) == "ok"
    assert seen
    assert seen[0] != threading.get_ident()


async def test_failures_become_error_outputs() -> None:
    @tool(timeout_s=0.1)
    async def sleepy() -> str:
        """Sleeps."""
        await asyncio.sleep(5)
        return "late"

    @tool
    def broken(n: int) -> int:
        """Divides by zero."""
        return n // 0

    tools = ServerTools([sleepy, broken, forecast], timeout_s=5)
    timed_out = await tools.run("sleepy", "{}")
    assert timed_out.error is not None
    assert "longer than 0.1 s" in timed_out.error
    assert json.loads(timed_out.output) == {"error": timed_out.error}
    crashed = await tools.run("broken", '{"n": 1}')
    assert crashed.error is not None
    assert "ZeroDivisionError" in crashed.error
    invalid = await tools.run("forecast", '{"city": "Porto"}')
    assert invalid.error == "Invalid arguments: days: Field required."
    assert (await tools.run("forecast", "{not json")).error == "The arguments are not valid JSON."


def test_a_function_a_model_cannot_call_is_refused() -> None:
    with pytest.raises(TypeError, match="type annotation"):

        @tool
        def untyped(city) -> str:  # type: ignore[no-untyped-def]
            """No annotation."""
            return str(city)

    with pytest.raises(TypeError, match="description"):

        @tool
        def silent(city: str) -> str:
            return city


def test_loading_by_import_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    name = _module(tmp_path, DEPLOYER_TOOLS)
    loaded = load_tools([f"{name}:weather"], entry_points=False)
    assert [t.name for t in loaded] == ["weather"]
    assert [t.name for t in load_tools([f"{name}:helpers"], entry_points=False)] == ["weather", "tide"]
    # A module (`package:module`): every tool defined in it; a built-in name and the same tool twice are fine.
    package = tmp_path / f"pkg_{name}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tools.py").write_text(DEPLOYER_TOOLS)
    both = load_tools(["calculator", f"pkg_{name}:tools", f"pkg_{name}.tools:weather"], entry_points=False)
    assert [t.name for t in both] == ["calculator", "weather", "tide"]


def test_loading_by_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _module(tmp_path, DEPLOYER_TOOLS)
    dist = tmp_path / "deployer_tools-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: deployer-tools\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[parley.tools]\nweather = {name}:weather\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [t.name for t in load_tools(["calculator"])] == ["calculator", "weather"]


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("clock", "neither a built-in tool"),
        ("no_such_module_here:weather", "could not be imported"),
        ("{module}:rain", "has no 'rain'"),
        ("{module}:not_a_tool", "is not a tool"),
    ],
)
def test_a_bad_entry_is_a_clear_error(entry: str, words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    name = _module(tmp_path, DEPLOYER_TOOLS)
    with pytest.raises(ToolConfigError, match=words):
        load_tools([entry.format(module=name)], entry_points=False)


def test_two_tools_of_one_name_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    name = _module(
        tmp_path, "from app.tools import tool\n\n@tool\ndef calculator(x: str) -> str:\n    '''Mine.'''\n    return x\n"
    )
    with pytest.raises(ToolConfigError, match="Two tools are named 'calculator'"):
        load_tools(["calculator", f"{name}:calculator"], entry_points=False)


def test_prompt_tools_name_loaded_tools() -> None:
    loaded = load_tools(["calculator"], entry_points=False)
    check_prompt_tools({"pmpt_a": ["calculator"]}, loaded)
    with pytest.raises(ToolConfigError, match="current_time"):
        check_prompt_tools({"pmpt_a": ["current_time"]}, loaded)


def test_a_turn_may_use_what_its_prompt_and_session_allow() -> None:
    tools = ServerTools(
        load_tools(["calculator", "current_time"], entry_points=False), prompt_tools={"p": ["calculator"]}
    )
    assert tools.allowed_names(None, None) is None
    assert tools.allowed_names("p", None) == {"calculator"}
    assert tools.allowed_names("other", ["current_time"]) == {"current_time"}
    assert tools.allowed_names("p", ["current_time"]) == frozenset()
