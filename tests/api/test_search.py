"""Search: a user's own titles and messages, best match first, with highlights a browser can use as they are."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, text
from sqlalchemy.engine import Connection

from app.db.engine import build_engine
from app.db.ids import new_id
from app.db.models import ChatSession, Message
from app.repositories.search_repository import search_statement
from tests.conftest import ApiUser, RunningParley, create_api_user


async def _session(client: httpx.AsyncClient, user: ApiUser, title: str | None = None, *contents: str) -> str:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": c} for c in contents]}
    if title is not None:
        body["title"] = title
    response = await client.post("/v1/sessions", json=body, headers=user.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def _search(client: httpx.AsyncClient, user: ApiUser, q: str, **params: Any) -> dict[str, Any]:
    response = await client.get("/v1/search", params={"q": q, **params}, headers=user.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _matched(result: dict[str, Any]) -> list[str]:
    """The highlighted pieces of a result's snippet, cut out as JavaScript would (UTF-16 offsets)."""
    units = result["snippet"].encode("utf-16-le")
    return [units[start * 2 : end * 2].decode("utf-16-le") for start, end in result["highlights"]]


async def test_a_message_is_found_with_its_session_and_the_match_highlighted(
    client: httpx.AsyncClient, user: ApiUser
) -> None:
    session_id = await _session(client, user, "Holidays", "What should I pack for Lisbon in May?")
    body = await _search(client, user, "lisbon")
    assert body["object"] == "list"
    [result] = body["data"]
    assert result["object"] == "search_result"
    assert result["session_id"] == session_id
    assert result["session_title"] == "Holidays"
    assert result["message_id"].startswith("msg_")
    assert result["role"] == "user"
    assert result["snippet"] == "What should I pack for Lisbon in May?"
    assert result["highlights"] == [[23, 29]]
    assert _matched(result) == ["Lisbon"]
    assert result["created_at"].endswith(("Z", "+00:00"))
    assert body["first_id"] == body["last_id"] == result["id"]
    assert body["has_more"] is False
    messages = (await client.get(f"/v1/sessions/{session_id}/messages", headers=user.headers)).json()["data"]
    assert result["message_id"] == messages[0]["id"]


async def test_markup_and_code_in_a_message_are_kept_in_its_snippet(client: httpx.AsyncClient, user: ApiUser) -> None:
    content = "Use <b>Vec<u8></b> & friends for bytes: a<b>c"
    await _session(client, user, None, content)
    [result] = (await _search(client, user, "bytes"))["data"]
    assert result["snippet"] == content
    assert _matched(result) == ["bytes"]


async def test_titles_are_found(client: httpx.AsyncClient, user: ApiUser) -> None:
    session_id = await _session(client, user, "Quarterly budget review")
    [result] = (await _search(client, user, "budget"))["data"]
    assert result["session_id"] == session_id
    assert result["message_id"] is None
    assert result["role"] is None
    assert result["snippet"] == "Quarterly budget review"
    assert _matched(result) == ["budget"]


async def test_highlights_count_utf16_code_units_after_an_emoji(client: httpx.AsyncClient, user: ApiUser) -> None:
    await _session(client, user, None, "🎉🎉 a party at the lighthouse, then 𝄞 music by the lighthouse")
    [result] = (await _search(client, user, "lighthouse"))["data"]
    assert "🎉" in result["snippet"]
    # Each emoji and the clef are two UTF-16 code units: Python's own string offsets would be off by two and three.
    assert _matched(result) == ["lighthouse", "lighthouse"]
    first = result["snippet"].index("lighthouse")
    assert result["highlights"][0][0] == first + 2


async def test_a_better_match_ranks_first(client: httpx.AsyncClient, user: ApiUser, parley: RunningParley) -> None:
    filler = " ".join(f"word{i}" for i in range(60))
    weak = await _session(client, user, None, f"Once, a marmot. {filler}")
    strong = await _session(client, user, None, "marmot marmot marmot: a marmot den")
    results = (await _search(client, user, "marmot"))["data"]
    assert [r["session_id"] for r in results] == [strong, weak]
    if parley.backend == "postgres":
        # ts_rank_cd ranks by cover density: words near each other beat the same words far apart.
        apart = await _session(client, user, None, f"otter {filler} beaver")
        near = await _session(client, user, None, f"otter beaver {filler}")
        results = (await _search(client, user, "otter beaver"))["data"]
        assert [r["session_id"] for r in results] == [near, apart]
    else:
        # bm25 weighs a rare word above a common one: the message with the rarer of the two words ranks first.
        common = [await _session(client, user, None, f"heron number {i}") for i in range(5)]
        rare = await _session(client, user, None, "egret alone")
        both = (await _search(client, user, "heron"))["data"]
        assert {r["session_id"] for r in both} == set(common)
        assert [r["session_id"] for r in (await _search(client, user, "egret"))["data"]] == [rare]


