"""/openapi.json describes every route as it really is: schemas, errors, auth, the SSE streams."""

from __future__ import annotations

import importlib.metadata
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from app.main import create_app
from tests.conftest import RunningParley, make_settings

# The public surface, committed: a new or removed route must show up here in review (OWASP API9).
ROUTES = {
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/"),
    ("POST", "/v1/sessions"),
    ("GET", "/v1/sessions"),
    ("GET", "/v1/sessions/{session_id}"),
    ("PATCH", "/v1/sessions/{session_id}"),
    ("DELETE", "/v1/sessions/{session_id}"),
    ("GET", "/v1/sessions/{session_id}/messages"),
    ("POST", "/v1/sessions/{session_id}/messages"),
    ("GET", "/v1/sessions/{session_id}/turns"),
    ("GET", "/v1/sessions/{session_id}/turns/{turn_id}"),
    ("GET", "/v1/sessions/{session_id}/turns/{turn_id}/events"),
    ("POST", "/v1/sessions/{session_id}/turns/{turn_id}/cancel"),
    ("POST", "/v1/sessions/{session_id}/turns/{turn_id}/tool_outputs"),
    ("PUT", "/v1/sessions/{session_id}/turns/{turn_id}/feedback"),
    ("POST", "/v1/sessions/{session_id}/messages/{message_id}/edit"),
    ("POST", "/v1/sessions/{session_id}/messages/{message_id}/activate"),
    ("POST", "/v1/sessions/{session_id}/turns/{turn_id}/regenerate"),
    ("POST", "/v1/sessions/{session_id}/fork"),
    ("GET", "/v1/sessions/{session_id}/export"),
    ("GET", "/v1/search"),
    ("POST", "/v1/files"),
    ("GET", "/v1/files"),
    ("GET", "/v1/files/{file_id}"),
    ("GET", "/v1/files/{file_id}/content"),
    ("DELETE", "/v1/files/{file_id}"),
    ("GET", "/v1/usage"),
    ("GET", "/v1/config"),
    ("POST", "/v1/admin/users"),
    ("GET", "/v1/admin/users"),
    ("PUT", "/v1/admin/users/{user_id}/budget"),
    ("GET", "/v1/admin/users/{user_id}/budget"),
    ("POST", "/v1/admin/users/{user_id}/keys"),
    ("GET", "/v1/admin/users/{user_id}/keys"),
    ("POST", "/v1/admin/keys/{key_id}/revoke"),
    ("DELETE", "/v1/admin/keys/{key_id}"),
}
BODY_ROUTES = {(m, p) for m, p in ROUTES if m in ("POST", "PATCH", "PUT")} - {
    ("POST", "/v1/sessions/{session_id}/turns/{turn_id}/cancel"),
    ("POST", "/v1/sessions/{session_id}/messages/{message_id}/activate"),
    ("POST", "/v1/admin/keys/{key_id}/revoke"),
    ("POST", "/v1/files"),  # multipart: see test_an_upload_is_described_as_multipart
}
SSE_ROUTES = {
    ("POST", "/v1/sessions/{session_id}/messages"),
    ("POST", "/v1/sessions/{session_id}/messages/{message_id}/edit"),
    ("POST", "/v1/sessions/{session_id}/turns/{turn_id}/regenerate"),
    ("POST", "/v1/sessions/{session_id}/turns/{turn_id}/tool_outputs"),
    ("GET", "/v1/sessions/{session_id}/turns/{turn_id}/events"),
}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return create_app(make_settings("sqlite+aiosqlite:///:memory:")).openapi()


def _operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
    }


def test_the_route_inventory_is_exactly_the_committed_one() -> None:
    app = create_app(make_settings("sqlite+aiosqlite:///:memory:"))
    contexts = list(iter_route_contexts(app.routes))
    served = {(method, c.path) for c in contexts if c.methods for method in c.methods if method != "HEAD"}
    assert served == ROUTES
    # Mounted apps: the playground's static files, and the simulator on the embedded default only.
    assert {c.path for c in contexts if not c.methods} == {"/web", "/simulator"}
    keyed = create_app(make_settings("sqlite+aiosqlite:///:memory:", openai_api_key="sk-test"))
    assert {c.path for c in iter_route_contexts(keyed.routes) if not c.methods} == {"/web"}


