"""Two users, and a JWT user named like one of them, never observe or change each other's objects.

A hypothesis state machine drives a real server with random interleavings of three callers' operations:
creating, reading, renaming, listing, searching, forking, exporting and deleting sessions, sending messages
(sometimes under an Idempotency-Key that another caller also uses), editing them, switching branches, reading,
cancelling, rating, regenerating and resuming turns, reading usage. It keeps its own model of who owns what, and
of each session's message tree and active branch, and checks every answer against it: another caller's ids
answer 404 exactly like ids that do not exist, lists hold only the caller's own objects, an Idempotency-Key
replays only its own user's turn (OWASP API1; ../shared/docs/reliability.md AZ-3..AZ-6, AZ-12, BI-10), and the
active branch, its messages' versions and every export are exactly what the edits, regenerations, switches and
forks so far make them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import uuid
from collections import Counter
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
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

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

# Enough interleavings to mix every rule with every other, small enough for CI (about 45 s per backend).
MACHINE_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@dataclass(frozen=True)
class MessageModel:
    id: str
    session_id: str
    parent_id: str | None
    role: str
    turn_id: str | None
    content: str


# What the model predicts of a listed Message (the rest: items, model, status, created_at, are the turn's).
MESSAGE_FIELDS = ("id", "session_id", "parent_id", "turn_id", "role", "content", "alternatives")


@dataclass
class SessionModel:
    owner: str
    title: str
    deleted: bool = False
    turns: list[str] = field(default_factory=list)  # every turn, on every branch
    messages: dict[str, MessageModel] = field(default_factory=dict)  # the message tree, in creation order
    leaf: str | None = None  # the active branch's last message

    def path_to(self, message_id: str | None) -> list[MessageModel]:
        path = []
        while message_id is not None:
            path.append(self.messages[message_id])
            message_id = self.messages[message_id].parent_id
        return path[::-1]

    def branch(self) -> list[MessageModel]:
        return self.path_to(self.leaf)

    def versions(self, message: MessageModel) -> list[str]:
        return [m.id for m in self.messages.values() if m.parent_id == message.parent_id]

    def newest_leaf_under(self, message_id: str) -> str:
        # A child is always newer than its parent: the subtree's newest message is a leaf.
        subtree = {message_id}
        for m in self.messages.values():
            if m.parent_id in subtree:
                subtree.add(m.id)
        return [m for m in self.messages if m in subtree][-1]

    def expected(self, message: MessageModel) -> dict[str, Any]:
        versions = self.versions(message)
        alternatives = (
            {"index": versions.index(message.id), "count": len(versions), "message_ids": versions}
            if len(versions) > 1
            else None
        )
        return {
            "id": message.id,
            "session_id": message.session_id,
            "parent_id": message.parent_id,
            "turn_id": message.turn_id,
            "role": message.role,
            "content": message.content,
            "alternatives": alternatives,
        }


@dataclass
class TurnModel:
    owner: str
    session_id: str
    stream_url: str
    message_id: str  # the user message it answers


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
    branch_operations: ClassVar[Counter[str]] = Counter()  # the edits, regenerations, ... that made a change

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
        self.messages: dict[str, MessageModel] = {}  # every message of every session, in creation order

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

    @initialize(target=sessions)
    def a_conversation_each(self) -> Any:
        """Each caller starts with a session of one exchange: the branch rules have messages from the first step."""
        started = [self._create(actor, TITLES[0]) for actor in ACTORS]
        for actor, session_id in zip(ACTORS, started, strict=True):
            self._send(actor, session_id, TEXTS[0], None)
        return multiple(*started)

    @rule(target=sessions, actor=st.sampled_from(ACTORS), title=st.sampled_from(TITLES))
    def create_session(self, actor: str, title: str) -> str:
        return self._create(actor, title)

    def _create(self, actor: str, title: str) -> str:
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
        self._check_branch(session_id, response.json()["data"])

    def _check_branch(self, session_id: str, listed: list[dict[str, Any]]) -> None:
        """`listed` (a list of Message) is the session's active branch as the model has it, versions and all."""
        session = self.model[session_id]
        assert [{name: m[name] for name in MESSAGE_FIELDS} for m in listed] == [
            session.expected(m) for m in session.branch()
        ]

    def _branch(self, actor: str, session_id: str) -> list[dict[str, Any]]:
        response = self._call(actor, "GET", f"/v1/sessions/{session_id}/messages", params={"limit": 100})
        assert response.status_code == 200, response.text
        return list(response.json()["data"])

    def _add_message(self, message: MessageModel) -> None:
        assert message.id not in self.messages
        self.model[message.session_id].messages[message.id] = message
        self.messages[message.id] = message

    def _answered(
        self, actor: str, turn: dict[str, Any], user_message: MessageModel | None = None
    ) -> list[dict[str, Any]]:
        """A new turn ended with an answer to its user message (`user_message` when the turn wrote one): the
        active branch is now the path to that message and the answer, whose id the listing tells. The listing."""
        session_id = turn["session_id"]
        assert turn["status"] == "completed", turn
        assert turn["id"] not in self.turn_model, "a new turn's id is an earlier turn's"
        self.turn_model[turn["id"]] = TurnModel(
            owner=actor, session_id=session_id, stream_url=turn["stream_url"], message_id=turn["message_id"]
        )
        self.model[session_id].turns.append(turn["id"])
        if user_message is not None:
            assert turn["message_id"] == user_message.id
            self._add_message(user_message)
        listed = self._branch(actor, session_id)
        answer = listed[-1]
        assert (answer["role"], answer["parent_id"], answer["turn_id"]) == ("assistant", turn["message_id"], turn["id"])
        self._add_message(
            MessageModel(answer["id"], session_id, turn["message_id"], "assistant", turn["id"], answer["content"])
        )
        self.model[session_id].leaf = answer["id"]
        self._check_branch(session_id, listed)
        return listed

    @staticmethod
    def _caller(data: st.DataObject, owner: str) -> str:
        """Mostly the owner (the branch rules change something only then), else anyone, the owner included."""
        return str(data.draw(st.sampled_from([owner, owner, *ACTORS]), label="actor"))

    def _draw_message(self, data: st.DataObject, *, role: str | None = None) -> MessageModel:
        """Any message of any session (with `role`, those of that role twice as often)."""
        favoured = [m.id for m in self.messages.values() if m.role == role]
        return self.messages[data.draw(st.sampled_from(favoured + list(self.messages)), label="message")]

    def _session_of(self, data: st.DataObject, owner_of: str, elsewhere: bool) -> str:
        """The session a message or turn is in, or (elsewhere) any session: ids of two sessions never mix."""
        if not elsewhere:
            return owner_of
        return str(data.draw(st.sampled_from(list(self.model)), label="session in the path"))

    # Turns.

    @rule(
        target=turns,
        session_id=sessions,
        data=st.data(),
        text=st.sampled_from(TEXTS),
        key=st.none() | st.sampled_from(KEYS),
    )
    def send_message(self, session_id: str, data: st.DataObject, text: str, key: str | None) -> Any:
        return self._send(self._caller(data, self.model[session_id].owner), session_id, text, key)

    def _send(self, actor: str, session_id: str, text: str, key: str | None) -> Any:
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
        leaf = self.model[session_id].leaf
        self._answered(actor, turn, MessageModel(turn["message_id"], session_id, leaf, "user", turn["id"], text))
        if key is not None:
            self.sent[(actor, key)] = SentRequest(session_id=session_id, text=text, turn_id=turn["id"])
        return turn["id"]

    # Branches.

    @precondition(lambda self: self.messages)
    @rule(
        target=turns,
        data=st.data(),
        text=st.sampled_from(TEXTS),
        elsewhere=st.sampled_from([False, False, False, True]),
    )
    def edit_message(self, data: st.DataObject, text: str, elsewhere: bool) -> Any:
        message = self._draw_message(data, role="user")
        actor = self._caller(data, self.model[message.session_id].owner)
        session_id = self._session_of(data, message.session_id, elsewhere)
        response = self._call(
            actor,
            "POST",
            f"/v1/sessions/{session_id}/messages/{message.id}/edit",
            json={"input": f"{text} (edited)", "stream": False},
        )
        if session_id != message.session_id or not self._visible(actor, session_id):
            self._not_found(response, "editing another's message")
            return multiple()
        if message.role != "user":
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == "message_not_editable"
            return multiple()
        assert response.status_code == 200, response.text
        turn = response.json()
        versions = len(self.model[session_id].versions(message))
        edited = MessageModel(turn["message_id"], session_id, message.parent_id, "user", turn["id"], f"{text} (edited)")
        *_, question, answer = self._answered(actor, turn, edited)
        # The edit, in the place of the message it replaces and its newest version, then its answer, end the branch.
        assert (question["id"], question["parent_id"], answer["parent_id"]) == (edited.id, message.parent_id, edited.id)
        assert question["alternatives"]["count"] == versions + 1
        assert question["alternatives"]["message_ids"][-1] == edited.id
        assert message.id in question["alternatives"]["message_ids"]
        TwoUsers.branch_operations["edit"] += 1
        return turn["id"]

    @precondition(lambda self: self.turn_model)
    @rule(target=turns, data=st.data(), elsewhere=st.sampled_from([False, False, False, True]))
    def regenerate(self, data: st.DataObject, elsewhere: bool) -> Any:
        turn_id = data.draw(st.sampled_from(list(self.turn_model)), label="turn")
        answered = self.turn_model[turn_id]
        actor = self._caller(data, answered.owner)
        session_id = self._session_of(data, answered.session_id, elsewhere)
        response = self._call(
            actor, "POST", f"/v1/sessions/{session_id}/turns/{turn_id}/regenerate", json={"stream": False}
        )
        if session_id != answered.session_id or not self._visible(actor, session_id):
            self._not_found(response, "regenerating another's turn")
            return multiple()
        assert response.status_code == 200, response.text
        turn = response.json()
        assert turn["message_id"] == answered.message_id  # the same question, answered again
        session = self.model[session_id]
        versions = sum(1 for m in session.messages.values() if m.parent_id == answered.message_id)
        *_, question, answer = self._answered(actor, turn)
        # The new answer, the newest of the question's answers, ends the active branch right after the question.
        assert (question["id"], answer["parent_id"]) == (answered.message_id, answered.message_id)
        assert answer["alternatives"]["count"] == versions + 1
        assert answer["alternatives"]["message_ids"][-1] == answer["id"]
        TwoUsers.branch_operations["regenerate"] += 1
        return turn["id"]

    @precondition(lambda self: self.messages)
    @rule(data=st.data(), elsewhere=st.sampled_from([False, False, False, True]))
    def activate(self, data: st.DataObject, elsewhere: bool) -> None:
        message = self._draw_message(data)
        actor = self._caller(data, self.model[message.session_id].owner)
        session_id = self._session_of(data, message.session_id, elsewhere)
        response = self._call(
            actor, "POST", f"/v1/sessions/{session_id}/messages/{message.id}/activate", params={"limit": 100}
        )
        if session_id != message.session_id or not self._visible(actor, session_id):
            self._not_found(response, "activating another's message")
            return
        assert response.status_code == 200, response.text
        session = self.model[session_id]
        session.leaf = session.newest_leaf_under(message.id)
        assert message in session.branch()
        self._check_branch(session_id, response.json()["data"])
        TwoUsers.branch_operations["activate"] += 1

    @rule(target=sessions, session_id=sessions, data=st.data())
    def fork(self, session_id: str, data: st.DataObject) -> Any:
        """A fork is its forker's alone, and holds the active branch up to the message chosen (one of the
        branch's, often; any message, sometimes: off the branch or in another session, 422)."""
        source = self.model[session_id]
        actor = self._caller(data, source.owner)
        candidates = [m.id for m in source.branch()] + list(self.messages)
        until = data.draw(st.none() | st.sampled_from(candidates), label="message_id") if candidates else None
        response = self._call(actor, "POST", f"/v1/sessions/{session_id}/fork", json={"message_id": until})
        branch = source.branch()
        if not self._visible(actor, session_id):
            self._not_found(response, "forking another's session")
            return multiple()
        if until is not None and until not in [m.id for m in branch]:
            assert response.status_code == 422, f"forking at a message off the active branch: {response.text}"
            assert response.json()["error"]["code"] == "message_not_on_branch"
            return multiple()
        assert response.status_code == 201, response.text
        forked = response.json()
        assert (forked["title"], forked["turn_count"]) == (source.title, 0)
        assert forked["id"] not in self.model
        self.model[forked["id"]] = SessionModel(owner=actor, title=source.title)
        kept = branch if until is None else branch[: [m.id for m in branch].index(until) + 1]
        listed = self._branch(actor, forked["id"])
        # The same conversation, in messages of its own that no turn of the fork answered.
        assert [(m["role"], m["content"]) for m in listed] == [(m.role, m.content) for m in kept]
        parent = None
        for message in listed:
            self._add_message(
                MessageModel(message["id"], forked["id"], parent, message["role"], None, message["content"])
            )
            parent = message["id"]
        self.model[forked["id"]].leaf = parent
        self._check_branch(forked["id"], listed)
        TwoUsers.branch_operations["fork"] += 1
        return forked["id"]

    @rule(
        session_id=sessions,
        data=st.data(),
        format=st.sampled_from(["json", "markdown"]),
        branches=st.sampled_from(["active", "all"]),
    )
    def export(self, session_id: str, data: st.DataObject, format: str, branches: str) -> None:
        actor = self._caller(data, self.model[session_id].owner)
        params = {"format": format, "branches": branches}
        response = self._call(actor, "GET", f"/v1/sessions/{session_id}/export", params=params)
        if not self._visible(actor, session_id):
            self._not_found(response, "exporting another's session")
            return
        assert response.status_code == 200, response.text
        TwoUsers.branch_operations["export"] += 1
        session = self.model[session_id]
        if format == "markdown":
            assert response.headers["content-type"] == "text/markdown; charset=utf-8"
            assert all(m.content in response.text for m in session.branch() if m.role == "user")
            # Every branch: the active one, then one section for each leaf off it.
            parents = {m.parent_id for m in session.messages.values()}
            off = sum(1 for m in session.messages if m not in parents and m != session.leaf)
            headings = re.findall(r"^## Branch .*$", response.text, flags=re.MULTILINE)
            if branches == "all" and off:
                assert headings == ["## Branch 1 (active)"] + [f"## Branch {n}" for n in range(2, off + 2)]
            else:
                assert headings == []
            return
        export = response.json()
        assert (export["session"]["id"], export["branches"]) == (session_id, branches)
        assert sorted(t["id"] for t in export["turns"]) == sorted(session.turns)
        if branches == "active":
            assert export["messages"] == self._branch(actor, session_id)
            return
        # Every message of the session, oldest first, each saying whether it is on the active branch.
        on_branch = {m.id for m in session.branch()}
        assert [{name: m[name] for name in MESSAGE_FIELDS} for m in export["messages"]] == [
            session.expected(m) for m in session.messages.values()
        ]
        assert [m["on_active_branch"] for m in export["messages"]] == [m in on_branch for m in session.messages]

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
    before, operations = TwoUsers.requests_checked, Counter(TwoUsers.branch_operations)
    # Hypothesis drives the machine synchronously; off the event loop, which the fixtures share.
    await asyncio.to_thread(run_state_machine_as_test, machine, settings=MACHINE_SETTINGS)
    made = ", ".join(f"{n} {name}" for name, n in sorted((TwoUsers.branch_operations - operations).items()))
    checked = TwoUsers.requests_checked - before
    print(
        f"\n[{jwt_parley.backend}] two-user state machine: {checked} requests checked (own branch operations: {made})"
    )
