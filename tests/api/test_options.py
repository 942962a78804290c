"""Responses options per message and per session, forwarded under their own names as the deployment allows them;
built-in tools where it allows their type; `GET /v1/config` tells a client what it may choose."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ApiUser, RunningParley, create_api_user, run_parley
from tests.turns.helpers import conversation_of, new_session, send, simulator_for

EVERY_DEFAULT_OPTION: dict[str, Any] = {
    "text": {
        "format": {
            "type": "json_schema",
            "name": "packing_list",
            "schema": {
                "type": "object",
                "properties": {"items": {"type": "array", "items": {"type": "string"}}},
                "required": ["items"],
                "additionalProperties": False,
            },
            "strict": True,
        },
        "verbosity": "low",
    },
    "reasoning": {"effort": "low", "summary": "auto"},
    "max_output_tokens": 512,
    "truncation": "disabled",
    "temperature": 0.2,
    "top_p": 0.9,
    "tool_choice": "auto",
    "parallel_tool_calls": False,
}


@pytest.fixture(scope="module")
def builtins(database_url: str, backend: str) -> Iterator[RunningParley]:
    with run_parley(database_url, backend, allowed_builtin_tools=["web_search"]) as running:
        yield running


@pytest.fixture
async def http_builtins(builtins: RunningParley) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=builtins.base_url, timeout=30) as client:
        yield client


async def _last_body(
    client: httpx.AsyncClient, parley: RunningParley, user: ApiUser, session_id: str
) -> dict[str, Any]:
    calls = await simulator_for(parley, client).response_calls(await conversation_of(client, user, session_id))
    return dict(calls[-1]["body"])


async def test_every_allowed_option_reaches_the_upstream_by_its_name(
    client: httpx.AsyncClient, parley: RunningParley
) -> None:
    user = await create_api_user(client)
    session_id = await new_session(client, user)
    stream = await send(client, user, session_id, {"input": "Pack for Lisbon.", "options": EVERY_DEFAULT_OPTION})
    assert stream.terminal.name == "turn.completed", stream.terminal.data
    body = await _last_body(client, parley, user, session_id)
    for name, value in EVERY_DEFAULT_OPTION.items():
        assert body[name] == value, name


async def test_truncation_is_auto_unless_chosen(client: httpx.AsyncClient, parley: RunningParley) -> None:
    user = await create_api_user(client)
    session_id = await new_session(client, user)
    await send(client, user, session_id, {"input": "Hello."})
    assert (await _last_body(client, parley, user, session_id))["truncation"] == "auto"


async def test_a_messages_options_override_its_sessions_and_patch_replaces_them(
    client: httpx.AsyncClient, parley: RunningParley
) -> None:
    user = await create_api_user(client)
    created = await client.post(
        "/v1/sessions", json={"options": {"temperature": 0.3, "max_output_tokens": 300}}, headers=user.headers
    )
    assert created.status_code == 201, created.text
    assert created.json()["options"] == {"temperature": 0.3, "max_output_tokens": 300}
    session_id = created.json()["id"]

    await send(client, user, session_id, {"input": "One.", "options": {"temperature": 1.1}})
    body = await _last_body(client, parley, user, session_id)
    assert (body["temperature"], body["max_output_tokens"]) == (1.1, 300)

    patched = await client.patch(f"/v1/sessions/{session_id}", json={"options": {"top_p": 0.5}}, headers=user.headers)
    assert patched.json()["options"] == {"top_p": 0.5}
    await send(client, user, session_id, {"input": "Two."})
    body = await _last_body(client, parley, user, session_id)
    assert body["top_p"] == 0.5
    assert "temperature" not in body
    assert "max_output_tokens" not in body

    cleared = await client.patch(f"/v1/sessions/{session_id}", json={"options": {}}, headers=user.headers)
    assert cleared.json()["options"] == {}


@pytest.mark.parametrize(
    ("options", "code", "words"),
    [
        ({"service_tier": "priority"}, "option_not_allowed", "service_tier"),
        ({"prompt_cache_key": "k"}, "option_not_allowed", "prompt_cache_key"),
        ({"seed": 3}, None, "seed"),
        ({"temperature": 3}, None, "temperature"),
        ({"reasoning": {"effort": "extreme"}}, None, "effort"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, None, "schema"),
        ({"tool_choice": "sometimes"}, None, "tool_choice"),
        ({"max_output_tokens": 1}, None, "max_output_tokens"),
    ],
)
async def test_an_option_the_deployment_does_not_allow_or_a_bad_value_is_a_422_naming_it(
    client: httpx.AsyncClient, parley: RunningParley, options: dict[str, Any], code: str | None, words: str
) -> None:
    user = await create_api_user(client)
    session_id = await new_session(client, user)
    for response in (
        await client.post(
            f"/v1/sessions/{session_id}/messages", json={"input": "Hi", "options": options}, headers=user.headers
        ),
        await client.post("/v1/sessions", json={"options": options}, headers=user.headers),
        await client.patch(f"/v1/sessions/{session_id}", json={"options": options}, headers=user.headers),
    ):
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert words in error["message"] or words in (error.get("param") or ""), error
        if code is not None:
            assert error["code"] == code
    assert await simulator_for(parley, client).response_calls(await conversation_of(client, user, session_id)) == []


async def test_built_in_tools_only_where_the_deployment_allows_their_type(
    client: httpx.AsyncClient, http_builtins: httpx.AsyncClient, builtins: RunningParley
) -> None:
    refusing = await create_api_user(client)
    session_id = await new_session(client, refusing)
    refused = await client.post(
        f"/v1/sessions/{session_id}/messages",
        json={"input": "News?", "tools": [{"type": "web_search"}]},
        headers=refusing.headers,
    )
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "tool_not_allowed"

    user = await create_api_user(http_builtins)
    created = await http_builtins.post(
        "/v1/sessions", json={"tools": [{"type": "web_search", "search_context_size": "low"}]}, headers=user.headers
    )
    assert created.status_code == 201, created.text
    session_id = created.json()["id"]
    stream = await send(http_builtins, user, session_id, {"input": "What's new in Lisbon?"})
    assert stream.terminal.name == "turn.completed", stream.terminal.data
    body = await _last_body(http_builtins, builtins, user, session_id)
    assert {"type": "web_search", "search_context_size": "low"} in body["tools"]
    other = await http_builtins.post(
        f"/v1/sessions/{session_id}/messages",
        json={"input": "Run code", "tools": [{"type": "code_interpreter"}]},
        headers=user.headers,
    )
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "tool_not_allowed"


async def test_config_tells_a_client_what_it_may_choose(client: httpx.AsyncClient, parley: RunningParley) -> None:
    user = await create_api_user(client)
    response = await client.get("/v1/config", headers=user.headers)
    assert response.status_code == 200, response.text
    config = response.json()
    assert config["object"] == "config"
    assert config["options"] == [
        "text",
        "reasoning",
        "max_output_tokens",
        "truncation",
        "temperature",
        "top_p",
        "tool_choice",
        "parallel_tool_calls",
    ]
    assert config["builtin_tools"] == []
    assert config["models"]["default"] == parley.settings.default_model
    assert config["models"]["allowed"] == ["*"]  # the embedded simulator costs nothing: any model
    assert config["prompts"]["default"] == "pmpt_parley_demo"
    assert config["limits"]["max_message_chars"] == parley.settings.max_message_chars
    assert config["limits"]["monthly_budget_usd"] is None
    assert config["limits"]["spent_this_month_usd"] == "0.00000000"
    assert (await client.get("/v1/config")).status_code == 401
