"""Structured output: `text.format` checked as the real service checks it, and JSON answers that fit the schema.

What strict mode accepts follows OpenAI's Structured Outputs guide, "Supported schemas" section, as it read in
2025-2026 (https://platform.openai.com/docs/guides/structured-outputs#supported-schemas; the same list is
captured at https://jsonschemaprofiles.unitvectorylabs.com/schemas/openai, baseline February 2026):

- types string, number, integer, boolean, object, array, null, `enum`, `const`, `anyOf` (not at the root),
  `$defs` with `$ref` (recursion allowed);
- the root is an object, not `anyOf`; every object has `additionalProperties: false` and lists every property
  in `required`;
- keywords pattern, format, multipleOf, (exclusive)minimum/maximum, minItems/maxItems are supported (this
  version; the 2024 guide still refused them, and the guide still refuses them for fine-tuned models);
- the composition keywords allOf, not, dependentRequired, dependentSchemas, if, then, else are not;
- at most 5,000 object properties, 10 levels of nesting, 1,000 enum values, 120,000 characters of property
  names, definition names, enum and const values, and 15,000 characters for a string enum of more than 250
  values.

The refusal texts are the service's own where people have pasted them (cited at each), and in its style
where nobody has.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from app.simulator.api_errors import SimulatorError, invalid_type, invalid_value, missing_parameter
from app.simulator.generation import keywords
from app.simulator.items import item_text
from app.simulator.json_types import JsonObject

FORMAT_TYPES = ["text", "json_schema", "json_object"]
VERBOSITIES = ["low", "medium", "high"]
SCHEMA_PARAM = "text.format.schema"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SUPPORTED_TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
_UNSUPPORTED_KEYWORDS = ("allOf", "not", "dependentRequired", "dependentSchemas", "if", "then", "else")
MAX_NESTING = 10
MAX_PROPERTIES = 5000
MAX_ENUM_VALUES = 1000
MAX_SCHEMA_STRING_CHARS = 120_000
LARGE_STRING_ENUM = 250
LARGE_STRING_ENUM_MAX_CHARS = 15_000
# Past this many levels of values (properties and array items), a recursive schema takes its way out: null, no
# items, a branch without `$ref`.
_GROWTH_DEPTH = 6
_HARD_DEPTH = 40
# Path steps that mark how a value was reached, not a level of the answer.
_MARKERS = frozenset({"$ref", "anyOf"})


@dataclass(frozen=True, slots=True)
class TextFormat:
    """A request's `text.format` when it asks for JSON; plain text needs nothing."""

    type: Literal["json_schema", "json_object"]
    name: str | None = None
    schema: JsonObject | None = None
    strict: bool = False


def parse_text_format(body: JsonObject) -> TextFormat | None:
    """Check `text` (its format, and a strict schema as the real service does); None when the answer is text."""
    text = body.get("text")
    if text is None:
        return None
    if not isinstance(text, dict):
        raise invalid_type("text", "an object", text)
    verbosity = text.get("verbosity")
    if verbosity is not None and verbosity not in VERBOSITIES:
        raise invalid_value("text.verbosity", verbosity, VERBOSITIES)
    text_format = text.get("format")
    if text_format is None:
        return None
    if not isinstance(text_format, dict):
        raise invalid_type("text.format", "an object", text_format)
    kind = text_format.get("type")
    if kind is None:
        raise missing_parameter("text.format.type")
    if kind not in FORMAT_TYPES:
        raise invalid_value("text.format.type", kind, FORMAT_TYPES)
    if kind == "text":
        return None
    if kind == "json_object":
        return TextFormat("json_object")
    name = text_format.get("name")
    if name is None:
        # Sourced: jamesrochabrun/SwiftOpenAI#151 (a 400 for the missing 'text.format.name').
        raise missing_parameter("text.format.name")
    if not isinstance(name, str):
        raise invalid_type("text.format.name", "a string", name)
    if not _NAME.match(name):
        raise SimulatorError(
            400,
            "Invalid 'text.format.name': string does not match pattern. Expected a string that matches the "
            "pattern '^[a-zA-Z0-9_-]+$' and is at most 64 characters.",
            param="text.format.name",
            code="invalid_value",
        )
    schema = text_format.get("schema")
    if schema is None:
        raise missing_parameter(SCHEMA_PARAM)
    if not isinstance(schema, dict):
        raise invalid_type(SCHEMA_PARAM, "an object", schema)
    strict = text_format.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise invalid_type("text.format.strict", "a boolean", strict)
    if strict:
        check_strict_schema(name, schema)
    return TextFormat("json_schema", name=name, schema=schema, strict=bool(strict))