def test_every_api_route_is_documented_with_auth_and_errors(spec: dict[str, Any]) -> None:
    operations = _operations(spec)
    undocumented = {"/metrics", "/", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
    documented = {key for key in ROUTES if key[1] not in undocumented}
    assert documented <= set(operations)
    schemes = spec["components"]["securitySchemes"]
    assert {scheme["scheme"] for scheme in schemes.values()} == {"bearer"}
    for (method, path), operation in operations.items():
        assert operation.get("summary") or operation.get("description"), (method, path)
        responses = operation["responses"]
        success = [code for code in responses if code.startswith("2")]
        assert success, (method, path)
        if not path.startswith("/v1/"):
            continue
        assert operation.get("security"), f"{method} {path} declares no auth"
        assert "401" in responses, (method, path)
        assert "422" in responses, (method, path)
        for code, response in responses.items():
            if (code.startswith(("4", "5")) and code != "503") or (code == "503" and "content" in response):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, (method, path, code)
        if (method, path) in BODY_ROUTES:
            assert operation["requestBody"]["content"]["application/json"]["schema"], (method, path)
            assert {"413", "415"} <= set(responses), (method, path)
        if method == "GET":
            assert "413" not in responses, (method, path)


def test_an_upload_is_described_as_multipart(spec: dict[str, Any]) -> None:
    operation = _operations(spec)[("POST", "/v1/files")]
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file"]
    assert form["properties"]["file"]["format"] == "binary"
    assert {"201", "413", "415"} <= set(operation["responses"])


def test_streams_are_described(spec: dict[str, Any]) -> None:
    operations = _operations(spec)
    for key in SSE_ROUTES:
        operation = operations[key]
        assert "text/event-stream" in operation["responses"]["200"]["content"]
        for event in ("turn.created", "turn.completed", "turn.failed", "turn.cancelled", "turn.incomplete"):
            assert event in operation["description"], (key, event)
    events = operations[("GET", "/v1/sessions/{session_id}/turns/{turn_id}/events")]
    names = {parameter["name"] for parameter in events["parameters"]}
    assert {"Last-Event-ID", "last_event_id", "token"} <= names
    send = operations[("POST", "/v1/sessions/{session_id}/messages")]
    assert "Idempotency-Key" in {parameter["name"] for parameter in send["parameters"]}
    assert {"402", "409", "429", "502", "504"} <= set(send["responses"])


def test_schemas_match_the_contract(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    session = set(schemas["SessionRead"]["properties"])
    assert session == {
        "id",
        "object",
        "title",
        "title_source",
        "metadata",
        "prompt",
        "model",
        "options",
        "tools",
        "server_tools",
        "conversation_id",
        "created_at",
        "updated_at",
        "last_turn_at",
        "turn_count",
        "total_cost_usd",
    }
    turn = set(schemas["TurnRead"]["properties"])
    assert {
        "id",
        "object",
        "session_id",
        "status",
        "input",
        "output_text",
        "response_ids",
        "usage",
        "cost_usd",
        "error",
        "created_at",
        "completed_at",
        "ttft_ms",
        "stream_url",
    } <= turn
    message = set(schemas["MessageRead"]["properties"])
    assert message == {
        "id",
        "object",
        "session_id",
        "turn_id",
        "parent_id",
        "alternatives",
        "role",
        "content",
        "items",
        "model",
        "status",
        "created_at",
    }
    assert schemas["ErrorBody"]["required"] == ["type", "code", "message", "param"]
    assert schemas["SessionCreate"].get("examples") or schemas["SessionCreate"].get("example")
    assert schemas["MessageCreate"].get("examples")


async def test_docs_are_served(client: httpx.AsyncClient, parley: RunningParley) -> None:
    assert (await client.get("/openapi.json")).json()["info"]["title"] == "Parley"
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


def test_the_document_states_the_installed_version(spec: dict[str, Any]) -> None:
    assert spec["info"]["version"] == importlib.metadata.version("parley")
