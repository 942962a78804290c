"""Turns: send a message and stream the answer, resume a stream, list, read and cancel turns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials

from app.api.deps import DbDep, ListDep, StateDep, UserDep, bearer_scheme
from app.api.routes.common import SessionId, TurnId, errors, list_response
from app.api.schemas import ListResponse
from app.api.sse_response import event_stream_response
from app.api.turn_schemas import MessageCreate, ToolOutputsCreate, TurnRead
from app.db.models import TURN_IN_FLIGHT_STATUSES, Turn
from app.errors import InvalidRequest, ServiceUnavailable, ValidationFailed, shutting_down
from app.services import sessions as sessions_service
from app.services import turns as turns_service
from app.services.auth import Principal
from app.state import AppState
from app.streaming.event_log import LogReader
from app.streaming.outcome import TERMINAL_EVENT_OF_STATUS
from app.streaming.runner import PriorTurn, TurnJob, wait_for
from app.streaming.sse import RETRY_MS, encode_frame

router = APIRouter(prefix="/v1/sessions/{session_id}", tags=["turns"], responses=errors(401, 404, 422))

SSE_DESCRIPTION = (
    "`text/event-stream`: `turn.created`, then every upstream Responses event verbatim (event name = upstream "
    "`type`), then exactly one of `turn.completed`, `turn.incomplete`, `turn.failed`, `turn.cancelled`, "
    "`turn.requires_action`. Every event has an `id` (1, 2, 3 … within the turn); `: ping` comments keep the "
    "connection alive."
)
STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The turn's events (stream: true) or the finished Turn (stream: false).",
        "content": {
            "text/event-stream": {
                "schema": {"type": "string"},
                "example": "id: 1\nevent: turn.created\ndata: {...}\n\n",
            }
        },
    }
}
POLL_INTERVAL_S = 0.5


def _idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= 255 or not all(0x20 < ord(c) < 0x7F for c in value):
        raise InvalidRequest(
            "Idempotency-Key must be 1-255 printable ASCII characters.",
            code="invalid_idempotency_key",
            param="Idempotency-Key",
        )
    return value


def _stream_url(request: Request, state: AppState, turn: Turn) -> str:
    token = state.stream_tokens.issue(user_id=turn.user_id, session_id=turn.session_id, turn_id=turn.id)
    base = (state.settings.public_base_url or str(request.base_url)).rstrip("/")
    return f"{base}/v1/sessions/{turn.session_id}/turns/{turn.id}/events?token={token}"


@router.post(
    "/messages",
    responses={**STREAM_RESPONSES, **errors(400, 402, 409, 413, 415, 429, 502, 503, 504)},
    response_model=TurnRead,
    summary="Send a message; stream the answer",
    description="Sends the user's message upstream with the session's prompt and conversation. " + SSE_DESCRIPTION,
)
async def send_message(
    session_id: SessionId,
    body: MessageCreate,
    request: Request,
    state: StateDep,
    user: UserDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=1000)] = None,
) -> Response:
    settings = state.settings
    payload = body.input_payload()
    if isinstance(payload, str):
        if not payload.strip():
            raise ValidationFailed("The message is empty.", param="input")
        if len(payload) > settings.max_message_chars:
            raise ValidationFailed(
                f"The message is longer than {settings.max_message_chars} characters.",
                param="input",
                code="message_too_long",
            )
    if not state.runner.accepting:
        raise shutting_down()
    turn_request = turns_service.TurnRequest(
        input=payload,
        prompt=body.prompt.model_dump(exclude_none=True) if body.prompt else None,
        prompt_variables=body.prompt_variables,
        model=body.model,
        metadata=body.metadata or {},
        stream=body.stream,
        tools=[tool.model_dump(exclude_none=True) for tool in body.tools or []],
    )
    started_at = time.monotonic()
    # The turn's stream URL (a signed token) and its rendering for `turn.created`, made while the database
    # writes the turn: they would otherwise add their time to the first token's.
    announced: dict[str, tuple[str, dict[str, Any]]] = {}

    def announce(turn: Turn) -> None:
        stream_url = _stream_url(request, state, turn)
        announced[turn.id] = (stream_url, turns_service.render_turn(turn, stream_url=stream_url))

    started = await turns_service.start_turn(
        state.sessionmaker,
        settings=settings,
        principal=user,
        session_id=session_id,
        request=turn_request,
        idempotency_key=_idempotency_key(idempotency_key),
        runner_id=state.runner.id,
        server_tools=state.tools.definitions(),
        while_writing=announce,
    )
    turn = started.turn
    if started.replayed:
        return await _replay(state, turn, stream=body.stream, stream_url=_stream_url(request, state, turn))
    if turn.id not in announced:
        announce(turn)
    stream_url, created_turn = announced[turn.id]
    job = TurnJob(
        turn_id=turn.id,
        session_id=turn.session_id,
        user_id=turn.user_id,
        upstream_body=turn.request,
        created_turn=created_turn,
        stream_url=stream_url,
        started_at=started_at,
    )
    handle = state.runner.spawn(job)
    # Failures before the upstream's first byte become this request's HTTP status.
    await handle.wait_opened()
    if body.stream:
        return event_stream_response(handle.log.reader(0), settings, state.metrics)
    return JSONResponse(await wait_for(handle.done))


async def _replay(state: AppState, turn: Turn, *, stream: bool, stream_url: str) -> Response:
    """The same Idempotency-Key and body again: the same turn, no second upstream call."""
    handle = state.runner.handle(turn.id)
    if not stream:
        if handle is not None:
            return JSONResponse(await wait_for(handle.done))
        final = await _wait_until_final(state, turn.id)
        return JSONResponse(turns_service.render_turn(final, stream_url=stream_url))
    return event_stream_response(_events_after(state, turn, 0), state.settings, state.metrics)


async def _wait_until_final(state: AppState, turn_id: str, timeout_s: float | None = None) -> Turn:
    """For a turn run by another process: watch its row until it ends."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        turn = await turns_service.load_turn(state.sessionmaker, turn_id)
        if turn is None:
            raise ServiceUnavailable("The turn disappeared.", code="turn_missing")
        if turn.status not in TURN_IN_FLIGHT_STATUSES or (deadline is not None and time.monotonic() > deadline):
            return turn
        await asyncio.sleep(POLL_INTERVAL_S)