def check_json_word(input_items: list[JsonObject]) -> None:
    """JSON mode needs the word "json" in the input messages; `instructions` do not count.

    The words, and that instructions don't count, from pydantic/pydantic-ai `models/openai.py` and other
    projects that hit it ("Response input messages must contain the word 'json' ..."); the param is a guess.
    """
    for item in input_items:
        if item.get("type") == "message" and "json" in item_text(item).lower():
            return
    raise SimulatorError(
        400,
        "Response input messages must contain the word 'json' in some form to use 'text.format' of type 'json_object'.",
        param="input",
    )


# -- strict mode -------------------------------------------------------------------------------------------


def check_strict_schema(name: str, schema: JsonObject) -> None:
    """Refuse a schema outside strict mode's subset with the service's HTTP 400 (param `text.format.schema`)."""
    _StrictCheck(name, schema).run()


def _schema_error(name: str, detail: str) -> SimulatorError:
    # The envelope as the service sends it for the Responses API: openai/codex users pasted
    # {"code": "invalid_json_schema", "param": "text.format.schema", "message": "Invalid schema for
    # response_format 'codex_output_schema': In context=('properties', 'blockedReason'), schema must have a
    # 'type' key."}.
    return SimulatorError(
        400, f"Invalid schema for response_format '{name}': {detail}", param=SCHEMA_PARAM, code="invalid_json_schema"
    )


def _in_context(path: tuple[str, ...], detail: str) -> str:
    # The service prints the path as a Python tuple: `()`, `('properties', 'etymology')`.
    return f"In context={path!r}, {detail}"


