"""Errors in OpenAI's envelope: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import orjson
from starlette.responses import Response

from app.simulator.json_types import JsonObject


class SimulatorError(Exception):
    """An API error the simulator answers with, rendered exactly like OpenAI's."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> JsonObject:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def to_response(self) -> Response:
        return Response(
            orjson.dumps(self.body()), status_code=self.status, headers=self.headers, media_type="application/json"
        )


def invalid_json() -> SimulatorError:
    return SimulatorError(
        400,
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
        "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. "
        "If you have trouble figuring out how to fix this, please contact us through our help center at "
        "help.openai.com.)",
    )


def missing_parameter(param: str) -> SimulatorError:
    return SimulatorError(
        400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def unknown_parameter(param: str) -> SimulatorError:
    return SimulatorError(400, f"Unknown parameter: '{param}'.", param=param, code="unknown_parameter")


def invalid_type(param: str, expected: str, value: object) -> SimulatorError:
    return SimulatorError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {json_type_name(value)} instead.",
        param=param,
        code="invalid_type",
    )


def invalid_value(param: str, value: object, supported: list[str]) -> SimulatorError:
    quoted = [f"'{option}'" for option in supported]
    listed = ", ".join(quoted[:-1]) + f", and {quoted[-1]}" if len(quoted) > 2 else " and ".join(quoted)
    return SimulatorError(
        400,
        f"Invalid value: '{value}'. Supported values are: {listed}.",
        param=param,
        code="invalid_value",
    )


def integer_out_of_range(param: str, value: int, *, minimum: int | None, maximum: int | None) -> SimulatorError:
    if minimum is not None and value < minimum:
        return SimulatorError(
            400,
            f"Invalid '{param}': integer below minimum value. Expected a value >= {minimum}, but got {value} instead.",
            param=param,
            code="integer_below_min_value",
        )
    return SimulatorError(
        400,
        f"Invalid '{param}': integer above maximum value. Expected a value <= {maximum}, but got {value} instead.",
        param=param,
        code="integer_above_max_value",
    )


def array_too_long(param: str, length: int, maximum: int) -> SimulatorError:
    return SimulatorError(
        400,
        f"Invalid '{param}': array too long. Expected an array with maximum length {maximum}, "
        f"but got an array with length {length} instead.",
        param=param,
        code="array_above_max_length",
    )


def not_found(message: str, *, param: str | None = None) -> SimulatorError:
    return SimulatorError(404, message, param=param)


def conversation_not_found(conversation_id: str, *, param: str | None = None) -> SimulatorError:
    return not_found(f"Conversation with id '{conversation_id}' not found.", param=param)


def response_not_found(response_id: str) -> SimulatorError:
    return not_found(f"Response with id '{response_id}' not found.")


def background_refused() -> SimulatorError:
    """An organisation with zero data retention: background responses are kept about ten minutes, so it may not
    make them. (The real service's exact words are not documented; the parameter it names is.)"""
    return SimulatorError(
        400,
        "Background mode is not available to organizations with zero data retention: background responses are "
        "stored for about ten minutes.",
        param="background",
        code="unsupported_value",
    )


def conversation_locked() -> SimulatorError:
    return SimulatorError(
        400,
        "Another process is currently operating on this conversation. Please retry in a few seconds.",
        param="conversation",
        code="conversation_locked",
    )


def json_type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
