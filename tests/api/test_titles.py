"""Automatic titles: an untitled session is named after its first turn by a small model, after the turn's terminal
event and never before it; a user's title is never replaced; the title's cost is a ledger row of kind `title` on
that first turn, in the session's cost; `PARLEY_TITLE_MODEL=off` makes none; a failed title leaves the turn be."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import build_engine
from app.db.models import UsageRecord
from app.services.titles import INSTRUCTIONS, MAX_AUTO_TITLE_CHARS, clean_title
from app.simulator.titles import title_for
from tests.conftest import ApiUser, RunningParley, create_api_user, run_parley
from tests.turns.helpers import Simulator, new_session, open_stream, send, simulator_for, sse_events

TITLE_MODEL = "gpt-4.1-mini"
# What a "never" is checked over: a title starts as soon as its turn has ended, and the simulator answers at once.
QUIET_S = 1.0


@pytest.fixture(scope="module")
def titled(database_url: str, backend: str) -> Iterator[RunningParley]:
    """Parley with titles on (the suite's servers have them off)."""
    with run_parley(database_url, backend, title_model=TITLE_MODEL) as running:
        yield running


@pytest.fixture
async def http(titled: RunningParley) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=titled.base_url, timeout=30) as client:
        yield client


@pytest.fixture
async def sim(titled: RunningParley, http: httpx.AsyncClient) -> Simulator:
    return simulator_for(titled, http)


@pytest.fixture(scope="module")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    db = build_engine(database_url)
    yield db
    await db.dispose()


def question() -> str:
    """A first message of its own, so that its title request can be told apart from every other test's."""
    return f"How do I plan a trip to Lisbon in spring, {uuid.uuid4().hex[:8]}?"


async def title_requests(sim: Simulator, text: str) -> list[dict[str, Any]]:
    """The title calls the simulator received for a session whose first message was `text`."""
    return [
        body
        for request in await sim.requests()
        if request["method"] == "POST"
        and request["path"] == "/v1/responses"
        and isinstance(body := request.get("body"), dict)
        and body.get("instructions") == INSTRUCTIONS
        and body["input"][0]["content"] == text
    ]