class _StrictCheck:
    """One walk over a schema: the first rule it breaks is the refusal; counts are checked at the end."""

    def __init__(self, name: str, schema: JsonObject) -> None:
        self.name = name
        self.root = schema
        self.properties = 0
        self.enum_values = 0
        self.schema_chars = 0
        self.deepest = 0

    def fail(self, path: tuple[str, ...], detail: str) -> SimulatorError:
        return _schema_error(self.name, _in_context(path, detail))

    def run(self) -> None:
        root = self.root
        kind = root.get("type")
        if kind != "object":
            # Sourced: a root `anyOf` (a Zod union) or a non-object root is refused in these words, e.g.
            # "schema must be a JSON Schema of 'type: \"object\"', got 'type: \"None\"'." (many pasted logs).
            shown = "None" if kind is None else kind
            raise _schema_error(
                self.name, f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{shown}\"'."
            )
        if "anyOf" in root:
            raise self.fail((), "'anyOf' is not permitted at the root of the schema.")
        self.walk(root, (), depth=0)
        definitions = root.get("$defs")
        if definitions is not None:
            if not isinstance(definitions, dict):
                raise self.fail(("$defs",), "'$defs' must be an object.")
            for definition_name, definition in definitions.items():
                self.schema_chars += len(definition_name)
                # A definition's own nesting starts afresh: recursion makes depth through `$ref` unbounded.
                self.walk(definition, ("$defs", definition_name), depth=0)
        self.check_sizes()

    def walk(self, node: object, path: tuple[str, ...], *, depth: int) -> None:
        if not isinstance(node, dict):
            raise self.fail(path, "schema must be a JSON Schema object.")
        for keyword in _UNSUPPORTED_KEYWORDS:
            if keyword in node:
                # Sourced: "In context=('properties', 'max_results'), 'exclusiveMinimum' is not permitted."
                # (transitive-bullshit/agentic#702, before the guide allowed that keyword).
                raise self.fail(path, f"'{keyword}' is not permitted.")
        self.count_values(node, path)
        reference = node.get("$ref")
        if reference is not None:
            if not isinstance(reference, str) or resolve_ref(self.root, reference) is None:
                raise self.fail(path, f"reference '{reference}' can't be resolved.")
            return
        branches = node.get("anyOf")
        if branches is not None:
            if not isinstance(branches, list) or not branches:
                raise self.fail(path, "'anyOf' must be a non-empty array.")
            for index, branch in enumerate(branches):
                self.walk(branch, (*path, "anyOf", str(index)), depth=depth)
            if "type" not in node:
                return
        kind = node.get("type")
        if kind is None:
            if "enum" in node or "const" in node:
                return
            # Sourced: "In context=('properties', 'blockedReason'), schema must have a 'type' key."
            raise self.fail(path, "schema must have a 'type' key.")
        kinds = kind if isinstance(kind, list) else [kind]
        for each in kinds:
            if each not in _SUPPORTED_TYPES:
                raise self.fail(path, f"type '{each}' is not supported.")
        if "object" in kinds:
            self.check_object(node, path, depth=depth + 1)
        if "array" in kinds:
            items = node.get("items")
            if items is None:
                # Sourced: "Invalid schema for response_format 'response': In context=('properties', 'items'),
                # array schema missing items." (a pasted log, quoted in a List Curator project's notes).
                raise self.fail(path, "array schema missing items.")
            self.walk(items, (*path, "items"), depth=depth)

    def check_object(self, node: JsonObject, path: tuple[str, ...], *, depth: int) -> None:
        self.deepest = max(self.deepest, depth)
        if node.get("additionalProperties") is not False:
            # Sourced: "Invalid schema for response_format 'IntentAnalysis': In context=(), 'additionalProperties'
            # is required to be supplied and to be false." (google/adk-python#4039; moeru-ai/xsai#202).
            raise self.fail(path, "'additionalProperties' is required to be supplied and to be false.")
        properties = node.get("properties") or {}
        if not isinstance(properties, dict):
            raise self.fail(path, "'properties' must be an object.")
        required = node.get("required")
        required_names = required if isinstance(required, list) else []
        missing = [key for key in properties if key not in required_names]
        extra = [key for key in required_names if key not in properties]
        if not isinstance(required, list | None) or missing:
            # Sourced: "In context=('properties', 'organizations', 'items'), 'required' is required to be supplied
            # and to be an array including every key in properties. Missing 'roles'." (vercel/ai#6484).
            suffix = f" Missing '{missing[0]}'." if missing else ""
            raise self.fail(
                path,
                f"'required' is required to be supplied and to be an array including every key in properties.{suffix}",
            )
        if extra:
            # Not found in a pasted log: the service's wording for a required key with no property, as remembered.
            raise self.fail(
                path,
                "'required' is required to be supplied and to be an array including every key in properties. "
                f"Extra required key '{extra[0]}' supplied.",
            )
        for key, value in properties.items():
            self.properties += 1
            self.schema_chars += len(key)
            self.walk(value, (*path, "properties", key), depth=depth)

    def count_values(self, node: JsonObject, path: tuple[str, ...]) -> None:
        enum = node.get("enum")
        if enum is not None:
            if not isinstance(enum, list) or not enum:
                raise self.fail(path, "'enum' must be a non-empty array.")
            self.enum_values += len(enum)
            strings = [value for value in enum if isinstance(value, str)]
            chars = sum(len(value) for value in strings)
            self.schema_chars += chars
            if len(strings) > LARGE_STRING_ENUM and chars > LARGE_STRING_ENUM_MAX_CHARS:
                raise self.fail(
                    path,
                    f"enum with {len(strings)} string values has a total string length of {chars}, which exceeds "
                    f"the limit of {LARGE_STRING_ENUM_MAX_CHARS} for enums of more than {LARGE_STRING_ENUM} values.",
                )
        const = node.get("const")
        if isinstance(const, str):
            self.schema_chars += len(const)

    def check_sizes(self) -> None:
        # The nesting words are pasted in tidyverse/ellmer#671 ("6 levels of nesting exceeds limit of 5", under
        # the 2024 limit); the other three follow their pattern.
        if self.deepest > MAX_NESTING:
            raise _schema_error(self.name, f"{self.deepest} levels of nesting exceeds limit of {MAX_NESTING}.")
        if self.properties > MAX_PROPERTIES:
            raise _schema_error(self.name, f"{self.properties} object properties exceeds limit of {MAX_PROPERTIES}.")
        if self.enum_values > MAX_ENUM_VALUES:
            raise _schema_error(self.name, f"{self.enum_values} enum values exceeds limit of {MAX_ENUM_VALUES}.")
        if self.schema_chars > MAX_SCHEMA_STRING_CHARS:
            raise _schema_error(
                self.name,
                f"total string length of {self.schema_chars} for property names, definition names, enum values "
                f"and const values exceeds limit of {MAX_SCHEMA_STRING_CHARS}.",
            )


