"""Branches: edit a user message, regenerate an answer, switch between versions and fork, several levels deep.

At every step the conversation the next turn uses upstream holds exactly the active branch (as the simulator
stores it), and switching back to a branch makes nothing new upstream."""

from __future__ import annotations

import itertools
import json
from typing import Any

import httpx

from tests.conftest import ApiUser, create_api_user
from tests.turns.helpers import (
    UPSTREAM_AUTH,
    Simulator,
    conversation_of,
    new_session,
    send,
)

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


async def _branch(client: httpx.AsyncClient, user: ApiUser, session_id: str) -> list[dict[str, Any]]:
    listed = await client.get(f"/v1/sessions/{session_id}/messages", params={"limit": 100}, headers=user.headers)
    assert listed.status_code == 200, listed.text
    return list(listed.json()["data"])


def _said(branch: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(message["role"], message["content"]) for message in branch]


async def _upstream_items(client: httpx.AsyncClient, sim: Simulator, conversation_id: str) -> list[dict[str, Any]]:
    listed = await client.get(
        f"{sim.base_url}/v1/conversations/{conversation_id}/items",
        params={"order": "asc", "limit": 100},
        headers=UPSTREAM_AUTH,
    )
    assert listed.status_code == 200, listed.text
    return list(listed.json()["data"])


async def _assert_context_is_the_branch(
    client: httpx.AsyncClient, sim: Simulator, user: ApiUser, session_id: str
) -> list[dict[str, Any]]:
    """The session's conversation upstream holds exactly its active branch: the same messages, in order."""
    branch = await _branch(client, user, session_id)
    conversation = await conversation_of(client, user, session_id)
    # (An answer that was only a function call has no text: its call and output are items of their own.)
    assert await sim.conversation_messages(conversation) == [said for said in _said(branch) if said[1]]
    for earlier, later in itertools.pairwise(branch):
        assert later["parent_id"] == earlier["id"]
    assert branch[0]["parent_id"] is None
    return branch


async def _edit(
    client: httpx.AsyncClient, user: ApiUser, session_id: str, message_id: str, text: str, **headers: str
) -> httpx.Response:
    return await client.post(
        f"/v1/sessions/{session_id}/messages/{message_id}/edit",
        json={"input": text, "stream": False},
        headers=user.headers | headers,
    )


async def _regenerate(
    client: httpx.AsyncClient, user: ApiUser, session_id: str, turn_id: str, **headers: str
) -> httpx.Response:
    return await client.post(
        f"/v1/sessions/{session_id}/turns/{turn_id}/regenerate", json={"stream": False}, headers=user.headers | headers
    )


async def _activate(client: httpx.AsyncClient, user: ApiUser, session_id: str, message_id: str) -> httpx.Response:
    return await client.post(f"/v1/sessions/{session_id}/messages/{message_id}/activate", headers=user.headers)


async def _conversations_made(sim: Simulator) -> int:
    return sum(1 for r in await sim.requests() if r["method"] == "POST" and r["path"] == "/v1/conversations")


