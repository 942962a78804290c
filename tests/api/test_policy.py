"""Clients choose only the models and prompts the deployment allows (a model choice is a bill choice)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from app.simulator import create_simulator_app
from tests.conftest import RunningParley, create_api_user, run_parley
from tests.servers import serve


@pytest.fixture(scope="module")
def simulator_url() -> Iterator[str]:
    with serve(create_simulator_app()) as url:
        yield url


@pytest.fixture(scope="module")
def production_like(database_url: str, backend: str, simulator_url: str) -> Iterator[RunningParley]:
    """A deployment with an OpenAI key (pointed at a separate simulator) and explicit allow-lists."""
    with run_parley(
        database_url,
        backend,
        openai_api_key="sk-test-key",
        openai_base_url=f"{simulator_url}/v1",
        allowed_models=["gpt-4.1"],
        allowed_prompts=["pmpt_parley_demo"],
        default_model="gpt-5-mini",
    ) as running:
        yield running


@pytest.fixture
async def http(production_like: RunningParley) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=production_like.base_url, timeout=30) as client:
        yield client


async def test_allowed_and_default_models_are_accepted(http: httpx.AsyncClient) -> None:
    user = await create_api_user(http)
    for model in ("gpt-4.1", "gpt-5-mini"):
        response = await http.post("/v1/sessions", json={"model": model}, headers=user.headers)
        assert response.status_code == 201, response.text


async def test_other_models_and_prompts_are_422(http: httpx.AsyncClient, simulator_url: str) -> None:
    user = await create_api_user(http)
    before = len((await http.get(f"{simulator_url}/_control/requests")).json())
    model = await http.post("/v1/sessions", json={"model": "gpt-5-pro"}, headers=user.headers)
    assert model.status_code == 422
    assert model.json()["error"]["code"] == "model_not_allowed"
    prompt = await http.post("/v1/sessions", json={"prompt": {"id": "pmpt_other"}}, headers=user.headers)
    assert prompt.status_code == 422
    assert prompt.json()["error"]["code"] == "prompt_not_allowed"
    assert len((await http.get(f"{simulator_url}/_control/requests")).json()) == before

    session = (
        await http.post("/v1/sessions", json={"prompt": {"id": "pmpt_parley_demo"}}, headers=user.headers)
    ).json()
    patched = await http.patch(
        f"/v1/sessions/{session['id']}", json={"prompt": {"id": "pmpt_other"}}, headers=user.headers
    )
    assert patched.status_code == 422
    assert (await http.get(f"/v1/sessions/{session['id']}", headers=user.headers)).json()["prompt"] == {
        "id": "pmpt_parley_demo"
    }


async def test_a_keyed_deployment_creates_conversations_on_its_configured_upstream(
    http: httpx.AsyncClient, simulator_url: str
) -> None:
    user = await create_api_user(http)
    assert (await http.post("/v1/sessions", json={}, headers=user.headers)).status_code == 201
    requests = (await http.get(f"{simulator_url}/_control/requests")).json()
    assert requests[-1]["path"] == "/v1/conversations"
