"""Turns: send a message and stream the answer, resume a stream, list, read and cancel turns."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials

from app.api.deps import DbDep, ListDep, StateDep, TurnsDep, UserDep, bearer_scheme
from app.api.event_stream import event_stream
from app.api.routes.common import SessionId, TurnId, errors, list_response
from app.api.schemas import ListResponse
from app.api.turn_schemas import MessageCreate, ToolOutputsCreate, TurnRead
from app.errors import InvalidRequest, ValidationFailed
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


def _reply(reply: turn_service.TurnReply, state: AppState) -> Response:
    if reply.frames is not None:
        return event_stream(reply.frames, settings=state.settings, metrics=state.metrics)
    return JSONResponse(reply.turn)


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
    turns: TurnsDep,
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
    turn_request = turn_service.TurnRequest(
        input=payload,
        prompt=body.prompt.model_dump(exclude_none=True) if body.prompt else None,
        prompt_variables=body.prompt_variables,
        model=body.model,
        metadata=body.metadata or {},
        stream=body.stream,
        tools=[tool.model_dump(exclude_none=True) for tool in body.tools or []],
    )
    reply = await turns.send_message(
        principal=user,
        session_id=session_id,
        request=turn_request,
        idempotency_key=_idempotency_key(idempotency_key),
        base_url=str(request.base_url),
    )
    return _reply(reply, state)


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
    turns: TurnsDep,
    principal: Annotated[Principal, Depends(stream_principal)],
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)] = None,
    last_event_id: Annotated[str | None, Query(max_length=64)] = None,
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
    return event_stream(frames, settings=state.settings, metrics=state.metrics, shutdown=shutdown)


@router.get("/turns", summary="List the session's turns")
async def list_turns(
    session_id: SessionId, request: Request, db: DbDep, turns: TurnsDep, user: UserDep, page: ListDep
) -> ListResponse[TurnRead]:
    result = await turn_service.list_turns(
        db, principal=user, session_id=session_id, limit=page.limit, after=page.after, order=page.order or "desc"
    )
    data = [turns.render(turn, base_url=str(request.base_url)) for turn in result.items]
    return list_response(data, result.has_more, TurnRead.model_validate, lambda t: t.id)


@router.get("/turns/{turn_id}", summary="Read one turn")
async def get_turn(
    session_id: SessionId, turn_id: TurnId, request: Request, db: DbDep, turns: TurnsDep, user: UserDep
) -> TurnRead:
    turn = await turn_service.get_turn(db, principal=user, session_id=session_id, turn_id=turn_id)
    return TurnRead.model_validate(turns.render(turn, base_url=str(request.base_url)))


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
    return _reply(reply, state)
