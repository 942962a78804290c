"""Helpers for turn tests: an SSE reader (httpx-sse), the simulator's control routes, database peeks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent, aconnect_sse

from tests.conftest import ADMIN_TOKEN, ApiUser, RunningParley

# Any bearer value will do for the simulator's /v1 routes.
UPSTREAM_AUTH = {"Authorization": "Bearer sk-test"}


@dataclass
class Event:
    id: int
    name: str
    data: Any
    raw: str

    @classmethod
    def of(cls, sse: ServerSentEvent) -> Event:
        return cls(id=int(sse.id), name=sse.event, data=json.loads(sse.data), raw=sse.data)


@dataclass
class Stream:
    status: int
    headers: httpx.Headers
    events: list[Event] = field(default_factory=list)
    error: dict[str, Any] | None = None

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.events]

    @property
    def ids(self) -> list[int]:
        return [e.id for e in self.events]

    @property
    def terminal(self) -> Event:
        return self.events[-1]

    @property
    def text(self) -> str:
        return "".join(e.data["delta"] for e in self.events if e.name == "response.output_text.delta")


async def sse_events(source: EventSource) -> AsyncIterator[ServerSentEvent]:
    """The events a browser would dispatch. httpx-sse also yields a `: ping` that follows an event (the last
    id lingers, so it looks like an event with no data); the SSE spec dispatches nothing for it."""
    async for sse in source.aiter_sse():
        if sse.data:
            yield sse


async def collect(source: EventSource, stream: Stream, *, stop_after: int | None = None) -> Stream:
    async for sse in sse_events(source):
        stream.events.append(Event.of(sse))
        if stop_after is not None and len(stream.events) >= stop_after:
            break
    return stream


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> AsyncIterator[tuple[Stream, EventSource]]:
    async with aconnect_sse(client, method, url, **kwargs) as source:
        stream = Stream(status=source.response.status_code, headers=source.response.headers)
        if source.response.status_code != 200:
            await source.response.aread()
            stream.error = source.response.json()
        yield stream, source


async def send(
    client: httpx.AsyncClient,
    user: ApiUser,
    session_id: str,
    body: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
) -> Stream:
    """POST a message and read its SSE stream to the end (or the first `stop_after` events)."""
    payload = body or {"input": "Hello, Parley!"}
    async with open_stream(
        client, "POST", f"/v1/sessions/{session_id}/messages", json=payload, headers=user.headers | (headers or {})
    ) as (stream, source):
        if stream.status == 200:
            await collect(source, stream, stop_after=stop_after)
        return stream


async def attach(
    client: httpx.AsyncClient, user: ApiUser, session_id: str, turn_id: str, *, last_event_id: int | None = None
) -> Stream:
    headers = dict(user.headers)
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    async with open_stream(client, "GET", f"/v1/sessions/{session_id}/turns/{turn_id}/events", headers=headers) as (
        stream,
        source,
    ):
        if stream.status == 200:
            await collect(source, stream)
        return stream


async def new_session(client: httpx.AsyncClient, user: ApiUser, **body: Any) -> str:
    response = await client.post("/v1/sessions", json=body, headers=user.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


class Simulator:
    """The control routes of the simulator behind a running Parley (which need the admin token there; a
    standalone simulator's are open and ignore it)."""

    def __init__(self, client: httpx.AsyncClient, base_url: str) -> None:
        self.client = client
        self.base_url = base_url
        self.control_headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def configure(self, **config: Any) -> None:
        response = await self.client.post(f"{self.base_url}/_control/config", json=config, headers=self.control_headers)
        assert response.status_code == 200, response.text

    async def faults(self, *faults: dict[str, Any]) -> None:
        response = await self.client.post(
            f"{self.base_url}/_control/next", json={"faults": list(faults)}, headers=self.control_headers
        )
        assert response.status_code == 200, response.text

    async def requests(self) -> list[dict[str, Any]]:
        response = await self.client.get(f"{self.base_url}/_control/requests", headers=self.control_headers)
        assert response.status_code == 200, response.text
        return list(response.json())

    async def response_calls(self, session_conversation: str) -> list[dict[str, Any]]:
        """The POST /v1/responses calls made for one conversation."""
        calls = []
        for request in await self.requests():
            body = request.get("body") or {}
            if request["method"] == "POST" and request["path"] == "/v1/responses":
                conversation = body.get("conversation")
                if conversation == session_conversation or (
                    isinstance(conversation, dict) and conversation.get("id") == session_conversation
                ):
                    calls.append(request)
        return calls

    async def retrieve(self, response_id: str) -> dict[str, Any]:
        response = await self.client.get(f"{self.base_url}/v1/responses/{response_id}", headers=UPSTREAM_AUTH)
        return dict(response.json())

    async def conversation_messages(self, conversation_id: str) -> list[tuple[str, str]]:
        """(role, text) of each message item of an upstream conversation, oldest first: what the next turn reads."""
        listed = await self.client.get(
            f"{self.base_url}/v1/conversations/{conversation_id}/items",
            params={"order": "asc", "limit": 100},
            headers=UPSTREAM_AUTH,
        )
        assert listed.status_code == 200, listed.text
        return [
            (item["role"], "".join(part.get("text", "") for part in item["content"]))
            for item in listed.json()["data"]
            if item["type"] == "message"
        ]


async def conversation_of(client: httpx.AsyncClient, user: ApiUser, session_id: str) -> str:
    return str((await client.get(f"/v1/sessions/{session_id}", headers=user.headers)).json()["conversation_id"])


async def turn_of(client: httpx.AsyncClient, user: ApiUser, session_id: str, turn_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/sessions/{session_id}/turns/{turn_id}", headers=user.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def wait_for_status(
    client: httpx.AsyncClient, user: ApiUser, session_id: str, turn_id: str, *, timeout: float = 15
) -> dict[str, Any]:
    """Poll until the turn is no longer in flight."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        turn = await turn_of(client, user, session_id, turn_id)
        if turn["status"] not in ("queued", "in_progress"):
            return turn
        assert asyncio.get_running_loop().time() < deadline, f"turn still {turn['status']}"
        await asyncio.sleep(0.05)


def simulator_for(parley: RunningParley, client: httpx.AsyncClient) -> Simulator:
    return Simulator(client, parley.simulator_url)
