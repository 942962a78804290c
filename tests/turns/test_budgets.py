"""A monthly budget under concurrency: each upstream round reserves what it may cost before it goes, so that
concurrent starts are admitted only while their reservations fit, a 402 says exactly what is left, a turn's
reservation is released when it ends, and a tool round that no longer fits ends its turn instead of going on.

The deployment here prices gpt-4.1 at $2 / $8 per million input / output tokens (a pricing file, so the
figures do not move with genai-prices' data) and reserves 1,000 output tokens a round. A first message "a long
one" in a fresh session, with Parley's default instructions "You are a helpful assistant.", is 38 characters:
13 tokens at one per 3 characters, so it reserves 13 * $0.000002 + 1,000 * $0.000008 = $0.008026."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from app.simulator import create_simulator_app
from tests.conftest import ADMIN_TOKEN, ApiUser, RunningParley, create_api_user, run_parley
from tests.servers import serve
from tests.turns.helpers import Simulator, conversation_of, new_session, send, turn_of, wait_for_status

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MESSAGE = "a long one"
RESERVED = "0.008026"  # what MESSAGE reserves in a fresh session (see the module's docstring)


@pytest.fixture(scope="module")
def simulator_url() -> Iterator[str]:
    with serve(create_simulator_app()) as url:
        yield url


def _settings(simulator_url: str, pricing_file: Path) -> dict[str, object]:
    return {
        "openai_api_key": "sk-test",
        "openai_base_url": f"{simulator_url}/v1",
        "default_model": "gpt-4.1",
        "allowed_models": ["gpt-4.1"],
        "pricing_file": pricing_file,
        "budget_reserve_output_tokens": 1000,
    }


@pytest.fixture(scope="module")
def pricing_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pricing") / "prices.json"
    path.write_text(json.dumps({"models": {"gpt-4.1*": {"input": "2.00", "output": "8.00"}}}))
    return path


@pytest.fixture(scope="module")
def budgeted(database_url: str, backend: str, simulator_url: str, pricing_file: Path) -> Iterator[RunningParley]:
    with run_parley(database_url, backend, **_settings(simulator_url, pricing_file)) as running:
        yield running


@pytest.fixture(scope="module")
def tooled(database_url: str, backend: str, simulator_url: str, pricing_file: Path) -> Iterator[RunningParley]:
    settings = _settings(simulator_url, pricing_file) | {"tools": ["calculator"]}
    with run_parley(database_url, backend, **settings) as running:
        yield running


async def _set_budget(client: httpx.AsyncClient, user: ApiUser, amount: str) -> None:
    response = await client.put(f"/v1/admin/users/{user.id}/budget", json={"monthly_budget_usd": amount}, headers=ADMIN)
    assert response.status_code == 200, response.text


async def _spent(client: httpx.AsyncClient, user: ApiUser) -> Decimal:
    budget = await client.get(f"/v1/admin/users/{user.id}/budget", headers=ADMIN)
    return Decimal(budget.json()["spent_usd"])


async def _start(client: httpx.AsyncClient, user: ApiUser, session_id: str) -> tuple[int, str]:
    """Start a turn and leave it running: the status, and the error's code and message if refused."""
    async with client.stream(
        "POST", f"/v1/sessions/{session_id}/messages", json={"input": MESSAGE}, headers=user.headers
    ) as response:
        if response.status_code != 200:
            await response.aread()
            error = response.json()["error"]
            return response.status_code, f"{error['code']}: {error['message']}"
        return 200, ""


async def test_concurrent_starts_are_admitted_while_their_reservations_fit_and_an_end_releases_one(
    budgeted: RunningParley, simulator_url: str
) -> None:
    async with httpx.AsyncClient(base_url=budgeted.base_url, timeout=30) as client:
        sim = Simulator(client, simulator_url)
        user = await create_api_user(client)
        await _set_budget(client, user, "0.01")  # room for one reservation of $0.008026, not two
        sessions = [await new_session(client, user) for _ in range(4)]
        await sim.configure(tokens_per_second=20, output_tokens=40)  # the admitted turn stays in flight a while
        try:
            results = await asyncio.gather(*(_start(client, user, session_id) for session_id in sessions))
            refusal = (
                "budget_exceeded: $0.001974 of this month's $0.01 budget is left ($0.00 spent, $0.008026 held by "
                "turns in progress); this message needs up to $0.008026."
            )
            assert sorted(results) == [(200, "")] + [(402, refusal)] * 3

            admitted = sessions[[status for status, _ in results].index(200)]
            (running,) = (await client.get(f"/v1/sessions/{admitted}/turns", headers=user.headers)).json()["data"]
            ended = await wait_for_status(client, user, admitted, running["id"])
            assert ended["status"] == "completed"

            # Its reservation is released and its cost counted: what is left fits the next message again.
            await sim.configure(tokens_per_second=0, output_tokens=5)
            spent = await _spent(client, user)
            assert spent == Decimal(ended["cost_usd"])
            assert Decimal("0.01") - spent >= Decimal(RESERVED)
            refused = next(s for s in sessions if s != admitted)
            assert (await send(client, user, refused, {"input": MESSAGE})).names[-1] == "turn.completed"
        finally:
            await sim.configure(tokens_per_second=0, output_tokens=None)


