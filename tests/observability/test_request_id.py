"""X-Request-ID on every response: JSON, errors (the handlers', the body guard's, an unhandled exception's)
and event streams; a client's valid id is kept, anything else replaced."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from app.main import create_app
from tests.conftest import ApiUser, RunningParley, make_settings
from tests.servers import serve
from tests.turns.helpers import new_session, send

GENERATED = re.compile(r"req_[0-9a-f]{32}")


async def test_json_responses_carry_a_generated_id(http: httpx.AsyncClient, person: ApiUser) -> None:
    first = await http.get("/healthz")
    second = await http.get("/v1/sessions", headers=person.headers)
    assert second.status_code == 200
    ids = [first.headers["X-Request-ID"], second.headers["X-Request-ID"]]
    assert all(GENERATED.fullmatch(i) for i in ids)
    assert ids[0] != ids[1]
    assert len(first.headers.get_list("X-Request-ID")) == 1


async def test_error_responses_carry_it(http: httpx.AsyncClient, person: ApiUser) -> None:
    responses = [
        await http.get("/v1/sessions"),  # 401 from the error handlers
        await http.get("/v1/no-such-route", headers=person.headers),  # 404
        await http.post("/v1/sessions", content=b"x", headers=person.headers | {"Content-Type": "text/plain"}),
        await http.post("/v1/sessions", content=b"{" * 2_000_000, headers=person.headers),  # 413 from the guard
    ]
    assert [r.status_code for r in responses] == [401, 404, 415, 413]
    for response in responses:
        assert GENERATED.fullmatch(response.headers["X-Request-ID"]), response.status_code
        assert "error" in response.json()


async def test_event_streams_carry_it(http: httpx.AsyncClient, person: ApiUser) -> None:
    session_id = await new_session(http, person)
    stream = await send(http, person, session_id, headers={"X-Request-ID": "client.trace-42_a"})
    assert stream.status == 200
    assert stream.names[-1] == "turn.completed"
    assert stream.headers["X-Request-ID"] == "client.trace-42_a"
    assert stream.headers["content-type"].startswith("text/event-stream")


async def test_a_valid_client_id_is_echoed(http: httpx.AsyncClient) -> None:
    for valid in ("abc", "A.b-C_9", "x" * 128, "0"):
        response = await http.get("/healthz", headers={"X-Request-ID": valid})
        assert response.headers["X-Request-ID"] == valid


@pytest.mark.parametrize("invalid", ["x" * 129, "has space", "semi;colon", "slash/", 'quote"', ""])
async def test_an_invalid_client_id_is_replaced(http: httpx.AsyncClient, invalid: str) -> None:
    response = await http.get("/healthz", headers={"X-Request-ID": invalid})
    assert GENERATED.fullmatch(response.headers["X-Request-ID"])


async def test_the_embedded_simulator_keeps_its_own_upstream_id(
    http: httpx.AsyncClient, observed: RunningParley
) -> None:
    """The simulator stands in for OpenAI: its x-request-id is the upstream's, and Parley leaves it alone."""
    response = await http.get(
        f"{observed.simulator_url}/v1/models",
        headers={"Authorization": "Bearer sk-test", "X-Request-ID": "from-the-client"},
    )
    assert response.status_code == 200
    assert response.headers.get_list("x-request-id") != ["from-the-client"]
    assert len(response.headers.get_list("x-request-id")) == 1


@pytest.fixture(scope="module")
def crashing(database_url: str) -> Iterator[str]:
    """A Parley with one route that raises: its 500 comes from Starlette's outermost error middleware."""
    app = create_app(make_settings(database_url))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with serve(app) as base_url:
        yield base_url


async def test_an_unhandled_error_carries_it(crashing: str) -> None:
    async with httpx.AsyncClient(base_url=crashing, timeout=30) as client:
        response = await client.get("/boom", headers={"X-Request-ID": "trace-500"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert response.headers["X-Request-ID"] == "trace-500"
