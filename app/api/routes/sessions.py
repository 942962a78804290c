"""/v1/sessions: a user's chat threads and their history."""

from __future__ import annotations

from fastapi import APIRouter, status

from app.api.deps import DbDep, ListDep, ServerToolsDep, SettingsDep, UpstreamDep, UserDep
from app.api.routes.common import MessageId, SessionId, errors, links, list_response
from app.api.schemas import (
    ListResponse,
    MessageRead,
    SessionCreate,
    SessionDeleted,
    SessionFork,
    SessionRead,
    SessionUpdate,
)
from app.api.search_schemas import SessionFilter
from app.services import branch_service, session_service

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], responses=errors(401, 422))


SESSION = "/v1/sessions/{session_id}"
BY_SESSION_ID = {"session_id": "$response.body#/id"}
SESSION_LINKS = links(
    GetSession=("GET", SESSION, BY_SESSION_ID),
    UpdateSession=("PATCH", SESSION, BY_SESSION_ID),
    DeleteSession=("DELETE", SESSION, BY_SESSION_ID),
    ListMessages=("GET", f"{SESSION}/messages", BY_SESSION_ID),
    SendMessage=("POST", f"{SESSION}/messages", BY_SESSION_ID),
    ListTurns=("GET", f"{SESSION}/turns", BY_SESSION_ID),
    ExportSession=("GET", f"{SESSION}/export", BY_SESSION_ID),
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={201: {"description": "The session.", "links": SESSION_LINKS}, **errors(400, 413, 415, 429, 502, 504)},
)
async def create_session(
    body: SessionCreate,
    db: DbDep,
    user: UserDep,
    settings: SettingsDep,
    upstream: UpstreamDep,
    server_tools: ServerToolsDep,
) -> SessionRead:
    """Create a session and its upstream Conversation; `messages` imports a Chat Completions history."""
    session = await session_service.create_session(
        db,
        settings=settings,
        upstream=upstream,
        principal=user,
        title=body.title,
        metadata=body.metadata or {},
        prompt=body.prompt.model_dump(exclude_none=True) if body.prompt else None,
        model=body.model,
        options=body.options.upstream() if body.options else {},
        tools=[tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in body.tools or []],
        messages=[session_service.ImportedMessage(m.role, m.content) for m in body.messages or []],
        server_tools=body.server_tools,
        known_server_tools=server_tools.names(),
    )
    return SessionRead.of(session)


@router.get("")
async def list_sessions(db: DbDep, user: UserDep, page: ListDep, q: SessionFilter = None) -> ListResponse[SessionRead]:
    """The caller's sessions; with `q`, only those whose title or messages match it (as `GET /v1/search`)."""
    result = await session_service.list_sessions(
        db, principal=user, limit=page.limit, after=page.after, order=page.order or "desc", q=q
    )
    return list_response(result.items, result.has_more, SessionRead.of, lambda s: s.id)


@router.get("/{session_id}", responses=errors(404))
async def get_session(session_id: SessionId, db: DbDep, user: UserDep) -> SessionRead:
    return SessionRead.of(await session_service.get_session(db, principal=user, session_id=session_id))


@router.patch("/{session_id}", responses=errors(400, 404, 413, 415))
async def update_session(
    session_id: SessionId,
    body: SessionUpdate,
    db: DbDep,
    user: UserDep,
    settings: SettingsDep,
    server_tools: ServerToolsDep,
) -> SessionRead:
    """Change the title, metadata, pinned prompt, options, tools or server tools; fields left out stay as they
    are, and options and tools given replace the session's."""
    fields = {"title", "metadata", "prompt", "options", "tools", "server_tools"}
    changes = {name: getattr(body, name) for name in body.model_fields_set & fields}
    if "metadata" in changes:
        changes["metadata"] = changes["metadata"] or {}
    if changes.get("prompt") is not None:
        changes["prompt"] = changes["prompt"].model_dump(exclude_none=True)
    if "options" in changes:
        changes["options"] = changes["options"].upstream() if changes["options"] else {}
    if "tools" in changes:
        changes["tools"] = [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in body.tools or []]
    session = await session_service.update_session(
        db,
        settings=settings,
        principal=user,
        session_id=session_id,
        known_server_tools=server_tools.names(),
        **changes,
    )
    return SessionRead.of(session)


@router.delete("/{session_id}", responses=errors(404, 502, 504))
async def delete_session(session_id: SessionId, db: DbDep, user: UserDep, upstream: UpstreamDep) -> SessionDeleted:
    """Delete the session and its upstream Conversation."""
    deleted_id = await session_service.delete_session(db, upstream=upstream, principal=user, session_id=session_id)
    return SessionDeleted(id=deleted_id)


@router.post(
    "/{session_id}/fork",
    status_code=status.HTTP_201_CREATED,
    responses={
        201: {"description": "The new session.", "links": SESSION_LINKS},
        **errors(400, 404, 413, 415, 502, 504),
    },
)
async def fork_session(
    session_id: SessionId, db: DbDep, user: UserDep, upstream: UpstreamDep, body: SessionFork | None = None
) -> SessionRead:
    """A new session, with a conversation of its own, whose history is this one's active branch up to and
    including `message_id` (all of it by default); it keeps the session's settings."""
    body = body or SessionFork()
    session = await branch_service.fork(
        db, upstream, principal=user, session_id=session_id, message_id=body.message_id, title=body.title
    )
    return SessionRead.of(session)


@router.post("/{session_id}/messages/{message_id}/activate", responses=errors(404, 409))
async def activate_message(
    session_id: SessionId, message_id: MessageId, db: DbDep, user: UserDep, page: ListDep
) -> ListResponse[MessageRead]:
    """Make the branch through this message the active one (its most recent leaf): the session's next turn
    goes on from there, in that branch's own conversation. Returns the now active branch, as `GET …/messages`
    with the same query would. 409 while a turn is in flight."""
    await branch_service.activate(db, principal=user, session_id=session_id, message_id=message_id)
    return await list_messages(session_id, db, user, page)


@router.get("/{session_id}/messages", responses=errors(404))
async def list_messages(session_id: SessionId, db: DbDep, user: UserDep, page: ListDep) -> ListResponse[MessageRead]:
    """The session's active branch: the path from its first message to its active leaf, from Parley's database
    (oldest first by default)."""
    result = await session_service.list_messages(
        db,
        principal=user,
        session_id=session_id,
        limit=page.limit,
        after=page.after,
        order=page.order or "asc",
    )
    return list_response(
        result.page.items, result.page.has_more, lambda m: MessageRead.of(m, result.versions), lambda m: m.id
    )
