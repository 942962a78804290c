"""Every error the API answers is in the contract's envelope and in words: no Python or pydantic internals.

The requests come from the server's own OpenAPI document: for every operation, every property of its JSON body
(nested ones included, each member of a union) gets a value of every wrong type, an empty string, an empty list,
null and a far too long string; every object gets a property it does not have; the body itself is not an object,
not JSON, or absent; every path, query and header parameter gets malformed values. The ids in paths name nothing,
so a request that passes validation answers 404 and changes nothing.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from tests.conftest import ApiUser, RunningParley, run_parley

# What a message or param must never carry: Python reprs and pydantic's own labels, phrasings and links.
INTERNALS = re.compile(
    r"function-after|functools|<function|\b0x[0-9a-f]+|pydantic|\[type=|errors\.pydantic\.dev|For further information"
    r"|tagged-union|list\[|dict\[|\bctx\b|Input should|Value error|Field required|Extra inputs are not permitted"
    r"|after validation|to extract fields from|Traceback|\bNone\b",
)
# "… (2 more errors)" after the first one's sentence.
MORE = re.compile(r" \(\d+ more errors?\)$")
WRONG_VALUES: list[Any] = [None, True, 12345, 1.5, "", "x" * 100_001, [], {}, "\x00", ["x"], {"k": "v"}]
PARAM_VALUES = ["", "abc", "-1", "0", "1000000000000000000000", "x" * 5000, "a b/../%", "1.5", "\u00e9\u4e2d"]
UNKNOWN_ID = {"session_id": "sess_nothing", "turn_id": "turn_nothing", "user_id": "user_nothing", "key_id": "key_none"}
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    spec: dict[str, Any]

    @property
    def admin(self) -> bool:
        return any("AdminToken" in s for s in self.spec.get("security", []))

    def url(self, **overrides: str) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: overrides.get(m.group(1), UNKNOWN_ID.get(m.group(1), "x")), self.path)

    @property
    def body_schema(self) -> dict[str, Any] | None:
        content = self.spec.get("requestBody", {}).get("content", {})
        schema: dict[str, Any] | None = content.get("application/json", {}).get("schema")
        return schema


class Schemas:
    """The document's schemas, with `$ref` resolved and a valid sample of each."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.components = document.get("components", {}).get("schemas", {})

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def branches(self, schema: dict[str, Any]) -> list[dict[str, Any]]:
        """The members of a union (null left out), or the schema itself."""
        schema = self.resolve(schema)
        members = schema.get("anyOf") or schema.get("oneOf")
        if not members:
            return [schema]
        return [self.resolve(m) for m in members if self.resolve(m).get("type") != "null"]

    def sample(self, schema: dict[str, Any]) -> Any:
        """A valid value: required properties only, and one item in a list."""
        schema = self.branches(schema)[0]
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return schema["enum"][0]
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            return {name: self.sample(schema["properties"][name]) for name in schema.get("required", [])}
        if kind == "array":
            return [self.sample(schema.get("items", {}))]
        if kind == "boolean":
            return False
        if kind in ("integer", "number"):
            return schema.get("minimum", 1)
        if schema.get("examples"):
            return schema["examples"][0]
        if schema.get("pattern", "").startswith("^[0-9]"):
            return "1"
        return "x"


Path = tuple[str | int, ...]


def _set(document: Any, path: Path, value: Any) -> Any:
    if not path:
        return value
    changed = copy.deepcopy(document)
    target = changed
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return changed


