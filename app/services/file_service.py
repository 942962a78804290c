"""Uploaded files: their type judged by content, each user's quota, the upstream copy, and the Parley ids a
message names in place of the upstream's."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import PurePath
from typing import Any

import openai
import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.base import utcnow
from app.db.ids import new_id
from app.db.models import Message, StoredFile
from app.errors import NotFound, ParleyError, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from app.repositories import file_repository as files_repo
from app.repositories.pagination import Order, Page
from app.services.auth import Principal
from app.settings import Settings
from app.upstream import files as upstream_files

logger = logging.getLogger(__name__)

FILE_ID_PREFIX = "pfile_"
ALLOWED_TYPES = "PNG, JPEG, WebP, GIF, PDF, plain text, Markdown, CSV or JSON"
# Five fixed signatures are all the binary types the allowlist has: a table says them exactly, where a
# detection library (filetype, puremagic) knows hundreds of types Parley refuses anyway, and would still
# need the text rules below.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
)
# A name that claims one of the binary types on content that is not: refused, not taken for text.
_BINARY_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".pdf"})
_TEXT_TYPES = {".md": "text/markdown", ".markdown": "text/markdown", ".csv": "text/csv", ".json": "application/json"}


# Every type `sniff_type` answers, so what a file is served as.
CONTENT_TYPES = (
    *dict.fromkeys(content_type for _, content_type in _SIGNATURES),
    "image/webp",
    "text/plain",
    *dict.fromkeys(_TEXT_TYPES.values()),
)


def sniff_type(filename: str, data: bytes) -> str:
    """The file's type as its bytes show it; the name only tells text types apart (Markdown, CSV, plain), and
    a `.json` must parse. Anything else is a 415."""
    for magic, content_type in _SIGNATURES:
        if data.startswith(magic):
            return content_type
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    refused = UnsupportedMediaType(
        f"'{filename}' is not a file type Parley accepts, judged by its content: upload {ALLOWED_TYPES}.",
        code="unsupported_file_type",
        param="file",
    )
    suffix = PurePath(filename).suffix.lower()
    if b"\x00" in data or suffix in _BINARY_SUFFIXES:
        raise refused
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise refused from None
    content_type = _TEXT_TYPES.get(suffix, "text/plain")
    if content_type == "application/json":
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            raise refused from None
    return content_type


def clean_filename(filename: str | None) -> str:
    """The name as given, without a path, control characters or more than 255 characters."""
    name = PurePath((filename or "").replace("\\", "/")).name
    name = "".join(character for character in name if character.isprintable())[:255].strip()
    if not name:
        raise ValidationFailed("The uploaded file needs a name.", param="file", code="filename_missing")
    return name


def file_not_found(file_id: str, param: str = "file_id") -> NotFound:
    return NotFound(f"No file with id '{file_id}'.", code="file_not_found", param=param)


async def upload_file(
    db: AsyncSession,
    upstream: openai.AsyncOpenAI,
    *,
    settings: Settings,
    principal: Principal,
    filename: str,
    data: bytes,
) -> StoredFile:
    """Check the type and the user's quota, upload the file upstream (purpose `user_data`), then keep it."""
    content_type = sniff_type(filename, data)
    used = await files_repo.used_bytes(db, user_id=principal.user_id)
    quota = settings.max_user_file_bytes
    if used + len(data) > quota:
        raise PayloadTooLarge(
            f"Your files use {used:,} of your {quota:,} bytes, and this one has {len(data):,}: "
            "delete some files first.",
            code="file_quota_exceeded",
            param="file",
        )
    upstream_file_id = await upstream_files.create_file(
        upstream, filename=filename, data=data, content_type=content_type
    )
    stored = StoredFile(
        id=new_id(FILE_ID_PREFIX.rstrip("_")),
        user_id=principal.user_id,
        filename=filename,
        content_type=content_type,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        data=data,
        upstream_file_id=upstream_file_id,
        created_at=utcnow(),
    )
    await files_repo.add_file(db, stored)
    logger.info("file.uploaded", extra={"file_id": stored.id, "bytes": stored.size_bytes})
    return stored


async def get_file(db: AsyncSession, *, principal: Principal, file_id: str) -> StoredFile:
    stored = await files_repo.get_owned_file(db, user_id=principal.user_id, file_id=file_id)
    if stored is None:
        raise file_not_found(file_id)
    return stored


async def list_files(
    db: AsyncSession, *, principal: Principal, limit: int, after: str | None, order: Order
) -> Page[StoredFile]:
    return await files_repo.list_owned_files(db, user_id=principal.user_id, limit=limit, after=after, order=order)