async def test_a_402_says_exactly_what_is_left(budgeted: RunningParley) -> None:
    async with httpx.AsyncClient(base_url=budgeted.base_url, timeout=30) as client:
        user = await create_api_user(client)
        session_id = await new_session(client, user)
        await _set_budget(client, user, "0.0001")
        assert await _start(client, user, session_id) == (
            402,
            "budget_exceeded: $0.0001 of this month's $0.0001 budget is left ($0.00 spent); "
            "this message needs up to $0.008026.",
        )
        assert (await client.get(f"/v1/sessions/{session_id}/turns", headers=user.headers)).json()["data"] == []

        await _set_budget(client, user, "1")
        assert (await send(client, user, session_id, {"input": MESSAGE})).names[-1] == "turn.completed"
        spent = await _spent(client, user)
        await _set_budget(client, user, str(spent))
        amount = f"{spent.normalize():f}"
        assert await _start(client, user, session_id) == (
            402,
            f"budget_exceeded: This month's budget of ${amount} is used up (${amount} spent).",
        )


async def test_a_tool_round_that_does_not_fit_ends_the_turn_incomplete(
    tooled: RunningParley, simulator_url: str
) -> None:
    async with httpx.AsyncClient(base_url=tooled.base_url, timeout=30) as client:
        sim = Simulator(client, simulator_url)
        user = await create_api_user(client)
        session_id = await new_session(client, user)
        conversation = await conversation_of(client, user, session_id)
        # Dense text (each "." a token upstream) makes the round after the tool dearer than the first: it reads
        # the first round's whole context, and the first round's cost is still unsettled.
        body = {"input": "Use the calculator for (12+30)*7/3 please" + " ." * 1500}

        # What the first round reserves, as a 402 tells it when nothing fits.
        await _set_budget(client, user, "0.000001")
        probe = await client.post(f"/v1/sessions/{session_id}/messages", json=body, headers=user.headers)
        assert probe.status_code == 402, probe.text
        match = re.search(r"needs up to \$([0-9.]+)\.$", probe.json()["error"]["message"])
        assert match is not None, probe.text
        first_round = match.group(1)

        # Room for exactly that: the first round goes, the calculator runs, the next round does not fit.
        await _set_budget(client, user, first_round)
        stream = await send(client, user, session_id, body)
        assert stream.status == 200, stream.error
        assert "turn.tool_call.completed" in stream.names
        assert stream.terminal.name == "turn.incomplete"
        turn = stream.terminal.data["turn"]
        assert turn["error"]["code"] == "budget_exceeded"
        next_round = re.fullmatch(
            rf"\${re.escape(first_round)} of this month's \${re.escape(first_round)} budget is left \(\$0\.00 spent\); "
            r"this turn's next step needs up to \$([0-9.]+)\.",
            turn["error"]["message"],
        )
        assert next_round is not None, turn["error"]["message"]
        assert Decimal(next_round.group(1)) > Decimal(first_round)
        assert len(await sim.response_calls(conversation)) == 1  # the second round never went upstream

        # The first round is settled, the reservation released; the calculator's output is in the conversation.
        stored = await turn_of(client, user, session_id, turn["id"])
        assert stored["status"] == "incomplete"
        assert await _spent(client, user) == Decimal(stored["cost_usd"]) > 0
        items = await client.get(
            f"{simulator_url}/v1/conversations/{conversation}/items", headers={"Authorization": "Bearer sk-test"}
        )
        assert "function_call_output" in [item["type"] for item in items.json()["data"]]
        await _set_budget(client, user, "1")
        assert (await send(client, user, session_id, {"input": "thanks"})).names[-1] == "turn.completed"
