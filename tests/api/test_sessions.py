"""Sessions: create / list / get / patch / delete, each mapped to an upstream Conversation."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ApiUser, RunningParley


async def _create(client: httpx.AsyncClient, user: ApiUser, **body: object) -> dict[str, object]:
    response = await client.post("/v1/sessions", json=body, headers=user.headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_create_returns_the_contract_shape_and_owns_an_upstream_conversation(
    client: httpx.AsyncClient, user: ApiUser, parley: RunningParley
) -> None:
    session = await _create(
        client,
        user,
        title="Trip planning",
        metadata={"project": "demo"},
        prompt={"id": "pmpt_parley_demo", "version": "1", "variables": {"user_name": "Ada"}},
        model="gpt-5-mini",
    )
    assert str(session["id"]).startswith("sess_")
    assert session["object"] == "session"
    assert session["title"] == "Trip planning"
    assert session["metadata"] == {"project": "demo"}
    assert session["prompt"] == {"id": "pmpt_parley_demo", "version": "1", "variables": {"user_name": "Ada"}}
    assert session["model"] == "gpt-5-mini"
    assert session["turn_count"] == 0
    assert session["last_turn_at"] is None
    assert session["total_cost_usd"] == "0.00000000"
    assert str(session["created_at"]).endswith(("Z", "+00:00"))
    conversation_id = str(session["conversation_id"])
    assert conversation_id.startswith("conv_")

    upstream = await client.get(
        f"{parley.simulator_url}/v1/conversations/{conversation_id}", headers={"Authorization": "Bearer sk-x"}
    )
    assert upstream.status_code == 200
    assert upstream.json()["metadata"]["parley_session_id"] == session["id"]


async def test_get_patch_and_list(client: httpx.AsyncClient, user: ApiUser) -> None:
    session = await _create(client, user, title="first")
    fetched = await client.get(f"/v1/sessions/{session['id']}", headers=user.headers)
    assert fetched.json() == session

    patched = await client.patch(
        f"/v1/sessions/{session['id']}", json={"title": "renamed", "metadata": {"k": "v"}}, headers=user.headers
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["title"] == "renamed"
    assert patched.json()["metadata"] == {"k": "v"}
    assert patched.json()["conversation_id"] == session["conversation_id"]

    # Fields left out of a PATCH stay as they are.
    again = await client.patch(f"/v1/sessions/{session['id']}", json={"metadata": {}}, headers=user.headers)
    assert again.json()["title"] == "renamed"
    assert again.json()["metadata"] == {}
    assert again.json()["updated_at"] >= session["updated_at"]


async def test_list_is_cursor_paginated_newest_first(client: httpx.AsyncClient, user: ApiUser) -> None:
    ids = [str((await _create(client, user, title=f"s{i}"))["id"]) for i in range(5)]
    newest_first = list(reversed(ids))

    page1 = (await client.get("/v1/sessions", params={"limit": 2}, headers=user.headers)).json()
    assert page1["object"] == "list"
    assert [s["id"] for s in page1["data"]] == newest_first[:2]
    assert page1["first_id"] == newest_first[0]
    assert page1["last_id"] == newest_first[1]
    assert page1["has_more"] is True

    page2 = (
        await client.get("/v1/sessions", params={"limit": 2, "after": page1["last_id"]}, headers=user.headers)
    ).json()
    assert [s["id"] for s in page2["data"]] == newest_first[2:4]
    page3 = (
        await client.get("/v1/sessions", params={"limit": 2, "after": page2["last_id"]}, headers=user.headers)
    ).json()
    assert [s["id"] for s in page3["data"]] == newest_first[4:]
    assert page3["has_more"] is False

    ascending = (await client.get("/v1/sessions", params={"order": "asc"}, headers=user.headers)).json()
    assert [s["id"] for s in ascending["data"]] == ids


async def test_empty_list(client: httpx.AsyncClient, user: ApiUser) -> None:
    body = (await client.get("/v1/sessions", headers=user.headers)).json()
    assert body == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


async def test_delete_removes_the_session_and_its_upstream_conversation(
    client: httpx.AsyncClient, user: ApiUser, parley: RunningParley
) -> None:
    session = await _create(client, user, title="doomed", messages=[{"role": "user", "content": "hi"}])
    deleted = await client.delete(f"/v1/sessions/{session['id']}", headers=user.headers)
    assert deleted.status_code == 200
    assert deleted.json() == {"id": session["id"], "object": "session.deleted", "deleted": True}

    assert (await client.get(f"/v1/sessions/{session['id']}", headers=user.headers)).status_code == 404
    assert (await client.get(f"/v1/sessions/{session['id']}/messages", headers=user.headers)).status_code == 404
    assert (await client.delete(f"/v1/sessions/{session['id']}", headers=user.headers)).status_code == 404
    listed = (await client.get("/v1/sessions", headers=user.headers)).json()
    assert session["id"] not in [s["id"] for s in listed["data"]]

    upstream = await client.get(
        f"{parley.simulator_url}/v1/conversations/{session['conversation_id']}",
        headers={"Authorization": "Bearer sk-x"},
    )
    assert upstream.status_code == 404


async def test_import_chat_completions_history_in_order(
    client: httpx.AsyncClient, user: ApiUser, parley: RunningParley
) -> None:
    roles = ["system", "user", "assistant", "developer"]
    history = [{"role": roles[i % 4] if i else "system", "content": f"message number {i}"} for i in range(45)]
    session = await _create(client, user, messages=history)

    # Parley's own history, oldest first by default.
    stored: list[dict[str, object]] = []
    after = None
    while True:
        params: dict[str, object] = {"limit": 100} if after is None else {"limit": 100, "after": after}
        page = (await client.get(f"/v1/sessions/{session['id']}/messages", params=params, headers=user.headers)).json()
        stored.extend(page["data"])
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert [(m["role"], m["content"]) for m in stored] == [(m["role"], m["content"]) for m in history]
    assert all(m["turn_id"] is None and m["session_id"] == session["id"] for m in stored)
    assert all(str(m["id"]).startswith("msg_") for m in stored)

    # The upstream conversation holds the same items in the same order, sent in chunks of at most 20.
    items: list[dict[str, object]] = []
    after = None
    sim = {"Authorization": "Bearer sk-x"}
    while True:
        params = {"order": "asc", "limit": 100} | ({"after": after} if after else {})
        page = (
            await client.get(
                f"{parley.simulator_url}/v1/conversations/{session['conversation_id']}/items",
                params=params,
                headers=sim,
            )
        ).json()
        items.extend(page["data"])
        if not page["has_more"]:
            break
        after = page["last_id"]
    texts = [item["content"][0]["text"] for item in items]  # type: ignore[index]
    assert texts == [m["content"] for m in history]

    requests = (await client.get(f"{parley.simulator_url}/_control/requests", headers=parley.admin_headers)).json()
    conversation_calls = [
        r
        for r in requests
        if r["method"] == "POST"
        and r["path"].startswith("/v1/conversations")
        and (
            (r["body"] or {}).get("metadata", {}).get("parley_session_id") == session["id"]
            or session["conversation_id"] in r["path"]
        )
    ]
    assert [len(r["body"]["items"]) for r in conversation_calls] == [20, 20, 5]


async def test_messages_list_pages_both_ways(client: httpx.AsyncClient, user: ApiUser) -> None:
    history = [{"role": "user", "content": str(i)} for i in range(5)]
    session = await _create(client, user, messages=history)
    url = f"/v1/sessions/{session['id']}/messages"
    first = (await client.get(url, params={"limit": 3}, headers=user.headers)).json()
    assert [m["content"] for m in first["data"]] == ["0", "1", "2"]
    assert first["has_more"] is True
    rest = (await client.get(url, params={"limit": 3, "after": first["last_id"]}, headers=user.headers)).json()
    assert [m["content"] for m in rest["data"]] == ["3", "4"]
    newest = (await client.get(url, params={"order": "desc", "limit": 2}, headers=user.headers)).json()
    assert [m["content"] for m in newest["data"]] == ["4", "3"]


@pytest.mark.parametrize("field", ["conversation_id", "user_id", "total_cost_usd", "created_at"])
async def test_server_owned_fields_cannot_be_set(client: httpx.AsyncClient, user: ApiUser, field: str) -> None:
    response = await client.post("/v1/sessions", json={"title": "t", field: "conv_evil"}, headers=user.headers)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == field
    session = await _create(client, user, title="t")
    patched = await client.patch(f"/v1/sessions/{session['id']}", json={field: "x"}, headers=user.headers)
    assert patched.status_code == 422
    unchanged = (await client.get(f"/v1/sessions/{session['id']}", headers=user.headers)).json()
    assert unchanged == session