def _events_after(state: AppState, turn: Turn, after: int) -> LogReader | AsyncIterator[bytes]:
    """Replay from the in-memory log when this process has it; otherwise from the stored turn (its
    terminal event, once the turn has ended)."""
    log = state.logs.get(turn.id)
    if log is not None:
        return log.reader(after)
    return _stored_events_after(state, turn, after)


async def _stored_events_after(state: AppState, turn: Turn, after: int) -> AsyncIterator[bytes]:
    final = turn
    while final.status in TURN_IN_FLIGHT_STATUSES:
        # Run by another process: watch its row as `_wait_until_final` does, but not past this process's
        # shutdown (no runner here ends the stream then); the browser resumes from another replica.
        if not state.runner.accepting:
            return
        await asyncio.sleep(POLL_INTERVAL_S)
        loaded = await turns_service.load_turn(state.sessionmaker, turn.id)
        if loaded is None:
            raise ServiceUnavailable("The turn disappeared.", code="turn_missing")
        final = loaded
    # A turn reconciled after its process died has no stored event count: number its terminal event after
    # whatever the client saw, so a resuming browser still gets it.
    terminal_id = final.last_event_id or after + 1
    if after < terminal_id:
        name = TERMINAL_EVENT_OF_STATUS.get(final.status, "turn.failed")
        rendered = turns_service.render_turn(final, stream_url=None)
        yield encode_frame(terminal_id, name, orjson.dumps({"turn": rendered}), retry_ms=RETRY_MS)


async def stream_principal(
    session_id: SessionId,
    turn_id: TurnId,
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    token: Annotated[str | None, Query(max_length=4096, description="The token from `turn.stream_url`.")] = None,
) -> Principal:
    """A bearer credential, or the stream token of exactly this turn (for EventSource)."""
    if token is not None and credentials is None:
        user_id = state.stream_tokens.verify(token, session_id=session_id, turn_id=turn_id)
        return Principal(user_id=user_id, name="", via="stream_token")
    return await state.authenticator.authenticate(credentials.credentials if credentials else None)


def _last_event_id(header: str | None, query: str | None) -> int:
    raw = header if header is not None else query
    if raw is None or raw == "":
        return 0
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        raise InvalidRequest(
            "Last-Event-ID must be an event id of this turn (a whole number).",
            code="invalid_last_event_id",
            param="Last-Event-ID",
        )
    return int(raw)


@router.get(
    "/turns/{turn_id}/events",
    responses={
        **STREAM_RESPONSES,
        **errors(400),
        204: {"description": "The turn has ended and nothing is after Last-Event-ID."},
    },
    response_class=Response,
    summary="Attach to a turn's events (resume)",
    description="Sends every event after `Last-Event-ID` (header or `last_event_id` query) exactly once and in "
    "order, then the live ones. Works during the turn, for the resume window after it, and from the stored "
    "turn (its terminal event) after that. " + SSE_DESCRIPTION,
)
async def stream_turn_events(
    session_id: SessionId,
    turn_id: TurnId,
    state: StateDep,
    principal: Annotated[Principal, Depends(stream_principal)],
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)] = None,
    last_event_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    after = _last_event_id(last_event_id_header, last_event_id)
    # Its own short transaction: no database connection is held while the stream is open.
    async with state.sessionmaker() as db:
        turn = await turns_service.get_turn(db, principal=principal, session_id=session_id, turn_id=turn_id)
    log = state.logs.get(turn.id)
    if log is not None and log.closed and after >= len(log):
        return Response(status_code=204)
    if (
        log is None
        and turn.status not in TURN_IN_FLIGHT_STATUSES
        and turn.last_event_id is not None
        and after >= turn.last_event_id
    ):
        return Response(status_code=204)
    return event_stream_response(_events_after(state, turn, after), state.settings, state.metrics)


