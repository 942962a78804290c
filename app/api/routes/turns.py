"""Turns: send, edit or regenerate a message and stream the answer, resume a stream, list, read and cancel."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import WithJsonSchema

from app.api.deps import DbDep, ListDep, StateDep, TurnsDep, UserDep, bearer_scheme
from app.api.event_stream import event_stream
from app.api.routes.common import MessageId, SessionId, TurnId, errors, links, list_response
from app.api.schemas import ListResponse
from app.api.turn_schemas import FeedbackUpdate, MessageCreate, RegenerateCreate, ToolOutputsCreate, TurnRead
from app.errors import InvalidRequest
from app.services import turn_service
from app.services.auth import Principal
from app.state import AppState

router = APIRouter(prefix="/v1/sessions/{session_id}", tags=["turns"], responses=errors(401, 404, 422))

SSE_DESCRIPTION = (
    "`text/event-stream`: `turn.created`, then every upstream Responses event verbatim (event name = upstream "
    "`type`), then exactly one of `turn.completed`, `turn.incomplete`, `turn.failed`, `turn.cancelled`, "
    "`turn.requires_action`. Every event has an `id` (1, 2, 3 … within the turn); `: ping` comments keep the "
    "connection alive."
)
# One event of the stream as an SSE parser hands it over (OpenAPI 3.2's `itemSchema`, which schemathesis reads
# in 3.1 documents too): `data` is one line of JSON, and the first event carries `retry`.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[1-9][0-9]*$"},
        "event": {"type": "string", "minLength": 1},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "retry": {"type": "integer", "minimum": 0},
    },
}
STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The turn's events (stream: true) or the finished Turn (stream: false).",
        "content": {
            "text/event-stream": {
                "itemSchema": SSE_EVENT_SCHEMA,
                "example": "id: 1\nevent: turn.created\ndata: {...}\n\n",
            }
        },
    }
}
TURN = "/v1/sessions/{session_id}/turns/{turn_id}"
MESSAGE = "/v1/sessions/{session_id}/messages/{message_id}"
BY_TURN_ID = {"session_id": "$request.path.session_id", "turn_id": "$response.body#/id"}
BY_MESSAGE_ID = {"session_id": "$request.path.session_id", "message_id": "$response.body#/message_id"}
# Links of the finished Turn (stream: false); a stream carries the same ids in its `turn.created` event.
TURN_LINKS = links(
    GetTurn=("GET", TURN, BY_TURN_ID),
    TurnEvents=("GET", f"{TURN}/events", BY_TURN_ID),
    CancelTurn=("POST", f"{TURN}/cancel", BY_TURN_ID),
    SubmitToolOutputs=("POST", f"{TURN}/tool_outputs", BY_TURN_ID),
    RateTurn=("PUT", f"{TURN}/feedback", BY_TURN_ID),
    RegenerateTurn=("POST", f"{TURN}/regenerate", BY_TURN_ID),
    EditMessage=("POST", f"{MESSAGE}/edit", BY_MESSAGE_ID),
    ActivateMessage=("POST", f"{MESSAGE}/activate", BY_MESSAGE_ID),
    ForkAtMessage=(
        "POST",
        "/v1/sessions/{session_id}/fork",
        {"session_id": "$request.path.session_id"},
        {"message_id": "$response.body#/message_id"},
    ),
)
# What `_idempotency_key` and `_last_event_id` accept (they answer 400 otherwise, in plainer words than
# pydantic's), documented. A header is a string or absent, never null.
IDEMPOTENCY_KEY_SCHEMA = WithJsonSchema(
    {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$", "description": "1-255 printable ASCII characters."}
)
LAST_EVENT_ID_SCHEMA = WithJsonSchema(
    {"type": "string", "pattern": "^[0-9]{0,12}$", "description": "The id of the last event received."}
)


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


def _stream(
    frames: AsyncGenerator[bytes, None], state: AppState, principal: Principal, shutdown: anyio.Event | None = None
) -> Response:
    # A stream opened with an API key, or a stream token made with one, ends when the key is revoked.
    return event_stream(
        frames,
        settings=state.settings,
        metrics=state.metrics,
        key_streams=state.authenticator.key_streams,
        key_hash=principal.key_hash,
        shutdown=shutdown,
    )


def _reply(reply: turn_service.TurnReply, state: AppState, principal: Principal) -> Response:
    if reply.frames is not None:
        return _stream(reply.frames, state, principal)
    return JSONResponse(reply.turn)


@router.post(
    "/messages",
    responses={
        200: {**STREAM_RESPONSES[200], "links": TURN_LINKS},
        **errors(400, 402, 409, 413, 415, 429, 502, 503, 504),
    },
    response_model=TurnRead,
    summary="Send a message; stream the answer",
    description="Sends the user's message upstream with the session's prompt and conversation. " + SSE_DESCRIPTION,
)
async def send_message(
    session_id: SessionId,
    body: MessageCreate,
    request: Request,
    state: StateDep,
    turns: TurnsDep,
    user: UserDep,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", max_length=1000), IDEMPOTENCY_KEY_SCHEMA
    ] = None,
) -> Response:
    reply = await turns.send_message(
        principal=user,
        session_id=session_id,
        request=_turn_request(body),
        idempotency_key=_idempotency_key(idempotency_key),
        base_url=str(request.base_url),
    )
    return _reply(reply, state, user)


def _turn_request(body: MessageCreate) -> turn_service.TurnRequest:
    return turn_service.TurnRequest(
        input=body.input_payload(),
        prompt=body.prompt.model_dump(exclude_none=True) if body.prompt else None,
        prompt_variables=body.prompt_variables,
        model=body.model,
        metadata=body.metadata or {},
        stream=body.stream,
        tools=[tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in body.tools or []],
        options=body.options.upstream() if body.options else {},
    )


@router.post(
    "/messages/{message_id}/edit",
    responses={
        200: {**STREAM_RESPONSES[200], "links": TURN_LINKS},
        **errors(400, 402, 409, 413, 415, 429, 502, 503, 504),
    },
    response_model=TurnRead,
    summary="Edit a user message; stream the new answer",
    description="Sends the body in place of one of the session's user messages, on a new branch from just "
    "before it (the earlier version and what followed it are kept: `activate` goes back). Takes an "
    "Idempotency-Key as a send does; 409 while a turn is in flight. " + SSE_DESCRIPTION,
)
async def edit_message(
    session_id: SessionId,
    message_id: MessageId,
    body: MessageCreate,
    request: Request,
    state: StateDep,
    turns: TurnsDep,
    user: UserDep,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", max_length=1000), IDEMPOTENCY_KEY_SCHEMA
    ] = None,
) -> Response:
    reply = await turns.edit_message(
        principal=user,
        session_id=session_id,
        message_id=message_id,
        request=_turn_request(body),
        idempotency_key=_idempotency_key(idempotency_key),
        base_url=str(request.base_url),
    )
    return _reply(reply, state, user)


@router.post(
    "/turns/{turn_id}/regenerate",
    responses={
        200: {**STREAM_RESPONSES[200], "links": TURN_LINKS},
        **errors(400, 402, 409, 413, 415, 429, 502, 503, 504),
    },
    response_model=TurnRead,
    summary="Answer a turn's message again; stream the new answer",
    description="A new turn answers the same user message (`message_id`) on a new branch; the earlier answer "
    "is kept as another version. Takes an Idempotency-Key as a send does; 409 while a turn is in flight. "
    + SSE_DESCRIPTION,
)
async def regenerate_turn(
    session_id: SessionId,
    turn_id: TurnId,
    request: Request,
    state: StateDep,
    turns: TurnsDep,
    user: UserDep,
    body: RegenerateCreate | None = None,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", max_length=1000), IDEMPOTENCY_KEY_SCHEMA
    ] = None,
) -> Response:
    body = body or RegenerateCreate()
    reply = await turns.regenerate(
        principal=user,
        session_id=session_id,
        turn_id=turn_id,
        options=body.options.upstream() if body.options else {},
        stream=body.stream,
        idempotency_key=_idempotency_key(idempotency_key),
        base_url=str(request.base_url),
    )
    return _reply(reply, state, user)


async def stream_principal(
    session_id: SessionId,
    turn_id: TurnId,
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    token: Annotated[str | None, Query(max_length=4096, description="The token from `turn.stream_url`.")] = None,
) -> Principal:
    """A bearer credential, or the stream token of exactly this turn (for EventSource)."""
    if token is not None and credentials is None:
        return await state.stream_tokens.verify(
            token, session_id=session_id, turn_id=turn_id, authenticator=state.authenticator
        )
    return await state.authenticator.authenticate(credentials.credentials if credentials else None)


def _event_id(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        raise InvalidRequest(
            "Last-Event-ID must be an event id of this turn (a whole number).",
            code="invalid_last_event_id",
            param="Last-Event-ID",
        )
    return int(raw)


def _last_event_id(header: str | None, query: str | None) -> int:
    # Both are checked, so a malformed one is refused even where the other one wins.
    from_header, from_query = _event_id(header), _event_id(query)
    if header is not None:
        return from_header or 0
    return from_query or 0


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
    turns: TurnsDep,
    principal: Annotated[Principal, Depends(stream_principal)],
    last_event_id_header: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=64), LAST_EVENT_ID_SCHEMA
    ] = None,
    last_event_id: Annotated[str | None, Query(max_length=64), LAST_EVENT_ID_SCHEMA] = None,
) -> Response:
    shutdown = anyio.Event()
    frames = await turns.events(
        principal=principal,
        session_id=session_id,
        turn_id=turn_id,
        after=_last_event_id(last_event_id_header, last_event_id),
        shutdown=shutdown,
    )
    if frames is None:
        return Response(status_code=204)
    return _stream(frames, state, principal, shutdown)


@router.get("/turns", summary="List the session's turns")
async def list_turns(
    session_id: SessionId, request: Request, db: DbDep, turns: TurnsDep, user: UserDep, page: ListDep
) -> ListResponse[TurnRead]:
    result = await turn_service.list_turns(
        db, principal=user, session_id=session_id, limit=page.limit, after=page.after, order=page.order or "desc"
    )
    data = [turns.render(turn, base_url=str(request.base_url), principal=user) for turn in result.items]
    return list_response(data, result.has_more, TurnRead.model_validate, lambda t: t.id)


@router.get("/turns/{turn_id}", summary="Read one turn")
async def get_turn(
    session_id: SessionId, turn_id: TurnId, request: Request, db: DbDep, turns: TurnsDep, user: UserDep
) -> TurnRead:
    turn = await turn_service.get_turn(db, principal=user, session_id=session_id, turn_id=turn_id)
    return TurnRead.model_validate(turns.render(turn, base_url=str(request.base_url), principal=user))


@router.put("/turns/{turn_id}/feedback", summary="Rate a turn's answer", responses=errors(400, 404, 413, 415))
async def rate_turn(
    session_id: SessionId,
    turn_id: TurnId,
    body: FeedbackUpdate,
    request: Request,
    db: DbDep,
    turns: TurnsDep,
    user: UserDep,
) -> TurnRead:
    """Thumbs up or down and a comment on the answer, replacing any given before; shown in the turn and the
    session's export."""
    turn = await turn_service.rate_turn(
        db, principal=user, session_id=session_id, turn_id=turn_id, rating=body.rating, comment=body.comment
    )
    return TurnRead.model_validate(turns.render(turn, base_url=str(request.base_url), principal=user))