async def test_edits_and_regenerates_several_levels_deep_keep_the_context_exact(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator
) -> None:
    session_id = await new_session(client, user)
    for text in ("one", "two", "three"):
        assert (await send(client, user, session_id, {"input": text})).names[-1] == "turn.completed"
    main = await _assert_context_is_the_branch(client, sim, user, session_id)
    assert [m["content"] for m in main if m["role"] == "user"] == ["one", "two", "three"]
    assert all(m["alternatives"] is None for m in main)
    first_conversation = await conversation_of(client, user, session_id)
    two = main[2]

    # Level 1: "two" edited. The branch goes on from "one"'s answer, in a conversation of its own.
    edited = await _edit(client, user, session_id, two["id"], "two, said better")
    assert edited.status_code == 200, edited.text
    assert edited.json()["status"] == "completed"
    level1 = await _assert_context_is_the_branch(client, sim, user, session_id)
    assert _said(level1)[:2] == _said(main)[:2]
    assert _said(level1)[2] == ("user", "two, said better")
    assert len(level1) == 4
    assert edited.json()["message_id"] == level1[2]["id"]
    assert level1[2]["alternatives"] == {"index": 1, "count": 2, "message_ids": [two["id"], level1[2]["id"]]}
    assert level1[3]["alternatives"] is None
    assert await conversation_of(client, user, session_id) != first_conversation

    # Level 2 on that branch: a send, then the answer to "one" regenerated.
    assert (await send(client, user, session_id, {"input": "four"})).names[-1] == "turn.completed"
    await _assert_context_is_the_branch(client, sim, user, session_id)
    first_turn = main[1]["turn_id"]
    regenerated = await _regenerate(client, user, session_id, first_turn)
    assert regenerated.status_code == 200, regenerated.text
    assert regenerated.json()["message_id"] == main[0]["id"]
    assert regenerated.json()["id"] != first_turn
    level2 = await _assert_context_is_the_branch(client, sim, user, session_id)
    assert [m["id"] for m in level2[:1]] == [main[0]["id"]]
    assert len(level2) == 2
    assert level2[1]["turn_id"] == regenerated.json()["id"]
    assert level2[1]["alternatives"]["count"] == 2
    assert level2[1]["alternatives"]["message_ids"][0] == main[1]["id"]

    # Level 3: on the regenerated branch, "five", then "five" edited.
    assert (await send(client, user, session_id, {"input": "five"})).names[-1] == "turn.completed"
    five = (await _branch(client, user, session_id))[2]
    assert (await _edit(client, user, session_id, five["id"], "five again")).status_code == 200
    level3 = await _assert_context_is_the_branch(client, sim, user, session_id)
    assert [m["content"] for m in level3 if m["role"] == "user"] == ["one", "five again"]

    # Back to the first branch through "two": its newest leaf, its own conversation, nothing made upstream.
    made = await _conversations_made(sim)
    activated = await _activate(client, user, session_id, two["id"])
    assert activated.status_code == 200, activated.text
    assert [m["id"] for m in activated.json()["data"]] == [m["id"] for m in main]
    assert await conversation_of(client, user, session_id) == first_conversation
    await _assert_context_is_the_branch(client, sim, user, session_id)
    assert await _conversations_made(sim) == made
    # ... and it goes on there.
    assert (await send(client, user, session_id, {"input": "six"})).names[-1] == "turn.completed"
    back = await _assert_context_is_the_branch(client, sim, user, session_id)
    assert [m["content"] for m in back if m["role"] == "user"] == ["one", "two", "three", "six"]

    # Through the edited "two": that branch's newest leaf (the answer to "four").
    await _activate(client, user, session_id, level1[2]["id"])
    again = await _assert_context_is_the_branch(client, sim, user, session_id)
    assert [m["content"] for m in again if m["role"] == "user"] == ["one", "two, said better", "four"]

    # Turns, the count and the cost cover every branch.
    turns = (await client.get(f"/v1/sessions/{session_id}/turns", params={"limit": 100}, headers=user.headers)).json()
    assert len(turns["data"]) == 9
    session = (await client.get(f"/v1/sessions/{session_id}", headers=user.headers)).json()
    assert session["turn_count"] == 9
    costs = [turn["cost_usd"] for turn in turns["data"]]
    if None not in costs:
        from decimal import Decimal

        assert Decimal(session["total_cost_usd"]) == sum(Decimal(c) for c in costs)


async def test_a_branch_replays_tool_calls_and_their_outputs(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator
) -> None:
    session_id = await new_session(client, user)
    first = await send(client, user, session_id, {"input": "get_weather for Lisbon", "tools": [WEATHER]})
    waiting = first.terminal.data["turn"]
    (call,) = waiting["required_action"]["tool_calls"]
    answered = await client.post(
        f"/v1/sessions/{session_id}/turns/{waiting['id']}/tool_outputs",
        json={"tool_outputs": [{"call_id": call["call_id"], "output": '{"temp_c": 21}'}], "stream": False},
        headers=user.headers,
    )
    assert answered.json()["status"] == "completed", answered.text
    assert (await send(client, user, session_id, {"input": "and tomorrow?"})).names[-1] == "turn.completed"
    branch = await _branch(client, user, session_id)
    tomorrow = next(m for m in branch if m["content"] == "and tomorrow?")

    assert (await _edit(client, user, session_id, tomorrow["id"], "and the day after?")).status_code == 200
    items = await _upstream_items(client, sim, await conversation_of(client, user, session_id))
    kinds = [item["type"] for item in items]
    assert kinds.count("function_call") == 1
    assert kinds.count("function_call_output") == 1
    replayed_call = next(item for item in items if item["type"] == "function_call")
    assert (replayed_call["call_id"], replayed_call["name"]) == (call["call_id"], "get_weather")
    output = next(item for item in items if item["type"] == "function_call_output")
    assert json.loads(output["output"]) == {"temp_c": 21}
    await _assert_context_is_the_branch(client, sim, user, session_id)


