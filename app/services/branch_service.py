"""Branches: what an edit or a regenerate starts from, switching branches, and forking a session.

Every branch has an upstream conversation of its own, made from the items of the path before the point where
it leaves its parent branch (the Conversations API only appends: nothing can be taken out of one). Switching
branches only changes which conversation the session uses, so going back to a branch costs nothing upstream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import openai
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.base import utcnow
from app.db.ids import new_id
from app.db.models import ChatSession, Message
from app.errors import Conflict, NotFound, ValidationFailed
from app.repositories import branch_repository as branches_repo
from app.repositories import session_repository as sessions_repo
from app.repositories import turn_repository as turns_repo
from app.services import file_service
from app.services.auth import Principal
from app.upstream import conversations as upstream_conversations

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BranchStart:
    """Where an edit's or a regenerate's turn starts its branch, and the branch's conversation (made upstream
    from the path's items, `branch_service`)."""

    conversation_id: str
    # The active branch the turn goes on from, top to leaf: the edited message's parent's path, or the path to
    # the user message a regenerate answers again.
    path_ids: list[str]
    # A regenerate: the user message answered again (no new one is written).
    message_id: str | None = None


def context_items(messages: Sequence[Message], files: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The conversation items that hold these messages, in order: what a branch's conversation starts with.

    Reasoning goes in with its encrypted content (`PARLEY_KEEP_REASONING`); without it, the upstream would refuse
    it, and it is left out. Built-in tool calls are left out: their items belong to the conversation that made
    them, by id, and the answer's text carries what they found."""
    items: list[dict[str, Any]] = []
    for message in messages:
        if message.role != "assistant":
            content: Any = file_service.upstream_parts(message.items, files or {}) if message.items else message.content
            items.append({"type": "message", "role": message.role, "content": content})
            continue
        if message.items is None:
            items.append(upstream_conversations.message_item("assistant", message.content))
            continue
        for item in message.items:
            kind = item.get("type")
            if kind == "message":
                text = "".join(
                    str(part.get("text", part.get("refusal", "")))
                    for part in item.get("content") or ()
                    if isinstance(part, dict)
                )
                if text:
                    items.append(upstream_conversations.message_item("assistant", text))
            elif kind == "function_call":
                items.append({key: item[key] for key in ("type", "call_id", "name", "arguments")})
            elif kind == "function_call_output":
                items.append({key: item[key] for key in ("type", "call_id", "output")})
            elif kind == "reasoning" and item.get("encrypted_content"):
                summary = [{"type": "summary_text", "text": text} for text in item.get("summary") or ()]
                items.append({"type": "reasoning", "summary": summary, "encrypted_content": item["encrypted_content"]})
    return items


def _session_not_found(session_id: str) -> NotFound:
    return NotFound(f"No session with id '{session_id}'.", code="session_not_found", param="session_id")


def _message_not_found(message_id: str) -> NotFound:
    return NotFound(f"No message with id '{message_id}' in this session.", code="message_not_found", param="message_id")


async def _owned_message(db: AsyncSession, *, principal: Principal, session_id: str, message_id: str) -> Message:
    session = await sessions_repo.get_owned_session(db, user_id=principal.user_id, session_id=session_id)
    if session is None:
        raise _session_not_found(session_id)
    message = await branches_repo.get_message(db, session_id=session_id, message_id=message_id)
    if message is None:
        raise _message_not_found(message_id)
    return message


async def _refuse_while_busy(db: AsyncSession, *, session_id: str) -> None:
    running = await turns_repo.find_open(db, session_id=session_id)
    if running is not None:
        raise Conflict(
            "A turn is in progress in this session; wait for it to finish or cancel it, then try again.",
            code="turn_in_progress",
            param=running.id,
        )


async def _branch_conversation(
    upstream: openai.AsyncOpenAI,
    *,
    principal: Principal,
    session_id: str,
    path: Sequence[Message],
    files: Mapping[str, str],
) -> str:
    return await upstream_conversations.create_conversation(
        upstream,
        metadata={"parley_session_id": session_id, "parley_user_id": principal.user_id},
        items=context_items(path, files),
    )


async def prepare_edit(
    sessionmaker: async_sessionmaker[AsyncSession],
    upstream: openai.AsyncOpenAI,
    *,
    principal: Principal,
    session_id: str,
    message_id: str,
) -> BranchStart:
    """The branch an edit of `message_id` starts: its conversation holds the path before the message."""
    async with sessionmaker() as db:
        message = await _owned_message(db, principal=principal, session_id=session_id, message_id=message_id)
        if message.role != "user":
            raise ValidationFailed(
                f"Only user messages can be edited; this one is an {message.role} message "
                "(regenerate an answer instead).",
                code="message_not_editable",
                param="message_id",
            )
        await _refuse_while_busy(db, session_id=session_id)
        path = await branches_repo.path_to(db, session_id=session_id, message_id=message.parent_id)
        files = await file_service.upstream_ids_for(db, user_id=principal.user_id, messages=path)
    conversation_id = await _branch_conversation(
        upstream, principal=principal, session_id=session_id, path=path, files=files
    )
    return BranchStart(conversation_id=conversation_id, path_ids=[m.id for m in path])


async def prepare_regenerate(
    sessionmaker: async_sessionmaker[AsyncSession],
    upstream: openai.AsyncOpenAI,
    *,
    principal: Principal,
    session_id: str,
    turn_id: str,
) -> tuple[BranchStart, Any]:
    """The branch a regenerate of `turn_id` starts, and the input it sends again: the turn's user message, on a
    conversation holding the path before it."""
    async with sessionmaker() as db:
        turn = await turns_repo.get_owned_turn(db, user_id=principal.user_id, session_id=session_id, turn_id=turn_id)
        if turn is None:
            raise NotFound(f"No turn with id '{turn_id}' in this session.", code="turn_not_found", param="turn_id")
        message = (
            await branches_repo.get_message(db, session_id=session_id, message_id=turn.message_id)
            if turn.message_id
            else None
        )
        if message is None:
            raise ValidationFailed(
                "This turn's message is not in the history, so it cannot be answered again.",
                code="turn_not_regenerable",
                param="turn_id",
            )
        await _refuse_while_busy(db, session_id=session_id)
        path = await branches_repo.path_to(db, session_id=session_id, message_id=message.id)
        files = await file_service.upstream_ids_for(db, user_id=principal.user_id, messages=path[:-1])
    conversation_id = await _branch_conversation(
        upstream, principal=principal, session_id=session_id, path=path[:-1], files=files
    )
    branch = BranchStart(conversation_id=conversation_id, path_ids=[m.id for m in path], message_id=message.id)
    return branch, turn.input


async def discard_conversation(upstream: openai.AsyncOpenAI, conversation_id: str) -> None:
    """A branch conversation whose turn never started (a conflict, a limit): not worth a failed request."""
    try:
        await upstream_conversations.delete_conversation(upstream, conversation_id)
    except Exception:
        logger.warning("branch.conversation_not_deleted", extra={"conversation_id": conversation_id}, exc_info=True)


async def activate(db: AsyncSession, *, principal: Principal, session_id: str, message_id: str) -> None:
    """Make the branch through `message_id` the active one: the path to its most recent leaf, and that leaf's
    conversation. 409 while a turn is in flight (its answer goes on the branch it started on)."""
    session = await branches_repo.lock_session(db, user_id=principal.user_id, session_id=session_id)
    if session is None:
        raise _session_not_found(session_id)
    if await branches_repo.get_message(db, session_id=session_id, message_id=message_id) is None:
        raise _message_not_found(message_id)
    await _refuse_while_busy(db, session_id=session_id)
    leaf = await branches_repo.newest_leaf_under(db, session_id=session_id, message_id=message_id)
    assert leaf is not None  # the message itself is in its subtree
    path = await branches_repo.path_to(db, session_id=session_id, message_id=leaf.id)
    await branches_repo.make_active(
        db,
        session_id=session_id,
        path_ids=[m.id for m in path],
        conversation_id=leaf.conversation_id or session.conversation_id,
        at=utcnow(),
    )


async def fork(
    db: AsyncSession,
    upstream: openai.AsyncOpenAI,
    *,
    principal: Principal,
    session_id: str,
    message_id: str | None,
    title: str | None,
) -> ChatSession:
    """A new session (with its own conversation) whose history is the active branch up to and including
    `message_id` (all of it by default), with the source's settings."""
    source = await sessions_repo.get_owned_session(db, user_id=principal.user_id, session_id=session_id)
    if source is None:
        raise _session_not_found(session_id)
    leaf_id = message_id or await branches_repo.active_leaf_id(db, session_id=session_id)
    if message_id is not None:
        message = await branches_repo.get_message(db, session_id=session_id, message_id=message_id)
        if message is None or not message.on_active_branch:
            raise ValidationFailed(
                f"A fork ends at a message of this session's active branch; '{message_id}' is not one.",
                code="message_not_on_branch",
                param="message_id",
            )
    path = await branches_repo.path_to(db, session_id=session_id, message_id=leaf_id)
    files = await file_service.upstream_ids_for(db, user_id=principal.user_id, messages=path)
    fork_id = new_id("sess")
    conversation_id = await upstream_conversations.create_conversation(
        upstream,
        metadata={"parley_session_id": fork_id, "parley_user_id": principal.user_id},
        items=context_items(path, files),
    )
    now = utcnow()
    session = ChatSession(
        id=fork_id,
        user_id=principal.user_id,
        conversation_id=conversation_id,
        title=title if title is not None else source.title,
        title_source="user" if title is not None else source.title_source,
        metadata_=dict(source.metadata_ or {}),
        prompt=source.prompt,
        model=source.model,
        options=dict(source.options or {}),
        tools=list(source.tools or []),
        server_tools=list(source.server_tools) if source.server_tools is not None else None,
        created_at=now,
        updated_at=now,
    )
    copies: list[Message] = []
    parent_id: str | None = None
    for original in path:
        copy = Message(
            id=new_id("msg"),
            session_id=fork_id,
            # The fork's messages were not answered by turns of its own: like an imported history's.
            turn_id=None,
            parent_id=parent_id,
            conversation_id=conversation_id,
            role=original.role,
            content=original.content,
            status=original.status,
            items=original.items,
            model=original.model,
            created_at=original.created_at,
        )
        copies.append(copy)
        parent_id = copy.id
    try:
        await sessions_repo.add_session(db, session)
        await branches_repo.add_conversation(db, session_id=fork_id, conversation_id=conversation_id, at=now)
        await sessions_repo.add_messages(db, copies)
    except Exception:
        await discard_conversation(upstream, conversation_id)
        raise
    logger.info("session.forked", extra={"session_id": fork_id, "source_session_id": session_id})
    return session


async def delete_conversations(upstream: openai.AsyncOpenAI, conversation_ids: Sequence[str]) -> None:
    """Delete every conversation of a session upstream, a few at a time."""
    limit = asyncio.Semaphore(4)

    async def delete(conversation_id: str) -> None:
        async with limit:
            await upstream_conversations.delete_conversation(upstream, conversation_id)

    await asyncio.gather(*(delete(conversation_id) for conversation_id in conversation_ids))