@router.post("/turns/{turn_id}/cancel", summary="Cancel a running turn", responses=errors(503))
async def cancel_turn(
    session_id: SessionId, turn_id: TurnId, request: Request, turns: TurnsDep, user: UserDep
) -> TurnRead:
    """Stops the upstream stream, keeps the partial answer and its usage, and ends every listener's
    stream with `turn.cancelled`. A turn that already ended is returned as it is."""
    turn = await turns.cancel(principal=user, session_id=session_id, turn_id=turn_id, base_url=str(request.base_url))
    return TurnRead.model_validate(turn)


@router.post(
    "/turns/{turn_id}/tool_outputs",
    responses={**STREAM_RESPONSES, **errors(400, 402, 409, 413, 415, 429, 502, 503, 504)},
    response_model=TurnRead,
    summary="Answer the function calls of a turn in requires_action",
    description="Sends the outputs of the calls in `turn.required_action` upstream and streams the rest of the "
    "turn: its event ids continue after `turn.requires_action`. " + SSE_DESCRIPTION,
)
async def submit_tool_outputs(
    session_id: SessionId,
    turn_id: TurnId,
    body: ToolOutputsCreate,
    request: Request,
    state: StateDep,
    turns: TurnsDep,
    user: UserDep,
) -> Response:
    reply = await turns.submit_tool_outputs(
        principal=user,
        session_id=session_id,
        turn_id=turn_id,
        outputs=[turn_service.ToolOutput(call_id=o.call_id, output=o.output) for o in body.tool_outputs],
        stream=body.stream,
        base_url=str(request.base_url),
    )
    return _reply(reply, state, user)
