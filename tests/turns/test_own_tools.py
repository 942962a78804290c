"""A deployer's own tools, loaded by import path (PARLEY_TOOLS) and by entry point (`parley.tools`), run by
Parley in a turn: their failures reach the model as outputs, a round's calls run at once, and the prompt and
the session narrow which of them a turn offers."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ApiUser, RunningParley, create_api_user, run_parley
from tests.test_cli import PARLEY, _create_key, _env, parley_serve
from tests.turns.helpers import Simulator, conversation_of, new_session, send, simulator_for

TOOLS = """
import asyncio
from typing import Annotated

from pydantic import Field

from app.tools import tool

overlap = {"running": 0, "peak": 0}


@tool
def needs_five(count: Annotated[int, Field(ge=5, description="At least five.")]) -> int:
    '''Doubles a count of at least five.'''
    return count * 2


@tool(timeout_s=0.3)
async def slow_tool() -> str:
    '''Takes its time.'''
    await asyncio.sleep(5)
    return "finally"


@tool
def failing_tool() -> str:
    '''Always fails.'''
    raise RuntimeError("the backend is down")


async def _overlapping(name: str) -> str:
    overlap["running"] += 1
    overlap["peak"] = max(overlap["peak"], overlap["running"])
    await asyncio.sleep(0.3)
    overlap["running"] -= 1
    return name


@tool
async def overlap_a() -> str:
    '''Part one.'''
    return await _overlapping("a")


@tool
async def overlap_b() -> str:
    '''Part two.'''
    return await _overlapping("b")
"""

EXTRA = """
from app.tools import tool


@tool
def lookup(term: str) -> dict[str, str]:
    '''Looks a term up in the glossary.'''
    return {"term": term, "meaning": "a word"}


EXTRA = [lookup]
"""

PLAIN_PROMPT = "pmpt_parley_plain"


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A deployer's package on sys.path, with a distribution that offers one more tool by entry point."""
    root = tmp_path_factory.mktemp("deployer")
    name = f"own_tools_{uuid.uuid4().hex[:8]}"
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    (root / name / "tools.py").write_text(TOOLS)
    (root / name / "extra.py").write_text(EXTRA)
    dist = root / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[parley.tools]\nglossary = {name}.extra:EXTRA\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(root))
        yield name


@pytest.fixture(scope="module")
def owned(database_url: str, backend: str, package: str) -> Iterator[RunningParley]:
    with run_parley(
        database_url,
        backend,
        tools=["calculator", f"{package}:tools"],
        prompt_tools={PLAIN_PROMPT: ["calculator", "lookup"]},
    ) as running:
        yield running


@pytest.fixture
async def http(owned: RunningParley) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=owned.base_url, timeout=30) as client:
        yield client


@pytest.fixture
async def person(http: httpx.AsyncClient) -> ApiUser:
    return await create_api_user(http)


@pytest.fixture
def sim(owned: RunningParley, http: httpx.AsyncClient) -> Simulator:
    return simulator_for(owned, http)


async def _tool_turn(http: httpx.AsyncClient, person: ApiUser, text: str, **session: Any) -> tuple[Any, str]:
    session_id = await new_session(http, person, **session)
    stream = await send(http, person, session_id, {"input": text})
    assert stream.names[-1] == "turn.completed", stream.names
    assert stream.terminal.data["turn"]["status"] == "completed"
    return stream, session_id


def _completed(stream: Any) -> list[dict[str, Any]]:
    return [event.data for event in stream.events if event.name == "turn.tool_call.completed"]


async def test_tools_by_import_path_and_entry_point_are_offered_and_run(
    http: httpx.AsyncClient, person: ApiUser, sim: Simulator
) -> None:
    config = (await http.get("/v1/config", headers=person.headers)).json()
    described = {tool["name"]: tool["description"] for tool in config["server_tools"]}
    assert described["lookup"] == "Looks a term up in the glossary."
    assert described["needs_five"] == "Doubles a count of at least five."
    assert {"calculator", "slow_tool", "failing_tool", "overlap_a", "overlap_b"} <= set(described)

    stream, session_id = await _tool_turn(http, person, "Please lookup the word parley")
    (done,) = _completed(stream)
    assert done["name"] == "lookup"
    assert done["error"] is None
    assert json.loads(done["output"]) == {"term": "Please lookup the word parley", "meaning": "a word"}
    calls = await sim.response_calls(await conversation_of(http, person, session_id))
    offered = {tool["name"]: tool for tool in calls[0]["body"]["tools"]}
    assert offered["lookup"]["strict"] is True
    assert offered["lookup"]["parameters"]["required"] == ["term"]
    assert calls[1]["body"]["input"][0]["output"] == done["output"]


async def test_arguments_the_model_got_wrong_reach_it_as_words(
    http: httpx.AsyncClient, person: ApiUser, sim: Simulator
) -> None:
    # The simulator fills an integer with 1: below the tool's minimum of five.
    stream, session_id = await _tool_turn(http, person, "Use needs_five please")
    (done,) = _completed(stream)
    assert done["error"] == "Invalid arguments: count: Input should be greater than or equal to 5."
    assert json.loads(done["output"]) == {"error": done["error"]}
    calls = await sim.response_calls(await conversation_of(http, person, session_id))
    assert calls[1]["body"]["input"][0]["output"] == done["output"]


