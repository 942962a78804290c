from __future__ import annotations

import httpx

from tests.conftest import ApiUser


async def test_create_and_list_session(client: httpx.AsyncClient, user: ApiUser) -> None:
    created = await client.post("/v1/sessions", json={"title": "hello"}, headers=user.headers)
    assert created.status_code == 201, created.text
    listed = await client.get("/v1/sessions", headers=user.headers)
    assert [s["id"] for s in listed.json()["data"]] == [created.json()["id"]]
