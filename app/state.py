"""What the lifespan builds and the request handlers use: one object on `app.state.parley`."""

from __future__ import annotations

from dataclasses import dataclass

import openai
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.db.migrate import SchemaWatch
from app.observability.metrics import Metrics
from app.services.auth import Authenticator
from app.services.server_tools import ServerTools
from app.services.stream_tokens import StreamTokens
from app.services.turn_service import TurnService
from app.settings import Settings
from app.streaming.event_log import EventLogRegistry
from app.streaming.turn_runner import TurnRunner


@dataclass(slots=True)
class AppState:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    upstream: openai.AsyncOpenAI
    authenticator: Authenticator
    upstream_base_url: str
    head_revision: str | None
    runner: TurnRunner
    logs: EventLogRegistry
    stream_tokens: StreamTokens
    tools: ServerTools
    metrics: Metrics
    turns: TurnService
    # Whether the log has said the database is not migrated (said once, not per request).
    schema: SchemaWatch