async def read_content(
    sessionmaker: async_sessionmaker[AsyncSession], stored: StoredFile, *, chunk_bytes: int
) -> AsyncIterator[bytes]:
    """The file's bytes a chunk at a time, each read in a short transaction of its own: a download holds
    neither the whole file nor a connection while the client reads."""
    for offset in range(0, stored.size_bytes, chunk_bytes):
        async with sessionmaker() as db:
            chunk = await files_repo.read_chunk(db, file_id=stored.id, offset=offset, length=chunk_bytes)
        if not chunk:
            return
        yield chunk


async def delete_file(db: AsyncSession, upstream: openai.AsyncOpenAI, *, principal: Principal, file_id: str) -> str:
    """Hidden at once; its upstream copy goes too unless a live session still names it (then it goes with the
    last such session, `release_deleted_files`)."""
    stored = await get_file(db, principal=principal, file_id=file_id)
    await files_repo.soft_delete_file(db, stored, at=utcnow())
    await release_deleted_files(db, upstream, user_id=principal.user_id)
    return stored.id


async def release_deleted_files(db: AsyncSession, upstream: openai.AsyncOpenAI, *, user_id: str) -> None:
    """Delete upstream the user's deleted files that no live session names any more. A failure is logged and
    left for the next time (the file stays hidden either way)."""
    for stored in await files_repo.deleted_with_upstream_copy(db, user_id=user_id):
        if await files_repo.is_referenced(db, user_id=user_id, file_id=stored.id):
            continue
        assert stored.upstream_file_id is not None
        try:
            await upstream_files.delete_file(upstream, stored.upstream_file_id)
        except ParleyError:
            logger.warning("file.upstream_delete_failed", extra={"file_id": stored.id}, exc_info=True)
            continue
        await files_repo.mark_upstream_deleted(db, file_id=stored.id, at=utcnow())


def _file_parts(value: str | list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(param, part) of each content part that names a file by id."""
    if isinstance(value, str):
        return
    for i, item in enumerate(value):
        content = item.get("content")
        for j, part in enumerate(content if isinstance(content, list) else []):
            if isinstance(part, dict) and part.get("file_id") is not None:
                yield f"input.{i}.content.{j}.file_id", part


def has_file_ids(value: str | list[dict[str, Any]]) -> bool:
    return next(_file_parts(value), None) is not None


async def resolve_file_ids(
    db: AsyncSession, *, user_id: str, value: str | list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The input as it goes upstream (each Parley file id as its upstream copy's), and its content parts as the
    user message keeps them (the Parley id, with the file's name, type and size). Another user's id, a deleted
    file's or a raw upstream id is a 404, as a missing one."""
    assert not isinstance(value, str)
    wanted = {str(part["file_id"]) for _, part in _file_parts(value)}
    owned = await files_repo.get_owned_files(db, user_id=user_id, file_ids=wanted)
    for param, part in _file_parts(value):
        stored = owned.get(str(part["file_id"]))
        if stored is None or stored.upstream_file_id is None:
            raise file_not_found(str(part["file_id"]), param)
    upstream_input: list[dict[str, Any]] = []
    kept_parts: list[dict[str, Any]] = []
    for item in value:
        content = item.get("content")
        if not isinstance(content, list):
            upstream_input.append(item)
            kept_parts.append({"type": "input_text", "text": content})
            continue
        sent: list[dict[str, Any]] = []
        for part in content:
            if part.get("file_id") is None:
                sent.append(part)
                kept_parts.append(part)
                continue
            stored = owned[str(part["file_id"])]
            sent.append({**part, "file_id": stored.upstream_file_id})
            kept_parts.append(
                {**part, "filename": stored.filename, "content_type": stored.content_type, "bytes": stored.size_bytes}
            )
        upstream_input.append({**item, "content": sent})
    return upstream_input, kept_parts


async def upstream_ids_for(db: AsyncSession, *, user_id: str, messages: Sequence[Message]) -> dict[str, str]:
    """The upstream ids of the files these messages name, for a new conversation that holds them (no query when
    they name none)."""
    named = {
        str(part["file_id"])
        for message in messages
        if message.role == "user"
        for part in message.items or ()
        if isinstance(part, dict) and part.get("file_id") is not None
    }
    return await files_repo.upstream_ids(db, user_id=user_id, file_ids=named) if named else {}


def upstream_parts(parts: list[dict[str, Any]], files: Mapping[str, str]) -> list[dict[str, Any]]:
    """A stored user message's content parts as they go upstream again: each file by its upstream copy's id,
    without what Parley added (name, type, size); a file whose copy is gone as a line of text saying so."""
    sent: list[dict[str, Any]] = []
    for part in parts:
        file_id = part.get("file_id")
        if file_id is None:
            sent.append(part)
        elif (upstream_id := files.get(str(file_id))) is not None:
            sent.append({**{key: part[key] for key in ("type", "detail") if key in part}, "file_id": upstream_id})
        else:
            sent.append({"type": "input_text", "text": f"[{part.get('filename', 'a file')} is no longer available]"})
    return sent
