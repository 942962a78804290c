"""Two users, and a JWT user named like one of them, never observe or change each other's objects.

A hypothesis state machine drives a real server with random interleavings of three callers' operations:
creating, reading, renaming, listing, searching and deleting sessions, sending messages (sometimes under an
Idempotency-Key that another caller also uses), reading, cancelling, rating and resuming turns, reading usage.
It keeps its own model of who owns what and checks every answer against it: another caller's ids answer
404 exactly like ids that do not exist, lists hold only the caller's own objects, and an Idempotency-Key
replays only its own user's turn (OWASP API1; ../shared/docs/reliability.md AZ-3..AZ-6, AZ-12, BI-10).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from httpx_sse import connect_sse
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, multiple, rule, run_state_machine_as_test

from tests.conftest import ADMIN_TOKEN, RunningParley, run_parley

JWT_SECRET = "two-users-secret-" + "z" * 32
ISSUER = "https://id.example.test/"
AUDIENCE = "parley-two-users"

# Three callers: two API-key users, and a JWT user whose `sub` is alice's name. Identities are namespaced by
# their source (issue 24), so the JWT user is a third, separate user, not alice.
ACTORS = ("alice", "bob", "alice_jwt")
TITLES = ("Trip", "Groceries", "Secret plans")
TEXTS = ("Hello!", "What should I pack for Lisbon?")
# Words of the titles and messages above, and of none of them.
SEARCH_WORDS = ("Trip", "plans", "Lisbon", "hello", "alice", "nowhere")
# A small pool, so that the callers often use the same keys (each run of the machine gets its own prefix).
KEYS = ("key-a", "key-b", "key-c")
LAST_EVENT_IDS = (None, 0, 1, 4, 10_000)

# Enough interleavings to mix every rule with every other, small enough for CI (about 20 s per backend).
MACHINE_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@dataclass
class SessionModel:
    owner: str
    title: str
    deleted: bool = False
    turns: list[str] = field(default_factory=list)


@dataclass
class TurnModel:
    owner: str
    session_id: str
    stream_url: str


@dataclass
class SentRequest:
    session_id: str
    text: str
    turn_id: str


def _jwt_for(subject: str) -> str:
    now = dt.datetime.now(dt.UTC)
    claims = {"sub": subject, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + dt.timedelta(minutes=30)}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


class TwoUsers(RuleBasedStateMachine):
    """The model: who owns which session and turn, each session's title and turns, each user's keys."""

    base_url: ClassVar[str] = ""
    requests_checked: ClassVar[int] = 0  # over every run, for the figures in docs/reliability.md

    sessions = Bundle("sessions")
    turns = Bundle("turns")

    def __init__(self) -> None:
        super().__init__()
        self.http = httpx.Client(base_url=self.base_url, timeout=30)
        run = uuid.uuid4().hex[:10]
        alice_name = f"alice-{run}"
        self.headers = {
            "alice": self._new_api_user(alice_name),
            "bob": self._new_api_user(f"bob-{run}"),
            "alice_jwt": {"Authorization": f"Bearer {_jwt_for(alice_name)}"},
        }
        self.key_prefix = run
        self.model: dict[str, SessionModel] = {}
        self.turn_model: dict[str, TurnModel] = {}
        self.sent: dict[tuple[str, str], SentRequest] = {}  # (actor, Idempotency-Key) -> what it started
        self.ratings: dict[str, str | None] = {}  # turn id -> the rating its owner gave it

    def teardown(self) -> None:
        self.http.close()

    def _new_api_user(self, name: str) -> dict[str, str]:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        created = self.http.post("/v1/admin/users", json={"name": name}, headers=admin)
        assert created.status_code == 201, created.text
        key = self.http.post(f"/v1/admin/users/{created.json()['id']}/keys", json={}, headers=admin)
        assert key.status_code == 201, key.text
        return {"Authorization": f"Bearer {key.json()['key']}"}

    def _call(self, actor: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        TwoUsers.requests_checked += 1
        response = self.http.request(method, url, headers=self.headers[actor] | kwargs.pop("headers", {}), **kwargs)
        assert response.status_code < 500, f"{method} {url}: {response.status_code} {response.text}"
        return response

    def _visible(self, actor: str, session_id: str) -> bool:
        session = self.model[session_id]
        return session.owner == actor and not session.deleted

    @staticmethod
    def _not_found(response: httpx.Response, what: str) -> None:
        assert response.status_code == 404, f"{what}: expected 404, got {response.status_code} {response.text}"
        assert set(response.json()["error"]) == {"type", "code", "message", "param"}

    # Sessions.

    @rule(target=sessions, actor=st.sampled_from(ACTORS), title=st.sampled_from(TITLES))
    def create_session(self, actor: str, title: str) -> str:
        response = self._call(actor, "POST", "/v1/sessions", json={"title": title})
        assert response.status_code == 201, response.text
        session_id = str(response.json()["id"])
        assert session_id not in self.model
        self.model[session_id] = SessionModel(owner=actor, title=title)
        return session_id

    @rule(actor=st.sampled_from(ACTORS), session_id=sessions)
    def read_session(self, actor: str, session_id: str) -> None:
        response = self._call(actor, "GET", f"/v1/sessions/{session_id}")
        if not self._visible(actor, session_id):
            self._not_found(response, "another's session")
            return
        assert response.status_code == 200, response.text
        assert response.json()["title"] == self.model[session_id].title
        assert response.json()["turn_count"] == len(self.model[session_id].turns)

    @rule(actor=st.sampled_from(ACTORS), session_id=sessions, title=st.sampled_from(TITLES))
    def rename_session(self, actor: str, session_id: str, title: str) -> None:
        response = self._call(actor, "PATCH", f"/v1/sessions/{session_id}", json={"title": f"{title} ({actor})"})
        if not self._visible(actor, session_id):
            self._not_found(response, "renaming another's session")
            return
        assert response.status_code == 200, response.text
        self.model[session_id].title = f"{title} ({actor})"

    @rule(actor=st.sampled_from(ACTORS), session_id=sessions)
    def delete_session(self, actor: str, session_id: str) -> None:
        response = self._call(actor, "DELETE", f"/v1/sessions/{session_id}")
        if not self._visible(actor, session_id):
            self._not_found(response, "deleting another's session")
            return
        assert response.status_code == 200, response.text
        self.model[session_id].deleted = True

    @rule(actor=st.sampled_from(ACTORS), session_id=sessions)
    def list_messages(self, actor: str, session_id: str) -> None:
        response = self._call(actor, "GET", f"/v1/sessions/{session_id}/messages", params={"limit": 100})
        if not self._visible(actor, session_id):
            self._not_found(response, "another's history")
            return
        assert response.status_code == 200, response.text
        messages = response.json()["data"]
        assert {m["session_id"] for m in messages} <= {session_id}
        assert [m["turn_id"] for m in messages if m["role"] == "user"] == self.model[session_id].turns

    # Turns.

    @rule(
        target=turns,
        actor=st.sampled_from(ACTORS),
        session_id=sessions,
        text=st.sampled_from(TEXTS),
        key=st.none() | st.sampled_from(KEYS),
    )
    def send_message(self, actor: str, session_id: str, text: str, key: str | None) -> Any:
        headers = {} if key is None else {"Idempotency-Key": f"{self.key_prefix}-{key}"}
        response = self._call(
            actor,
            "POST",
            f"/v1/sessions/{session_id}/messages",
            json={"input": text, "stream": False},
            headers=headers,
        )
        if not self._visible(actor, session_id):
            self._not_found(response, "sending into another's session")
            return multiple()
        earlier = self.sent.get((actor, key)) if key is not None else None
        if earlier is not None:
            if (earlier.session_id, earlier.text) == (session_id, text):
                # The same request again: the same turn, not a new one.
                assert response.status_code == 200, response.text
                assert response.json()["id"] == earlier.turn_id
            else:
                assert response.status_code == 422, response.text
                assert response.json()["error"]["code"] == "idempotency_key_reused"
            return multiple()
        assert response.status_code == 200, response.text
        turn = response.json()
        # A new turn of this caller's: never a replay of a turn another caller started under the same key.
        assert turn["id"] not in self.turn_model, "a key replayed another caller's turn"
        assert turn["session_id"] == session_id
        assert turn["status"] == "completed", turn
        self.turn_model[turn["id"]] = TurnModel(owner=actor, session_id=session_id, stream_url=turn["stream_url"])
        self.model[session_id].turns.append(turn["id"])
        if key is not None:
            self.sent[(actor, key)] = SentRequest(session_id=session_id, text=text, turn_id=turn["id"])
        return turn["id"]

    @rule(actor=st.sampled_from(ACTORS), session_id=sessions)
    def list_turns(self, actor: str, session_id: str) -> None:
        response = self._call(actor, "GET", f"/v1/sessions/{session_id}/turns", params={"limit": 100})
        if not self._visible(actor, session_id):
            self._not_found(response, "another's turns")
            return
        assert response.status_code == 200, response.text
        assert sorted(t["id"] for t in response.json()["data"]) == sorted(self.model[session_id].turns)

    def _turn_url(self, turn_id: str) -> str:
        return f"/v1/sessions/{self.turn_model[turn_id].session_id}/turns/{turn_id}"

    def _turn_visible(self, actor: str, turn_id: str) -> bool:
        return self._visible(actor, self.turn_model[turn_id].session_id)

    @rule(actor=st.sampled_from(ACTORS), turn_id=turns)
    def read_turn(self, actor: str, turn_id: str) -> None:
        response = self._call(actor, "GET", self._turn_url(turn_id))
        if not self._turn_visible(actor, turn_id):
            self._not_found(response, "another's turn")
            return
        assert response.status_code == 200, response.text
        assert response.json()["id"] == turn_id
        feedback = response.json()["feedback"]
        assert (feedback or {}).get("rating") == self.ratings.get(turn_id)

    @rule(actor=st.sampled_from(ACTORS), turn_id=turns, rating=st.sampled_from(["up", "down", None]))
    def rate_turn(self, actor: str, turn_id: str, rating: str | None) -> None:
        response = self._call(actor, "PUT", f"{self._turn_url(turn_id)}/feedback", json={"rating": rating})
        if not self._turn_visible(actor, turn_id):
            self._not_found(response, "rating another's turn")
            return
        assert response.status_code == 200, response.text
        assert (response.json()["feedback"] or {}).get("rating") == rating
        self.ratings[turn_id] = rating

    @rule(actor=st.sampled_from(ACTORS), turn_id=turns)
    def cancel_turn(self, actor: str, turn_id: str) -> None:
        response = self._call(actor, "POST", f"{self._turn_url(turn_id)}/cancel")
        if not self._turn_visible(actor, turn_id):
            self._not_found(response, "cancelling another's turn")
            return
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "completed"  # it had ended: returned as it is

    @rule(actor=st.sampled_from(ACTORS), turn_id=turns)
    def answer_tool_calls(self, actor: str, turn_id: str) -> None:
        body = {"tool_outputs": [{"call_id": "call_1", "output": "{}"}], "stream": False}
        response = self._call(actor, "POST", f"{self._turn_url(turn_id)}/tool_outputs", json=body)
        if not self._turn_visible(actor, turn_id):
            self._not_found(response, "answering another's turn")
            return
        assert response.status_code == 409, response.text  # the turn was not waiting for outputs

    def _read_events(
        self, url: str, *, headers: dict[str, str], params: dict[str, str]
    ) -> tuple[int, list[dict[str, Any]]]:
        TwoUsers.requests_checked += 1
        events: list[dict[str, Any]] = []
        with connect_sse(self.http, "GET", url, headers=headers, params=params) as source:
            status = source.response.status_code
            if status == 200:
                events = [sse.json() for sse in source.iter_sse() if sse.data]
            else:
                source.response.read()
        assert status < 500
        return status, events

    @rule(actor=st.sampled_from(ACTORS), turn_id=turns, last_event_id=st.sampled_from(LAST_EVENT_IDS))
    def resume_stream(self, actor: str, turn_id: str, last_event_id: int | None) -> None:
        headers = dict(self.headers[actor])
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        status, events = self._read_events(f"{self._turn_url(turn_id)}/events", headers=headers, params={})
        if not self._turn_visible(actor, turn_id):
            assert status == 404, f"resuming another's stream: {status}"
            return
        assert status in (200, 204)
        self._only_this_turn(events, turn_id)

    @rule(token_of=turns, turn_id=turns)
    def open_stream_with_a_token(self, token_of: str, turn_id: str) -> None:
        """A turn's `stream_url` token opens that turn's events and no other's (another user's included)."""
        token = parse_qs(urlsplit(self.turn_model[token_of].stream_url).query)["token"][0]
        status, events = self._read_events(f"{self._turn_url(turn_id)}/events", headers={}, params={"token": token})
        if token_of != turn_id:
            assert status in (401, 404), f"a token of another turn opened a stream: {status}"
            assert events == []
        elif not self.model[self.turn_model[turn_id].session_id].deleted:
            assert status in (200, 204)
            self._only_this_turn(events, turn_id)

    @staticmethod
    def _only_this_turn(events: list[dict[str, Any]], turn_id: str) -> None:
        for data in events:
            if isinstance(data, dict) and "turn" in data:
                assert data["turn"]["id"] == turn_id

    # Usage and lists.

    @rule(actor=st.sampled_from(ACTORS))
    def read_usage(self, actor: str) -> None:
        response = self._call(actor, "GET", "/v1/usage", params={"group_by": "session"})
        assert response.status_code == 200, response.text
        report = response.json()
        mine = {sid for sid, session in self.model.items() if session.owner == actor}
        assert {row["session_id"] for row in report["data"]} <= mine
        turns = sum(1 for turn in self.turn_model.values() if turn.owner == actor)
        assert report["totals"]["requests"] == turns  # one upstream response per turn, all of them this caller's

    @rule(actor=st.sampled_from(ACTORS), word=st.sampled_from(SEARCH_WORDS))
    def search(self, actor: str, word: str) -> None:
        """Search finds only the caller's own live sessions, and every one of them whose title has the word."""
        mine = {sid for sid, s in self.model.items() if s.owner == actor and not s.deleted}
        titled = {sid for sid in mine if word.lower() in re.findall(r"[a-z0-9]+", self.model[sid].title.lower())}
        response = self._call(actor, "GET", "/v1/search", params={"q": word, "limit": 100})
        assert response.status_code == 200, response.text
        found = {result["session_id"] for result in response.json()["data"]}
        assert found <= mine, f"{actor} found {found - mine}, not theirs or deleted"
        assert titled <= found, f"{actor} did not find their titles {titled - found}"
        listed = self._call(actor, "GET", "/v1/sessions", params={"q": word, "limit": 100})
        assert listed.status_code == 200, listed.text
        assert {s["id"] for s in listed.json()["data"]} == found

    @invariant()
    def lists_hold_only_own_sessions(self) -> None:
        for actor in ACTORS:
            response = self._call(actor, "GET", "/v1/sessions", params={"limit": 100})
            assert response.status_code == 200, response.text
            listed = {s["id"] for s in response.json()["data"]}
            expected = {sid for sid, s in self.model.items() if s.owner == actor and not s.deleted}
            assert listed == expected, f"{actor} lists {listed}, owns {expected}"


@pytest.fixture(scope="module")
def jwt_parley(database_url: str, backend: str) -> Iterator[RunningParley]:
    with run_parley(database_url, backend, jwt_secret=JWT_SECRET, jwt_issuer=ISSUER, jwt_audience=AUDIENCE) as running:
        yield running


async def test_no_user_observes_or_changes_anothers_objects(jwt_parley: RunningParley) -> None:
    machine = type("TwoUsersOnServer", (TwoUsers,), {"base_url": jwt_parley.base_url})
    before = TwoUsers.requests_checked
    # Hypothesis drives the machine synchronously; off the event loop, which the fixtures share.
    await asyncio.to_thread(run_state_machine_as_test, machine, settings=MACHINE_SETTINGS)
    print(f"\n[{jwt_parley.backend}] two-user state machine: {TwoUsers.requests_checked - before} requests checked")
