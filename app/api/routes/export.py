"""/v1/sessions/{session_id}/export: a session as a JSON or Markdown file."""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from app.api.deps import DbDep, UserDep
from app.api.export_schemas import SessionExportRead
from app.api.routes.common import SessionId, errors
from app.services import export_service

router = APIRouter(prefix="/v1/sessions/{session_id}", tags=["sessions"], responses=errors(401, 404, 422))

MEDIA_TYPES = {"json": "application/json", "markdown": "text/markdown; charset=utf-8"}
EXTENSIONS = {"json": "json", "markdown": "md"}
MAX_SLUG_CHARS = 60
EXPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": SessionExportRead,
        "description": "The export, as an attachment: a JSON document (format=json) or a Markdown one (format=markdown).",
        "content": {"text/markdown": {"schema": {"type": "string"}}},
        "headers": {
            "Content-Disposition": {
                "description": 'attachment; filename="<the title as a slug, or the session id>.json" (or .md)',
                "required": True,
                "schema": {"type": "string"},
            }
        },
    }
}


def filename(title: str | None, session_id: str, extension: str) -> str:
    """The title as a slug (ASCII letters, digits and dashes, which any header and file system take), or the
    session id when nothing of the title is left."""
    ascii_title = unicodedata.normalize("NFKD", title or "").encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_title.lower()).strip("-")[:MAX_SLUG_CHARS].rstrip("-")
    return f"{slug or session_id}.{extension}"


@router.get("/export", summary="Export a session", responses=EXPORT_RESPONSES)
async def export_session(
    session_id: SessionId,
    db: DbDep,
    user: UserDep,
    format: Annotated[Literal["json", "markdown"], Query(description="The file's format.")] = "json",
    branches: Annotated[
        Literal["active", "all"],
        Query(description="The active branch's messages, or every message (each branch off it after it in Markdown)."),
    ] = "active",
) -> Response:
    """The session, its messages with their items (tool calls, citations, reasoning summaries) and its turns with
    usage, cost and feedback, as a file to download: JSON made of the API's own objects, or a Markdown document
    to read."""
    export = await export_service.build_export(db, principal=user, session_id=session_id, branches=branches)
    if format == "markdown":
        content = export_service.as_markdown(export)
    else:
        content = SessionExportRead.of(export).model_dump_json(indent=2)
    name = filename(export.session.title, export.session.id, EXTENSIONS[format])
    return Response(
        content,
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
