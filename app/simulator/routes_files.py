"""The Files API: upload (multipart: `file` and `purpose`), list, retrieve, content and delete, in the real
service's shapes (the SDK's `FileObject` and `FileDeleted`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.responses import Response

from app.simulator.api_errors import SimulatorError, invalid_value, missing_parameter, not_found
from app.simulator.deps import StateDep
from app.simulator.json_types import json_response
from app.simulator.state import SimulatorState, StoredFile

router = APIRouter(prefix="/v1/files")

PURPOSES = ["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]
MAX_FILE_BYTES = 512 * 1024 * 1024


@router.post("")
async def create_file(request: Request, state: StateDep) -> Response:
    async with request.form(max_files=1, max_fields=10, max_part_size=1024 * 1024) as form:
        upload = form.get("file")
        purpose = form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise missing_parameter("file")
        if not isinstance(purpose, str) or not purpose:
            raise missing_parameter("purpose")
        if purpose not in PURPOSES:
            raise invalid_value("purpose", purpose, PURPOSES)
        content = await upload.read(MAX_FILE_BYTES + 1)
    if len(content) > MAX_FILE_BYTES:
        raise SimulatorError(413, f"File is larger than {MAX_FILE_BYTES} bytes.", param="file")
    stored = state.create_file(filename=upload.filename or "upload", purpose=purpose, content=content)
    return json_response(stored.file)


@router.get("")
async def list_files(state: StateDep) -> Response:
    files = sorted((stored.file for stored in state.files.values()), key=lambda f: -int(str(f["created_at"])))
    return json_response(
        {
            "object": "list",
            "data": files,
            "first_id": files[0]["id"] if files else None,
            "last_id": files[-1]["id"] if files else None,
            "has_more": False,
        }
    )


@router.get("/{file_id}")
async def retrieve_file(file_id: str, state: StateDep) -> Response:
    return json_response((await _file(state, file_id)).file)


@router.get("/{file_id}/content")
async def retrieve_file_content(file_id: str, state: StateDep) -> Response:
    return Response((await _file(state, file_id)).content, media_type="application/octet-stream")


@router.delete("/{file_id}")
async def delete_file(file_id: str, state: StateDep) -> Response:
    await _file(state, file_id)
    state.delete_file(file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})


async def _file(state: SimulatorState, file_id: str) -> StoredFile:
    stored = await state.find_file(file_id)
    if stored is None:
        raise not_found(f"No such File object: {file_id}", param="id")
    return stored