async def test_every_word_must_match_and_stop_words_count(client: httpx.AsyncClient, user: ApiUser) -> None:
    both = await _session(client, user, None, "The Who played in Lisbon")
    await _session(client, user, None, "Lisbon only")
    assert [r["session_id"] for r in (await _search(client, user, "the who lisbon"))["data"]] == [both]


async def test_another_users_titles_and_messages_are_never_found(
    client: httpx.AsyncClient, user: ApiUser, other_user: ApiUser
) -> None:
    theirs = await _session(client, other_user, "Zebra crossing", "zebra stripes")
    assert (await _search(client, user, "zebra"))["data"] == []
    assert {r["session_id"] for r in (await _search(client, other_user, "zebra"))["data"]} == {theirs}
    listed = await client.get("/v1/sessions", params={"q": "zebra"}, headers=user.headers)
    assert listed.json()["data"] == []


async def test_deleted_sessions_are_left_out(client: httpx.AsyncClient, user: ApiUser) -> None:
    doomed = await _session(client, user, "Flamingo notes", "flamingo facts")
    kept = await _session(client, user, None, "a flamingo too")
    assert {r["session_id"] for r in (await _search(client, user, "flamingo"))["data"]} == {doomed, kept}
    assert (await client.delete(f"/v1/sessions/{doomed}", headers=user.headers)).status_code == 200
    assert {r["session_id"] for r in (await _search(client, user, "flamingo"))["data"]} == {kept}
    listed = (await client.get("/v1/sessions", params={"q": "flamingo"}, headers=user.headers)).json()
    assert [s["id"] for s in listed["data"]] == [kept]


async def test_a_renamed_title_is_found_by_its_new_words_only(client: httpx.AsyncClient, user: ApiUser) -> None:
    session_id = await _session(client, user, "Pelican plans")
    renamed = await client.patch(f"/v1/sessions/{session_id}", json={"title": "Penguin plans"}, headers=user.headers)
    assert renamed.status_code == 200
    assert (await _search(client, user, "pelican"))["data"] == []
    assert [r["session_id"] for r in (await _search(client, user, "penguin"))["data"]] == [session_id]


async def test_pages_follow_each_other_without_gaps_or_repeats(client: httpx.AsyncClient, user: ApiUser) -> None:
    # Equal ranks too (the same text in several messages): the id settles their order.
    for i in range(6):
        await _session(
            client, user, f"Walrus {i}", *(["walrus"] * 3), f"walrus walrus tusks {i}", f"about a walrus {i}"
        )
    everything = (await _search(client, user, "walrus", limit=100))["data"]
    assert len(everything) == 6 * 6
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 7} | ({"after": after} if after else {})
        page = await _search(client, user, "walrus", **params)
        seen.extend(r["id"] for r in page["data"])
        pages += 1
        if not page["has_more"]:
            break
        assert page["last_id"] == page["data"][-1]["id"]
        after = page["last_id"]
    assert pages == 6
    assert seen == [r["id"] for r in everything]
    assert len(set(seen)) == len(seen)


async def test_the_session_list_filters_by_title_or_message(client: httpx.AsyncClient, user: ApiUser) -> None:
    by_title = await _session(client, user, "Okapi sightings")
    by_message = await _session(client, user, "Zoo", "Have you seen an okapi?")
    await _session(client, user, "Zoo too", "giraffes")
    listed = (await client.get("/v1/sessions", params={"q": "okapi"}, headers=user.headers)).json()
    assert [s["id"] for s in listed["data"]] == [by_message, by_title]
    ascending = await client.get(
        "/v1/sessions", params={"q": "okapi", "order": "asc", "limit": 1}, headers=user.headers
    )
    assert [s["id"] for s in ascending.json()["data"]] == [by_title]
    assert ascending.json()["has_more"] is True


