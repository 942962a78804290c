"""Exports: a session with its messages (the active branch or every branch) and its turns, as data or Markdown."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.models import ChatSession, Message, Turn
from app.repositories import branch_repository as branches_repo
from app.repositories import session_repository as sessions_repo
from app.repositories import turn_repository as turns_repo
from app.services import session_service
from app.services.auth import Principal

Branches = Literal["active", "all"]

ROLE_HEADINGS = {"user": "You", "assistant": "Assistant", "system": "System", "developer": "Developer"}
RATINGS = {"up": "👍", "down": "👎"}
UNTITLED = "Untitled session"
SNIPPET_CHARS = 80


@dataclass(frozen=True, slots=True)
class SessionExport:
    session: ChatSession
    branches: Branches
    # Oldest first: the active branch's, or every message of the session (each says if it is on the active branch).
    messages: Sequence[Message]
    # Every turn of the session, on whichever branch, oldest first.
    turns: Sequence[Turn]
    exported_at: dt.datetime
    # For each listed message's parent, the ids of its children in creation order (a message's versions).
    versions: dict[str | None, list[str]]


async def build_export(db: AsyncSession, *, principal: Principal, session_id: str, branches: Branches) -> SessionExport:
    session = await session_service.get_session(db, principal=principal, session_id=session_id)
    messages = await sessions_repo.list_session_messages(
        db, session_id=session.id, active_branch_only=branches == "active"
    )
    versions = await branches_repo.versions_of(
        db, session_id=session.id, parent_ids={message.parent_id for message in messages}
    )
    turns = await turns_repo.list_session_turns(db, session_id=session.id)
    return SessionExport(
        session=session, branches=branches, messages=messages, turns=turns, exported_at=utcnow(), versions=versions
    )


@dataclass(frozen=True, slots=True)
class Branch:
    """A branch off the active one: its messages after the point where it leaves the active branch, and that
    point (None: it leaves at the top, before the first message)."""

    messages: list[Message]
    fork_point: Message | None


def side_branches(messages: Sequence[Message]) -> list[Branch]:
    """One branch per leaf that is not on the active branch, oldest leaf first."""
    by_id = {message.id: message for message in messages}
    parents = {message.parent_id for message in messages if message.parent_id is not None}
    branches = []
    for leaf in messages:
        if leaf.on_active_branch or leaf.id in parents:
            continue
        seen: set[str] = set()
        path: list[Message] = []
        node: Message | None = leaf
        while node is not None and not node.on_active_branch and node.id not in seen:
            seen.add(node.id)
            path.append(node)
            node = by_id.get(node.parent_id) if node.parent_id is not None else None
        fork_point = node if node is not None and node.on_active_branch else None
        branches.append(Branch(messages=path[::-1], fork_point=fork_point))
    return branches


def as_markdown(export: SessionExport) -> str:
    """A document for people: the header, each message as a section (tool calls, citations, reasoning summaries,
    each answer's feedback and cost), then, with every branch, the branches off the active one."""
    session = export.session
    turns = {turn.id: turn for turn in export.turns}
    # A turn that waited for the client's outputs has its call in one answer and the output in the next.
    calls = {
        item.get("call_id"): str(item.get("name"))
        for message in export.messages
        for item in message.items or []
        if item.get("type") == "function_call"
    }
    active = [message for message in export.messages if message.on_active_branch]
    others = side_branches(export.messages) if export.branches == "all" else []
    blocks = [f"# {_inline(_one_line(session.title or '')) or UNTITLED}", _header(export, active), "---"]
    if others:
        blocks.append("## Branch 1 (active)")
    blocks.extend(_messages(active, turns, calls) or ["*No messages yet.*"])
    for number, branch in enumerate(others, start=2):
        blocks.append(f"## Branch {number}")
        blocks.append(_fork_note(branch.fork_point))
        blocks.extend(_messages(branch.messages, turns, calls))
    return "\n\n".join(blocks) + "\n"


def _header(export: SessionExport, messages: Sequence[Message]) -> str:
    session = export.session
    facts = [f"Created {_when(session.created_at)}"]
    models = [session.model] if session.model else list(dict.fromkeys(m.model for m in messages if m.model))
    if models:
        facts.append("model " + ", ".join(_code(model) for model in models))
    prompt = session.prompt or {}
    if prompt.get("id"):
        version = f" version {_code(str(prompt['version']))}" if prompt.get("version") else ""
        facts.append(f"prompt {_code(str(prompt['id']))}{version}")
    facts.append(f"{session.turn_count} turn{'' if session.turn_count == 1 else 's'}")
    facts.append(f"total cost {_usd(session.total_cost_usd)}")
    exported = f"Session {_code(session.id)}, exported {_when(export.exported_at)}."
    return " · ".join(facts) + "\n\n" + exported


def _fork_note(fork_point: Message | None) -> str:
    if fork_point is None:
        return "Starts at the top, in place of the first message."
    role = ROLE_HEADINGS.get(fork_point.role, fork_point.role.title())
    snippet = _one_line(fork_point.content)
    if len(snippet) > SNIPPET_CHARS:
        snippet = snippet[: SNIPPET_CHARS - 1].rstrip() + "…"
    return f"Branches from {role}: “{_inline(snippet)}” ({_code(fork_point.id)})."


def _messages(messages: Sequence[Message], turns: dict[str, Turn], calls: dict[Any, str]) -> list[str]:
    blocks = []
    for index, message in enumerate(messages):
        blocks.append(f"### {ROLE_HEADINGS.get(message.role, message.role.title())}")
        blocks.extend(_user_blocks(message) if message.role != "assistant" else _assistant_blocks(message, calls))
        following = messages[index + 1] if index + 1 < len(messages) else None
        turn = turns.get(message.turn_id) if message.turn_id is not None else None
        # Under the turn's answer; under its question only when the turn ended without one (a failed turn). A
        # regenerated question keeps its first turn's id while another turn's answer follows it.
        last_of_turn = turn is not None and (following is None or following.turn_id != turn.id)
        if turn is not None and last_of_turn and (message.role == "assistant" or turn.status != "completed"):
            blocks.extend(_turn_footer(turn))
    return blocks


def _user_blocks(message: Message) -> list[str]:
    if message.items is None:
        return [message.content] if message.content else []
    blocks = []
    for item in message.items:
        kind = item.get("type")
        if kind == "input_text":
            blocks.append(str(item.get("text", "")))
        elif kind == "input_image":
            url = item.get("image_url")
            if isinstance(url, str) and url.startswith("https://"):
                blocks.append(f"![image]({_destination(url)})")
            else:
                # A data: URL is the image itself (megabytes of base64): named, not copied.
                blocks.append(f"🖼 An image{_named(item.get('file_id'))}.")
        elif kind == "input_file":
            name = item.get("filename") or item.get("file_id") or item.get("file_url")
            blocks.append(f"📎 A file{_named(name)}.")
        else:
            blocks.append(f"🔧 {_code(str(kind))}")
    return blocks


def _assistant_blocks(message: Message, calls: dict[Any, str]) -> list[str]:
    if message.items is None:
        return [message.content] if message.content else []
    blocks: list[str] = []
    sources: list[str] = []
    for item in message.items:
        kind = item.get("type")
        if kind == "reasoning":
            blocks.extend(_reasoning(item))
        elif kind == "function_call":
            arguments, info = _pretty(item.get("arguments"))
            blocks.append(f"**Function call** {_code(str(item.get('name')))}")
            blocks.append(_fenced(arguments, info))
        elif kind == "function_call_output":
            output, info = _pretty(item.get("output"))
            name = calls.get(item.get("call_id"))
            blocks.append(f"**Output** of {_code(name)}" if name else "**Output**")
            blocks.append(_fenced(output, info))
        elif kind == "message":
            for part in item.get("content") or []:
                if part.get("type") == "output_text":
                    blocks.append(str(part.get("text", "")))
                    sources.extend(_sources(part.get("annotations") or []))
                elif part.get("type") == "refusal":
                    blocks.append(f"**Refused:** {part.get('refusal', '')}")
        else:
            blocks.append(_tool_note(item))
    unique = list(dict.fromkeys(sources))
    if unique:
        blocks.append("**Sources**")
        blocks.append("\n".join(f"{number}. {source}" for number, source in enumerate(unique, start=1)))
    return blocks


def _reasoning(item: dict[str, Any]) -> list[str]:
    summary = [part.get("text", "") if isinstance(part, dict) else str(part) for part in item.get("summary") or []]
    text = "\n\n".join(part for part in summary if part)
    if not text:
        return []
    quoted = "\n".join(f"> {line}" if line else ">" for line in text.splitlines())
    return [f"> *Reasoning*\n>\n{quoted}"]


def _tool_note(item: dict[str, Any]) -> str:
    """A built-in tool call in one line: what it did, not its output."""
    kind = str(item.get("type"))
    found = item.get("action")
    action: dict[str, Any] = found if isinstance(found, dict) else {}
    if kind == "web_search_call":
        if action.get("query"):
            return f"🔎 Searched the web for {_code(str(action['query']))}."
        if action.get("url"):
            return f"🔎 Opened {_code(str(action['url']))}."
        return "🔎 Searched the web."
    if kind == "file_search_call":
        queries = [str(query) for query in item.get("queries") or []]
        return "🔎 Searched files" + (" for " + ", ".join(_code(query) for query in queries) if queries else "") + "."
    if kind == "code_interpreter_call":
        return "🔧 Ran code."
    if kind == "image_generation_call":
        return "🔧 Generated an image."
    if kind == "mcp_call":
        return f"🔧 Called {_code(str(item.get('name')))} on MCP server {_code(str(item.get('server_label')))}."
    return f"🔧 {_code(kind)}."


def _sources(annotations: Sequence[Any]) -> Iterator[str]:
    for annotation in annotations:
        if not isinstance(annotation, dict):
            continue
        if annotation.get("type") == "url_citation" and isinstance(annotation.get("url"), str):
            url = annotation["url"]
            title = _inline(_one_line(str(annotation.get("title") or url)))
            # Only web links are made clickable (a citation is the upstream's text, not Parley's).
            yield (
                f"[{title}]({_destination(url)})"
                if url.startswith(("https://", "http://"))
                else f"{title}: {_code(url)}"
            )
        elif annotation.get("type") in ("file_citation", "container_file_citation"):
            name = annotation.get("filename") or annotation.get("file_id")
            if name:
                yield f"📎 {_code(str(name))}"


def _turn_footer(turn: Turn) -> list[str]:
    blocks = []
    if turn.status != "completed":
        error = (turn.error or {}).get("message")
        blocks.append(f"**Turn {turn.status}**" + (f": {_inline(_one_line(str(error)))}" if error else ""))
    if turn.feedback_updated_at is not None:
        rating = RATINGS.get(turn.feedback_rating or "", "")
        blocks.append(f"**Feedback:** {rating}".rstrip())
        if turn.feedback_comment:
            blocks.append("\n".join(f"> {line}" if line else ">" for line in turn.feedback_comment.splitlines()))
    cost = f"**Cost:** {_usd(turn.cost_usd)}"
    usage = turn.usage or {}
    if "input_tokens" in usage and "output_tokens" in usage:
        cost += f" ({usage['input_tokens']:,} tokens in, {usage['output_tokens']:,} out)"
    blocks.append(cost)
    return blocks


def _pretty(value: object) -> tuple[str, str]:
    """A call's arguments or output as a code block's text and language: indented if it is JSON."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False), "json"
    except ValueError:
        return text, ""


def _fenced(text: str, info: str = "") -> str:
    """A fenced code block whose fence is longer than any run of backticks inside, so nothing can close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def _code(text: str) -> str:
    """Inline code that holds any text: delimited by a backtick run the text does not contain."""
    text = _one_line(text)
    runs = {len(run) for run in re.findall(r"`+", text)}
    ticks = "`" * next(n for n in range(1, len(runs) + 2) if n not in runs)
    padded = f" {text} " if text.startswith("`") or text.endswith("`") else text
    return f"{ticks}{padded}{ticks}"


_INLINE_SPECIALS = re.compile(r"([\\`*_\[\]<>#|!])")


def _inline(text: str) -> str:
    """Text the upstream or a title supplies, shown literally inside a line of Markdown."""
    return _INLINE_SPECIALS.sub(r"\\\1", text)


def _destination(url: str) -> str:
    # In angle brackets a link destination may hold spaces and parentheses; only <, > and line breaks must go.
    return "<" + url.replace("<", "%3C").replace(">", "%3E").replace("\r", "").replace("\n", "") + ">"


def _named(name: object) -> str:
    return f" ({_code(str(name))})" if name else ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _when(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _usd(amount: Decimal | None) -> str:
    if amount is None:
        return "unknown"
    digits = f"{amount:.8f}".rstrip("0")
    whole, _, cents = digits.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"
