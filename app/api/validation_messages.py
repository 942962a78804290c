"""pydantic's validation errors in words a person understands, located as the client wrote the request."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple


class DescribedError(NamedTuple):
    code: str
    message: str
    param: str | None


def describe_validation_errors(errors: Sequence[Mapping[str, Any]], body: object) -> DescribedError:
    """The first mistake in the request, in words (with how many more there are), and where it is."""
    located: list[tuple[tuple[str, ...], Mapping[str, Any]]] = []
    for error in errors:
        path = _client_path(error, body)
        if error.get("type") in ("union_tag_invalid", "union_tag_not_found"):
            # The tag field is what is wrong (or missing): name it.
            path = [*path, str((error.get("ctx") or {}).get("discriminator", "type")).strip("'")]
        located.append((tuple(path), error))
    # A union reports each member's failure, at places that are prefixes of one another (`input` is not a string,
    # `input.0.content.0.image_url` is not https): the deepest says what is wrong. Places that are no prefix of
    # another are the separate mistakes; the first of them is reported.
    places = list(dict.fromkeys(path for path, _ in located))
    leaves = [p for p in places if not any(len(q) > len(p) and q[: len(p)] == p for q in places)]
    place = leaves[0]
    siblings = [error for path, error in located if path == place]
    # Among the members that failed here, one that took the value's type says more than one that did not.
    chosen = next((e for e in siblings if e.get("type") not in _EXPECTED), siblings[0])
    param = ".".join(place) or None
    code = "unknown_parameter" if chosen.get("type") == "extra_forbidden" else "invalid_value"
    message = _message(chosen, place, siblings)
    if len(leaves) > 1:
        message += f" ({len(leaves) - 1} more error{'s' if len(leaves) > 2 else ''})"
    return DescribedError(code, message, param)


def _kind(value: object) -> str:
    """What a JSON value is, in words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _client_path(error: Mapping[str, Any], body: object) -> list[str]:
    """The error's location as the client wrote it: pydantic's `loc` also names the members of a union
    (`function-after[<function … at 0x…>]`, `list[InputMessage]`) and the tag of a tagged union (`input_image`),
    which are no field. Walking the body along `loc` keeps only the keys and indexes it has."""
    source, *parts = error.get("loc", ("body",))
    if source != "body":
        return [str(part) for part in parts]
    path: list[str] = []
    value = body
    for index, part in enumerate(parts):
        child = _child(value, part)
        if child is not _ABSENT:
            value = child
        elif part == _KEY or (isinstance(value, dict) and index == len(parts) - 1 and error.get("type") == "missing"):
            # A dict's key is what is wrong, not its value (the param says so after the key), or a field is missing.
            value = None
        else:
            continue
        path.append(str(part))
    return path


_ABSENT = object()
# pydantic's mark, in `loc`, of an error in a dict's key rather than its value.
_KEY = "[key]"


def _child(value: object, part: int | str) -> object:
    if isinstance(value, dict) and isinstance(part, str):
        return value.get(part, _ABSENT)
    if isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
        return value[part]
    return _ABSENT


# What a value should have been, by pydantic's error type for a value of the wrong type.
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "decimal_type": "a number",
    "decimal_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dataclass_type": "an object",
    "none_required": "null",
}
_BOUNDS = {
    "greater_than": ("gt", "greater than"),
    "greater_than_equal": ("ge", "at least"),
    "less_than": ("lt", "less than"),
    "less_than_equal": ("le", "at most"),
}
# The patterns of Parley's schemas in words (any other is quoted as it is).
_PATTERN_WORDS = {
    r"^[A-Za-z0-9._:\-]+$": "may contain only letters, digits and . _ : -",
    r"^[A-Za-z0-9_-]+$": "may contain only letters, digits, _ and -",
    r"^[A-Za-z0-9_-]{1,64}$": "must be 1 to 64 letters, digits, _ or -",
    r"^[^\s\x00]([^\n\x00]*[^\s\x00])?$": "must not start or end with a space, or contain a line break or NUL",
}
_FIELD_UNITS = {"List": "items", "Tuple": "items", "Set": "items", "Dictionary": "pairs", "Value": "items"}
# pydantic's own phrasings: "Value error, …" and "Assertion failed, …" lead what a validator raised.
_VALIDATOR_PREFIX = re.compile(r"^(Value error|Assertion failed), ")
# What a message must never carry: Python's reprs, pydantic's labels and links (a last resort; every error type
# Parley's schemas raise is put in words above).
_INTERNALS = re.compile(r"function-after|functools|<function|0x[0-9a-f]{4,}|pydantic|\[type=|tagged-union|ctx")