async def session_of(http: httpx.AsyncClient, user: ApiUser, session_id: str) -> dict[str, Any]:
    response = await http.get(f"/v1/sessions/{session_id}", headers=user.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def wait_for_title(http: httpx.AsyncClient, user: ApiUser, session_id: str) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        session = await session_of(http, user, session_id)
        if session["title"] is not None:
            return session
        assert asyncio.get_running_loop().time() < deadline, "no title came"
        await asyncio.sleep(0.05)


async def ledger(engine: AsyncEngine, session_id: str) -> list[Any]:
    async with engine.connect() as connection:
        result = await connection.execute(
            select(UsageRecord.kind, UsageRecord.turn_id, UsageRecord.cost_usd, UsageRecord.model_requested).where(
                UsageRecord.session_id == session_id
            )
        )
        return list(result.all())


async def wait_for_title_row(engine: AsyncEngine, session_id: str) -> list[Any]:
    """The session's ledger once its title's row is there (written whether or not the title was kept)."""
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        rows = await ledger(engine, session_id)
        if any(row.kind == "title" for row in rows):
            return rows
        assert asyncio.get_running_loop().time() < deadline, "no title row came"
        await asyncio.sleep(0.05)


async def send_then_fault_the_title(
    http: httpx.AsyncClient, sim: Simulator, user: ApiUser, session_id: str, text: str, fault: dict[str, Any]
) -> list[str]:
    """Send a first message and, once its own upstream call has been answered (the stream opens only then), queue
    `fault` for the next upstream call: its title's. The answer is paced, so the turn (and its title) cannot end
    before the fault is queued. Returns the names of the turn's events."""
    await sim.configure(tokens_per_second=40, output_tokens=20)
    try:
        async with open_stream(
            http, "POST", f"/v1/sessions/{session_id}/messages", json={"input": text}, headers=user.headers
        ) as (_, source):
            events = sse_events(source)
            assert (await anext(events)).event == "turn.created"
            await sim.faults(fault)
            return ["turn.created", *[sse.event async for sse in events]]
    finally:
        await sim.configure(tokens_per_second=0, output_tokens=None)


async def test_an_untitled_session_is_named_after_its_first_turn_and_pays_for_it_there(
    http: httpx.AsyncClient, sim: Simulator, engine: AsyncEngine
) -> None:
    user = await create_api_user(http)
    session_id = await new_session(http, user)
    assert (await session_of(http, user, session_id))["title_source"] is None
    text = question()

    first = await send(http, user, session_id, {"input": text})
    assert first.terminal.name == "turn.completed"
    first_turn = first.terminal.data["turn"]
    session = await wait_for_title(http, user, session_id)

    assert session["title_source"] == "auto"
    # The simulator's title: a few of the user's words.
    assert session["title"] == title_for(text)
    assert session["title"].startswith("Plan Trip Lisbon Spring")
    (request,) = await title_requests(sim, text)
    assert request["model"] == TITLE_MODEL
    assert request["store"] is False
    assert request["input"][1]["role"] == "assistant"
    assert first_turn["output_text"].startswith(request["input"][1]["content"])

    # One ledger row of kind title, on the first turn, in the session's cost (and the user's usage).
    rows = await wait_for_title_row(engine, session_id)
    (title_row,) = [row for row in rows if row.kind == "title"]
    assert (title_row.turn_id, title_row.model_requested) == (first_turn["id"], TITLE_MODEL)
    assert title_row.cost_usd is not None
    assert title_row.cost_usd > 0
    assert [row.kind for row in rows].count("turn") == 1
    session = await session_of(http, user, session_id)
    assert Decimal(session["total_cost_usd"]) == Decimal(first_turn["cost_usd"]) + title_row.cost_usd
    usage = (await http.get("/v1/usage", params={"group_by": "kind"}, headers=user.headers)).json()
    by_kind = {row["kind"]: row for row in usage["data"]}
    assert (by_kind["turn"]["requests"], by_kind["title"]["requests"]) == (1, 1)
    assert Decimal(usage["totals"]["cost_usd"]) == Decimal(session["total_cost_usd"])

    # A second turn makes no second title.
    second = await send(http, user, session_id, {"input": "And in autumn?"})
    assert second.terminal.name == "turn.completed"
    await asyncio.sleep(QUIET_S)
    assert len(await title_requests(sim, text)) == 1
    assert [row.kind for row in await ledger(engine, session_id)].count("title") == 1
    after = await session_of(http, user, session_id)
    assert (after["title"], after["title_source"]) == (session["title"], "auto")


async def test_the_terminal_event_does_not_wait_for_the_title(
    http: httpx.AsyncClient, sim: Simulator, engine: AsyncEngine
) -> None:
    user = await create_api_user(http)
    session_id = await new_session(http, user)
    text = question()
    # The title's upstream call is held up for a while.
    names = await send_then_fault_the_title(
        http, sim, user, session_id, text, {"kind": "stall", "after_events": 0, "seconds": 3}
    )
    assert names[-1] == "turn.completed"
    # The turn has ended and says so; its title is still being made.
    untitled = await session_of(http, user, session_id)
    assert (untitled["title"], untitled["title_source"]) == (None, None)
    assert untitled["turn_count"] == 1
    titled = await wait_for_title(http, user, session_id)
    assert titled["title_source"] == "auto"
    assert len(await title_requests(sim, text)) == 1


async def test_a_title_given_at_create_is_kept_and_no_title_is_asked_for(
    http: httpx.AsyncClient, sim: Simulator, engine: AsyncEngine
) -> None:
    user = await create_api_user(http)
    session_id = await new_session(http, user, title="Trip notes")
    assert (await session_of(http, user, session_id))["title_source"] == "user"
    text = question()
    assert (await send(http, user, session_id, {"input": text})).terminal.name == "turn.completed"
    await asyncio.sleep(QUIET_S)
    assert await title_requests(sim, text) == []
    session = await session_of(http, user, session_id)
    assert (session["title"], session["title_source"]) == ("Trip notes", "user")
    assert [row.kind for row in await ledger(engine, session_id)] == ["turn"]


async def test_a_title_the_user_sets_while_one_is_being_made_is_kept(
    http: httpx.AsyncClient, sim: Simulator, engine: AsyncEngine
) -> None:
    user = await create_api_user(http)
    session_id = await new_session(http, user)
    text = question()
    names = await send_then_fault_the_title(
        http, sim, user, session_id, text, {"kind": "stall", "after_events": 0, "seconds": 1.5}
    )
    assert names[-1] == "turn.completed"

    renamed = await http.patch(f"/v1/sessions/{session_id}", json={"title": "Mine"}, headers=user.headers)
    assert renamed.status_code == 200, renamed.text
    assert (renamed.json()["title"], renamed.json()["title_source"]) == ("Mine", "user")
    # The title came back from the model after the rename: it was paid for, and it is not used.
    rows = await wait_for_title_row(engine, session_id)
    assert len(await title_requests(sim, text)) == 1
    session = await session_of(http, user, session_id)
    assert (session["title"], session["title_source"]) == ("Mine", "user")
    assert Decimal(session["total_cost_usd"]) == sum(row.cost_usd for row in rows)


async def test_clearing_a_title_leaves_the_session_untitled(http: httpx.AsyncClient) -> None:
    user = await create_api_user(http)
    session_id = await new_session(http, user, title="Draft")
    cleared = await http.patch(f"/v1/sessions/{session_id}", json={"title": None}, headers=user.headers)
    assert (cleared.json()["title"], cleared.json()["title_source"]) == (None, None)
    # Untitled and never used: its first turn names it, as a new session's would.
    assert (await send(http, user, session_id, {"input": question()})).terminal.name == "turn.completed"
    assert (await wait_for_title(http, user, session_id))["title_source"] == "auto"


async def test_a_failed_title_leaves_the_turn_and_the_session_as_they_were(
    http: httpx.AsyncClient, sim: Simulator, engine: AsyncEngine
) -> None:
    user = await create_api_user(http)
    session_id = await new_session(http, user)
    text = question()
    # A 400 is not retried: the title call fails once and for all.
    names = await send_then_fault_the_title(http, sim, user, session_id, text, {"kind": "http_error", "status": 400})
    assert names[-1] == "turn.completed"

    deadline = asyncio.get_running_loop().time() + 15
    while not await title_requests(sim, text):
        assert asyncio.get_running_loop().time() < deadline, "no title was asked for"
        await asyncio.sleep(0.05)
    await asyncio.sleep(QUIET_S)
    session = await session_of(http, user, session_id)
    assert (session["title"], session["title_source"], session["turn_count"]) == (None, None, 1)
    turns = (await http.get(f"/v1/sessions/{session_id}/turns", headers=user.headers)).json()["data"]
    assert [turn["status"] for turn in turns] == ["completed"]
    assert [row.kind for row in await ledger(engine, session_id)] == ["turn"]
    assert Decimal(session["total_cost_usd"]) == Decimal(turns[0]["cost_usd"])
    # The session goes on.
    assert (await send(http, user, session_id, {"input": "Still there?"})).terminal.name == "turn.completed"


async def test_a_first_turn_waiting_for_the_clients_tool_outputs_is_titled_from_the_message(
    http: httpx.AsyncClient, sim: Simulator, engine: AsyncEngine
) -> None:
    weather = {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    user = await create_api_user(http)
    session_id = await new_session(http, user)
    text = f"get_weather for Lisbon {uuid.uuid4().hex[:8]}"
    first = await send(http, user, session_id, {"input": text, "tools": [weather]})
    assert first.terminal.name == "turn.requires_action"
    session = await wait_for_title(http, user, session_id)
    assert (session["title"], session["title_source"]) == (title_for(text), "auto")
    (request,) = await title_requests(sim, text)
    assert len(request["input"]) == 1  # no answer yet: the user's message alone
    (title_row,) = [row for row in await wait_for_title_row(engine, session_id) if row.kind == "title"]
    assert title_row.turn_id == first.terminal.data["turn"]["id"]


async def test_titles_off_makes_none(client: httpx.AsyncClient, parley: RunningParley, user: ApiUser) -> None:
    assert parley.settings.auto_title_model is None  # the suite's own servers: PARLEY_TITLE_MODEL=off
    session_id = await new_session(client, user)
    text = question()
    assert (await send(client, user, session_id, {"input": text})).terminal.name == "turn.completed"
    await asyncio.sleep(QUIET_S)
    assert await title_requests(simulator_for(parley, client), text) == []
    session = (await client.get(f"/v1/sessions/{session_id}", headers=user.headers)).json()
    assert (session["title"], session["title_source"]) == (None, None)


@pytest.mark.parametrize(
    ("answer", "title"),
    [
        ('"Trip to Lisbon."', "Trip to Lisbon"),
        ("Title: Python Decorators Explained!", "Python Decorators Explained"),
        ("**Rust vs Go**\n\nA comparison.", "Rust vs Go"),
        ("\u300c\u6771\u4eac\u65c5\u884c\u306e\u8a08\u753b\u300d\u3002", "\u6771\u4eac\u65c5\u884c\u306e\u8a08\u753b"),
        ("  \n", None),
        ("...", None),
    ],
)
def test_a_model_answer_is_cleaned_into_a_title(answer: str, title: str | None) -> None:
    assert clean_title(answer) == title


def test_a_long_answer_is_cut_at_a_word_within_the_api_limit() -> None:
    from app.api.schemas import MAX_TITLE_CHARS

    title = clean_title("Planning " * 30)
    assert title is not None
    assert len(title) <= MAX_AUTO_TITLE_CHARS <= MAX_TITLE_CHARS
    assert title.endswith("Planning")
