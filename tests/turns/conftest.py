from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import build_engine
from tests.conftest import RunningParley
from tests.turns.helpers import Simulator, simulator_for


@pytest.fixture
async def sim(parley: RunningParley, client: httpx.AsyncClient) -> AsyncIterator[Simulator]:
    simulator = simulator_for(parley, client)
    await simulator.configure(tokens_per_second=0, first_token_delay_ms=0, output_tokens=None)
    yield simulator
    await simulator.configure(tokens_per_second=0, first_token_delay_ms=0, output_tokens=None)


@pytest.fixture(scope="session")
async def db_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = build_engine(database_url)
    yield engine
    await engine.dispose()
