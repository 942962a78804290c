"""The embedded simulator's control routes on Parley's own port: the admin's only, and absent without an admin
token; the standalone simulator's take a control token when it is given one."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.simulator import create_simulator_app
from tests.conftest import ApiUser, RunningParley, run_parley
from tests.servers import serve

CONTROL_ROUTES = [
    ("GET", "/_control/requests", None),
    ("GET", "/_control/config", None),
    ("POST", "/_control/config", {"output_tokens": 3}),
    ("POST", "/_control/next", {"faults": [{"kind": "http_error", "status": 500}]}),
    ("POST", "/_control/reset", None),
]


@pytest.fixture(scope="module")
def without_admin_token(database_url: str, backend: str) -> Iterator[RunningParley]:
    with run_parley(database_url, backend, admin_token=None) as running:
        yield running


@pytest.mark.parametrize(("method", "path", "body"), CONTROL_ROUTES)
async def test_control_routes_need_the_admin_token(
    client: httpx.AsyncClient, parley: RunningParley, user: ApiUser, method: str, path: str, body: object
) -> None:
    url = f"{parley.simulator_url}{path}"
    for headers, status in (
        ({}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": "Basic YWRtaW46YWRtaW4="}, 401),
        ({"Authorization": "Bearer not-the-admin-token"}, 403),
        (user.headers, 403),  # a user's API key is no admin token
    ):
        response = await client.request(method, url, json=body, headers=headers)
        assert response.status_code == status, (headers, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert "token" in error["message"]


async def test_a_refused_control_call_changes_nothing(
    client: httpx.AsyncClient, parley: RunningParley, user: ApiUser
) -> None:
    fault = {"faults": [{"kind": "http_error", "status": 500}]}
    refused = await client.post(f"{parley.simulator_url}/_control/next", json=fault)
    assert refused.status_code == 401
    session = await client.post("/v1/sessions", json={}, headers=user.headers)
    turn = await client.post(
        f"/v1/sessions/{session.json()['id']}/messages", json={"input": "hi", "stream": False}, headers=user.headers
    )
    assert turn.status_code == 200, turn.text
    assert turn.json()["status"] == "completed"


async def test_the_admin_reads_the_request_log(client: httpx.AsyncClient, parley: RunningParley, user: ApiUser) -> None:
    await client.post("/v1/sessions", json={"title": "seen upstream"}, headers=user.headers)
    response = await client.get(f"{parley.simulator_url}/_control/requests", headers=parley.admin_headers)
    assert response.status_code == 200
    assert any(request["path"] == "/v1/conversations" for request in response.json())


@pytest.mark.parametrize(("method", "path", "body"), CONTROL_ROUTES)
async def test_without_an_admin_token_there_are_no_control_routes(
    without_admin_token: RunningParley, method: str, path: str, body: object
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        for headers in ({}, {"Authorization": "Bearer anything"}):
            response = await http.request(
                method, f"{without_admin_token.simulator_url}{path}", json=body, headers=headers
            )
            assert response.status_code == 404, response.text
        # The simulator itself still serves Parley.
        models = await http.get(f"{without_admin_token.simulator_url}/v1/models", headers={"Authorization": "Bearer x"})
        assert models.status_code == 200


async def test_a_standalone_simulator_given_a_control_token_requires_it() -> None:
    with serve(create_simulator_app(control_token="sim-control-token")) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            assert (await http.get("/_control/requests")).status_code == 401
            assert (await http.get("/_control/requests", headers={"Authorization": "Bearer no"})).status_code == 403
            allowed = await http.get("/_control/requests", headers={"Authorization": "Bearer sim-control-token"})
            assert allowed.status_code == 200
            assert allowed.json() == []