def resolve_ref(root: JsonObject, reference: str) -> JsonObject | None:
    """A local JSON Pointer (`#`, `#/$defs/node`) in the schema document, or None."""
    if reference == "#":
        return root
    if not reference.startswith("#/"):
        return None
    target: Any = root
    for token in reference[2:].split("/"):
        key = token.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and key in target:
            target = target[key]
        elif isinstance(target, list) and key.isdigit() and int(key) < len(target):
            target = target[int(key)]
        else:
            return None
    return target if isinstance(target, dict) else None


# -- answers -----------------------------------------------------------------------------------------------


def json_answer(text_format: TextFormat, user_text: str) -> str:
    """The model's JSON answer: the same for the same input, valid against the schema (best effort where the
    schema is not strict: `pattern` is not followed, and composition keywords are read loosely)."""
    topics = keywords(user_text)
    if text_format.type == "json_object" or text_format.schema is None:
        value: object = {
            "question": " ".join(user_text.split())[:200],
            "topic": topics[0],
            "summary": f"A short answer about {topics[0]}, touching on {topics[1]} and {topics[2]}.",
            "keywords": topics,
        }
    else:
        value = _ValueMaker(text_format.schema, user_text, topics).make(text_format.schema, "", ())
    return orjson.dumps(value).decode()