@pytest.mark.parametrize(
    "q",
    [
        "!!!",
        "-",
        '"',
        "- - - ::: ***",
        'NEAR(a b) AND "unbalanced',
        "title:x* OR ^y",
        "'); DROP TABLE messages; --",
        "\\",
    ],
)
async def test_operators_and_punctuation_never_fail(client: httpx.AsyncClient, user: ApiUser, q: str) -> None:
    await _session(client, user, "Drop table", "title x y near a b unbalanced")
    response = await client.get("/v1/search", params={"q": q}, headers=user.headers)
    assert response.status_code == 200, response.text
    listed = await client.get("/v1/sessions", params={"q": q}, headers=user.headers)
    assert listed.status_code == 200, listed.text


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({}, "q"),
        ({"q": ""}, "q"),
        ({"q": "   "}, "q"),
        ({"q": "a\x00b"}, "q"),
        ({"q": "x" * 501}, "q"),
        ({"q": "x", "limit": 0}, "limit"),
        ({"q": "x", "limit": 101}, "limit"),
        ({"q": "x", "after": "garbage"}, "after"),
        ({"q": "x", "after": "sr_AAAA"}, "after"),
        ({"q": "x", "after": "sr_" + "A" * 20}, "after"),
        ({"q": "x", "after": "msg_0123"}, "after"),
    ],
)
async def test_bad_input_is_a_422_in_words(
    client: httpx.AsyncClient, user: ApiUser, params: dict[str, Any], param: str
) -> None:
    response = await client.get("/v1/search", params=params, headers=user.headers)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


async def test_a_blank_session_filter_is_a_422(client: httpx.AsyncClient, user: ApiUser) -> None:
    response = await client.get("/v1/sessions", params={"q": " "}, headers=user.headers)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "q"


async def test_search_needs_credentials(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/search", params={"q": "x"})).status_code == 401


# A user with 10,000 messages, beside other users': the search is served by the full-text index, never by reading
# every one of the user's messages. Shown by the plan, not timed.
VOCABULARY = [f"w{n:03d}" for n in range(400)]


def _bulk_rows(user_id: str, sessions: int, messages: int, needle_every: int) -> tuple[list[dict[str, Any]], ...]:
    now = dt.datetime.now(dt.UTC)
    rng = random.Random(user_id)
    session_rows = [
        {
            "id": new_id("sess"),
            "user_id": user_id,
            "conversation_id": f"conv_bulk{uuid.uuid4().hex}",
            "title": f"bulk {i}",
            "metadata": {},
            "options": {},
            "tools": [],
            "created_at": now,
            "updated_at": now,
            "turn_count": 0,
            "total_cost_usd": 0,
        }
        for i in range(sessions)
    ]
    message_rows = [
        {
            "id": new_id("msg"),
            "session_id": session_rows[i % sessions]["id"],
            "role": "user" if i % 2 == 0 else "assistant",
            "content": " ".join(rng.choices(VOCABULARY, k=12)) + (" xylophone" if i % needle_every == 0 else ""),
            "status": "completed",
            "created_at": now,
        }
        for i in range(messages)
    ]
    return session_rows, message_rows


async def test_a_user_with_10000_messages_is_searched_through_the_index(
    client: httpx.AsyncClient, database_url: str, backend: str
) -> None:
    user = await create_api_user(client)
    others = [await create_api_user(client) for _ in range(3)]
    engine = build_engine(database_url)
    try:
        async with engine.begin() as connection:
            for owner, count in [(user, 10_000), *((other, 3_000) for other in others)]:
                sessions, messages = _bulk_rows(owner.id, sessions=20, messages=count, needle_every=1_000)
                await connection.execute(insert(ChatSession), sessions)
                await connection.execute(insert(Message), messages)
            await connection.execute(text("ANALYZE"))
        statement = search_statement(
            backend if backend == "sqlite" else "postgresql", user_id=user.id, text="xylophone", limit=20
        )

        def plan(sync: Connection) -> str:
            compiled = statement.compile(dialect=sync.dialect)
            parameters = tuple(compiled.params[name] for name in compiled.positiontup or [])
            prefix = "EXPLAIN QUERY PLAN " if backend == "sqlite" else "EXPLAIN "
            rows = sync.exec_driver_sql(prefix + str(compiled), parameters).all()
            return "\n".join(str(row[-1]) for row in rows)

        async with engine.connect() as connection:
            explained = await connection.run_sync(plan)
    finally:
        await engine.dispose()
    if backend == "postgres":
        assert "ix_messages_content_tsv" in explained, explained
    else:
        assert "SCAN messages_fts VIRTUAL TABLE INDEX" in explained, explained
    results = (await _search(client, user, "xylophone", limit=100))["data"]
    assert len(results) == 10
    assert all(_matched(r) == ["xylophone"] for r in results)
