"""Turns: starting one (a short transaction), reading them, and asking for a cancel."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import openai
import orjson
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from app.db.base import utcnow
from app.db.driver import DriverConnection, Meanwhile, driver_connection
from app.db.engine import engine_of
from app.db.ids import new_id
from app.db.models import Turn
from app.errors import Conflict, NotFound, PaymentRequired, RateLimited, ValidationFailed
from app.repositories import sessions as sessions_repo
from app.repositories import turns as turns_repo
from app.repositories import users as users_repo
from app.repositories.pagination import Order, Page
from app.repositories.sessions import SessionForTurn
from app.services.auth import Principal
from app.services.limits import (
    WINDOW,
    budget_of,
    check_turn_allowed,
    check_turn_budget,
    limit_error,
    limits_apply,
    month_of,
)
from app.services.policy import check_model, check_prompt
from app.settings import Settings
from app.upstream.conversations import add_items

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TurnRequest:
    """A validated `POST …/messages` body."""

    input: str | list[dict[str, Any]]
    prompt: dict[str, Any] | None = None
    prompt_variables: dict[str, str] | None = None
    model: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    stream: bool = True
    # Function tools the client declares and answers itself (handed over with turn.requires_action).
    tools: list[dict[str, Any]] = field(default_factory=list)

    def fingerprint(self, session_id: str) -> str:
        """What makes two sends 'the same request' for an Idempotency-Key (stream mode aside)."""
        payload = {
            "session_id": session_id,
            "input": self.input,
            "prompt": self.prompt,
            "prompt_variables": self.prompt_variables,
            "model": self.model,
            "metadata": self.metadata,
            "tools": self.tools,
        }
        return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class StartedTurn:
    turn: Turn
    replayed: bool  # an earlier request with the same Idempotency-Key made this turn


def safety_identifier(user_id: str) -> str:
    """A stable, non-reversible id of the user for OpenAI's abuse monitoring (≤ 64 chars)."""
    return hashlib.sha256(f"parley:{user_id}".encode()).hexdigest()[:64]


def input_text(value: str | list[dict[str, Any]]) -> str:
    """The user's words as they go into the history: the text parts of the input."""
    if isinstance(value, str):
        return value
    parts: list[str] = []
    for item in value:
        content = item.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "input_text"
            )
    return "\n".join(parts)


def resolve_upstream_body(
    settings: Settings,
    *,
    session: SessionForTurn,
    request: TurnRequest,
    principal: Principal,
    turn_id: str,
    server_tools: list[dict[str, Any]],
) -> dict[str, Any]:
    """prompt and model: message overrides → session → deployment default."""
    check_model(settings, request.model)
    server_names = {tool["name"] for tool in server_tools}
    clashes = sorted(server_names & {tool["name"] for tool in request.tools})
    if clashes:
        raise ValidationFailed(
            f"Tool name(s) {', '.join(clashes)} belong to this deployment's own tools; pick other names.",
            param="tools",
            code="tool_name_taken",
        )
    check_prompt(settings, request.prompt["id"] if request.prompt else None)
    prompt: dict[str, Any] | None = None
    if request.prompt is not None:
        prompt = dict(request.prompt)
    elif session.prompt:
        prompt = dict(session.prompt)
    elif settings.effective_default_prompt_id:
        prompt = {"id": settings.effective_default_prompt_id}
        if settings.default_prompt_version:
            prompt["version"] = settings.default_prompt_version
    if prompt is not None and request.prompt_variables:
        prompt["variables"] = {**(prompt.get("variables") or {}), **request.prompt_variables}
    body: dict[str, Any] = {
        "conversation": session.conversation_id,
        "input": [{"role": "user", "content": request.input}] if isinstance(request.input, str) else request.input,
        "store": True,
        "stream": True,
        "safety_identifier": safety_identifier(principal.user_id),
        "metadata": {"parley_session_id": session.id, "parley_turn_id": turn_id},
    }
    tools = [*server_tools, *request.tools]
    if tools:
        body["tools"] = tools
    model = request.model or session.model
    if prompt is not None:
        body["prompt"] = prompt
        if model:
            body["model"] = model
    else:
        body["model"] = model or settings.default_model
        body["instructions"] = settings.default_instructions
    return body