@router.get("/turns", summary="List the session's turns")
async def list_turns(
    session_id: SessionId, request: Request, db: DbDep, state: StateDep, user: UserDep, page: ListDep
) -> ListResponse[TurnRead]:
    result = await turns_service.list_turns(
        db, principal=user, session_id=session_id, limit=page.limit, after=page.after, order=page.order or "desc"
    )
    data = [turns_service.render_turn(t, stream_url=_stream_url(request, state, t)) for t in result.items]
    return list_response(data, result.has_more, TurnRead.model_validate, lambda t: t.id)


@router.get("/turns/{turn_id}", summary="Read one turn")
async def get_turn(
    session_id: SessionId, turn_id: TurnId, request: Request, db: DbDep, state: StateDep, user: UserDep
) -> TurnRead:
    turn = await turns_service.get_turn(db, principal=user, session_id=session_id, turn_id=turn_id)
    return TurnRead.model_validate(turns_service.render_turn(turn, stream_url=_stream_url(request, state, turn)))


@router.post("/turns/{turn_id}/cancel", summary="Cancel a running turn", responses=errors(503))
async def cancel_turn(
    session_id: SessionId, turn_id: TurnId, request: Request, state: StateDep, user: UserDep
) -> TurnRead:
    """Stops the upstream stream, keeps the partial answer and its usage, and ends every listener's
    stream with `turn.cancelled`. A turn that already ended is returned as it is."""
    turn = await turns_service.request_cancel(
        state.sessionmaker, principal=user, session_id=session_id, turn_id=turn_id
    )
    if turn.status == "requires_action":
        async with state.sessionmaker() as db:
            session = await sessions_service.get_session(db, principal=user, session_id=session_id)
        turn = await turns_service.cancel_waiting_turn(
            state.sessionmaker, state.upstream, turn=turn, conversation_id=session.conversation_id
        )
    stream_url = _stream_url(request, state, turn)
    handle = state.runner.handle(turn.id)
    if handle is not None and state.runner.cancel(turn.id):
        try:
            final = await asyncio.wait_for(wait_for(handle.done), timeout=state.settings.cancel_wait_s)
            return TurnRead.model_validate({**final, "stream_url": stream_url})
        except TimeoutError:
            pass
    current = (
        turn
        if turn.status not in TURN_IN_FLIGHT_STATUSES
        else await _wait_until_final(state, turn.id, timeout_s=state.settings.cancel_wait_s)
    )
    return TurnRead.model_validate(turns_service.render_turn(current, stream_url=stream_url))


@router.post(
    "/turns/{turn_id}/tool_outputs",
    responses={**STREAM_RESPONSES, **errors(400, 402, 409, 413, 415, 429, 502, 503, 504)},
    response_model=TurnRead,
    summary="Answer the function calls of a turn in requires_action",
    description="Sends the outputs of the calls in `turn.required_action` upstream and streams the rest of the "
    "turn: its event ids continue after `turn.requires_action`. " + SSE_DESCRIPTION,
)
async def submit_tool_outputs(
    session_id: SessionId, turn_id: TurnId, body: ToolOutputsCreate, request: Request, state: StateDep, user: UserDep
) -> Response:
    if not state.runner.accepting:
        raise shutting_down()
    started_at = time.monotonic()
    turn, upstream_body = await turns_service.continue_turn(
        state.sessionmaker,
        settings=state.settings,
        principal=user,
        session_id=session_id,
        turn_id=turn_id,
        outputs=[turns_service.ToolOutput(call_id=o.call_id, output=o.output) for o in body.tool_outputs],
        runner_id=state.runner.id,
    )
    stream_url = _stream_url(request, state, turn)
    rendered = turns_service.render_turn(turn, stream_url=stream_url)
    job = TurnJob(
        turn_id=turn.id,
        session_id=turn.session_id,
        user_id=turn.user_id,
        upstream_body=upstream_body,
        created_turn=rendered,
        stream_url=stream_url,
        started_at=started_at,
        prior=PriorTurn(
            text=turn.output_text,
            response_ids=list(turn.response_ids or []),
            usage=turn.usage,
            cost_usd=str(turn.cost_usd) if turn.cost_usd is not None else None,
            last_event_id=turn.last_event_id or 0,
        ),
    )
    handle = state.runner.continue_turn(job)
    await handle.wait_opened()
    if body.stream:
        return event_stream_response(handle.log.reader(turn.last_event_id or 0), state.settings, state.metrics)
    return JSONResponse(await wait_for(handle.done))
