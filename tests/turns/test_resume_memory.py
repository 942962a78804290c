"""The in-memory resume window is bounded in bytes (PARLEY_RESUME_MAX_BYTES): past it the oldest finished
turns' logs go first, and a resume of one gets the stored turn's terminal event, as after the window."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.conftest import ApiUser, RunningParley, create_api_user, run_parley
from tests.observability.scrape import scrape
from tests.turns.helpers import attach, new_session, send, simulator_for

CAP = 150_000  # three or four turns of 60 tokens (~35 KB each)


@pytest.fixture(scope="module")
def capped(database_url: str, backend: str) -> Iterator[RunningParley]:
    with run_parley(database_url, backend, resume_max_bytes=CAP) as running:
        yield running


@pytest.fixture
async def http(capped: RunningParley) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=capped.base_url, timeout=30) as client:
        sim = simulator_for(capped, client)
        await sim.configure(tokens_per_second=0, first_token_delay_ms=0, output_tokens=60)
        yield client
        await sim.configure(tokens_per_second=0, first_token_delay_ms=0, output_tokens=None)


async def test_past_the_byte_cap_the_oldest_finished_turn_resumes_from_the_stored_turn(http: httpx.AsyncClient) -> None:
    user: ApiUser = await create_api_user(http)
    session_id = await new_session(http, user)
    turns: list[tuple[str, int]] = []  # (turn id, its terminal event's id)
    while (await scrape(http)).value("parley_event_log_evictions_total") == 0:
        assert len(turns) < 20, "no log was evicted"
        stream = await send(http, user, session_id, {"input": f"turn {len(turns)}"})
        assert stream.names[-1] == "turn.completed"
        turns.append((stream.events[0].data["turn"]["id"], stream.terminal.id))
    assert len(turns) >= 3
    scraped = await scrape(http)
    assert 0 < scraped.value("parley_event_log_bytes") <= CAP

    evicted: list[bool] = []
    for turn_id, end in turns:
        resumed = await attach(http, user, session_id, turn_id, last_event_id=3)
        if resumed.names == ["turn.completed"]:
            evicted.append(True)  # the stored turn's terminal event alone
        else:
            assert resumed.ids == list(range(4, end + 1))  # the rest of the log, from memory
            evicted.append(False)
        assert resumed.terminal.id == end
    # The turns that finished first, and only those, left: as many as the metric counts.
    count = int(scraped.value("parley_event_log_evictions_total"))
    assert 1 <= count < len(turns)
    assert evicted == [True] * count + [False] * (len(turns) - count)
