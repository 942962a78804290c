"""Turns: starting one (a short transaction) and handing it to the runner, its events, reading and cancelling."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import openai
import orjson
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.base import utcnow
from app.db.ids import new_id
from app.db.models import TURN_IN_FLIGHT_STATUSES, Turn
from app.errors import (
    Conflict,
    NotFound,
    PayloadTooLarge,
    PaymentRequired,
    RateLimited,
    ServiceUnavailable,
    ValidationFailed,
    shutting_down,
)
from app.repositories import branch_repository as branches_repo
from app.repositories import session_repository as sessions_repo
from app.repositories import turn_repository as turns_repo
from app.repositories import user_repository as users_repo
from app.repositories.pagination import Order, Page
from app.repositories.session_repository import SessionForTurn
from app.services import branch_service, file_service
from app.services.auth import Principal
from app.services.branch_service import BranchStart
from app.services.limits import (
    check_round_budget,
    check_turn_allowed,
    limits_apply,
)
from app.services.policy import check_model, check_options, check_prompt, check_tools
from app.services.reservations import RoundCosts
from app.services.server_tools import ServerTools
from app.services.stream_tokens import StreamTokens
from app.settings import Settings
from app.streaming.event_log import EventLogRegistry
from app.streaming.frames import PING, RETRY_MS, encode_frame
from app.streaming.outcome import TERMINAL_EVENT_OF_STATUS
from app.streaming.redis_log import RedisEventLogs, SharedLogUnavailable
from app.streaming.turn_runner import PriorTurn, TurnHandle, TurnJob, TurnRunner, next_round_body, wait_for
from app.upstream.conversations import add_items

logger = logging.getLogger(__name__)

# How often a turn run by another process is looked at, by a request that waits for it.
POLL_INTERVAL_S = 0.5


@dataclass(frozen=True, slots=True)
class TurnRequest:
    """A validated `POST …/messages` body."""

    input: str | list[dict[str, Any]]
    prompt: dict[str, Any] | None = None
    prompt_variables: dict[str, str] | None = None
    model: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    stream: bool = True
    # Function tools the client declares and answers itself (handed over with turn.requires_action), and the
    # upstream's built-in tools the deployment allows.
    tools: list[dict[str, Any]] = field(default_factory=list)
    # Responses options for this turn, over the session's.
    options: dict[str, Any] = field(default_factory=dict)

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
            "options": self.options,
        }
        return hashlib.sha256(json_bytes(payload, sort_keys=True)).hexdigest()


def json_bytes(value: Any, *, sort_keys: bool = False) -> bytes:
    """Compact JSON. Integers beyond 64 bits are valid JSON that orjson refuses: those bodies go through the
    standard library (which writes everything else the same way)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else None)
    except TypeError:
        return json.dumps(value, sort_keys=sort_keys, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class StartedTurn:
    turn: Turn
    replayed: bool  # an earlier request with the same Idempotency-Key made this turn
    # The session's first turn, the session untitled: titled once the turn ends (`services.titles`).
    title_wanted: bool = False


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


def input_items(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A user message's `items`: its input content parts, in order (text as `input_text`)."""
    if isinstance(value, str):
        return [{"type": "input_text", "text": value}]
    parts: list[dict[str, Any]] = []
    for item in value:
        content = item.get("content")
        if isinstance(content, str):
            parts.append({"type": "input_text", "text": content})
        elif isinstance(content, list):
            parts.extend(part for part in content if isinstance(part, dict))
    return parts


def check_input(settings: Settings, value: str | list[dict[str, Any]]) -> None:
    """A message's input before anything is stored or sent: not empty, and all of its text
    (a string, or every message's string content and input_text parts together) within the limit."""
    if isinstance(value, str):
        if not value.strip():
            raise ValidationFailed("The message is empty.", param="input")
        chars = len(value)
    else:
        chars = 0
        for item in value:
            content = item.get("content")
            if isinstance(content, str):
                chars += len(content)
                continue
            for part in content if isinstance(content, list) else []:
                if part.get("type") == "input_text":
                    chars += len(str(part.get("text", "")))
    limit = settings.max_message_chars
    if chars > limit:
        raise ValidationFailed(
            f"The message is too long: its text may be at most {limit:,} characters in all, and it has {chars:,}.",
            param="input",
            code="message_too_long",
        )


def check_upstream_body(settings: Settings, body: dict[str, Any]) -> None:
    """The whole body of an upstream call within its bound (a turn's upstream request repeats the session's
    prompt and tools, so it can outgrow the request that made it)."""
    size = len(json_bytes(body))
    limit = settings.max_upstream_body_bytes
    if size > limit:
        raise PayloadTooLarge(
            f"This would send {size:,} bytes to the model, more than this deployment's limit of {limit:,} bytes; "
            "send less text or smaller files (the session's prompt counts too)."
        )


# The names of Parley's own tools a turn may use, for its prompt id and its session's list (None: all).
AllowedServerTools = Callable[[str | None, list[str] | None], frozenset[str] | None]


def resolve_upstream_body(
    settings: Settings,
    *,
    session: SessionForTurn,
    request: TurnRequest,
    principal: Principal,
    turn_id: str,
    server_tools: list[dict[str, Any]],
    allowed_server_tools: AllowedServerTools | None = None,
) -> dict[str, Any]:
    """prompt, model, options and tools: message overrides → session → deployment default. Of Parley's own
    `server_tools`, the body carries those the turn's prompt and the session allow (`allowed_server_tools`)."""
    check_model(settings, request.model)
    check_options(settings, request.options)
    check_tools(settings, request.tools)
    # The session's tools, then the message's (a message's function of the same name replaces the session's).
    # What a session stored and the deployment has since stopped allowing is left out, not refused.
    message_functions = {tool["name"] for tool in request.tools if tool.get("type") == "function"}
    client_tools = [
        *(
            tool
            for tool in session.tools
            if tool.get("name") not in message_functions
            and (tool.get("type") == "function" or tool.get("type") in settings.allowed_builtin_tools)
        ),
        *request.tools,
    ]
    session_options: dict[str, Any] = {
        name: value for name, value in session.options.items() if name in settings.allowed_options
    }
    server_names = {tool["name"] for tool in server_tools}
    clashes = sorted(server_names & {tool["name"] for tool in client_tools if tool.get("type") == "function"})
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
    if allowed_server_tools is not None:
        allowed = allowed_server_tools(prompt["id"] if prompt else None, session.server_tools)
        if allowed is not None:
            server_tools = [tool for tool in server_tools if tool["name"] in allowed]
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
    if settings.upstream_background:
        # Kept with the turn's request, so whoever finishes the turn knows it may re-attach or cancel upstream.
        body["background"] = True
    if settings.keep_reasoning:
        body["include"] = ["reasoning.encrypted_content"]
    tools = [*server_tools, *client_tools]
    if tools:
        body["tools"] = tools
    # Options by their Responses names: the deployment's truncation, then the session's, then the message's.
    body.update({"truncation": settings.default_truncation, **session_options, **request.options})
    model = request.model or session.model
    if prompt is not None:
        body["prompt"] = prompt
        if model:
            body["model"] = model
    else:
        body["model"] = model or settings.default_model
        body["instructions"] = settings.default_instructions
    check_upstream_body(settings, body)
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
    server_tools: list[dict[str, Any]],
    costs: RoundCosts,
    allowed_server_tools: AllowedServerTools | None = None,
    branch: BranchStart | None = None,
    fingerprint_scope: str | None = None,
    fingerprint: str | None = None,
) -> StartedTurn:
    """Limits, the turn row and the user message, in one short transaction before anything goes upstream. A
    `branch` turn first makes its path the active branch and its conversation the session's.

    When a limit counts, the owner's row is locked first, so that one user's concurrent starts, on any
    replica, are counted one after the other (`limits.check_turn_allowed`); under a budget the turn row holds
    what its first round may cost (`reservations`), which the starts after it count. One turn in flight per session
    and one turn per Idempotency-Key are the unique indexes' job: a start that loses either race, or that a
    limit stops, writes nothing, and `_after_conflict` says why (a replay of the same request included).
    """
    fingerprint = fingerprint or request.fingerprint(fingerprint_scope or session_id)
    now = utcnow()
    try:
        async with sessionmaker() as db, db.begin():
            session = await sessions_repo.get_owned_session_for_turn(
                db, user_id=principal.user_id, session_id=session_id, lock_user=limits_apply(settings)
            )
            if session is None:
                raise _session_not_found(session_id)
            if branch is not None:
                session = dataclasses.replace(session, conversation_id=branch.conversation_id)
            turn_id = new_id("turn")
            # Parley file ids go upstream as their upstream copies'; the message keeps them (one read, and only
            # for an input that names files).
            items, sent = input_items(request.input), request
            if file_service.has_file_ids(request.input):
                upstream_input, items = await file_service.resolve_file_ids(
                    db, user_id=principal.user_id, value=request.input
                )
                sent = dataclasses.replace(request, input=upstream_input)
            body = resolve_upstream_body(
                settings,
                session=session,
                request=sent,
                principal=principal,
                turn_id=turn_id,
                server_tools=server_tools,
                allowed_server_tools=allowed_server_tools,
            )
            text = input_text(request.input)
            reserved = await check_turn_allowed(
                db,
                settings=settings,
                user_id=principal.user_id,
                user_budget=session.owner_budget_usd,
                now=now,
                reservation=lambda: costs.first_round(db, session_id=session_id, body=body, text=text),
            )
            message_id = branch.message_id if branch is not None and branch.message_id else new_id("msg")
            turn = Turn(
                id=turn_id,
                session_id=session_id,
                user_id=principal.user_id,
                status="in_progress",
                message_id=message_id,
                input=request.input,
                request=body,
                metadata_=request.metadata,
                output_text="",
                response_ids=[],
                idempotency_key=idempotency_key,
                request_fingerprint=fingerprint,
                runner_id=runner_id,
                reserved_usd=reserved,
                created_at=now,
            )
            user_message = {
                "id": message_id,
                "session_id": session_id,
                "turn_id": turn_id,
                "role": "user",
                "content": text,
                "status": "completed",
                "items": items,
                "conversation_id": session.conversation_id,
                "created_at": now,
            }
            if branch is None:
                await turns_repo.insert_started_turn(db, turn, user_message=user_message)
            else:
                await branches_repo.make_active(
                    db,
                    session_id=session_id,
                    path_ids=branch.path_ids,
                    conversation_id=branch.conversation_id,
                    at=now,
                )
                await branches_repo.add_conversation(
                    db, session_id=session_id, conversation_id=branch.conversation_id, at=now
                )
                new_message = None
                if branch.message_id is None:
                    new_message = {**user_message, "parent_id": branch.path_ids[-1] if branch.path_ids else None}
                await turns_repo.insert_branch_turn(db, turn, user_message=new_message)
        return StartedTurn(turn, replayed=False, title_wanted=session.title_wanted)
    except IntegrityError:
        limited = None
    except (RateLimited, PaymentRequired) as error:
        limited = error
    return await _after_conflict(
        sessionmaker,
        principal=principal,
        session_id=session_id,
        key=idempotency_key,
        fingerprint=fingerprint,
        limited=limited,
    )


def _session_not_found(session_id: str) -> NotFound:
    return NotFound(f"No session with id '{session_id}'.", code="session_not_found", param="session_id")


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
            raise _session_not_found(session_id)
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


async def rate_turn(
    db: AsyncSession, *, principal: Principal, session_id: str, turn_id: str, rating: str | None, comment: str | None
) -> Turn:
    """Store what the person thought of a turn's answer, in place of what they said before (no rating and no
    comment takes it back); any turn of theirs, in flight or not. Returns the turn as it is now."""
    turn = await get_turn(db, principal=principal, session_id=session_id, turn_id=turn_id)
    said = rating is not None or bool(comment)
    turn.feedback_rating, turn.feedback_comment = rating, comment or None
    turn.feedback_updated_at = utcnow() if said else None
    await db.flush()
    return turn


async def list_turns(
    db: AsyncSession, *, principal: Principal, session_id: str, limit: int, after: str | None, order: Order
) -> Page[Turn]:
    session = await sessions_repo.get_owned_session(db, user_id=principal.user_id, session_id=session_id)
    if session is None:
        raise _session_not_found(session_id)
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
        "message_id": turn.message_id,
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
        "feedback": (
            {
                "rating": turn.feedback_rating,
                "comment": turn.feedback_comment,
                "updated_at": iso(turn.feedback_updated_at),
            }
            if turn.feedback_updated_at is not None
            else None
        ),
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
    costs: RoundCosts,
) -> tuple[Turn, dict[str, Any]]:
    """The client answered the function calls of a turn in requires_action: claim the turn back for this
    process and return the next upstream body (only the new function_call_output items). Under a budget, the
    round reserves what it may cost, or the answer is 402 and the turn keeps waiting."""
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
            repeated = "some repeated" if len(given) != len(set(given)) else "none"
            raise ValidationFailed(
                f"tool_outputs must answer exactly the required calls (missing: {', '.join(missing) or 'none'}; "
                f"unknown or repeated: {', '.join(unknown) or repeated}).",
                param="tool_outputs",
                code="tool_outputs_mismatch",
            )
        user = await users_repo.lock_user(db, principal.user_id)
        if user is None:
            raise NotFound("Unknown user.", code="user_not_found")
        items = [
            *(turn.pending_tool_outputs or []),
            *(
                {"type": "function_call_output", "call_id": output.call_id, "output": output.output}
                for output in outputs
            ),
        ]
        body = next_round_body(turn.request, items)
        check_upstream_body(settings, body)
        reserved = await check_round_budget(
            db,
            settings=settings,
            user_id=user.id,
            user_budget=user.monthly_budget_usd,
            now=utcnow(),
            reservation=lambda: costs.after_tool_outputs(
                db, session_id=session_id, body=body, outputs=[str(item.get("output", "")) for item in items]
            ),
            what="answering these tool outputs",
        )
        if not await turns_repo.resume_waiting_turn(db, turn_id=turn.id, runner_id=runner_id, reserved_usd=reserved):
            raise Conflict("The turn was answered or cancelled meanwhile.", code="turn_not_waiting", param=turn.id)
        await db.refresh(turn)
        return turn, body


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


