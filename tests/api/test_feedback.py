"""Feedback on a turn's answer: thumbs up or down and a comment, replaced by the next, taken back with nothing;
the owner's alone; bad values answered in words."""

from __future__ import annotations

import httpx

from tests.conftest import create_api_user
from tests.turns.helpers import new_session, send


async def _turn(client: httpx.AsyncClient) -> tuple[dict[str, str], str]:
    user = await create_api_user(client)
    session_id = await new_session(client, user)
    stream = await send(client, user, session_id, {"input": "Hello there."})
    turn_id = stream.terminal.data["turn"]["id"]
    return user.headers, f"/v1/sessions/{session_id}/turns/{turn_id}"


async def test_a_rating_and_comment_are_stored_replaced_and_taken_back(client: httpx.AsyncClient) -> None:
    headers, url = await _turn(client)
    assert (await client.get(url, headers=headers)).json()["feedback"] is None

    rated = await client.put(f"{url}/feedback", json={"rating": "up", "comment": "Spot on."}, headers=headers)
    assert rated.status_code == 200, rated.text
    feedback = rated.json()["feedback"]
    assert (feedback["rating"], feedback["comment"]) == ("up", "Spot on.")
    assert feedback["updated_at"].endswith("Z")
    assert (await client.get(url, headers=headers)).json()["feedback"] == feedback
    listed = await client.get(url.rsplit("/", 1)[0], headers=headers)
    assert listed.json()["data"][0]["feedback"] == feedback

    changed = await client.put(f"{url}/feedback", json={"rating": "down"}, headers=headers)
    assert (changed.json()["feedback"]["rating"], changed.json()["feedback"]["comment"]) == ("down", None)

    comment_only = await client.put(f"{url}/feedback", json={"rating": None, "comment": "Too long."}, headers=headers)
    assert (comment_only.json()["feedback"]["rating"], comment_only.json()["feedback"]["comment"]) == (
        None,
        "Too long.",
    )

    taken_back = await client.put(f"{url}/feedback", json={"rating": None}, headers=headers)
    assert taken_back.status_code == 200
    assert taken_back.json()["feedback"] is None
    assert (await client.get(url, headers=headers)).json()["feedback"] is None


async def test_only_the_owner_rates_a_turn(client: httpx.AsyncClient) -> None:
    headers, url = await _turn(client)
    stranger = await create_api_user(client)
    response = await client.put(f"{url}/feedback", json={"rating": "down"}, headers=stranger.headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "turn_not_found"
    assert (await client.get(url, headers=headers)).json()["feedback"] is None


async def test_bad_feedback_is_a_422_in_words(client: httpx.AsyncClient) -> None:
    headers, url = await _turn(client)
    for body in ({"rating": "meh"}, {"rating": "up", "comment": "x" * 4001}, {"rating": "up", "stars": 5}, {}):
        response = await client.put(f"{url}/feedback", json=body, headers=headers)
        assert response.status_code == 422, (body, response.text)
        message = response.json()["error"]["message"]
        assert "pydantic" not in message.lower()
        assert "literal" not in message.lower(), message
    assert (await client.get(url, headers=headers)).json()["feedback"] is None