class _ValueMaker:
    def __init__(self, root: JsonObject, user_text: str, topics: list[str]) -> None:
        self.root = root
        self.seed_text = user_text
        self.topics = topics

    def seed(self, path: tuple[str, ...]) -> int:
        # Each place in the answer draws its own number from the input, so values differ from field to field.
        return zlib.crc32("/".join((self.seed_text, *path)).encode())

    def make(self, schema: object, hint: str, path: tuple[str, ...]) -> object:
        if not isinstance(schema, dict):
            return self.string(hint, path, None)
        if _levels(path) > _HARD_DEPTH:
            return None
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[self.seed(path) % len(enum)]
        reference = schema.get("$ref")
        if isinstance(reference, str):
            target = resolve_ref(self.root, reference)
            return self.make(target, hint, (*path, "$ref")) if target is not None else None
        branches = schema.get("anyOf") or schema.get("oneOf")
        if isinstance(branches, list) and branches:
            return self.make(self.pick_branch(branches, path), hint, (*path, "anyOf"))
        parts = schema.get("allOf")
        if isinstance(parts, list):
            merged: JsonObject = {}
            for part in parts:
                if isinstance(part, dict):
                    merged = _merge(merged, part)
            return self.make(_merge(merged, {k: v for k, v in schema.items() if k != "allOf"}), hint, path)
        return self.of_type(schema, self.pick_type(schema, path), hint, path)

    def pick_branch(self, branches: list[Any], path: tuple[str, ...]) -> object:
        dicts = [branch for branch in branches if isinstance(branch, dict)]
        if not dicts:
            return branches[0]
        if _levels(path) >= _GROWTH_DEPTH:
            # Deep in a recursive schema: take a branch that ends here.
            ending = [branch for branch in dicts if branch.get("type") == "null"] or [
                branch for branch in dicts if "$ref" not in branch
            ]
            if ending:
                return ending[0]
        # Mostly a value, sometimes the null branch: both show up across fields and inputs.
        values = [branch for branch in dicts if branch.get("type") != "null"] or dicts
        if len(values) < len(dicts) and self.seed((*path, "null")) % 4 == 0:
            return next(branch for branch in dicts if branch.get("type") == "null")
        return values[self.seed(path) % len(values)]

    def pick_type(self, schema: JsonObject, path: tuple[str, ...]) -> str:
        kind = schema.get("type")
        if isinstance(kind, str):
            return kind
        if isinstance(kind, list) and kind:
            others = [each for each in kind if each != "null" and isinstance(each, str)]
            if not others or (
                "null" in kind and (_levels(path) >= _GROWTH_DEPTH or self.seed((*path, "null")) % 4 == 0)
            ):
                return "null"
            return others[self.seed(path) % len(others)]
        if "properties" in schema:
            return "object"
        if "items" in schema:
            return "array"
        return "string"

    def of_type(self, schema: JsonObject, kind: str, hint: str, path: tuple[str, ...]) -> object:
        if kind == "object":
            properties = schema.get("properties")
            if not isinstance(properties, dict):
                return {}
            return {key: self.make(value, key, (*path, key)) for key, value in properties.items()}
        if kind == "array":
            return self.array(schema, hint, path)
        if kind == "integer":
            return self.number(schema, path, integer=True)
        if kind == "number":
            return self.number(schema, path, integer=False)
        if kind == "boolean":
            return self.seed(path) % 2 == 0
        if kind == "null":
            return None
        return self.string(hint, path, schema.get("format"))

    def array(self, schema: JsonObject, hint: str, path: tuple[str, ...]) -> list[object]:
        low = _int_or(schema.get("minItems"), 0)
        high = _int_or(schema.get("maxItems"), max(low, 3))
        wanted = low if _levels(path) >= _GROWTH_DEPTH else 1 + self.seed(path) % 3
        count = min(max(wanted, low), high)
        singular = _singular(hint)
        return [self.make(schema.get("items"), singular, (*path, str(index))) for index in range(count)]

    def number(self, schema: JsonObject, path: tuple[str, ...], *, integer: bool) -> int | float:
        step = schema.get("multipleOf")
        unit = step if isinstance(step, int | float) and not isinstance(step, bool) and step > 0 else 1
        low, high = _bounds(schema)
        # Whole multiples of the unit between the bounds (numbers get a half step when no unit is asked for).
        if not integer and "multipleOf" not in schema:
            unit = 0.5
        first = _ceil_div(low, unit) if low is not None else 1
        last = _floor_div(high, unit) if high is not None else first + 199
        if low is not None and low == first * unit and schema.get("exclusiveMinimum") == low:
            first += 1
        if high is not None and high == last * unit and schema.get("exclusiveMaximum") == high:
            last -= 1
        if last < first:
            last = first
        multiple = first + self.seed(path) % (last - first + 1)
        value = multiple * unit
        if integer or float(value).is_integer():
            return int(value)
        return float(value)

    def string(self, hint: str, path: tuple[str, ...], string_format: object) -> str:
        seed = self.seed(path)
        if string_format == "date-time":
            return f"2026-{1 + seed % 12:02d}-{1 + seed % 28:02d}T{seed % 24:02d}:{seed % 60:02d}:00Z"
        if string_format == "date":
            return f"2026-{1 + seed % 12:02d}-{1 + seed % 28:02d}"
        if string_format == "time":
            return f"{seed % 24:02d}:{seed % 60:02d}:00"
        if string_format == "duration":
            return f"PT{1 + seed % 90}M"
        if string_format == "email":
            return f"{self.topics[seed % 3]}@example.com"
        if string_format == "hostname":
            return f"{self.topics[seed % 3]}.example.com"
        if string_format == "ipv4":
            return f"192.0.2.{seed % 255}"
        if string_format == "ipv6":
            return f"2001:db8::{seed % 65536:x}"
        if string_format == "uuid":
            digits = f"{seed:08x}{zlib.crc32(str(path).encode()):08x}" * 2
            return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-8{digits[17:20]}-{digits[20:32]}"
        topic = self.topics[seed % 3]
        label = " ".join(part for part in re.split(r"[_\W]+", hint) if part) if hint else ""
        if not label:
            return topic[:1].upper() + topic[1:]
        return f"{topic[:1].upper()}{topic[1:]} {label.lower()}"


def _singular(word: str) -> str:
    """An array's name for one of its items ("activities" -> "activity"), for the strings inside it."""
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def _levels(path: tuple[str, ...]) -> int:
    return sum(1 for step in path if step not in _MARKERS)


def _merge(left: JsonObject, right: JsonObject) -> JsonObject:
    merged = {**left, **right}
    if isinstance(left.get("properties"), dict) and isinstance(right.get("properties"), dict):
        merged["properties"] = {**left["properties"], **right["properties"]}
    return merged


def _int_or(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _bounds(schema: JsonObject) -> tuple[float | None, float | None]:
    def number(key: str) -> float | None:
        value = schema.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    lows = [value for value in (number("minimum"), number("exclusiveMinimum")) if value is not None]
    highs = [value for value in (number("maximum"), number("exclusiveMaximum")) if value is not None]
    return (max(lows) if lows else None), (min(highs) if highs else None)


def _ceil_div(value: float, unit: float) -> int:
    return -int(-value // unit)


def _floor_div(value: float, unit: float) -> int:
    return int(value // unit)
