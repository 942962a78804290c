"""The first ten minutes on the embedded default: the simulator mounted on Parley keeps its state in Parley's
database across restarts, answers like a model (Markdown, a reasoning summary) and at a model's pace."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from pydantic import ValidationError

from app.settings import Settings
from app.simulator import SimulatorConfig
from tests.conftest import RunningParley, create_api_user, run_parley
from tests.databases import BACKENDS, database
from tests.turns.helpers import new_session, send

SUMMARY_DELTA = "response.reasoning_summary_text.delta"


async def _messages(http: httpx.AsyncClient, headers: dict[str, str], session_id: str) -> list[tuple[str, str]]:
    listed = await http.get(f"/v1/sessions/{session_id}/messages", headers=headers)
    assert listed.status_code == 200, listed.text
    return [(message["role"], message["content"]) for message in listed.json()["data"]]


def _upstream(parley: RunningParley) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{parley.simulator_url}/v1", api_key="sk-test", max_retries=0)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_session_goes_on_after_a_restart(backend: str, tmp_path: Path) -> None:
    async with database(backend, tmp_path) as url:
        with run_parley(url, backend) as first:
            async with httpx.AsyncClient(base_url=first.base_url, timeout=30) as http:
                user = await create_api_user(http)
                session_id = await new_session(http, user)
                before = await send(http, user, session_id, {"input": "How do restarts work?"})
                assert before.terminal.name == "turn.completed", before.names
                conversation_id = (await http.get(f"/v1/sessions/{session_id}", headers=user.headers)).json()[
                    "conversation_id"
                ]
        first_turn = before.terminal.data["turn"]

        with run_parley(url, backend) as second:
            async with httpx.AsyncClient(base_url=second.base_url, timeout=30) as http:
                after = await send(http, user, session_id, {"input": "And what survives them?"})
                assert after.terminal.name == "turn.completed", (after.names, after.terminal.data)
                assert await _messages(http, user.headers, session_id) == [
                    ("user", "How do restarts work?"),
                    ("assistant", before.text),
                    ("user", "And what survives them?"),
                    ("assistant", after.text),
                ]
            async with _upstream(second) as upstream:
                items = [item async for item in upstream.conversations.items.list(conversation_id, order="asc")]
                texts = [item.content[0].text for item in items if item.type == "message"]  # type: ignore[union-attr]
                assert texts == ["How do restarts work?", before.text, "And what survives them?", after.text]
                stored = await upstream.responses.retrieve(first_turn["response_ids"][-1])
                assert stored.status == "completed"
                assert stored.output_text == first_turn["output_text"]
                # The second answer was made with the first one in its context (cached, as the real service).
                second_response = await upstream.responses.retrieve(after.terminal.data["turn"]["response_ids"][-1])
                assert second_response.usage is not None
                assert second_response.usage.input_tokens_details.cached_tokens > 0


async def test_removing_the_database_file_starts_both_afresh(tmp_path: Path) -> None:
    path = tmp_path / "parley.db"
    url = f"sqlite+aiosqlite:///{path}"
    with run_parley(url, "sqlite") as first:
        async with httpx.AsyncClient(base_url=first.base_url, timeout=30) as http:
            user = await create_api_user(http)
            session_id = await new_session(http, user)
            assert (await send(http, user, session_id)).terminal.name == "turn.completed"
            conversation_id = (await http.get(f"/v1/sessions/{session_id}", headers=user.headers)).json()[
                "conversation_id"
            ]
    for leftover in tmp_path.glob("parley.db*"):
        leftover.unlink()

    with run_parley(url, "sqlite") as second:
        async with _upstream(second) as upstream:
            with pytest.raises(openai.NotFoundError):
                await upstream.conversations.retrieve(conversation_id)
        async with httpx.AsyncClient(base_url=second.base_url, timeout=30) as http:
            user = await create_api_user(http)
            session_id = await new_session(http, user)
            assert (await send(http, user, session_id)).terminal.name == "turn.completed"


async def test_answers_carry_a_reasoning_summary_that_stays_out_of_the_stored_text(
    database_url: str, backend: str
) -> None:
    with run_parley(database_url, backend) as parley:
        async with httpx.AsyncClient(base_url=parley.base_url, timeout=30) as http:
            user = await create_api_user(http)
            session_id = await new_session(http, user)
            stream = await send(http, user, session_id, {"input": "Compare postgres and sqlite"})

            assert stream.terminal.name == "turn.completed"
            summary = "".join(event.data["delta"] for event in stream.events if event.name == SUMMARY_DELTA)
            assert "postgres" in summary
            assert stream.names.index("response.reasoning_summary_part.done") < stream.names.index(
                "response.output_text.delta"
            )
            turn = stream.terminal.data["turn"]
            assert turn["output_text"] == stream.text
            assert summary not in turn["output_text"]
            assert "| --- |" in turn["output_text"] or "\n- " in turn["output_text"] or "```" in turn["output_text"]
            assert (await _messages(http, user.headers, session_id))[-1] == ("assistant", stream.text)


async def test_the_embedded_simulator_answers_at_a_models_pace_unless_told(database_url: str, backend: str) -> None:
    for speed, expected in [
        (None, SimulatorConfig.at_speed("model")),
        ("instant", SimulatorConfig()),
        (4, SimulatorConfig.at_speed(4)),
    ]:
        with run_parley(database_url, backend, simulator_speed=speed) as parley:
            async with httpx.AsyncClient(base_url=parley.simulator_url, timeout=30) as http:
                config = await http.get("/_control/config", headers=parley.admin_headers)
                assert config.json() == expected.to_json(), speed


@pytest.mark.parametrize(("value", "speed"), [("model", "model"), ("instant", "instant"), ("2", 2.0), ("0.5", 0.5)])
def test_parley_simulator_speed_reads_a_name_or_a_multiplier(
    monkeypatch: pytest.MonkeyPatch, value: str, speed: str | float
) -> None:
    monkeypatch.setenv("PARLEY_SIMULATOR_SPEED", value)
    assert Settings(_env_file=None).simulator_speed == speed  # type: ignore[call-arg]


@pytest.mark.parametrize("value", ["0", "-1", "fast"])
def test_parley_simulator_speed_refuses_anything_else(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PARLEY_SIMULATOR_SPEED", value)
    with pytest.raises(ValidationError):
        Settings(_env_file=None)  # type: ignore[call-arg]