def _count(units: str, number: object) -> str:
    if number == 1:
        return f"1 {units.removesuffix('s')}"
    return f"{number:,} {units}" if isinstance(number, int) else f"{number} {units}"


def _has(actual: object) -> str:
    return f" (it has {actual:,})" if isinstance(actual, int) else ""


def _length(error: Mapping[str, Any], *, strings: bool) -> tuple[str, object]:
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if strings or isinstance(value, str):
        return "characters", len(value) if isinstance(value, str) else ctx.get("actual_length")
    units = _FIELD_UNITS.get(str(ctx.get("field_type")), "items")
    # pydantic stops counting a dict at its limit: the input has the whole of it.
    return units, len(value) if isinstance(value, list | dict) else ctx.get("actual_length")


def _reason(error: Mapping[str, Any], *, in_body: bool) -> str:
    """What is wrong with the value, as the end of "Invalid 'x': …"."""
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if kind in _EXPECTED:
        got = f", not {_kind(value)}" if in_body else ""
        return f"must be {_EXPECTED[kind]}{got}"
    if kind in ("string_too_short", "too_short"):
        units, actual = _length(error, strings=kind == "string_too_short")
        if ctx.get("min_length") == 1:
            return "must not be empty"
        return f"must have at least {_count(units, ctx.get('min_length'))}{_has(actual)}"
    if kind in ("string_too_long", "too_long"):
        units, actual = _length(error, strings=kind == "string_too_long")
        return f"must have at most {_count(units, ctx.get('max_length'))}{_has(actual)}"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern"))
        return _PATTERN_WORDS.get(pattern, f"must match the pattern {pattern}")
    if kind in ("literal_error", "enum"):
        return f"must be {ctx.get('expected')}"
    if kind in _BOUNDS:
        name, words = _BOUNDS[kind]
        return f"must be {words} {ctx.get(name)}"
    if kind == "union_tag_invalid":
        tags = str(ctx.get("expected_tags")).rsplit(", ", 1)
        return f"must be {' or '.join(tags)}"
    message = _VALIDATOR_PREFIX.sub("", str(error.get("msg", "")))
    for said, meant in (("Input should", "must"), ("Value should", "must"), ("String should", "must")):
        if message.startswith(said):
            message = meant + message.removeprefix(said)
    return message.rstrip(".") if message and not _INTERNALS.search(message) else "is not valid"


def _message(error: Mapping[str, Any], place: tuple[str, ...], siblings: Sequence[Mapping[str, Any]]) -> str:
    """One error in words. `siblings`: every error at the same place, one per member of a union that failed."""
    param = ".".join(place) or None
    kind = error.get("type")
    in_body = error.get("loc", ("body",))[0] == "body"
    if param is None and kind == "missing":
        return "The request body is missing: send a JSON object."
    if kind == "missing" or kind == "union_tag_not_found":
        return f"Missing required parameter '{param}'."
    if kind == "extra_forbidden":
        return f"Unknown parameter '{param}'."
    expected = [_EXPECTED[str(e.get("type"))] for e in siblings if e.get("type") in _EXPECTED]
    if len(expected) > 1 and len(expected) == len(siblings):
        # No member of the union took the value's type: say every type that would do.
        options = list(dict.fromkeys(expected))
        wanted = ", ".join(options[:-1]) + f" or {options[-1]}" if len(options) > 1 else options[0]
        got = f", not {_kind(error.get('input'))}" if in_body else ""
        reason = f"must be {wanted}{got}"
    elif param == "input" and kind in ("string_too_short", "too_short") and error.get("input") == "":
        reason = "the message is empty"
    else:
        reason = _reason(error, in_body=in_body)
    if param is None:
        if kind in _EXPECTED:
            return f"The request body must be a JSON object, not {_kind(error.get('input'))}."
        return f"Invalid request body: {reason}."
    if len(place) > 2 and place[-1] == _KEY:
        return f"Invalid key '{place[-2]}' in '{'.'.join(place[:-2])}': {reason}."
    return f"Invalid '{param}': {reason}."