async def start_turn(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    settings: Settings,
    principal: Principal,
    session_id: str,
    request: TurnRequest,
    idempotency_key: str | None,
    runner_id: str,
    server_tools: list[dict[str, Any]] = [],  # noqa: B006 (read only)
    while_writing: Callable[[Turn], None] | None = None,
) -> StartedTurn:
    """Idempotency, limits, the turn row and the user message, before anything goes upstream.

    It runs before the first token, so it is kept to a few statements written as Core (no unit of work). One
    turn in flight per session is the partial unique index's job; losing that race (or a duplicate
    Idempotency-Key's) lands in `_after_conflict`.

    On Postgres the statements run on the driver's connection (`app.db.driver`), each in autocommit: one
    statement for a plain session (no prompt or model of its own), two for one with its own, the second with
    the body built from the session the first read. With nothing to count (`run_in_autocommit`) the insert's
    constraints are all the isolation needed. When a limit counts (the default), or the owner turns out to
    have a budget of their own, the statement locks the owner's row and counts after the lock (`run_counted`;
    the lock lasts until it commits). A start the limits stop is answered afterwards (`_after_conflict`). On
    SQLite, one transaction of several statements (`run`).

    `while_writing` is the caller's own work for the new turn (what it sends before the first token), run on
    Postgres while the statement that writes the turn runs in the database instead of after it: every turn
    built is passed to it, also one that a conflict or a limit then keeps from starting.
    """
    start = _TurnStart(
        settings=settings,
        principal=principal,
        session_id=session_id,
        request=request,
        idempotency_key=idempotency_key,
        runner_id=runner_id,
        server_tools=server_tools,
        while_writing=while_writing,
    )
    try:
        engine = engine_of(sessionmaker)
        if engine.dialect.name != "postgresql":
            async with sessionmaker() as db, db.begin():
                return await start.run(db, lock_user=limits_apply(settings))
        async with driver_connection(engine) as connection:
            if limits_apply(settings):
                return await start.run_counted(connection)
            return await start.run_in_autocommit(connection)
    except (IntegrityError, _Refused) as refusal:
        # Lost a race (a concurrent duplicate of this request, or another turn of the session), or a limit.
        return await _after_conflict(
            sessionmaker,
            principal=principal,
            session_id=session_id,
            key=idempotency_key,
            fingerprint=start.fingerprint,
            limited=refusal.limited(settings, now=start.now) if isinstance(refusal, _Refused) else None,
        )


class _Refused(Exception):
    """A counted start that a limit stopped: nothing was written."""

    def __init__(self, counts: turns_repo.LimitCounts, budget: Decimal | None) -> None:
        self.counts = counts
        self.budget = budget

    def limited(self, settings: Settings, *, now: dt.datetime) -> RateLimited | PaymentRequired:
        error = limit_error(self.counts, settings=settings, budget=self.budget, now=now)
        if error is None:
            raise RuntimeError("the counted start inserted nothing, yet no limit is reached")
        return error