def body_cases(schemas: Schemas, schema: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(what, body) for every invalid shape: each property of each object reachable from the body, every member of
    each union followed."""
    seen: set[tuple[Path, str]] = set()

    def walk(document: Any, path: Path, node: dict[str, Any]) -> Iterator[tuple[str, Any]]:
        for branch in schemas.branches(node):
            key = (path, json.dumps(branch, sort_keys=True))
            if key in seen:
                continue
            seen.add(key)
            if branch.get("type") == "object" or "properties" in branch:
                here = schemas.sample(branch)
                base = _set(document, path, here)
                yield f"{_name(path)}: an unknown property", _set(base, (*path, "unexpected_property"), 1)
                for name, child in branch.get("properties", {}).items():
                    child_path = (*path, name)
                    for value in WRONG_VALUES:
                        yield f"{_name(child_path)} = {_short(value)}", _set(base, child_path, value)
                    yield from walk(base, child_path, child)
            elif branch.get("type") == "array":
                base = _set(document, path, [schemas.sample(branch.get("items", {}))])
                for value in WRONG_VALUES:
                    yield f"{_name((*path, 0))} = {_short(value)}", _set(base, (*path, 0), value)
                yield f"{_name(path)}: too many items", _set(base, path, base_items(base, path) * 1000)
                yield from walk(base, (*path, 0), branch.get("items", {}))

    def base_items(document: Any, path: Path) -> list[Any]:
        target = document
        for part in path:
            target = target[part]
        return list(target)

    for value in (None, [], "a string", 5, True, [{}]):
        yield f"the body is {_short(value)}", value
    yield from walk(None, (), schema)


def _name(path: Path) -> str:
    return ".".join(str(p) for p in path) or "the body"


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) < 30 else text[:20] + "…"


@dataclass
class Findings:
    problems: list[str]
    statuses: dict[int, int]

    def check(self, what: str, response: httpx.Response) -> None:
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        where = f"{response.request.method} {response.request.url.path} with {what}: {response.status_code}"
        if response.status_code >= 500:
            self.problems.append(f"{where} {response.text[:300]}")
            return
        if response.status_code < 400:
            return
        try:
            body = response.json()
        except ValueError:
            self.problems.append(f"{where}: not JSON: {response.text[:200]}")
            return
        error = body.get("error") if isinstance(body, dict) else None
        if set(body) != {"error"} or not isinstance(error, dict) or set(error) != {"type", "code", "message", "param"}:
            self.problems.append(f"{where}: not the envelope: {response.text[:300]}")
            return
        if not all(isinstance(error[k], str) and error[k] for k in ("type", "code", "message")) or not (
            error["param"] is None or isinstance(error["param"], str)
        ):
            self.problems.append(f"{where}: envelope fields of the wrong type: {error}")
            return
        for field in ("message", "param"):
            found = INTERNALS.search(error[field] or "")
            if found:
                self.problems.append(f"{where}: {field} has {found.group()!r}: {error[field]!r}")
        if not error["message"][0].isupper() or not MORE.sub("", error["message"]).endswith("."):
            self.problems.append(f"{where}: message is not a sentence: {error['message']!r}")


async def test_every_invalid_request_is_answered_in_words(
    client: httpx.AsyncClient, user: ApiUser, parley: RunningParley
) -> None:
    document = (await client.get("/openapi.json")).json()
    schemas = Schemas(document)
    operations = [
        Operation(method.upper(), path, spec)
        for path, methods in document["paths"].items()
        for method, spec in methods.items()
        if path.startswith("/v1/")
    ]
    findings = Findings(problems=[], statuses={})
    requests = 0
    for operation in operations:
        headers = parley.admin_headers if operation.admin else user.headers
        schema = operation.body_schema
        if schema is not None:
            for what, body in body_cases(schemas, schema):
                response = await client.request(
                    operation.method, operation.url(), content=json.dumps(body).encode(), headers=headers | JSON
                )
                findings.check(what, response)
                requests += 1
            for what, raw in [("invalid JSON", b'{"a": '), ("no body", b""), ("a NUL byte", b"\x00"), ("BOM", b"\xef")]:
                response = await client.request(operation.method, operation.url(), content=raw, headers=headers | JSON)
                findings.check(what, response)
                requests += 1
        valid = json.dumps(schemas.sample(schema)).encode() if schema is not None else None
        for parameter in operation.spec.get("parameters", []):
            name, place = parameter["name"], parameter["in"]
            for value in PARAM_VALUES:
                what = f"{place} {name}={_short(value)}"
                if place == "path":
                    if not value or "/" in value:
                        continue
                    url, params, extra = operation.url(**{name: value}), {}, {}
                elif place == "query":
                    url, params, extra = operation.url(), {name: value}, {}
                else:
                    if not value.isascii():
                        continue
                    url, params, extra = operation.url(), {}, {name: value}
                response = await client.request(
                    operation.method,
                    url,
                    params=params,
                    content=valid,
                    headers=headers | extra | (JSON if valid is not None else {}),
                )
                findings.check(what, response)
                requests += 1
    assert requests > 500
    # The walk reached the validation errors of nested bodies: many 422s, and 404s for the valid ones.
    assert findings.statuses.get(422, 0) > 300, findings.statuses
    assert not findings.problems, f"{len(findings.problems)} of {requests} requests:\n" + "\n".join(
        findings.problems[:60]
    )


async def test_the_admin_api_says_when_it_is_off(database_url: str, backend: str, user: ApiUser) -> None:
    """Without PARLEY_ADMIN_TOKEN no credential is the admin's: every admin route says the admin API is off and how
    to turn it on, whoever asks, and does nothing else."""
    with run_parley(database_url, backend, admin_token=None) as off:
        async with httpx.AsyncClient(base_url=off.base_url, timeout=30) as http:
            for headers in ({}, {"Authorization": "Bearer some-guess"}, user.headers):
                for method, path, body in [
                    ("GET", "/v1/admin/users", None),
                    ("POST", "/v1/admin/users", {"name": "eve"}),
                    ("POST", "/v1/admin/keys/key_nothing/revoke", None),
                ]:
                    response = await http.request(method, path, json=body, headers=headers)
                    assert response.status_code == 403, response.text
                    assert response.json()["error"]["code"] == "admin_api_disabled"
                    assert "PARLEY_ADMIN_TOKEN" in response.json()["error"]["message"]
            # A user's own routes work as ever.
            assert (await http.get("/v1/sessions", headers=user.headers)).status_code == 200
