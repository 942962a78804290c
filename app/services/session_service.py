"""Sessions: a user's chat threads, each owning one upstream Conversation."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import openai
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.ids import new_id
from app.db.models import ChatSession, Message
from app.errors import NotFound, ValidationFailed
from app.repositories import branch_repository as branches_repo
from app.repositories import session_repository as sessions_repo
from app.repositories.pagination import Order, Page
from app.services import branch_service, file_service
from app.services.auth import Principal
from app.services.policy import check_model, check_options, check_prompt, check_tools
from app.services.search_service import checked_query
from app.settings import Settings
from app.upstream import conversations as upstream_conversations

logger = logging.getLogger(__name__)

_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class ImportedMessage:
    role: str
    content: str


def _not_found(session_id: str) -> NotFound:
    return NotFound(f"No session with id '{session_id}'.", code="session_not_found", param="session_id")


async def get_session(db: AsyncSession, *, principal: Principal, session_id: str) -> ChatSession:
    session = await sessions_repo.get_owned_session(db, user_id=principal.user_id, session_id=session_id)
    if session is None:
        raise _not_found(session_id)
    return session


async def list_sessions(
    db: AsyncSession, *, principal: Principal, limit: int, after: str | None, order: Order, q: str | None = None
) -> Page[ChatSession]:
    """With `q`, the sessions whose title or messages match it, as search finds them."""
    if q is not None:
        q = checked_query(q)
    return await sessions_repo.list_owned_sessions(
        db, user_id=principal.user_id, limit=limit, after=after, order=order, q=q
    )


async def create_session(
    db: AsyncSession,
    *,
    settings: Settings,
    upstream: openai.AsyncOpenAI,
    principal: Principal,
    title: str | None,
    metadata: dict[str, str],
    prompt: dict[str, Any] | None,
    model: str | None,
    messages: Sequence[ImportedMessage],
    options: dict[str, Any] | None = None,
    tools: list[dict[str, Any]] | None = None,
    server_tools: list[str] | None = None,
    known_server_tools: Collection[str] = (),
) -> ChatSession:
    check_model(settings, model)
    check_server_tools(server_tools, known_server_tools)
    check_prompt(settings, prompt["id"] if prompt else None)
    check_options(settings, options or {})
    check_tools(settings, tools or [])
    session_id = new_id("sess")
    # The upstream call comes first and outside any transaction: no row exists for a conversation that
    # failed to be created, and no database lock is held while the network is awaited.
    conversation_id = await upstream_conversations.create_conversation(
        upstream,
        metadata={"parley_session_id": session_id, "parley_user_id": principal.user_id},
        items=[upstream_conversations.message_item(m.role, m.content) for m in messages],
    )
    now = utcnow()
    session = ChatSession(
        id=session_id,
        user_id=principal.user_id,
        conversation_id=conversation_id,
        title=title,
        title_source="user" if title is not None else None,
        metadata_=metadata,
        prompt=prompt,
        model=model,
        options=options or {},
        tools=tools or [],
        server_tools=_unique(server_tools),
        created_at=now,
        updated_at=now,
    )
    imported: list[Message] = []
    for m in messages:
        parent_id = imported[-1].id if imported else None
        imported.append(
            Message(
                id=new_id("msg"),
                session_id=session_id,
                parent_id=parent_id,
                conversation_id=conversation_id,
                role=m.role,
                content=m.content,
                created_at=now,
            )
        )
    try:
        await sessions_repo.add_session(db, session)
        await branches_repo.add_conversation(db, session_id=session_id, conversation_id=conversation_id, at=now)
        await sessions_repo.add_messages(db, imported)
    except Exception:
        await upstream_conversations.delete_conversation(upstream, conversation_id)
        raise
    logger.info("session.created", extra={"session_id": session_id, "conversation_id": conversation_id})
    return session


def check_server_tools(names: list[str] | None, known: Collection[str]) -> None:
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise ValidationFailed(
            f"Unknown server tool(s): {', '.join(unknown)}; this deployment has "
            f"{', '.join(sorted(known)) or 'none'} (GET /v1/config).",
            param="server_tools",
            code="unknown_server_tool",
        )


def _unique(names: list[str] | None) -> list[str] | None:
    return list(dict.fromkeys(names)) if names is not None else None


async def update_session(
    db: AsyncSession,
    *,
    settings: Settings,
    principal: Principal,
    session_id: str,
    title: str | None = _UNSET,
    metadata: dict[str, str] = _UNSET,
    prompt: dict[str, Any] | None = _UNSET,
    options: dict[str, Any] = _UNSET,
    tools: list[dict[str, Any]] = _UNSET,
    server_tools: list[str] | None = _UNSET,
    known_server_tools: Collection[str] = (),
) -> ChatSession:
    session = await get_session(db, principal=principal, session_id=session_id)
    if server_tools is not _UNSET:
        check_server_tools(server_tools, known_server_tools)
        session.server_tools = _unique(server_tools)
    if options is not _UNSET:
        check_options(settings, options)
        session.options = options
    if tools is not _UNSET:
        check_tools(settings, tools)
        session.tools = tools
    if title is not _UNSET:
        # A user's title is never replaced by an automatic one; clearing it leaves the session untitled, as new.
        session.title = title
        session.title_source = "user" if title is not None else None
    if metadata is not _UNSET:
        session.metadata_ = metadata
    if prompt is not _UNSET:
        check_prompt(settings, prompt["id"] if prompt else None)
        session.prompt = prompt
    session.updated_at = utcnow()
    await db.flush()
    return session


async def delete_session(
    db: AsyncSession, *, upstream: openai.AsyncOpenAI, principal: Principal, session_id: str
) -> str:
    session = await get_session(db, principal=principal, session_id=session_id)
    # Every branch's conversation (the active one included; listed too for sessions made before branches).
    conversations = await branches_repo.conversations_of(db, session_id=session.id)
    if session.conversation_id not in conversations:
        conversations.append(session.conversation_id)
    await branch_service.delete_conversations(upstream, conversations)
    await sessions_repo.soft_delete_session(db, session, at=utcnow())
    # Deleted files this session was the last to name go upstream now.
    await file_service.release_deleted_files(db, upstream, user_id=principal.user_id)
    logger.info("session.deleted", extra={"session_id": session_id})
    return session.id


@dataclass(frozen=True, slots=True)
class MessagePage:
    """A page of the active branch, and for each of its messages' parents the ids of their children in creation
    order (a message's versions)."""

    page: Page[Message]
    versions: dict[str | None, list[str]]


async def list_messages(
    db: AsyncSession, *, principal: Principal, session_id: str, limit: int, after: str | None, order: Order
) -> MessagePage:
    """The session's active branch; a cursor that is not on it is 404."""
    session = await get_session(db, principal=principal, session_id=session_id)
    if after is not None and not await branches_repo.is_on_active_branch(db, session_id=session.id, message_id=after):
        raise NotFound(
            f"No message with id '{after}' on this session's active branch.", code="message_not_found", param="after"
        )
    page = await branches_repo.list_active_branch(db, session_id=session.id, limit=limit, after=after, order=order)
    versions = await branches_repo.versions_of(
        db, session_id=session.id, parent_ids={message.parent_id for message in page.items}
    )
    return MessagePage(page=page, versions=versions)