@dataclass(slots=True)
class _TurnStart:
    settings: Settings
    principal: Principal
    session_id: str
    request: TurnRequest
    idempotency_key: str | None
    runner_id: str
    server_tools: list[dict[str, Any]]
    while_writing: Callable[[Turn], None] | None = None
    fingerprint: str = field(init=False)
    now: dt.datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        self.fingerprint = self.request.fingerprint(self.session_id)

    async def run(self, db: AsyncSession, *, lock_user: bool) -> StartedTurn:
        """SQLite, in a transaction: the session, a replay, the limits, the inserts (SQLite writes one
        transaction at a time, so nothing changes the counts meanwhile)."""
        session = await self._session(db, lock_user=lock_user)
        replayed = await _replayed_start(
            db, user_id=self.principal.user_id, key=self.idempotency_key, fingerprint=self.fingerprint
        )
        if replayed is not None:
            return replayed
        try:
            await check_turn_allowed(
                db,
                settings=self.settings,
                user_id=self.principal.user_id,
                user_budget=session.owner_budget_usd,
                now=self.now,
            )
        except RateLimited:
            # A second send into a busy session is a 409 whatever the user's other turns add up to.
            running = await turns_repo.find_open(db, session_id=self.session_id)
            if running is not None:
                raise _in_progress(running.id) from None
            raise
        return await self._insert(await db.connection(), session)

    async def run_counted(self, connection: DriverConnection) -> StartedTurn:
        """Postgres, in autocommit: the limits counted under the owner's lock and the inserts guarded by them,
        one statement (`turns_repo.start_counted_turn`). A session with a prompt or model of its own takes a
        second, with the body built from the session the first read. Raises `_Refused` when a limit stopped
        it; a used Idempotency-Key or a busy session fails the insert (IntegrityError)."""
        turn, start = await self._counted(connection, self._plain_session(), body_for_session=False)
        if start.session is not None and not start.body_fits:
            turn, start = await self._counted(connection, start.session, body_for_session=True)
        if start.session is None:
            raise self._not_found()
        if not start.started:
            assert start.counts is not None
            raise _Refused(start.counts, budget_of(start.session.owner_budget_usd, self.settings))
        turn.request["conversation"] = start.session.conversation_id
        return StartedTurn(turn, replayed=False)

    async def _counted(
        self, connection: DriverConnection, session: SessionForTurn, *, body_for_session: bool
    ) -> tuple[Turn, turns_repo.CountedStart]:
        settings = self.settings
        turn, user_message = self._new_turn(session)
        start = await turns_repo.start_counted_turn(
            connection,
            turn,
            user_message=user_message,
            body_for_session=body_for_session,
            since=self.now - WINDOW,
            month=month_of(self.now),
            max_in_flight=settings.rate_limit_concurrent_turns,
            max_recent=settings.rate_limit_turns_per_minute,
            default_budget=settings.default_monthly_budget_usd,
            meanwhile=self._meanwhile(turn),
        )
        return turn, start

    async def run_in_autocommit(self, connection: DriverConnection) -> StartedTurn:
        """Each statement its own transaction, when no limit counts. A plain session (no prompt or model of its
        own, an owner without a budget) starts in one statement; another one in two, the second with the body
        built from the session the first read. An owner with a budget of their own has it counted under their
        lock (`run_counted`): the first statement wrote nothing."""
        turn, user_message = self._new_turn(self._plain_session())
        plain = await turns_repo.start_plain_turn(
            connection, turn, user_message=user_message, meanwhile=self._meanwhile(turn)
        )
        if plain.session is None:
            raise self._not_found()
        if plain.started:
            turn.request["conversation"] = plain.session.conversation_id
            return StartedTurn(turn, replayed=False)
        if plain.session.owner_budget_usd is not None:
            return await self.run_counted(connection)
        turn, user_message = self._new_turn(plain.session)
        await turns_repo.insert_started_turn_on_driver(
            connection, turn, user_message=user_message, meanwhile=self._meanwhile(turn)
        )
        return StartedTurn(turn, replayed=False)

    def _plain_session(self) -> SessionForTurn:
        """The session as a body built before reading it assumes: no prompt or model of its own (a start
        statement fills in the conversation, and inserts only if the session is so)."""
        return SessionForTurn(id=self.session_id, conversation_id="", prompt=None, model=None, owner_budget_usd=None)

    async def _session(self, db: AsyncSession, *, lock_user: bool) -> SessionForTurn:
        session = await sessions_repo.get_owned_session_for_turn(
            db, user_id=self.principal.user_id, session_id=self.session_id, lock_user=lock_user
        )
        if session is None:
            raise self._not_found()
        return session

    def _meanwhile(self, turn: Turn) -> Meanwhile:
        while_writing = self.while_writing
        return None if while_writing is None else lambda: while_writing(turn)

    def _not_found(self) -> NotFound:
        return NotFound(f"No session with id '{self.session_id}'.", code="session_not_found", param="session_id")

    async def _insert(self, connection: AsyncConnection, session: SessionForTurn) -> StartedTurn:
        turn, user_message = self._new_turn(session)
        await turns_repo.insert_started_turn(connection, turn, user_message=user_message)
        return StartedTurn(turn, replayed=False)

    def _new_turn(self, session: SessionForTurn) -> tuple[Turn, dict[str, Any]]:
        """The turn row (its upstream body built from `session`) and its user message, not yet written."""
        principal, session_id, request = self.principal, self.session_id, self.request
        turn_id = new_id("turn")
        body = resolve_upstream_body(
            self.settings,
            session=session,
            request=request,
            principal=principal,
            turn_id=turn_id,
            server_tools=self.server_tools,
        )
        turn = Turn(
            id=turn_id,
            session_id=session_id,
            user_id=principal.user_id,
            status="in_progress",
            input=request.input,
            request=body,
            metadata_=request.metadata,
            output_text="",
            response_ids=[],
            idempotency_key=self.idempotency_key,
            request_fingerprint=self.fingerprint,
            runner_id=self.runner_id,
            created_at=self.now,
        )
        user_message = {
            "id": new_id("msg"),
            "session_id": session_id,
            "turn_id": turn_id,
            "role": "user",
            "content": input_text(request.input),
            "status": "completed",
            "created_at": self.now,
        }
        return turn, user_message