async def test_a_slow_tool_times_out_and_a_failing_one_says_why(http: httpx.AsyncClient, person: ApiUser) -> None:
    stream, _ = await _tool_turn(http, person, "Run slow_tool")
    (done,) = _completed(stream)
    assert done["error"] == "The tool took longer than 0.3 s and was stopped."
    assert json.loads(done["output"]) == {"error": done["error"]}

    stream, _ = await _tool_turn(http, person, "Run failing_tool")
    (done,) = _completed(stream)
    assert done["error"] == "The tool failed: RuntimeError: the backend is down"


async def test_the_calls_of_one_round_run_at_once(
    http: httpx.AsyncClient, person: ApiUser, sim: Simulator, package: str
) -> None:
    overlap = sys.modules[f"{package}.tools"].overlap
    overlap["peak"] = 0
    stream, session_id = await _tool_turn(http, person, "Use overlap_a and overlap_b together")
    names = stream.names
    # Both announced before either finished, and both were running at one moment.
    started = [i for i, name in enumerate(names) if name == "turn.tool_call.started"]
    completed = [i for i, name in enumerate(names) if name == "turn.tool_call.completed"]
    assert len(started) == len(completed) == 2
    assert max(started) < min(completed)
    assert overlap["peak"] == 2
    # The next round sends the outputs in the order the model made the calls.
    calls = await sim.response_calls(await conversation_of(http, person, session_id))
    order = [stream.events[i].data["call_id"] for i in started]
    sent = calls[1]["body"]["input"]
    assert [item["call_id"] for item in sent] == order
    assert [item["output"] for item in sent] == ["a", "b"]


async def test_the_prompt_and_the_session_narrow_the_tools(
    http: httpx.AsyncClient, person: ApiUser, sim: Simulator
) -> None:
    async def offered(session_id: str) -> set[str]:
        await send(http, person, session_id, {"input": "Hello there"})
        calls = await sim.response_calls(await conversation_of(http, person, session_id))
        return {tool["name"] for tool in calls[-1]["body"].get("tools") or []}

    everything = await new_session(http, person)
    assert {"calculator", "lookup", "needs_five", "slow_tool"} <= await offered(everything)

    # The prompt's list (PARLEY_PROMPT_TOOLS), then the session's within it.
    plain = await new_session(http, person, prompt={"id": PLAIN_PROMPT})
    assert await offered(plain) == {"calculator", "lookup"}
    narrowed = await new_session(http, person, prompt={"id": PLAIN_PROMPT}, server_tools=["lookup", "needs_five"])
    assert await offered(narrowed) == {"lookup"}

    own = await new_session(http, person, server_tools=["needs_five"])
    read = (await http.get(f"/v1/sessions/{own}", headers=person.headers)).json()
    assert read["server_tools"] == ["needs_five"]
    assert await offered(own) == {"needs_five"}
    patched = await http.patch(f"/v1/sessions/{own}", json={"server_tools": []}, headers=person.headers)
    assert patched.json()["server_tools"] == []
    assert await offered(own) == set()
    patched = await http.patch(f"/v1/sessions/{own}", json={"server_tools": None}, headers=person.headers)
    assert patched.json()["server_tools"] is None
    assert "slow_tool" in await offered(own)


async def test_unknown_server_tools_are_refused(http: httpx.AsyncClient, person: ApiUser) -> None:
    created = await http.post("/v1/sessions", json={"server_tools": ["lookup", "teleport"]}, headers=person.headers)
    assert created.status_code == 422
    error = created.json()["error"]
    assert (error["param"], error["code"]) == ("server_tools", "unknown_server_tool")
    assert "teleport" in error["message"]
    assert "lookup" not in error["message"].split(";")[0]
    session_id = await new_session(http, person)
    patched = await http.patch(
        f"/v1/sessions/{session_id}", json={"server_tools": ["warp", "calculator"]}, headers=person.headers
    )
    assert patched.status_code == 422
    assert "warp" in patched.json()["error"]["message"]


def test_parley_serve_loads_a_deployers_tool_by_import_path(tmp_path: Path) -> None:
    (tmp_path / "mytools.py").write_text(
        "from app.tools import tool\n\n\n@tool\ndef weather(city: str) -> str:\n"
        '    """The weather in a city."""\n    return f"Sunny in {city}"\n'
    )
    env = _env(PYTHONPATH=str(tmp_path), PARLEY_TOOLS="calculator,mytools:weather")
    key = _create_key(tmp_path, env, "deployer")
    with parley_serve(tmp_path, env) as served:
        config = httpx.get(f"{served.base_url}/v1/config", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert config.status_code == 200, config.text
        assert {"name": "weather", "description": "The weather in a city."} in config.json()["server_tools"]

    # A path that names nothing stops the server before it starts, in one line.
    env["PARLEY_TOOLS"] = "mytools:rain"
    bad = subprocess.run([PARLEY, "serve"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "mytools has no 'rain'" in bad.stderr
    assert "Traceback" not in bad.stderr
