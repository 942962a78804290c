"""Structured output through the SDK: strict schemas answered with JSON that validates, the rest refused as the
real service refuses them; non-strict schemas and JSON mode answered best-effort."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import openai
import pytest

from tests.simulator.conftest import Simulator

MODEL = "gpt-4.1-mini"

# A trip plan: nested objects, $defs with a recursive $ref, arrays, enums, anyOf with null, formats, bounds.
TRIP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "city": {"type": "string", "enum": ["Lisbon", "Porto", "Faro"]},
        "nights": {"type": "integer", "minimum": 2, "maximum": 9},
        "budget_eur": {"type": "number", "exclusiveMinimum": 100, "maximum": 2500, "multipleOf": 0.5},
        "start": {"type": "string", "format": "date"},
        "contact": {"type": "string", "format": "email"},
        "confirmed": {"type": "boolean"},
        "notes": {"type": ["string", "null"]},
        "days": {"type": "array", "items": {"$ref": "#/$defs/day"}, "minItems": 1, "maxItems": 3},
        "lodging": {
            "anyOf": [
                {"$ref": "#/$defs/lodging"},
                {"type": "null"},
            ]
        },
        "topics": {"$ref": "#/$defs/topic"},
    },
    "required": [
        "title",
        "city",
        "nights",
        "budget_eur",
        "start",
        "contact",
        "confirmed",
        "notes",
        "days",
        "lodging",
        "topics",
    ],
    "additionalProperties": False,
    "$defs": {
        "day": {
            "type": "object",
            "properties": {
                "label": {"type": "string"},
                "activities": {"type": "array", "items": {"type": "string"}},
                "pace": {"type": "string", "enum": ["slow", "steady", "packed"]},
            },
            "required": ["label", "activities", "pace"],
            "additionalProperties": False,
        },
        "lodging": {
            "type": "object",
            "properties": {
                "kind": {"const": "hotel"},
                "stars": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 5}, {"type": "null"}]},
            },
            "required": ["kind", "stars"],
            "additionalProperties": False,
        },
        # Recursive: a topic holds subtopics, which are topics.
        "topic": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "subtopics": {"type": "array", "items": {"$ref": "#/$defs/topic"}},
            },
            "required": ["name", "subtopics"],
            "additionalProperties": False,
        },
    },
}
QUESTIONS = [
    "Plan a weekend trip to Lisbon",
    "Three slow days by the sea in the Algarve",
    "A cheap city break with museums and food",
    "Where should a family with small kids stay in Porto?",
]


def _json_schema_format(schema: dict[str, Any], *, strict: bool | None = True, name: str = "trip_plan") -> Any:
    text_format: dict[str, Any] = {"type": "json_schema", "name": name, "schema": schema}
    if strict is not None:
        text_format["strict"] = strict
    return {"format": text_format}


async def _refusal(sdk: openai.AsyncOpenAI, schema: dict[str, Any], *, name: str = "trip_plan") -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.responses.create(model=MODEL, input="Plan a trip", text=_json_schema_format(schema, name=name))
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "invalid_request_error"
    return body


@pytest.mark.parametrize("question", QUESTIONS)
async def test_a_strict_schema_is_answered_with_json_that_validates(sdk: openai.AsyncOpenAI, question: str) -> None:
    response = await sdk.responses.create(model=MODEL, input=question, text=_json_schema_format(TRIP_SCHEMA))

    answer = json.loads(response.output_text)
    jsonschema.validate(answer, TRIP_SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    assert 1 <= len(answer["days"]) <= 3
    assert answer["city"] in ("Lisbon", "Porto", "Faro")
    assert response.text.format.type == "json_schema"


async def test_answers_are_deterministic_and_differ_by_input(sdk: openai.AsyncOpenAI) -> None:
    answers = [
        (await sdk.responses.create(model=MODEL, input=question, text=_json_schema_format(TRIP_SCHEMA))).output_text
        for question in [*QUESTIONS, QUESTIONS[0]]
    ]
    assert answers[0] == answers[-1]
    assert len(set(answers)) == len(QUESTIONS)
    # Strings read as about the question: the trip answer names its words.
    assert "lisbon" in answers[0].lower() or "weekend" in answers[0].lower()


async def test_a_streamed_json_answer_arrives_as_text_deltas_that_join_to_the_document(
    simulator: Simulator,
) -> None:
    events = await simulator.stream_events(
        {"model": MODEL, "input": QUESTIONS[1], "text": _json_schema_format(TRIP_SCHEMA)}
    )
    deltas = [event.data["delta"] for event in events if event.type == "response.output_text.delta"]
    done = next(event.data["text"] for event in events if event.type == "response.output_text.done")
    assert len(deltas) > 10
    assert "".join(deltas) == done
    jsonschema.validate(json.loads(done), TRIP_SCHEMA)
    assert events[-1].type == "response.completed"


async def test_non_strict_schemas_are_accepted_and_answered_best_effort(sdk: openai.AsyncOpenAI) -> None:
    loose = {
        "type": "object",
        "properties": {
            "summary": {"type": "string", "minLength": 3},
            "tags": {"type": "array", "items": {"type": "string"}},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["summary"],
    }
    for strict in (False, None):
        response = await sdk.responses.create(
            model=MODEL, input="Rate this idea", text=_json_schema_format(loose, strict=strict)
        )
        jsonschema.validate(json.loads(response.output_text), loose)


async def test_json_mode_answers_an_object_when_the_input_says_json(sdk: openai.AsyncOpenAI) -> None:
    response = await sdk.responses.create(
        model=MODEL, input="List packing ideas for Lisbon as JSON.", text={"format": {"type": "json_object"}}
    )
    answer = json.loads(response.output_text)
    assert isinstance(answer, dict)
    assert "lisbon" in json.dumps(answer).lower()


async def test_json_mode_needs_the_word_json_in_the_input_not_the_instructions(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.responses.create(
            model=MODEL,
            input="List packing ideas for Lisbon.",
            instructions="Answer in JSON.",
            text={"format": {"type": "json_object"}},
        )
    assert caught.value.message.endswith(
        "Response input messages must contain the word 'json' in some form to use 'text.format' of type 'json_object'."
    )


def _without(schema: dict[str, Any], *path: str) -> dict[str, Any]:
    changed = copy.deepcopy(schema)
    target = changed
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return changed


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            _without(TRIP_SCHEMA, "additionalProperties"),
            "Invalid schema for response_format 'trip_plan': In context=(), 'additionalProperties' is required to "
            "be supplied and to be false.",
        ),
        (
            _without(TRIP_SCHEMA, "$defs", "day", "additionalProperties"),
            "Invalid schema for response_format 'trip_plan': In context=('$defs', 'day'), 'additionalProperties' is "
            "required to be supplied and to be false.",
        ),
        (
            {**TRIP_SCHEMA, "required": [key for key in TRIP_SCHEMA["required"] if key != "notes"]},
            "Invalid schema for response_format 'trip_plan': In context=(), 'required' is required to be supplied "
            "and to be an array including every key in properties. Missing 'notes'.",
        ),
        (
            {
                "type": "object",
                "properties": {
                    "stops": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"name": {"type": "string"}, "hours": {"type": "integer"}},
                            "required": ["name"],
                            "additionalProperties": False,
                        },
                    }
                },
                "required": ["stops"],
                "additionalProperties": False,
            },
            "Invalid schema for response_format 'trip_plan': In context=('properties', 'stops', 'items'), 'required' "
            "is required to be supplied and to be an array including every key in properties. Missing 'hours'.",
        ),
        (
            {"type": "array", "items": {"type": "string"}},
            "Invalid schema for response_format 'trip_plan': schema must be a JSON Schema of 'type: \"object\"', got "
            "'type: \"array\"'.",
        ),
        (
            {"anyOf": [TRIP_SCHEMA["$defs"]["day"], TRIP_SCHEMA["$defs"]["lodging"]]},
            "Invalid schema for response_format 'trip_plan': schema must be a JSON Schema of 'type: \"object\"', got "
            "'type: \"None\"'.",
        ),
        (
            {
                "type": "object",
                "properties": {"when": {"allOf": [{"type": "string"}, {"format": "date"}]}},
                "required": ["when"],
                "additionalProperties": False,
            },
            "Invalid schema for response_format 'trip_plan': In context=('properties', 'when'), 'allOf' is not "
            "permitted.",
        ),
        (
            {
                "type": "object",
                "properties": {"tags": {"type": "array"}},
                "required": ["tags"],
                "additionalProperties": False,
            },
            "Invalid schema for response_format 'trip_plan': In context=('properties', 'tags'), array schema missing "
            "items.",
        ),
        (
            {
                "type": "object",
                "properties": {"anything": {}},
                "required": ["anything"],
                "additionalProperties": False,
            },
            "Invalid schema for response_format 'trip_plan': In context=('properties', 'anything'), schema must have "
            "a 'type' key.",
        ),
    ],
    ids=[
        "root-additional-properties",
        "defs-additional-properties",
        "missing-required",
        "nested-missing-required",
        "root-array",
        "root-any-of",
        "unsupported-keyword",
        "array-without-items",
        "no-type",
    ],
)
async def test_a_schema_outside_strict_mode_is_refused_in_the_services_words(
    sdk: openai.AsyncOpenAI, schema: dict[str, Any], message: str
) -> None:
    body = await _refusal(sdk, schema)
    assert body["message"] == message
    assert body["param"] == "text.format.schema"
    assert body["code"] == "invalid_json_schema"


def _nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {
            "type": "object",
            "properties": {"inner": schema},
            "required": ["inner"],
            "additionalProperties": False,
        }
    return schema


async def test_strict_limits_nesting_properties_and_enum_values(sdk: openai.AsyncOpenAI) -> None:
    deepest = await sdk.responses.create(model=MODEL, input="Go deep", text=_json_schema_format(_nested(10)))
    jsonschema.validate(json.loads(deepest.output_text), _nested(10))
    assert (await _refusal(sdk, _nested(11)))["message"].endswith("11 levels of nesting exceeds limit of 10.")

    names = [f"field_{index}" for index in range(5001)]
    wide = {
        "type": "object",
        "properties": {name: {"type": "boolean"} for name in names},
        "required": names,
        "additionalProperties": False,
    }
    assert (await _refusal(sdk, wide))["message"].endswith("5001 object properties exceeds limit of 5000.")

    many = {
        "type": "object",
        "properties": {"code": {"type": "integer", "enum": list(range(1001))}},
        "required": ["code"],
        "additionalProperties": False,
    }
    assert (await _refusal(sdk, many))["message"].endswith("1001 enum values exceeds limit of 1000.")


@pytest.mark.parametrize(
    ("text", "param"),
    [
        ({"format": {"type": "json_schema", "schema": TRIP_SCHEMA}}, "text.format.name"),
        ({"format": {"type": "json_schema", "name": "trip"}}, "text.format.schema"),
        ({"format": {"type": "json_schema", "name": "a trip", "schema": TRIP_SCHEMA}}, "text.format.name"),
        ({"format": {"type": "yaml"}}, "text.format.type"),
        (
            {"format": {"type": "json_schema", "name": "trip", "schema": TRIP_SCHEMA, "strict": "yes"}},
            "text.format.strict",
        ),
    ],
)
async def test_a_malformed_text_format_names_its_parameter(
    sdk: openai.AsyncOpenAI, text: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.responses.create(model=MODEL, input="Plan a trip", text=text)  # type: ignore[arg-type]
    assert caught.value.param == param