def _check_same(turn: Turn, fingerprint: str) -> Turn:
    if turn.request_fingerprint != fingerprint:
        raise ValidationFailed(
            "This Idempotency-Key was used with a different request.",
            code="idempotency_key_reused",
            param="Idempotency-Key",
        )
    return turn


def _in_progress(turn_id: str) -> Conflict:
    return Conflict(
        "A turn is already in progress in this session; wait for it to finish or cancel it.",
        code="turn_in_progress",
        param=turn_id,
    )


async def _after_conflict(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    principal: Principal,
    session_id: str,
    key: str | None,
    fingerprint: str,
    limited: RateLimited | PaymentRequired | None = None,
) -> StartedTurn:
    """Why a start wrote nothing, in this order: the turn an Idempotency-Key already started (a replay), a
    busy session (409), then the limit that stopped it, if one did."""
    async with sessionmaker() as db, db.begin():
        session = await sessions_repo.get_owned_session(db, user_id=principal.user_id, session_id=session_id)
        if session is None:
            raise NotFound(f"No session with id '{session_id}'.", code="session_not_found", param="session_id")
        replayed = await _replayed_start(db, user_id=principal.user_id, key=key, fingerprint=fingerprint)
        if replayed is not None:
            return replayed
        running = await turns_repo.find_open(db, session_id=session_id)
        if running is None and limited is not None:
            raise limited
        raise _in_progress(running.id if running else "unknown")


async def _replayed_start(db: AsyncSession, *, user_id: str, key: str | None, fingerprint: str) -> StartedTurn | None:
    """The turn this Idempotency-Key already started, as a replay (a different request under it: 409)."""
    if key is None:
        return None
    existing = await turns_repo.find_by_idempotency_key(db, user_id=user_id, key=key)
    return None if existing is None else StartedTurn(_check_same(existing, fingerprint), replayed=True)


async def get_turn(db: AsyncSession, *, principal: Principal, session_id: str, turn_id: str) -> Turn:
    turn = await turns_repo.get_owned_turn(db, user_id=principal.user_id, session_id=session_id, turn_id=turn_id)
    if turn is None:
        raise NotFound(f"No turn with id '{turn_id}' in this session.", code="turn_not_found", param="turn_id")
    return turn


async def list_turns(
    db: AsyncSession, *, principal: Principal, session_id: str, limit: int, after: str | None, order: Order
) -> Page[Turn]:
    session = await sessions_repo.get_owned_session(db, user_id=principal.user_id, session_id=session_id)
    if session is None:
        raise NotFound(f"No session with id '{session_id}'.", code="session_not_found", param="session_id")
    return await turns_repo.list_turns(db, session_id=session_id, limit=limit, after=after, order=order)


async def request_cancel(
    sessionmaker: async_sessionmaker[AsyncSession], *, principal: Principal, session_id: str, turn_id: str
) -> Turn:
    """Record the cancel on the turn, so whichever process runs it honours it."""
    async with sessionmaker() as db, db.begin():
        turn = await get_turn(db, principal=principal, session_id=session_id, turn_id=turn_id)
        await turns_repo.request_cancel(db, turn_id=turn.id, at=utcnow())
        return turn


async def load_turn(sessionmaker: async_sessionmaker[AsyncSession], turn_id: str) -> Turn | None:
    async with sessionmaker() as db:
        return await turns_repo.get_turn(db, turn_id)