async def test_edit_regenerate_and_activate_are_409_while_a_turn_runs(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator
) -> None:
    session_id = await new_session(client, user)
    assert (await send(client, user, session_id, {"input": "hello"})).names[-1] == "turn.completed"
    hello, answer = await _branch(client, user, session_id)
    made = await _conversations_made(sim)
    await sim.configure(tokens_per_second=40, output_tokens=200)
    head = await send(client, user, session_id, {"input": "tell me a long story"}, stop_after=1)
    running = head.events[0].data["turn"]["id"]
    try:
        for response in (
            await _edit(client, user, session_id, hello["id"], "hi"),
            await _regenerate(client, user, session_id, answer["turn_id"]),
            await _activate(client, user, session_id, answer["id"]),
        ):
            assert response.status_code == 409, response.text
            assert response.json()["error"]["code"] == "turn_in_progress"
            assert response.json()["error"]["param"] == running
        assert await _conversations_made(sim) == made
    finally:
        await sim.configure(tokens_per_second=0, output_tokens=None)
        await client.post(f"/v1/sessions/{session_id}/turns/{running}/cancel", headers=user.headers)


async def test_an_edit_with_an_idempotency_key_starts_one_branch(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator
) -> None:
    session_id = await new_session(client, user)
    assert (await send(client, user, session_id, {"input": "hello"})).names[-1] == "turn.completed"
    (hello, _) = await _branch(client, user, session_id)
    made = await _conversations_made(sim)
    key = {"Idempotency-Key": "edit-hello-1"}
    first = await _edit(client, user, session_id, hello["id"], "hello again", **key)
    second = await _edit(client, user, session_id, hello["id"], "hello again", **key)
    assert first.status_code == second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert await _conversations_made(sim) == made + 1
    top = (await _branch(client, user, session_id))[0]
    assert top["alternatives"]["count"] == 2
    # The same key for another request is refused.
    other = await _edit(client, user, session_id, hello["id"], "something else", **key)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"

    regenerated = await _regenerate(client, user, session_id, first.json()["id"], **{"Idempotency-Key": "regen-1"})
    replayed = await _regenerate(client, user, session_id, first.json()["id"], **{"Idempotency-Key": "regen-1"})
    assert regenerated.json()["id"] == replayed.json()["id"]
    answer = (await _branch(client, user, session_id))[1]
    assert answer["alternatives"]["count"] == 2


async def test_only_user_messages_are_edited_and_what_is_not_there_is_404(
    client: httpx.AsyncClient, user: ApiUser
) -> None:
    session_id = await new_session(
        client,
        user,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
        ],
    )
    system, hi, hello = await _branch(client, user, session_id)
    assert (system["parent_id"], hi["parent_id"], hello["parent_id"]) == (None, system["id"], hi["id"])
    assert hello["turn_id"] is None

    for message in (system, hello):
        refused = await _edit(client, user, session_id, message["id"], "changed")
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "message_not_editable"
        assert "regenerate" in refused.json()["error"]["message"] or message["role"] == "system"

    # An imported user message can be edited: the branch goes on from the system message.
    edited = await _edit(client, user, session_id, hi["id"], "Hi there")
    assert edited.status_code == 200, edited.text
    branch = await _branch(client, user, session_id)
    assert _said(branch)[:2] == [("system", "Be brief."), ("user", "Hi there")]

    # A cursor that is not on the active branch is 404, as is a message of nobody's.
    off_branch = await client.get(
        f"/v1/sessions/{session_id}/messages", params={"after": hello["id"]}, headers=user.headers
    )
    assert off_branch.status_code == 404
    assert off_branch.json()["error"]["code"] == "message_not_found"
    missing = await _edit(client, user, session_id, "msg_nope", "x")
    assert missing.status_code == 404
    assert (await _activate(client, user, session_id, "msg_nope")).status_code == 404
    gone = await _regenerate(client, user, session_id, "turn_nope")
    assert gone.status_code == 404


async def test_another_users_messages_and_turns_are_404(client: httpx.AsyncClient, user: ApiUser) -> None:
    session_id = await new_session(client, user)
    stream = await send(client, user, session_id, {"input": "mine"})
    turn_id = stream.terminal.data["turn"]["id"]
    hello = (await _branch(client, user, session_id))[0]
    stranger = await create_api_user(client)
    for response in (
        await _edit(client, stranger, session_id, hello["id"], "theirs"),
        await _regenerate(client, stranger, session_id, turn_id),
        await _activate(client, stranger, session_id, hello["id"]),
        await client.post(f"/v1/sessions/{session_id}/fork", json={}, headers=stranger.headers),
    ):
        assert response.status_code == 404, response.text
    # Their own session does not reach into this one either.
    theirs = await new_session(client, stranger)
    assert (await _edit(client, stranger, theirs, hello["id"], "x")).status_code == 404
    assert (await _regenerate(client, stranger, theirs, turn_id)).status_code == 404
    assert _said(await _branch(client, user, session_id))[0] == ("user", "mine")


