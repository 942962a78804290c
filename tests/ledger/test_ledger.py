"""The ledger row of each upstream response, the turn's and session's cost, budgets and limits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import build_engine
from app.db.models import UsageRecord
from app.services.pricing import Pricer, TokenUsage
from app.simulator import create_simulator_app
from tests.conftest import ADMIN_TOKEN, ApiUser, RunningParley, create_api_user, run_parley
from tests.servers import serve
from tests.turns.helpers import Simulator, new_session, send

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    db = build_engine(database_url)
    yield db
    await db.dispose()


async def _rows(engine: AsyncEngine, session_id: str) -> list[UsageRecord]:
    async with engine.connect() as connection:
        result = await connection.execute(
            select(UsageRecord).where(UsageRecord.session_id == session_id).order_by(UsageRecord.created_at)
        )
        return list(result.all())  # type: ignore[arg-type]


async def test_each_response_gets_one_priced_row(
    client: httpx.AsyncClient, user: ApiUser, parley: RunningParley, engine: AsyncEngine
) -> None:
    session_id = await new_session(
        client,
        user,
        model="gpt-4.1",
        prompt={"id": "pmpt_parley_demo", "version": "2", "variables": {"user_name": "Ada"}},
    )
    first = await send(client, user, session_id, {"input": "price this"})
    second = await send(client, user, session_id, {"input": "and this"})
    rows = await _rows(engine, session_id)
    assert len(rows) == 2
    for stream, row in zip((first, second), rows, strict=True):
        final = stream.terminal.data["turn"]
        assert row.response_id == final["response_ids"][0]
        assert row.turn_id == final["id"]
        assert row.user_id == user.id
        assert row.prompt_id == "pmpt_parley_demo"
        assert row.prompt_version == "2"
        assert row.model_requested == "gpt-4.1"
        assert row.model is not None
        assert row.model.startswith("gpt-4.1")  # as served, a dated snapshot
        assert row.status == "completed"
        assert row.price_source is not None
        assert row.upstream_request_id is not None
        assert row.upstream_request_id.startswith("req_")
        assert row.rate_limits is not None
        assert "x-ratelimit-remaining-requests" in row.rate_limits
        assert row.ttft_ms is not None
        assert row.duration_ms is not None
        # The stored cost is the published price of the stored tokens.
        usage = TokenUsage(
            input_tokens=row.input_tokens or 0,
            cached_tokens=row.cached_input_tokens or 0,
            output_tokens=row.output_tokens or 0,
            reasoning_tokens=row.reasoning_tokens or 0,
        )
        expected = Pricer().price(model="gpt-4.1", usage=usage).cost_usd
        assert row.cost_usd == expected
        assert final["cost_usd"] == f"{expected:.8f}"
        assert final["usage"]["input_tokens"] == row.input_tokens
        assert final["usage"]["cached_input_tokens"] == row.cached_input_tokens
    assert (rows[1].cached_input_tokens or 0) > 0
    session = (await client.get(f"/v1/sessions/{session_id}", headers=user.headers)).json()
    total = sum((row.cost_usd for row in rows if row.cost_usd is not None), Decimal(0))
    assert session["total_cost_usd"] == f"{total:.8f}"


async def test_unknown_model_cost_is_null_not_zero(
    client: httpx.AsyncClient, user: ApiUser, engine: AsyncEngine
) -> None:
    session_id = await new_session(client, user, model="acme-private-model")
    stream = await send(client, user, session_id)
    final = stream.terminal.data["turn"]
    assert final["status"] == "completed"
    assert final["usage"]["total_tokens"] > 0
    assert final["cost_usd"] is None
    (row,) = await _rows(engine, session_id)
    assert row.cost_usd is None
    assert row.input_tokens is not None
    session = (await client.get(f"/v1/sessions/{session_id}", headers=user.headers)).json()
    assert session["total_cost_usd"] == "0.00000000"


async def test_usage_report(client: httpx.AsyncClient, parley: RunningParley, engine: AsyncEngine) -> None:
    user = await create_api_user(client)
    other = await create_api_user(client)
    first = await new_session(client, user, model="gpt-4.1")
    second = await new_session(client, user, model="gpt-4o-mini")
    await send(client, user, first)
    await send(client, user, first)
    await send(client, user, second)
    await send(client, other, await new_session(client, other, model="gpt-4.1"))

    by_model = (await client.get("/v1/usage", params={"group_by": "model"}, headers=user.headers)).json()
    models = {row["model"].rsplit("-20", 1)[0]: row for row in by_model["data"]}
    assert set(models) == {"gpt-4.1", "gpt-4o-mini"}
    assert models["gpt-4.1"]["requests"] == 2
    assert models["gpt-4o-mini"]["requests"] == 1
    rows = await _rows(engine, first) + await _rows(engine, second)
    assert by_model["totals"]["requests"] == 3
    assert by_model["totals"]["input_tokens"] == sum(r.input_tokens or 0 for r in rows)
    assert by_model["totals"]["cached_input_tokens"] == sum(r.cached_input_tokens or 0 for r in rows)
    assert by_model["totals"]["cost_usd"] == f"{sum(r.cost_usd or 0 for r in rows):.8f}"

    by_session = (await client.get("/v1/usage", params={"group_by": "session"}, headers=user.headers)).json()
    assert {row["session_id"]: row["requests"] for row in by_session["data"]} == {first: 2, second: 1}

    by_day = (await client.get("/v1/usage", headers=user.headers)).json()
    assert by_day["group_by"] == "day"
    assert len(by_day["data"]) == 1
    assert len(by_day["data"][0]["day"]) == 10

    by_prompt = (await client.get("/v1/usage", params={"group_by": "prompt"}, headers=user.headers)).json()
    assert by_prompt["data"][0]["prompt_id"] == "pmpt_parley_demo"

    csv = await client.get("/v1/usage", params={"group_by": "model", "format": "csv"}, headers=user.headers)
    assert csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().splitlines()
    assert (
        lines[0]
        == "model,requests,input_tokens,cached_input_tokens,output_tokens,reasoning_tokens,cost_usd,unpriced_requests"
    )
    assert len(lines) == 3

    forbidden = await client.get("/v1/usage", params={"group_by": "user"}, headers=user.headers)
    assert forbidden.status_code == 403
    everyone = (await client.get("/v1/usage", params={"group_by": "user"}, headers=ADMIN)).json()
    per_user = {row["user_id"]: row["requests"] for row in everyone["data"]}
    assert per_user[user.id] == 3
    assert per_user[other.id] == 1
    assert (await client.get("/v1/usage")).status_code == 401
    bad = await client.get("/v1/usage", params={"start": "2026-02-01", "end": "2026-01-01"}, headers=user.headers)
    assert bad.status_code == 422


async def test_budget_stops_new_turns_before_any_upstream_call(
    client: httpx.AsyncClient, parley: RunningParley, sim: Simulator
) -> None:
    user = await create_api_user(client)
    # Room for what a message reserves (4,000 output tokens of gpt-4.1 at most, about $0.032).
    roomy = await client.put(f"/v1/admin/users/{user.id}/budget", json={"monthly_budget_usd": "0.05"}, headers=ADMIN)
    assert roomy.status_code == 200, roomy.text
    session_id = await new_session(client, user, model="gpt-4.1")
    assert (await send(client, user, session_id)).names[-1] == "turn.completed"
    budget = await client.put(
        f"/v1/admin/users/{user.id}/budget", json={"monthly_budget_usd": "0.00001"}, headers=ADMIN
    )
    assert budget.status_code == 200, budget.text
    assert budget.json()["monthly_budget_usd"] == "0.00001000"
    spent = (await client.get(f"/v1/admin/users/{user.id}/budget", headers=ADMIN)).json()
    assert Decimal(spent["spent_usd"]) > Decimal("0.00001")

    before = len(await sim.requests())
    refused = await client.post(f"/v1/sessions/{session_id}/messages", json={"input": "more"}, headers=user.headers)
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert len(await sim.requests()) == before
    # Raising the budget lets the user go on.
    await client.put(f"/v1/admin/users/{user.id}/budget", json={"monthly_budget_usd": "100"}, headers=ADMIN)
    assert (await send(client, user, session_id)).names[-1] == "turn.completed"


async def test_budget_endpoint_validates(client: httpx.AsyncClient, user: ApiUser) -> None:
    for body in ({"monthly_budget_usd": "-1"}, {"monthly_budget_usd": "abc"}, {}, {"monthly_budget_usd": 1e30}):
        response = await client.put(f"/v1/admin/users/{user.id}/budget", json=body, headers=ADMIN)
        assert response.status_code == 422, body
    assert (
        await client.put(f"/v1/admin/users/{user.id}/budget", json={"monthly_budget_usd": "1"}, headers=user.headers)
    ).status_code == 403


async def test_default_budget_and_limits_hold_across_replicas(database_url: str, backend: str) -> None:
    with serve(create_simulator_app()) as simulator_url:
        settings = {
            "default_monthly_budget_usd": Decimal("0"),
            "rate_limit_turns_per_minute": 2,
            "rate_limit_concurrent_turns": 1,
            "openai_api_key": "sk-test",
            "openai_base_url": f"{simulator_url}/v1",
            "allowed_models": ["*"],
            "allowed_prompts": ["*"],
            "default_prompt_id": "pmpt_parley_demo",
        }
        await _limits_across_replicas(database_url, backend, settings, simulator_url)


async def _limits_across_replicas(
    database_url: str, backend: str, settings: dict[str, object], simulator_url: str
) -> None:
    with (
        run_parley(database_url, backend, **settings) as a,
        run_parley(database_url, backend, **(settings | {"default_monthly_budget_usd": None})) as b,
    ):
        async with (
            httpx.AsyncClient(base_url=a.base_url, timeout=30) as ca,
            httpx.AsyncClient(base_url=b.base_url, timeout=30) as cb,
        ):
            user = await create_api_user(ca)
            session_id = await new_session(ca, user)
            zero = await ca.post(f"/v1/sessions/{session_id}/messages", json={"input": "x"}, headers=user.headers)
            assert zero.status_code == 402  # the default budget of replica A is 0

            sim = Simulator(cb, simulator_url)
            await sim.configure(tokens_per_second=50, output_tokens=100)
            try:
                head = await send(cb, user, session_id, stop_after=2)
                other_session = await new_session(cb, user)
                busy = await cb.post(
                    f"/v1/sessions/{other_session}/messages", json={"input": "y"}, headers=user.headers
                )
                assert busy.status_code == 429
                assert busy.json()["error"]["code"] == "too_many_concurrent_turns"
                assert busy.headers["retry-after"] == "1"
                turn_id = head.events[0].data["turn"]["id"]
                await cb.post(f"/v1/sessions/{session_id}/turns/{turn_id}/cancel", headers=user.headers)
                await sim.configure(tokens_per_second=0, output_tokens=None)
                assert (await send(cb, user, other_session)).names[-1] == "turn.completed"
                third = await cb.post(
                    f"/v1/sessions/{other_session}/messages", json={"input": "z"}, headers=user.headers
                )
                assert third.status_code == 429
                assert third.json()["error"]["code"] == "rate_limited"
                assert 1 <= int(third.headers["retry-after"]) <= 60
            finally:
                await sim.configure(tokens_per_second=0, output_tokens=None)