def iso(moment: dt.datetime) -> str:
    """ISO 8601 in UTC with a Z, as pydantic writes the other objects' timestamps."""
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def render_turn(turn: Turn, *, stream_url: str | None) -> dict[str, Any]:
    """The contract's Turn object, as plain JSON-ready data (shared by the API and the event stream)."""
    return {
        "id": turn.id,
        "object": "turn",
        "session_id": turn.session_id,
        "status": turn.status,
        "input": turn.input,
        "output_text": turn.output_text,
        "response_ids": list(turn.response_ids or []),
        "usage": turn.usage,
        "cost_usd": f"{turn.cost_usd:.8f}" if turn.cost_usd is not None else None,
        "error": turn.error,
        "required_action": turn.required_action,
        "metadata": turn.metadata_ or {},
        "created_at": iso(turn.created_at),
        "completed_at": iso(turn.completed_at) if turn.completed_at else None,
        "ttft_ms": turn.ttft_ms,
        "duration_ms": turn.duration_ms,
        "stream_url": stream_url,
    }


@dataclass(frozen=True, slots=True)
class ToolOutput:
    call_id: str
    output: str


async def continue_turn(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    settings: Settings,
    principal: Principal,
    session_id: str,
    turn_id: str,
    outputs: list[ToolOutput],
    runner_id: str,
) -> tuple[Turn, dict[str, Any]]:
    """The client answered the function calls of a turn in requires_action: claim the turn back for this
    process and return the next upstream body (only the new function_call_output items)."""
    async with sessionmaker() as db, db.begin():
        turn = await get_turn(db, principal=principal, session_id=session_id, turn_id=turn_id)
        if turn.status != "requires_action" or not turn.required_action:
            raise Conflict(
                f"The turn is {turn.status}, not waiting for tool outputs.", code="turn_not_waiting", param=turn.id
            )
        expected = [call["call_id"] for call in turn.required_action.get("tool_calls", [])]
        given = [output.call_id for output in outputs]
        if sorted(given) != sorted(expected):
            missing = sorted(set(expected) - set(given))
            unknown = sorted(set(given) - set(expected))
            raise ValidationFailed(
                f"tool_outputs must answer exactly the required calls (missing: {missing or 'none'}; "
                f"unknown or repeated: {unknown or ('repeated' if len(given) != len(set(given)) else 'none')}).",
                param="tool_outputs",
                code="tool_outputs_mismatch",
            )
        user = await users_repo.lock_user(db, principal.user_id)
        if user is None:
            raise NotFound("Unknown user.", code="user_not_found")
        await check_turn_budget(
            db, settings=settings, user_id=user.id, user_budget=user.monthly_budget_usd, now=utcnow()
        )
        items = [
            *(turn.pending_tool_outputs or []),
            *(
                {"type": "function_call_output", "call_id": output.call_id, "output": output.output}
                for output in outputs
            ),
        ]
        if not await turns_repo.resume_waiting_turn(db, turn_id=turn.id, runner_id=runner_id):
            raise Conflict("The turn was answered or cancelled meanwhile.", code="turn_not_waiting", param=turn.id)
        await db.refresh(turn)
        return turn, {**turn.request, "input": items}


async def cancel_waiting_turn(
    sessionmaker: async_sessionmaker[AsyncSession],
    upstream: openai.AsyncOpenAI,
    *,
    turn: Turn,
    conversation_id: str,
) -> Turn:
    """Cancel a turn that waits for tool outputs: close its open function calls in the conversation (so the
    session can go on) and store it as cancelled."""
    calls = (turn.required_action or {}).get("tool_calls", [])
    items = [
        *(turn.pending_tool_outputs or []),
        *(
            {"type": "function_call_output", "call_id": call["call_id"], "output": '{"error": "cancelled by the user"}'}
            for call in calls
            if call["call_id"] not in {item["call_id"] for item in turn.pending_tool_outputs or []}
        ),
    ]
    if items:
        await add_items(upstream, conversation_id, items)
    async with sessionmaker() as db, db.begin():
        await turns_repo.cancel_waiting_turn(db, turn_id=turn.id, at=utcnow())
        refreshed = await turns_repo.get_turn(db, turn.id)
    assert refreshed is not None
    return refreshed
