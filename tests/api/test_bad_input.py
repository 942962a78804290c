"""Bad input gets a clear 4xx in the error envelope, never a 500, and nothing stored changes."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ApiUser, RunningParley


def _assert_envelope(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "code", "message", "param"}
    assert "Traceback" not in response.text
    return dict(body["error"])


async def test_malformed_json_is_400(client: httpx.AsyncClient, user: ApiUser) -> None:
    response = await client.post(
        "/v1/sessions", content=b'{"title": "x",', headers=user.headers | {"Content-Type": "application/json"}
    )
    error = _assert_envelope(response, 400)
    assert error["code"] == "invalid_json"


async def test_non_json_body_is_415(client: httpx.AsyncClient, user: ApiUser) -> None:
    response = await client.post(
        "/v1/sessions", content=b"title=x", headers=user.headers | {"Content-Type": "application/x-www-form-urlencoded"}
    )
    _assert_envelope(response, 415)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"title": "x" * 201}, "title"),
        ({"title": 5}, "title"),
        ({"title": "nul\x00byte"}, "title"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        (
            {"metadata": {"k" * 65: "v"}},
            "metadata.kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk.[key]",
        ),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"metadata": "nope"}, "metadata"),
        ({"prompt": {"version": "1"}}, "prompt.id"),
        ({"prompt": {"id": "../../etc"}}, "prompt.id"),
        ({"prompt": {"id": "pmpt_x", "extra": 1}}, "prompt.extra"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "x" * 32_001}]}, "messages.0.content"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"model": ""}, "model"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
async def test_invalid_session_fields_are_422(
    client: httpx.AsyncClient, user: ApiUser, parley: RunningParley, body: dict[str, object], param: str
) -> None:
    before = (await client.get(f"{parley.simulator_url}/_control/requests", headers=parley.admin_headers)).json()
    response = await client.post("/v1/sessions", json=body, headers=user.headers)
    error = _assert_envelope(response, 422)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    after = (await client.get(f"{parley.simulator_url}/_control/requests", headers=parley.admin_headers)).json()
    assert len(after) == len(before)  # nothing upstream
    assert (await client.get("/v1/sessions", headers=user.headers)).json()["data"] == []


async def test_nul_in_patch_leaves_the_session_unchanged(client: httpx.AsyncClient, user: ApiUser) -> None:
    created = (await client.post("/v1/sessions", json={"title": "keep"}, headers=user.headers)).json()
    response = await client.patch(f"/v1/sessions/{created['id']}", json={"title": "a\x00b"}, headers=user.headers)
    _assert_envelope(response, 422)
    assert (await client.get(f"/v1/sessions/{created['id']}", headers=user.headers)).json() == created


@pytest.mark.parametrize(
    "session_id",
    ["nope", "sess_' OR 1=1 --", "x" * 10_000, "sess_%00", "%2e%2e%2f", "sess_" + "0" * 32],
)
async def test_invalid_or_unknown_ids_are_404_or_422(client: httpx.AsyncClient, user: ApiUser, session_id: str) -> None:
    response = await client.get(f"/v1/sessions/{session_id}", headers=user.headers)
    assert response.status_code in (404, 422), response.text
    _assert_envelope(response, response.status_code)


@pytest.mark.parametrize(
    "params",
    [{"limit": 1_000_000}, {"limit": 0}, {"limit": "ten"}, {"order": "sideways"}, {"after": "x" * 500}],
)
async def test_invalid_list_parameters_are_422(
    client: httpx.AsyncClient, user: ApiUser, params: dict[str, object]
) -> None:
    _assert_envelope(await client.get("/v1/sessions", params=params, headers=user.headers), 422)


async def test_oversized_body_is_413_before_parsing(client: httpx.AsyncClient, user: ApiUser) -> None:
    big = b'{"title": "' + b"x" * 2_000_000 + b'"}'
    response = await client.post(
        "/v1/sessions", content=big, headers=user.headers | {"Content-Type": "application/json"}
    )
    _assert_envelope(response, 413)


async def test_oversized_chunked_body_is_413(client: httpx.AsyncClient, user: ApiUser) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        yield b'{"title": "'
        for _ in range(40):
            yield b"x" * 65_536
        yield b'"}'

    response = await client.post(
        "/v1/sessions", content=chunks(), headers=user.headers | {"Content-Type": "application/json"}
    )
    _assert_envelope(response, 413)


async def test_unknown_route_and_wrong_method(client: httpx.AsyncClient, user: ApiUser) -> None:
    _assert_envelope(await client.get("/v1/nothing-here", headers=user.headers), 404)
    error = _assert_envelope(await client.put("/v1/sessions", json={}, headers=user.headers), 405)
    assert error["code"] == "method_not_allowed"


async def test_api_responses_are_not_cached_or_sniffed(client: httpx.AsyncClient, user: ApiUser) -> None:
    response = await client.get("/v1/sessions", headers=user.headers)
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"input": 5}, "input", "must be a string or a list, not a number"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://10.0.0.1/x.png"}]}]},
            "input.0.content.0.image_url",
            "https://",
        ),
    ],
)
async def test_a_field_of_a_union_is_named_in_plain_words(
    client: httpx.AsyncClient, user: ApiUser, body: dict[str, object], param: str, words: str
) -> None:
    """`input` is a string or a list of items: the error names the field the client wrote and says what is
    wrong with it, not pydantic's labels of the union's members (`function-after[<function … at 0x…>]`)."""
    created = await client.post("/v1/sessions", json={}, headers=user.headers)
    response = await client.post(f"/v1/sessions/{created.json()['id']}/messages", json=body, headers=user.headers)
    error = _assert_envelope(response, 422)
    assert error["param"] == param
    assert words in str(error["message"])
    assert "function" not in str(error["message"])
    assert "0x" not in str(error["message"])


async def test_values_the_schema_does_not_offer_are_refused(
    client: httpx.AsyncClient, user: ApiUser, parley: RunningParley
) -> None:
    """What pydantic would coerce but the OpenAPI document does not allow (found by tests/api/test_schema_fuzz.py):
    a number as a date, 0 as a boolean, a float as money."""
    session_id = (await client.post("/v1/sessions", json={}, headers=user.headers)).json()["id"]
    refused = [
        await client.get("/v1/usage", params={"end": "0.5"}, headers=user.headers),
        await client.post(
            f"/v1/sessions/{session_id}/messages", json={"input": "hi", "stream": 0}, headers=user.headers
        ),
        await client.put(
            f"/v1/admin/users/{user.id}/budget", json={"monthly_budget_usd": 25.5}, headers=parley.admin_headers
        ),
    ]
    for response in refused:
        _assert_envelope(response, 422)
    assert (await client.get("/v1/usage", params={"start": "2026-11-01"}, headers=user.headers)).status_code == 200
    budget = await client.put(
        f"/v1/admin/users/{user.id}/budget", json={"monthly_budget_usd": "25.50"}, headers=parley.admin_headers
    )
    assert budget.status_code == 200, budget.text
    assert budget.json()["monthly_budget_usd"] == "25.50000000"


@pytest.mark.parametrize(
    "parameters",
    [{"type": "object", "description": "nul\x00inside"}, {"type": "object", "properties": {"a\x00b": {}}}],
)
async def test_nul_inside_a_tools_schema_is_422(
    client: httpx.AsyncClient, user: ApiUser, parameters: dict[str, object]
) -> None:
    """Found by tests/api/test_schema_fuzz.py: a NUL in a function tool's free-form `parameters` was a 500 on
    Postgres, which stores no NUL in text (the turn keeps the request it sent upstream)."""
    session_id = (await client.post("/v1/sessions", json={}, headers=user.headers)).json()["id"]
    body = {"input": "hi", "stream": False, "tools": [{"type": "function", "name": "f", "parameters": parameters}]}
    response = await client.post(f"/v1/sessions/{session_id}/messages", json=body, headers=user.headers)
    error = _assert_envelope(response, 422)
    assert error["param"] == "tools.0.parameters"
    turns = await client.get(f"/v1/sessions/{session_id}/turns", headers=user.headers)
    assert turns.json()["data"] == []
