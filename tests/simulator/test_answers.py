"""What the simulator answers: varied Markdown, deterministic per input, reasoning summaries, and its pace."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.responses import ResponseReasoningItem

from app.simulator import DEMO_PROMPT_ID, SimulatorConfig, create_simulator_app
from app.simulator.generation import count_tokens
from tests.servers import serve
from tests.simulator.conftest import Simulator
from tests.simulator.sse import assert_contiguous, validate_with_sdk

QUESTIONS = [
    "What is Parley?",
    "How do I write a fast SQLite query?",
    "Compare postgres and mysql for analytics",
    "Tell me a joke about cats",
    "Explain retries with exponential backoff",
    "Which sorting algorithm should I pick?",
    "Plan a weekend trip to Lisbon",
    "Why is my docker build slow?",
    "Write a haiku about autumn",
    "Summarise the history of Rome",
    "How do websockets differ from SSE?",
    "Help me name a chess club",
]
SUMMARY_EVENTS = [
    "response.reasoning_summary_part.added",
    "response.reasoning_summary_text.delta",
    "response.reasoning_summary_text.done",
    "response.reasoning_summary_part.done",
]


def _shape(answer: str) -> tuple[bool, ...]:
    return tuple(mark in answer for mark in ("\n- ", "\n1. ", "\n```", "| --- |"))


async def _answer(sdk: openai.AsyncOpenAI, question: str) -> str:
    response = await sdk.responses.create(model="gpt-4.1-mini", input=question)
    return response.output_text


async def test_answers_are_markdown_that_exercises_a_chat_ui(sdk: openai.AsyncOpenAI) -> None:
    answers = {question: await _answer(sdk, question) for question in QUESTIONS}

    joined = "\n".join(answers.values())
    assert "\n\n" in joined  # paragraphs
    assert "\n- " in joined  # a bulleted list
    assert "\n1. " in joined  # a numbered list
    assert "\n```" in joined  # fenced code
    assert "| --- |" in joined  # a table
    assert "**" in joined
    assert "`" in joined
    # Different questions read differently, and each answer is about its question.
    assert len(set(answers.values())) == len(QUESTIONS)
    assert len({_shape(answer) for answer in answers.values()}) >= 4
    for question, answer in answers.items():
        assert question.rstrip("?") in answer
    assert "sqlite" in answers["How do I write a fast SQLite query?"].lower()


async def test_the_same_question_gets_the_same_answer_in_every_process(sdk: openai.AsyncOpenAI) -> None:
    first = await _answer(sdk, "Explain retries with exponential backoff")
    with serve(create_simulator_app()) as other_url:
        async with openai.AsyncOpenAI(base_url=f"{other_url}/v1", api_key="sk-test", max_retries=0) as other:
            again = await _answer(other, "Explain retries with exponential backoff")

    assert again == first


@pytest.mark.parametrize("output_tokens", [1, 7, 60, 500])
async def test_output_tokens_is_exact_for_markdown_answers(
    sdk: openai.AsyncOpenAI, simulator: Simulator, output_tokens: int
) -> None:
    await simulator.configure(output_tokens=output_tokens)
    for question in QUESTIONS[:6]:
        response = await sdk.responses.create(model="gpt-4.1-mini", input=question)
        assert response.usage is not None
        assert response.usage.output_tokens == output_tokens
        assert count_tokens(response.output_text) == output_tokens


async def test_a_tool_result_is_reported_as_such(simulator: Simulator) -> None:
    events = await simulator.stream_events(
        {
            "model": "gpt-4.1-mini",
            "input": [
                {"role": "user", "content": "What time is it?"},
                {"type": "function_call", "call_id": "call_1", "name": "current_time", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "12:30"},
            ],
        }
    )

    text = "".join(event.data["delta"] for event in events if event.type == "response.output_text.delta")
    assert text.startswith("The tool returned: 12:30.")


async def test_a_reasoning_summary_streams_when_the_request_asks_for_one(simulator: Simulator) -> None:
    events = await simulator.stream_events(
        {"model": "gpt-5-mini", "input": "Compare postgres and mysql", "reasoning": {"summary": "auto"}}
    )

    assert_contiguous(events)
    for event in events:
        validate_with_sdk(event)
    types = [event.type for event in events]
    summary_types = [kind for kind in types if kind.startswith("response.reasoning_summary")]
    deltas = [event for event in events if event.type == "response.reasoning_summary_text.delta"]
    assert summary_types == [SUMMARY_EVENTS[0]] + [SUMMARY_EVENTS[1]] * len(deltas) + SUMMARY_EVENTS[2:]
    # All of it inside the reasoning item, before the message starts.
    assert types.index("response.reasoning_summary_part.done") < types.index("response.content_part.added")
    text = "".join(event.data["delta"] for event in deltas)
    assert "postgres" in text
    done = next(event for event in events if event.type == "response.reasoning_summary_text.done")
    assert done.data["text"] == text
    assert done.data["summary_index"] == 0
    item = next(
        event.data["item"]
        for event in events
        if event.type == "response.output_item.done" and event.data["item"]["type"] == "reasoning"
    )
    assert item["summary"] == [{"type": "summary_text", "text": text}]
    final = events[-1].data["response"]
    assert final["reasoning"]["summary"] == "auto"
    # The summary is part of the reasoning: the output tokens are the answer's plus the reasoning tokens.
    usage = final["usage"]
    answer_deltas = types.count("response.output_text.delta")
    assert usage["output_tokens"] == answer_deltas + usage["output_tokens_details"]["reasoning_tokens"]


async def test_no_summary_unless_asked_and_none_for_other_models(sdk: openai.AsyncOpenAI) -> None:
    silent = await sdk.responses.create(model="gpt-5-mini", input="Think quietly")
    plain = await sdk.responses.create(model="gpt-4.1-mini", input="Think quietly", reasoning={"summary": "auto"})

    assert [item.type for item in silent.output] == ["reasoning", "message"]
    assert isinstance(silent.output[0], ResponseReasoningItem)
    assert silent.output[0].summary == []
    assert [item.type for item in plain.output] == ["message"]


async def test_the_sdk_stream_helper_reads_summaries_and_the_demo_prompt_asks_for_one(
    sdk: openai.AsyncOpenAI,
) -> None:
    summary_deltas: list[str] = []
    # The SDK's helper wants a model; the prompt's reasoning options still apply.
    async with sdk.responses.stream(
        model="gpt-5-mini", prompt={"id": DEMO_PROMPT_ID}, input="Plan a weekend trip to Lisbon"
    ) as stream:
        async for event in stream:
            if event.type == "response.reasoning_summary_text.delta":
                summary_deltas.append(event.delta)
        final = await stream.get_final_response()

    reasoning = final.output[0]
    assert isinstance(reasoning, ResponseReasoningItem)
    assert [part.text for part in reasoning.summary] == ["".join(summary_deltas)]
    assert "lisbon" in reasoning.summary[0].text.lower()
    assert "Lisbon" in final.output_text
    stored = await sdk.responses.retrieve(final.id)
    assert stored.output[0] == reasoning


async def test_a_tool_call_still_comes_with_its_summary(sdk: openai.AsyncOpenAI) -> None:
    tool = {"type": "function", "name": "get_weather", "parameters": None, "strict": False}
    response = await sdk.responses.create(
        model="o4-mini", input="Use get_weather for Paris", tools=[tool], reasoning={"summary": "detailed"}
    )

    assert [item.type for item in response.output] == ["reasoning", "function_call"]
    assert isinstance(response.output[0], ResponseReasoningItem)
    assert response.output[0].summary


def test_speeds() -> None:
    assert SimulatorConfig.at_speed("instant") == SimulatorConfig()
    model = SimulatorConfig.at_speed("model")
    assert 100 <= model.first_token_delay_ms <= 1000
    assert 10 <= model.tokens_per_second < 100
    double = SimulatorConfig.at_speed(2)
    assert double.tokens_per_second == 2 * model.tokens_per_second
    assert double.first_token_delay_ms == model.first_token_delay_ms / 2
    with pytest.raises(ValueError, match="positive"):
        SimulatorConfig.at_speed(0)


async def test_an_app_starts_at_its_given_pace_and_a_reset_goes_back_to_it() -> None:
    model = SimulatorConfig.at_speed("model")
    with serve(create_simulator_app(config=model)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            sim = Simulator(url, http)
            assert await sim.control("GET", "config") == model.to_json()
            await sim.configure(tokens_per_second=0, first_token_delay_ms=0)
            assert (await sim.control("GET", "config"))["tokens_per_second"] == 0
            await sim.control("POST", "reset")
            assert await sim.control("GET", "config") == model.to_json()
