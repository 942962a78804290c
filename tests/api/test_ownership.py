"""A user never sees another user's sessions: their ids answer 404, exactly like ids that do not exist."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ApiUser


@pytest.fixture
async def owned_session(client: httpx.AsyncClient, user: ApiUser) -> dict[str, object]:
    created = await client.post(
        "/v1/sessions",
        json={"title": "private", "messages": [{"role": "user", "content": "secret"}]},
        headers=user.headers,
    )
    assert created.status_code == 201
    return dict(created.json())


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("PATCH", "", {"title": "stolen"}),
        ("DELETE", "", None),
        ("GET", "/messages", None),
    ],
)
async def test_other_users_session_is_not_found(
    client: httpx.AsyncClient,
    owned_session: dict[str, object],
    user: ApiUser,
    other_user: ApiUser,
    method: str,
    suffix: str,
    body: dict[str, object] | None,
) -> None:
    theirs = await client.request(
        method, f"/v1/sessions/{owned_session['id']}{suffix}", json=body, headers=other_user.headers
    )
    missing = await client.request(
        method, f"/v1/sessions/sess_{'0' * 32}{suffix}", json=body, headers=other_user.headers
    )
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["code"] == missing.json()["error"]["code"]

    # The owner's data is untouched.
    mine = await client.get(f"/v1/sessions/{owned_session['id']}", headers=user.headers)
    assert mine.status_code == 200
    assert mine.json() == owned_session
    history = await client.get(f"/v1/sessions/{owned_session['id']}/messages", headers=user.headers)
    assert [m["content"] for m in history.json()["data"]] == ["secret"]


async def test_list_shows_only_own_sessions(
    client: httpx.AsyncClient, owned_session: dict[str, object], other_user: ApiUser
) -> None:
    theirs = await client.get("/v1/sessions", params={"user_id": "anyone", "limit": 100}, headers=other_user.headers)
    assert theirs.status_code == 200
    assert owned_session["id"] not in [s["id"] for s in theirs.json()["data"]]


async def test_conversation_id_is_not_a_session_id(
    client: httpx.AsyncClient, owned_session: dict[str, object], user: ApiUser
) -> None:
    response = await client.get(f"/v1/sessions/{owned_session['conversation_id']}", headers=user.headers)
    assert response.status_code == 404
