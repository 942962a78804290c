"""Bodies of the file routes: the File object, and a deleted file."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel

from app.db.models import StoredFile


class FileRead(BaseModel):
    id: str
    object: Literal["file"] = "file"
    filename: str
    bytes: int
    content_type: str
    created_at: dt.datetime

    @classmethod
    def of(cls, stored: StoredFile) -> FileRead:
        return cls(
            id=stored.id,
            filename=stored.filename,
            bytes=stored.size_bytes,
            content_type=stored.content_type,
            created_at=stored.created_at,
        )


class FileDeleted(BaseModel):
    id: str
    object: Literal["file.deleted"] = "file.deleted"
    deleted: Literal[True] = True