async def test_a_fork_copies_the_branch_up_to_a_message_into_a_session_of_its_own(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator
) -> None:
    session_id = await new_session(client, user, title="Trip plans", metadata={"team": "a"})
    for text in ("one", "two", "three"):
        await send(client, user, session_id, {"input": text})
    source = await _branch(client, user, session_id)
    forked = await client.post(
        f"/v1/sessions/{session_id}/fork", json={"message_id": source[3]["id"]}, headers=user.headers
    )
    assert forked.status_code == 201, forked.text
    fork = forked.json()
    assert fork["id"] != session_id
    assert (fork["title"], fork["metadata"], fork["turn_count"]) == ("Trip plans", {"team": "a"}, 0)
    assert fork["conversation_id"] != await conversation_of(client, user, session_id)
    copied = await _assert_context_is_the_branch(client, sim, user, fork["id"])
    assert _said(copied) == _said(source[:4])
    assert {m["session_id"] for m in copied} == {fork["id"]}
    # The fork goes on by itself; the source is as it was.
    assert (await send(client, user, fork["id"], {"input": "fork only"})).names[-1] == "turn.completed"
    await _assert_context_is_the_branch(client, sim, user, fork["id"])
    assert _said(await _branch(client, user, session_id)) == _said(source)
    # A whole fork, with a title of its own.
    whole = await client.post(f"/v1/sessions/{session_id}/fork", json={"title": "Again"}, headers=user.headers)
    assert whole.json()["title"] == "Again"
    assert _said(await _branch(client, user, whole.json()["id"])) == _said(source)
    # A message that is not on the active branch cannot be a fork's end.
    assert (await _edit(client, user, session_id, source[4]["id"], "three, edited")).status_code == 200
    stale = await client.post(
        f"/v1/sessions/{session_id}/fork", json={"message_id": source[5]["id"]}, headers=user.headers
    )
    assert stale.status_code == 422
    assert stale.json()["error"]["code"] == "message_not_on_branch"


async def test_deleting_a_session_deletes_every_branch_conversation(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator
) -> None:
    session_id = await new_session(client, user)
    stream = await send(client, user, session_id, {"input": "hello"})
    first = await conversation_of(client, user, session_id)
    await _regenerate(client, user, session_id, stream.terminal.data["turn"]["id"])
    second = await conversation_of(client, user, session_id)
    hello = (await _branch(client, user, session_id))[0]
    await _edit(client, user, session_id, hello["id"], "hi")
    third = await conversation_of(client, user, session_id)
    assert len({first, second, third}) == 3
    assert (await client.delete(f"/v1/sessions/{session_id}", headers=user.headers)).status_code == 200
    for conversation in (first, second, third):
        response = await client.get(f"{sim.base_url}/v1/conversations/{conversation}", headers=UPSTREAM_AUTH)
        assert response.status_code == 404, conversation


async def test_search_finds_only_the_active_branch(client: httpx.AsyncClient, user: ApiUser) -> None:
    session_id = await new_session(client, user)
    await send(client, user, session_id, {"input": "tangerine orchards"})
    original = (await _branch(client, user, session_id))[0]
    await _edit(client, user, session_id, original["id"], "apricot orchards")

    async def found(word: str) -> list[str]:
        response = await client.get("/v1/search", params={"q": word}, headers=user.headers)
        assert response.status_code == 200, response.text
        # (The simulator's answers repeat the question's words: only the user's messages are looked at.)
        return [hit["message_id"] for hit in response.json()["data"] if hit["role"] == "user"]

    assert await found("tangerine") == []
    assert len(await found("apricot")) == 1
    await _activate(client, user, session_id, original["id"])
    assert await found("tangerine") == [original["id"]]
    assert await found("apricot") == []


async def test_a_branch_keeps_the_models_reasoning_and_nobody_is_served_it(
    client: httpx.AsyncClient, user: ApiUser, sim: Simulator
) -> None:
    session_id = await new_session(client, user, model="gpt-5-mini", options={"reasoning": {"summary": "auto"}})
    for text in ("why is the sky blue", "and sunsets?"):
        assert (await send(client, user, session_id, {"input": text})).names[-1] == "turn.completed"
    branch = await _branch(client, user, session_id)
    assert "encrypted_content" not in json.dumps(branch)
    assert any(item["type"] == "reasoning" and item["summary"] for item in branch[1]["items"])

    assert (await _edit(client, user, session_id, branch[2]["id"], "and rainbows?")).status_code == 200
    items = await _upstream_items(client, sim, await conversation_of(client, user, session_id))
    replayed = [item for item in items if item["type"] == "reasoning"]
    # The first answer's reasoning went into the branch's conversation (and the new answer's came with it).
    assert len(replayed) == 2
    calls = [r for r in await sim.requests() if r["method"] == "POST" and r["path"] == "/v1/conversations"]
    sent = [item for item in calls[-1]["body"]["items"] if item["type"] == "reasoning"]
    assert len(sent) == 1
    assert sent[0]["encrypted_content"]
    assert "encrypted_content" not in json.dumps(await _branch(client, user, session_id))
