"""The JSON export of a session: the API's own Session, Message and Turn objects, gathered in one document."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, Field, WithJsonSchema

from app.api.schemas import MessageRead, SessionRead
from app.api.turn_schemas import TurnRead
from app.db.models import Message
from app.services.export_service import SessionExport
from app.services.turn_service import render_turn


class ExportedMessage(MessageRead):
    # Written only with branches=all (with the active branch alone every message is on it).
    on_active_branch: Annotated[bool | None, WithJsonSchema({"type": "boolean"})] = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="With branches=all only: whether the message is on the session's active branch.",
    )

    @classmethod
    def of_message(cls, message: Message, versions: dict[str | None, list[str]], *, flag: bool) -> ExportedMessage:
        read = MessageRead.of(message, versions)
        return cls(**dict(read), on_active_branch=message.on_active_branch if flag else None)


class SessionExportRead(BaseModel):
    object: Literal["session.export"] = "session.export"
    exported_at: dt.datetime
    format_version: Literal[1] = 1
    session: SessionRead
    branches: Literal["active", "all"] = Field(description="Which messages: the active branch's, or every one.")
    messages: list[ExportedMessage] = Field(description="Oldest first, as `GET …/messages` serves them.")
    turns: list[TurnRead] = Field(
        description="Every turn of the session (all branches), oldest first, with usage, cost and feedback; "
        "`stream_url` is null (an export carries no credentials)."
    )

    @classmethod
    def of(cls, export: SessionExport) -> SessionExportRead:
        every = export.branches == "all"
        return cls(
            exported_at=export.exported_at,
            session=SessionRead.of(export.session),
            branches=export.branches,
            messages=[ExportedMessage.of_message(m, export.versions, flag=every) for m in export.messages],
            turns=[TurnRead.model_validate(render_turn(turn, stream_url=None)) for turn in export.turns],
        )
