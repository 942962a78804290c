"""A simulator on a loopback port for the whole module set, reset before every test; clients to drive it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest

from app.simulator import create_simulator_app
from tests.servers import serve
from tests.simulator.sse import Event, parse_frames

AUTH = {"Authorization": "Bearer sk-test"}


class Simulator:
    """Raw HTTP to the simulator: its control routes, and `/v1` calls whose exact bytes matter."""

    def __init__(self, base_url: str, http: httpx.AsyncClient) -> None:
        self.base_url = base_url
        self.http = http

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        response = await self.http.request(method, f"/_control/{path}", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    async def faults(self, *faults: dict[str, Any]) -> None:
        await self.control("POST", "next", {"faults": list(faults)})

    async def configure(self, **config: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.control("POST", "config", config)
        return result

    async def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.control("GET", "requests")
        return result

    async def stream_events(self, body: dict[str, Any]) -> list[Event]:
        """POST /v1/responses with stream=true and return every event, framing checked."""
        async with self.http.stream("POST", "/v1/responses", json={"stream": True, **body}, headers=AUTH) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            return parse_frames(await response.aread())


@pytest.fixture(scope="session")
def simulator_url() -> Iterator[str]:
    with serve(create_simulator_app()) as url:
        yield url


@pytest.fixture
async def simulator(simulator_url: str) -> AsyncIterator[Simulator]:
    async with httpx.AsyncClient(base_url=simulator_url, timeout=30) as http:
        sim = Simulator(simulator_url, http)
        await sim.control("POST", "reset")
        yield sim


@pytest.fixture
async def sdk(simulator: Simulator) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{simulator.base_url}/v1", api_key="sk-test", max_retries=0) as client:
        yield client
