"""Export: a session as a JSON or Markdown attachment, with its messages' items (tool calls, citations), its turns'
usage, cost and feedback; the active branch by default, every branch with branches=all; the owner's alone."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from decimal import Decimal
from typing import Any

import httpx

from app.api.export_schemas import SessionExportRead
from app.db.models import ChatSession, Message, Turn
from app.services.export_service import SessionExport, as_markdown
from tests.conftest import ApiUser, RunningParley, create_api_user
from tests.turns.helpers import new_session, send, simulator_for

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
# Backticks in a tool's output: the Markdown's code block must outlast them.
WEATHER_OUTPUT = "Sunny, 21 °C ``` no rain"
CITATION = {
    "type": "url_citation",
    "url": "https://example.com/lisbon",
    "title": "Lisbon in May",
    "start_index": 0,
    "end_index": 6,
}
MONEY = re.compile(r"^[0-9]+\.[0-9]{8}$")


def _sse(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(
        f"event: {name}\ndata: {json.dumps({'type': name, 'sequence_number': n, **payload})}\n\n"
        for n, (name, payload) in enumerate(events)
    )


def _searched_and_cited(text: str) -> str:
    """An upstream stream that searches the web and answers with a URL citation, as a web_search turn does."""
    response_id = f"resp_{uuid.uuid4().hex}"
    search = {
        "id": f"ws_{uuid.uuid4().hex}",
        "type": "web_search_call",
        "status": "completed",
        "action": {"type": "search", "query": "lisbon weather may"},
    }
    answer = {
        "id": f"msg_{uuid.uuid4().hex}",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [CITATION]}],
    }
    base = {"id": response_id, "object": "response", "created_at": 1_700_000_000, "model": "gpt-5-mini"}
    usage = {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8}
    return _sse(
        [
            ("response.created", {"response": {**base, "status": "in_progress", "output": [], "usage": None}}),
            ("response.output_item.done", {"output_index": 0, "item": search}),
            (
                "response.output_text.delta",
                {"item_id": answer["id"], "output_index": 1, "content_index": 0, "delta": text},
            ),
            ("response.output_item.done", {"output_index": 1, "item": answer}),
            (
                "response.completed",
                {"response": {**base, "status": "completed", "output": [search, answer], "usage": usage}},
            ),
        ]
    )


async def _export(client: httpx.AsyncClient, user: ApiUser, session_id: str, **params: str) -> httpx.Response:
    response = await client.get(f"/v1/sessions/{session_id}/export", params=params, headers=user.headers)
    assert response.status_code == 200, response.text
    return response


async def _listed(client: httpx.AsyncClient, user: ApiUser, path: str) -> list[dict[str, Any]]:
    response = await client.get(path, params={"order": "asc", "limit": 100}, headers=user.headers)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


async def _rated_session(client: httpx.AsyncClient, user: ApiUser, title: str) -> tuple[str, str]:
    session_id = await new_session(client, user, title=title)
    stream = await send(client, user, session_id, {"input": "Hello there."})
    assert stream.terminal.name == "turn.completed", stream.terminal.data
    turn_id = stream.terminal.data["turn"]["id"]
    rated = await client.put(
        f"/v1/sessions/{session_id}/turns/{turn_id}/feedback",
        json={"rating": "up", "comment": "Spot on."},
        headers=user.headers,
    )
    assert rated.status_code == 200, rated.text
    return session_id, turn_id


async def test_the_json_export_holds_the_apis_own_objects(client: httpx.AsyncClient) -> None:
    user = await create_api_user(client)
    session_id, turn_id = await _rated_session(client, user, "Trip planning: Lisbon & Porto!")
    response = await _export(client, user, session_id)

    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"] == 'attachment; filename="trip-planning-lisbon-porto.json"'
    export = response.json()
    SessionExportRead.model_validate(export)
    assert (export["object"], export["format_version"], export["branches"]) == ("session.export", 1, "active")
    assert dt.datetime.fromisoformat(export["exported_at"]).tzinfo is not None
    assert export["session"] == (await client.get(f"/v1/sessions/{session_id}", headers=user.headers)).json()
    assert export["messages"] == await _listed(client, user, f"/v1/sessions/{session_id}/messages")
    assert [m["role"] for m in export["messages"]] == ["user", "assistant"]
    assert all(m["items"] for m in export["messages"])
    # The turns as GET …/turns serves them, but with no stream URL: those carry a token, and a file is shared.
    turns = await _listed(client, user, f"/v1/sessions/{session_id}/turns")
    assert [t["stream_url"] for t in export["turns"]] == [None]
    assert export["turns"] == [{**turn, "stream_url": None} for turn in turns]
    (turn,) = export["turns"]
    assert turn["id"] == turn_id
    assert turn["usage"]["output_tokens"] > 0
    assert (turn["feedback"]["rating"], turn["feedback"]["comment"]) == ("up", "Spot on.")
    # Money is a decimal string, never a float.
    assert turn["cost_usd"] is None or MONEY.match(turn["cost_usd"])
    assert MONEY.match(export["session"]["total_cost_usd"])


async def test_the_markdown_export_reads_as_a_conversation(client: httpx.AsyncClient) -> None:
    user = await create_api_user(client)
    session_id, _ = await _rated_session(client, user, "Trip *planning* #1")
    response = await _export(client, user, session_id, format="markdown")

    assert response.headers["content-type"] == "text/markdown; charset=utf-8"
    assert response.headers["content-disposition"] == 'attachment; filename="trip-planning-1.md"'
    text = response.text
    assert text.startswith("# Trip \\*planning\\* \\#1\n")
    messages = (await client.get(f"/v1/sessions/{session_id}/messages", headers=user.headers)).json()["data"]
    answer = messages[-1]["content"]
    assert re.search(r"^Created \d{4}-\d\d-\d\d \d\d:\d\d UTC · .*1 turn · total cost \$", text, flags=re.MULTILINE)
    assert "### You\n\nHello there.\n\n### Assistant\n\n" in text
    assert answer in text
    assert text.index("### Assistant") < text.index(answer) < text.index("**Feedback:** 👍\n\n> Spot on.")
    assert re.search(r"^\*\*Cost:\*\* (\$[0-9]+\.[0-9]{2,8}|unknown)", text, flags=re.MULTILINE)


async def test_tool_calls_and_citations_are_in_both_formats(client: httpx.AsyncClient, parley: RunningParley) -> None:
    user = await create_api_user(client)
    session_id = await new_session(client, user)
    first = await send(client, user, session_id, {"input": "get_weather for Lisbon", "tools": [WEATHER]})
    assert first.terminal.name == "turn.requires_action", first.terminal.data
    waiting = first.terminal.data["turn"]
    (call,) = waiting["required_action"]["tool_calls"]
    answered = await client.post(
        f"/v1/sessions/{session_id}/turns/{waiting['id']}/tool_outputs",
        json={"tool_outputs": [{"call_id": call["call_id"], "output": WEATHER_OUTPUT}], "stream": False},
        headers=user.headers,
    )
    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "completed"
    await simulator_for(parley, client).faults({"kind": "replay", "sse": _searched_and_cited("Lisbon is warm.")})
    cited = await send(client, user, session_id, {"input": "Is Lisbon warm in May?"})
    assert cited.terminal.name == "turn.completed", cited.terminal.data

    export = (await _export(client, user, session_id)).json()
    assert export["messages"] == await _listed(client, user, f"/v1/sessions/{session_id}/messages")
    # The call in the answer that waited for the client, its output in the one after.
    *tool_answers, cited_answer = (m for m in export["messages"] if m["role"] == "assistant")
    kinds = [item["type"] for answer in tool_answers for item in answer["items"]]
    assert kinds.index("function_call") < kinds.index("function_call_output"), kinds
    assert [item["type"] for item in cited_answer["items"]] == ["web_search_call", "message"]
    assert cited_answer["items"][1]["content"][0]["annotations"] == [CITATION]

    text = (await _export(client, user, session_id, format="markdown")).text
    assert '**Function call** `get_weather`\n\n```json\n{\n  "city": "get_weather for Lisbon"\n}\n```' in text
    assert f"**Output** of `get_weather`\n\n````\n{WEATHER_OUTPUT}\n````" in text
    assert "🔎 Searched the web for `lisbon weather may`." in text
    assert "Lisbon is warm.\n\n**Sources**\n\n1. [Lisbon in May](<https://example.com/lisbon>)" in text
    assert text.count("**Cost:**") == 2
    assert text.index("🔎 Searched the web") < text.index("Lisbon is warm.") < text.rindex("**Cost:**")


async def test_an_untitled_empty_session_and_every_branch(client: httpx.AsyncClient) -> None:
    user = await create_api_user(client)
    session_id = await new_session(client, user)
    empty = await _export(client, user, session_id, format="markdown")
    assert empty.headers["content-disposition"] == f'attachment; filename="{session_id}.md"'
    assert empty.text.startswith("# Untitled session\n")
    assert "*No messages yet.*" in empty.text

    # One branch only (edits and regenerations make others): every branch is the active one, each message says so.
    await send(client, user, session_id, {"input": "Hello."})
    active = (await _export(client, user, session_id)).json()
    every = (await _export(client, user, session_id, branches="all")).json()
    assert every["branches"] == "all"
    assert every["messages"] == [{**message, "on_active_branch": True} for message in active["messages"]]
    assert every["turns"] == active["turns"]
    markdown = (await _export(client, user, session_id, format="markdown", branches="all")).text
    assert "## Branch" not in markdown
    assert markdown.count("### ") == 2


def _completed(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    turn: dict[str, Any] = response.json()
    assert turn["status"] == "completed", turn
    return turn


async def test_every_branch_of_an_edited_and_regenerated_session(client: httpx.AsyncClient) -> None:
    """Two questions; the first edited (a branch from the top), then the second answer regenerated (back on the
    first branch, so the branch before it leaves from the second question): three leaves, one of them active."""
    user = await create_api_user(client)
    session_id = await new_session(client, user, title="Branches")
    for text in ("First question", "Second question"):
        assert (await send(client, user, session_id, {"input": text})).terminal.name == "turn.completed"
    q1, a1, q2, a2 = await _listed(client, user, f"/v1/sessions/{session_id}/messages")
    base = f"/v1/sessions/{session_id}"
    edit = _completed(
        await client.post(
            f"{base}/messages/{q1['id']}/edit",
            json={"input": "First question, edited", "stream": False},
            headers=user.headers,
        )
    )
    regenerated = _completed(
        await client.post(f"{base}/turns/{a2['turn_id']}/regenerate", json={"stream": False}, headers=user.headers)
    )
    assert regenerated["message_id"] == q2["id"]
    active = await _listed(client, user, f"{base}/messages")
    assert [m["id"] for m in active[:3]] == [q1["id"], a1["id"], q2["id"]]
    a2b = active[3]
    assert (a2b["turn_id"], a2b["parent_id"]) == (regenerated["id"], q2["id"])

    every = (await _export(client, user, session_id, branches="all")).json()
    SessionExportRead.model_validate(every)
    messages = every["messages"]
    # Every message, oldest first: the two turns', the edit and its answer, the regenerated answer.
    assert [m["id"] for m in messages[:4]] == [q1["id"], a1["id"], q2["id"], a2["id"]]
    q1b, a1b, last = messages[4:]
    assert last == {**a2b, "on_active_branch": True}
    assert (q1b["role"], q1b["content"], q1b["turn_id"]) == ("user", "First question, edited", edit["id"])
    assert (a1b["role"], a1b["turn_id"]) == ("assistant", edit["id"])
    assert [m["on_active_branch"] for m in messages] == [True, True, True, False, False, False, True]
    # The parent links make the tree: the edit at the top beside the first question, the two answers of the second.
    by_id = {m["id"]: m for m in messages}
    assert {m["id"]: m["parent_id"] for m in messages} == {
        q1["id"]: None,
        a1["id"]: q1["id"],
        q2["id"]: a1["id"],
        a2["id"]: q2["id"],
        q1b["id"]: None,
        a1b["id"]: q1b["id"],
        a2b["id"]: q2["id"],
    }
    assert by_id[q1["id"]]["alternatives"]["message_ids"] == [q1["id"], q1b["id"]]
    assert by_id[a2["id"]]["alternatives"]["message_ids"] == [a2["id"], a2b["id"]]
    assert by_id[a1b["id"]]["alternatives"] is None
    # Without the flag, each message is as GET …/messages serves it (the branch it is on, active or not).
    assert {key: value for key, value in by_id[a2["id"]].items() if key != "on_active_branch"} == {
        **a2,
        "alternatives": by_id[a2["id"]]["alternatives"],
    }
    assert sorted(t["id"] for t in every["turns"]) == sorted(
        [q1["turn_id"], q2["turn_id"], edit["id"], regenerated["id"]]
    )

    # The default: the active branch alone, as GET …/messages lists it.
    default = (await _export(client, user, session_id)).json()
    assert default["branches"] == "active"
    assert default["messages"] == active
    assert default["turns"] == every["turns"]

    # Markdown: the active branch, then a section per other leaf, oldest leaf first, from where it leaves.
    text = (await _export(client, user, session_id, format="markdown", branches="all")).text
    assert re.findall(r"^## .*$", text, flags=re.MULTILINE) == ["## Branch 1 (active)", "## Branch 2", "## Branch 3"]
    first, second, third = re.split(r"^## Branch \d.*\n", text, flags=re.MULTILINE)[1:]
    assert [line for line in first.splitlines() if line.startswith("### ")] == ["### You", "### Assistant"] * 2
    assert first.index("First question") < first.index("Second question") < first.index(a2b["content"])
    assert "edited" not in first
    # (An answer's section opens with its reasoning summary, then its text.)
    assert second.startswith(f"\nBranches from You: “Second question” (`{q2['id']}`).\n\n### Assistant\n\n")
    assert a2["content"] in second
    assert "### You" not in second
    assert third.startswith(
        "\nStarts at the top, in place of the first message.\n\n### You\n\nFirst question, edited\n\n### Assistant\n\n"
    )
    assert a1b["content"] in third
    assert "Second question" not in third
    # Only the active branch without branches=all.
    assert "## Branch" not in (await _export(client, user, session_id, format="markdown")).text


async def test_bad_parameters_are_a_422_in_words(client: httpx.AsyncClient) -> None:
    user = await create_api_user(client)
    session_id = await new_session(client, user)
    for params, param, words in (
        ({"format": "pdf"}, "format", "'json' or 'markdown'"),
        ({"branches": "some"}, "branches", "'active' or 'all'"),
    ):
        response = await client.get(f"/v1/sessions/{session_id}/export", params=params, headers=user.headers)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["param"] == param
        assert words in error["message"], error
        assert "literal" not in error["message"].lower()


async def test_only_the_owner_exports(client: httpx.AsyncClient) -> None:
    owner = await create_api_user(client)
    session_id = await new_session(client, owner, title="Private")
    stranger = await create_api_user(client)
    for who, path in ((stranger, session_id), (owner, "sess_doesnotexist")):
        response = await client.get(f"/v1/sessions/{path}/export", params={"format": "markdown"}, headers=who.headers)
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "session_not_found"
    assert (await client.get(f"/v1/sessions/{session_id}/export")).status_code == 401


def _message(
    message_id: str, role: str, content: str, *, parent: str | None, active: bool, turn: str | None = None
) -> Message:
    return Message(
        id=message_id,
        session_id="sess_x",
        turn_id=turn,
        parent_id=parent,
        on_active_branch=active,
        role=role,
        content=content,
        status="completed",
        items=None,
        model=None,
        created_at=dt.datetime(2026, 1, 2, 10, 0, tzinfo=dt.UTC),
    )


def test_every_branch_in_markdown_follows_the_active_one_from_where_it_leaves_it() -> None:
    # A regenerated first answer (a1 → a1b), and an edit of the second question (q2 → q2b, answered by a2b).
    messages = [
        _message("msg_1", "user", "First question", parent=None, active=True, turn="turn_1"),
        _message("msg_2", "assistant", "First answer", parent="msg_1", active=False, turn="turn_1"),
        _message("msg_3", "assistant", "Better first answer", parent="msg_1", active=True, turn="turn_2"),
        _message("msg_4", "user", "Second question", parent="msg_3", active=False, turn="turn_3"),
        _message("msg_5", "assistant", "Second answer", parent="msg_4", active=False, turn="turn_3"),
        _message("msg_6", "user", "Second question, edited", parent="msg_3", active=True, turn="turn_4"),
        _message("msg_7", "assistant", "Edited answer", parent="msg_6", active=True, turn="turn_4"),
    ]
    turns = [
        Turn(id=f"turn_{n}", status="completed", cost_usd=Decimal("0.00012"), usage=None, feedback_updated_at=None)
        for n in range(1, 5)
    ]
    session = ChatSession(
        id="sess_x",
        title=None,
        model="gpt-5-mini",
        prompt=None,
        turn_count=4,
        total_cost_usd=Decimal("0.00048"),
        created_at=dt.datetime(2026, 1, 2, 10, 0, tzinfo=dt.UTC),
    )
    export = SessionExport(
        session=session,
        branches="all",
        messages=messages,
        turns=turns,
        exported_at=dt.datetime(2026, 1, 3, tzinfo=dt.UTC),
        versions={},
    )
    text = as_markdown(export)
    active, second, third = re.split(r"^## Branch [23]\n", text.split("## Branch 1 (active)\n", 1)[1], flags=re.M)
    assert [line for line in active.splitlines() if line and not line.startswith(("###", "**"))] == [
        "First question",
        "Better first answer",
        "Second question, edited",
        "Edited answer",
    ]
    assert active.count("**Cost:**") == 2
    assert second.startswith("\nBranches from You: “First question” (`msg_1`).\n\n### Assistant\n\nFirst answer\n")
    assert "Second" not in second
    assert third.startswith(
        "\nBranches from Assistant: “Better first answer” (`msg_3`).\n\n### You\n\nSecond question\n"
    )
    assert third.rstrip().endswith("Second answer\n\n**Cost:** $0.00012")
    assert "total cost $0.00048" in text
