from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.conftest import ApiUser, RunningParley, create_api_user, run_parley
from tests.turns.helpers import Simulator, simulator_for


@pytest.fixture(scope="module")
def observed(database_url: str, backend: str) -> Iterator[RunningParley]:
    """A server of this module's own, so its metrics move only by what these tests do."""
    with run_parley(database_url, backend) as running:
        yield running


@pytest.fixture
async def http(observed: RunningParley) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=observed.base_url, timeout=30) as client:
        yield client


@pytest.fixture
async def person(http: httpx.AsyncClient) -> ApiUser:
    return await create_api_user(http)


@pytest.fixture
async def simulator(observed: RunningParley, http: httpx.AsyncClient) -> AsyncIterator[Simulator]:
    sim = simulator_for(observed, http)
    await sim.configure(tokens_per_second=0, first_token_delay_ms=0, output_tokens=None)
    yield sim
    await sim.configure(tokens_per_second=0, first_token_delay_ms=0, output_tokens=None)