@dataclass(frozen=True, slots=True)
class TurnReply:
    """What a request that runs a turn gets: its frames to stream, or the finished turn."""

    frames: AsyncGenerator[bytes, None] | None = None
    turn: dict[str, Any] | None = None


def _job(
    turn: Turn,
    *,
    upstream_body: dict[str, Any],
    stream_url: str,
    started_at: float,
    prior: PriorTurn | None = None,
    title_wanted: bool = False,
) -> TurnJob:
    """What the runner needs to run `turn` (its first round, or the next after tool outputs: `prior`)."""
    return TurnJob(
        turn_id=turn.id,
        session_id=turn.session_id,
        user_id=turn.user_id,
        upstream_body=upstream_body,
        created_turn=render_turn(turn, stream_url=stream_url),
        stream_url=stream_url,
        started_at=started_at,
        prior=prior,
        budgeted=turn.reserved_usd is not None,
        title_wanted=title_wanted,
    )


class TurnService:
    """What the turn routes ask for: a turn started and handed to the runner, its events, its cancel."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        runner: TurnRunner,
        logs: EventLogRegistry,
        stream_tokens: StreamTokens,
        server_tools: ServerTools,
        upstream: openai.AsyncOpenAI,
        costs: RoundCosts,
        shared_logs: RedisEventLogs | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.runner = runner
        self.logs = logs
        self.stream_tokens = stream_tokens
        self.server_tools = server_tools
        self.upstream = upstream
        self.costs = costs
        # Every replica's turn logs, on Redis: resumes of turns this process does not run read them.
        self.shared_logs = shared_logs

    def stream_url(self, turn: Turn, *, base_url: str, principal: Principal) -> str:
        """The turn's `/events` URL with a token for exactly this turn, for a browser's EventSource; made for
        `principal`, it works only as long as their API key does."""
        token = self.stream_tokens.issue(
            user_id=turn.user_id, session_id=turn.session_id, turn_id=turn.id, key_id=principal.key_id
        )
        base = (self.settings.public_base_url or base_url).rstrip("/")
        return f"{base}/v1/sessions/{turn.session_id}/turns/{turn.id}/events?token={token}"

    def render(self, turn: Turn, *, base_url: str, principal: Principal) -> dict[str, Any]:
        return render_turn(turn, stream_url=self.stream_url(turn, base_url=base_url, principal=principal))

    async def send_message(
        self,
        *,
        principal: Principal,
        session_id: str,
        request: TurnRequest,
        idempotency_key: str | None,
        base_url: str,
    ) -> TurnReply:
        """Start a turn and run it; the same Idempotency-Key and body again get the same turn, and no second
        upstream call."""
        if not self.runner.accepting:
            raise shutting_down()
        check_input(self.settings, request.input)
        return await self._start_and_run(principal, session_id, request, idempotency_key, base_url)

    async def edit_message(
        self,
        *,
        principal: Principal,
        session_id: str,
        message_id: str,
        request: TurnRequest,
        idempotency_key: str | None,
        base_url: str,
    ) -> TurnReply:
        """Send `request` in place of the user message `message_id`, on a new branch from just before it."""
        if not self.runner.accepting:
            raise shutting_down()
        check_input(self.settings, request.input)
        scope = f"{session_id}/edit/{message_id}"
        replayed = await self._replayed(principal, session_id, idempotency_key, request.fingerprint(scope))
        if replayed is not None:
            return await self._replay(
                replayed, stream=request.stream, stream_url=self._url(replayed, base_url, principal)
            )
        branch = await branch_service.prepare_edit(
            self.sessionmaker, self.upstream, principal=principal, session_id=session_id, message_id=message_id
        )
        return await self._start_and_run(principal, session_id, request, idempotency_key, base_url, branch, scope)

    async def regenerate(
        self,
        *,
        principal: Principal,
        session_id: str,
        turn_id: str,
        options: dict[str, Any],
        stream: bool,
        idempotency_key: str | None,
        base_url: str,
    ) -> TurnReply:
        """Answer the user message of `turn_id` again, as a new turn on a new branch (the earlier answer is kept)."""
        if not self.runner.accepting:
            raise shutting_down()
        scope = f"{session_id}/regenerate/{turn_id}"
        # The input is the turn's own: the fingerprint covers what the client chose (the options).
        fingerprint = TurnRequest(input="", options=options).fingerprint(scope)
        replayed = await self._replayed(principal, session_id, idempotency_key, fingerprint)
        if replayed is not None:
            return await self._replay(replayed, stream=stream, stream_url=self._url(replayed, base_url, principal))
        branch, original_input = await branch_service.prepare_regenerate(
            self.sessionmaker, self.upstream, principal=principal, session_id=session_id, turn_id=turn_id
        )
        request = TurnRequest(input=original_input, options=options, stream=stream)
        return await self._start_and_run(
            principal, session_id, request, idempotency_key, base_url, branch, scope, fingerprint=fingerprint
        )

    async def _replayed(self, principal: Principal, session_id: str, key: str | None, fingerprint: str) -> Turn | None:
        """The turn an Idempotency-Key already started in this session (a different request under it: 422)."""
        if key is None:
            return None
        async with self.sessionmaker() as db:
            if await sessions_repo.get_owned_session(db, user_id=principal.user_id, session_id=session_id) is None:
                raise _session_not_found(session_id)
            started = await _replayed_start(db, user_id=principal.user_id, key=key, fingerprint=fingerprint)
        return started.turn if started is not None else None

    def _url(self, turn: Turn, base_url: str, principal: Principal) -> str:
        return self.stream_url(turn, base_url=base_url, principal=principal)

    async def _start_and_run(
        self,
        principal: Principal,
        session_id: str,
        request: TurnRequest,
        idempotency_key: str | None,
        base_url: str,
        branch: BranchStart | None = None,
        scope: str | None = None,
        *,
        fingerprint: str | None = None,
    ) -> TurnReply:
        """Start a turn and run it (a replay of its Idempotency-Key gets the turn it started). A branch's
        conversation is discarded if its turn does not start."""
        started_at = time.monotonic()
        try:
            started = await start_turn(
                self.sessionmaker,
                settings=self.settings,
                principal=principal,
                session_id=session_id,
                request=request,
                idempotency_key=idempotency_key,
                runner_id=self.runner.id,
                server_tools=self.server_tools.definitions(),
                allowed_server_tools=self.server_tools.allowed_names,
                costs=self.costs,
                branch=branch,
                fingerprint_scope=scope,
                fingerprint=fingerprint,
            )
        except BaseException:
            if branch is not None:
                await branch_service.discard_conversation(self.upstream, branch.conversation_id)
            raise
        turn = started.turn
        stream_url = self.stream_url(turn, base_url=base_url, principal=principal)
        if started.replayed:
            if branch is not None:
                await branch_service.discard_conversation(self.upstream, branch.conversation_id)
            return await self._replay(turn, stream=request.stream, stream_url=stream_url)
        job = _job(
            turn,
            upstream_body=turn.request,
            stream_url=stream_url,
            started_at=started_at,
            title_wanted=started.title_wanted,
        )
        return await self._run(self.runner.spawn(job), stream=request.stream, after=0)

    async def submit_tool_outputs(
        self,
        *,
        principal: Principal,
        session_id: str,
        turn_id: str,
        outputs: list[ToolOutput],
        stream: bool,
        base_url: str,
    ) -> TurnReply:
        """The client answered a turn's function calls: the turn goes on, its event ids continuing."""
        if not self.runner.accepting:
            raise shutting_down()
        started_at = time.monotonic()
        turn, upstream_body = await continue_turn(
            self.sessionmaker,
            settings=self.settings,
            principal=principal,
            session_id=session_id,
            turn_id=turn_id,
            outputs=outputs,
            runner_id=self.runner.id,
            costs=self.costs,
        )
        stream_url = self.stream_url(turn, base_url=base_url, principal=principal)
        prior = PriorTurn(
            text=turn.output_text,
            response_ids=list(turn.response_ids or []),
            usage=turn.usage,
            cost_usd=str(turn.cost_usd) if turn.cost_usd is not None else None,
            last_event_id=turn.last_event_id or 0,
        )
        job = _job(turn, upstream_body=upstream_body, stream_url=stream_url, started_at=started_at, prior=prior)
        return await self._run(self.runner.continue_turn(job), stream=stream, after=turn.last_event_id or 0)

    async def _run(self, handle: TurnHandle, *, stream: bool, after: int) -> TurnReply:
        # Failures before the upstream's first byte are raised here, to become the request's HTTP status.
        await handle.wait_opened()
        if stream:
            return TurnReply(frames=handle.log.read(after))
        return TurnReply(turn=await wait_for(handle.done))

    async def _replay(self, turn: Turn, *, stream: bool, stream_url: str) -> TurnReply:
        if stream:
            return TurnReply(frames=self._frames_after(turn, 0, shutdown=None))
        handle = self.runner.handle(turn.id)
        if handle is not None:
            return TurnReply(turn=await wait_for(handle.done))
        final = await self._wait_until_final(turn.id)
        return TurnReply(turn=render_turn(final, stream_url=stream_url))

    async def events(
        self, *, principal: Principal, session_id: str, turn_id: str, after: int, shutdown: anyio.Event | None
    ) -> AsyncGenerator[bytes, None] | None:
        """Every event of the turn after id `after`, then the live ones; None when the turn has ended and
        nothing is left after `after`. `shutdown` is set when this server starts shutting down."""
        # Its own short transaction: no database connection is held while the stream is open.
        async with self.sessionmaker() as db:
            turn = await get_turn(db, principal=principal, session_id=session_id, turn_id=turn_id)
        log = self.logs.get(turn.id)
        # A closed log of a turn in flight again went on elsewhere (tool outputs answered on another replica):
        # with shared logs, that one's is read instead.
        if log is not None and not (
            self.shared_logs is not None and log.closed and turn.status in TURN_IN_FLIGHT_STATUSES
        ):
            return None if log.closed and after >= len(log) else log.read(after)
        if (
            turn.status not in TURN_IN_FLIGHT_STATUSES
            and turn.last_event_id is not None
            and after >= turn.last_event_id
        ):
            return None
        if self.shared_logs is not None:
            return self._shared_frames_after(turn, after, shutdown=shutdown)
        return self._stored_frames_after(turn, after, shutdown=shutdown)

    def _frames_after(self, turn: Turn, after: int, *, shutdown: anyio.Event | None) -> AsyncGenerator[bytes, None]:
        """From this process's event log when it has the turn's; otherwise from the shared one, or the stored
        turn."""
        log = self.logs.get(turn.id)
        if log is not None:
            return log.read(after)
        if self.shared_logs is not None:
            return self._shared_frames_after(turn, after, shutdown=shutdown)
        return self._stored_frames_after(turn, after, shutdown=shutdown)

    async def _shared_frames_after(
        self, turn: Turn, after: int, *, shutdown: anyio.Event | None
    ) -> AsyncGenerator[bytes, None]:
        """A turn this process does not have the log of, from its stream on Redis: every event after `after`,
        then the live ones. Whenever the stream cannot go on (Redis failing, the stream expired or missing
        frames, or quiet although the turn has ended) the rest comes from the stored turn: its terminal event."""
        assert self.shared_logs is not None
        reader = self.shared_logs.reader(turn.id, after)
        frames = reader.frames()
        reason: str | None = None
        quiet_since_end = 0
        try:
            async for chunk in frames:
                if chunk:
                    quiet_since_end = 0
                    yield chunk
                    continue
                # Nothing new for a while: stop with this server, and look at the turn.
                if not self.runner.accepting or (shutdown is not None and shutdown.is_set()):
                    return
                ended = (await self._load(turn.id)).status not in TURN_IN_FLIGHT_STATUSES
                quiet_since_end = quiet_since_end + 1 if ended else 0
                # Its stream gets the terminal event right after the turn is stored: a whole quiet read after
                # the turn was seen stored means it never will (its writes failed).
                if quiet_since_end >= 2:
                    reason = "stalled"
                    break
        except SharedLogUnavailable as unavailable:
            reason = unavailable.reason
        finally:
            await frames.aclose()
        if reason is None:
            return
        self.runner.metrics.resume_fallback(reason)
        async for chunk in self._stored_frames_after(turn, reader.position, shutdown=shutdown):
            yield chunk

    async def _stored_frames_after(
        self, turn: Turn, after: int, *, shutdown: anyio.Event | None
    ) -> AsyncGenerator[bytes, None]:
        """A turn this process does not have the log of: its terminal event once it has ended. One run by
        another process is watched until it ends, but not past this server's shutdown (the browser then
        resumes from another replica); if this process takes it over meanwhile (its process died), the rest
        comes from the log it goes on in."""
        yield PING
        final = turn
        while final.status in TURN_IN_FLIGHT_STATUSES:
            if not self.runner.accepting or (shutdown is not None and shutdown.is_set()):
                return
            await asyncio.sleep(POLL_INTERVAL_S)
            taken_over = self.logs.get(turn.id)
            if taken_over is not None:
                async for chunk in taken_over.read(after):
                    yield chunk
                return
            final = await self._load(turn.id)
        # A turn reconciled after its process died has no stored event count: its terminal event is numbered
        # after whatever the client saw, so a resuming browser still gets it.
        terminal_id = final.last_event_id or after + 1
        if after < terminal_id:
            name = TERMINAL_EVENT_OF_STATUS.get(final.status, "turn.failed")
            data = orjson.dumps({"turn": render_turn(final, stream_url=None)})
            yield encode_frame(terminal_id, name, data, retry_ms=RETRY_MS)

    async def _load(self, turn_id: str) -> Turn:
        turn = await load_turn(self.sessionmaker, turn_id)
        if turn is None:
            raise ServiceUnavailable("The turn disappeared.", code="turn_missing")
        return turn

    async def _wait_until_final(self, turn_id: str, timeout_s: float | None = None) -> Turn:
        """For a turn run by another process: watch its row until it ends (or the timeout passes)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            turn = await self._load(turn_id)
            if turn.status not in TURN_IN_FLIGHT_STATUSES or (deadline is not None and time.monotonic() > deadline):
                return turn
            await asyncio.sleep(POLL_INTERVAL_S)

    async def cancel(self, *, principal: Principal, session_id: str, turn_id: str, base_url: str) -> dict[str, Any]:
        """Stop a running turn (its partial answer and usage are kept) and return it as it ended; a turn that
        already ended is returned as it is. The cancel is recorded on the turn, so whichever process runs it
        honours it."""
        turn = await request_cancel(self.sessionmaker, principal=principal, session_id=session_id, turn_id=turn_id)
        if turn.status == "requires_action":
            async with self.sessionmaker() as db:
                session = await sessions_repo.get_owned_session(db, user_id=principal.user_id, session_id=session_id)
            if session is None:
                raise _session_not_found(session_id)
            turn = await cancel_waiting_turn(
                self.sessionmaker, self.upstream, turn=turn, conversation_id=session.conversation_id
            )
        stream_url = self.stream_url(turn, base_url=base_url, principal=principal)
        wait_s = self.settings.cancel_wait_s
        handle = self.runner.handle(turn.id)
        if handle is not None and self.runner.cancel(turn.id):
            with contextlib.suppress(TimeoutError):
                final: dict[str, Any] = await asyncio.wait_for(wait_for(handle.done), timeout=wait_s)
                return {**final, "stream_url": stream_url}
        if turn.status in TURN_IN_FLIGHT_STATUSES:
            turn = await self._wait_until_final(turn.id, timeout_s=wait_s)
        return render_turn(turn, stream_url=stream_url)
