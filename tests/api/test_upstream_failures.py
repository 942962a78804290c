"""Creating a session when the upstream cannot create a conversation: a 5xx in the envelope, no row."""

from __future__ import annotations

import httpx

from tests.conftest import create_api_user, run_parley
from tests.servers import free_port


async def test_unreachable_upstream_is_502_and_stores_nothing(database_url: str, backend: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with run_parley(database_url, backend, openai_base_url=dead, upstream_connect_timeout_s=1.0) as running:
        async with httpx.AsyncClient(base_url=running.base_url, timeout=60) as http:
            user = await create_api_user(http)
            response = await http.post("/v1/sessions", json={"title": "x"}, headers=user.headers)
            assert response.status_code == 502
            assert response.json()["error"]["code"] == "upstream_unreachable"
            assert (await http.get("/v1/sessions", headers=user.headers)).json()["data"] == []
