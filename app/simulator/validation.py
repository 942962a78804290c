"""Small checks on raw JSON request bodies, failing with the messages the real service uses."""

from __future__ import annotations

from typing import Any

import orjson

from app.simulator.api_errors import (
    SimulatorError,
    array_too_long,
    integer_out_of_range,
    invalid_json,
    invalid_type,
    json_type_name,
)
from app.simulator.json_types import JsonObject

METADATA_MAX_PAIRS = 16
METADATA_KEY_MAX = 64
METADATA_VALUE_MAX = 512


def parse_json_object(raw: bytes) -> JsonObject:
    """An empty body reads as `{}`; anything but a JSON object is rejected."""
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise invalid_json() from None
    if not isinstance(body, dict):
        raise SimulatorError(
            400, f"Invalid body: expected an object, but got {json_type_name(body)} instead.", code="invalid_type"
        )
    return body


def optional_str(body: JsonObject, key: str, *, param: str | None = None) -> str | None:
    value = body.get(key)
    if value is None or isinstance(value, str):
        return value
    raise invalid_type(param or key, "a string", value)


def optional_bool(body: JsonObject, key: str) -> bool | None:
    value = body.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise invalid_type(key, "a boolean", value)


def optional_int(body: JsonObject, key: str, *, minimum: int | None = None, maximum: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_type(key, "an integer", value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise integer_out_of_range(key, value, minimum=minimum, maximum=maximum)
    return value


def optional_number(body: JsonObject, key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid_type(key, "a number", value)
    return float(value)


def optional_list(body: JsonObject, key: str, *, max_length: int | None = None) -> list[Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise invalid_type(key, "an array", value)
    if max_length is not None and len(value) > max_length:
        raise array_too_long(key, len(value), max_length)
    return value


def metadata(value: object, *, param: str = "metadata") -> dict[str, str]:
    """OpenAI's metadata rules: at most 16 pairs, keys up to 64 characters, string values up to 512."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid_type(param, "an object", value)
    if len(value) > METADATA_MAX_PAIRS:
        raise SimulatorError(
            400,
            f"Invalid '{param}': too many properties. Expected an object with at most {METADATA_MAX_PAIRS} "
            f"properties, but got an object with {len(value)} properties instead.",
            param=param,
            code="object_above_max_properties",
        )
    for key, item in value.items():
        if len(key) > METADATA_KEY_MAX:
            raise SimulatorError(
                400,
                f"Invalid '{param}': string too long. Expected a string with maximum length "
                f"{METADATA_KEY_MAX}, but got a string with length {len(key)} instead.",
                param=param,
                code="string_above_max_length",
            )
        if not isinstance(item, str):
            raise invalid_type(f"{param}.{key}", "a string", item)
        if len(item) > METADATA_VALUE_MAX:
            raise SimulatorError(
                400,
                f"Invalid '{param}.{key}': string too long. Expected a string with maximum length "
                f"{METADATA_VALUE_MAX}, but got a string with length {len(item)} instead.",
                param=f"{param}.{key}",
                code="string_above_max_length",
            )
    return dict(value)
