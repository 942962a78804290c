"""/v1/files: files a user uploads, to name in messages (`input_image` / `input_file` with `file_id`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

from fastapi import APIRouter, Request, status
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.responses import StreamingResponse

from app.api.deps import DbDep, ListDep, SettingsDep, StateDep, UpstreamDep, UserDep
from app.api.file_schemas import FileDeleted, FileRead
from app.api.routes.common import FileId, errors, list_response
from app.api.schemas import ListResponse
from app.errors import InvalidRequest, PayloadTooLarge
from app.services import file_service

router = APIRouter(prefix="/v1/files", tags=["files"], responses=errors(401, 422))

CHUNK_BYTES = 1024 * 1024

UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}},
            }
        }
    },
}


@dataclass(slots=True)
class _Upload:
    """What the multipart parser has seen so far: the `file` part's name and bytes, the other parts ignored."""

    limit: int
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)
    found: bool = False
    _in_file: bool = False
    _header_field: bytearray = field(default_factory=bytearray)
    _header_value: bytearray = field(default_factory=bytearray)
    _disposition: bytes = b""

    def on_part_begin(self) -> None:
        self._disposition = b""
        self._in_file = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if bytes(self._header_field).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") == b"file" and not self.found:
            self.found = self._in_file = True
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_file:
            return
        if len(self.data) + (end - start) > self.limit:
            raise PayloadTooLarge(f"The file is larger than {self.limit:,} bytes.", param="file")
        self.data += data[start:end]


async def _read_upload(request: Request, limit: int) -> tuple[str | None, bytes]:
    """The form's `file` part, read chunk by chunk as it arrives: no more than `limit` bytes are ever held, and
    the first chunk past it ends the request with a 413."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise PayloadTooLarge(f"The file is larger than {limit:,} bytes.", param="file")
    _, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidRequest("The multipart/form-data body has no boundary.", param="file")
    upload = _Upload(limit=limit)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": upload.on_part_begin,
            "on_header_field": upload.on_header_field,
            "on_header_value": upload.on_header_value,
            "on_header_end": upload.on_header_end,
            "on_headers_finished": upload.on_headers_finished,
            "on_part_data": upload.on_part_data,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError:
        raise InvalidRequest("The multipart/form-data body is malformed.", param="file") from None
    if not upload.found:
        raise InvalidRequest("Send the file in the form field `file`.", param="file", code="missing_file")
    return upload.filename, bytes(upload.data)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=errors(400, 413, 415, 502, 504),
    openapi_extra={"requestBody": UPLOAD_BODY},
)
async def create_file(
    request: Request, db: DbDep, user: UserDep, upstream: UpstreamDep, settings: SettingsDep
) -> FileRead:
    """Upload a file (multipart/form-data, field `file`): PNG, JPEG, WebP, GIF, PDF, plain text, Markdown, CSV or
    JSON, judged by its content, of at most PARLEY_MAX_UPLOAD_BYTES, within your quota
    (PARLEY_MAX_USER_FILE_BYTES for all your files)."""
    filename, data = await _read_upload(request, settings.max_upload_bytes)
    stored = await file_service.upload_file(
        db,
        upstream,
        settings=settings,
        principal=user,
        filename=file_service.clean_filename(filename),
        data=data,
    )
    return FileRead.of(stored)


@router.get("")
async def list_files(db: DbDep, user: UserDep, page: ListDep) -> ListResponse[FileRead]:
    """Your files, newest first."""
    result = await file_service.list_files(
        db, principal=user, limit=page.limit, after=page.after, order=page.order or "desc"
    )
    return list_response(result.items, result.has_more, FileRead.of, lambda f: f.id)


@router.get("/{file_id}", responses=errors(404))
async def get_file(file_id: FileId, db: DbDep, user: UserDep) -> FileRead:
    return FileRead.of(await file_service.get_file(db, principal=user, file_id=file_id))


@router.get(
    "/{file_id}/content",
    responses={
        **errors(404),
        200: {
            "content": {content_type: {} for content_type in file_service.CONTENT_TYPES},
            "description": "The file's bytes, as the type Parley judged from them.",
        },
    },
    response_class=StreamingResponse,
)
async def get_file_content(file_id: FileId, db: DbDep, user: UserDep, state: StateDep) -> StreamingResponse:
    """The file's bytes, with the type Parley judged from them."""
    stored = await file_service.get_file(db, principal=user, file_id=file_id)
    chunks = file_service.read_content(state.sessionmaker, stored, chunk_bytes=CHUNK_BYTES)
    ascii_name = stored.filename.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return StreamingResponse(
        chunks,
        media_type=stored.content_type,
        headers={
            "Content-Length": str(stored.size_bytes),
            "Content-Disposition": f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(stored.filename)}",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.delete("/{file_id}", responses=errors(404))
async def delete_file(file_id: FileId, db: DbDep, user: UserDep, upstream: UpstreamDep) -> FileDeleted:
    """Hide the file at once; its upstream copy is deleted once no live session names it."""
    deleted_id = await file_service.delete_file(db, upstream, principal=user, file_id=file_id)
    return FileDeleted(id=deleted_id)
