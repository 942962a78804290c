"""Images and files a request names by `file_id`: each must be an uploaded file (else 400, as the real service
answers), and the answer acknowledges them by name, so an attachment's whole path is visible offline."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from app.simulator.api_errors import SimulatorError
from app.simulator.json_types import JsonObject
from app.simulator.state import SimulatorState, StoredFile

_KINDS = {"input_image": "image", "input_file": "file"}


def _file_parts(input_items: list[JsonObject]) -> Iterator[tuple[str, str, str]]:
    """(param, kind, file id) of each content part that names a file by id."""
    for i, item in enumerate(input_items):
        content = item.get("content")
        for j, part in enumerate(content if isinstance(content, list) else []):
            if isinstance(part, dict) and part.get("type") in _KINDS and isinstance(part.get("file_id"), str):
                yield f"input[{i}].content[{j}].file_id", _KINDS[str(part["type"])], str(part["file_id"])


async def check_attachments(state: SimulatorState, input_items: list[JsonObject]) -> None:
    """Every named file is known (read back into memory if it is only in the state database)."""
    for param, _, file_id in _file_parts(input_items):
        if await state.find_file(file_id) is None:
            raise SimulatorError(
                400, f"Invalid '{param}': file '{file_id}' not found.", param=param, code="invalid_value"
            )


def acknowledgement(files: Mapping[str, StoredFile], input_items: list[JsonObject]) -> str | None:
    """ "I see the image holiday.png. I read the file notes.pdf." for the files the input names, or None."""
    sentences = []
    for _, kind, file_id in _file_parts(input_items):
        stored = files.get(file_id)
        if stored is not None:
            verb = "see" if kind == "image" else "read"
            sentences.append(f"I {verb} the {kind} {stored.file['filename']}.")
    return " ".join(sentences) if sentences else None
