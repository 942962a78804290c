"""Liveness and readiness for load balancers and orchestrators (no auth)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from sqlalchemy import text

from app.api.deps import StateDep
from app.api.schemas import Health
from app.db.migrate import NOT_MIGRATED, current_revision
from app.errors import ServiceUnavailable

logger = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get(
    "/readyz",
    responses={
        503: {
            "description": "Database unreachable (database_unreachable) or not migrated "
            "(database_not_migrated, migrations_pending)."
        }
    },
)
async def readyz(state: StateDep) -> Health:
    """The database is reachable and migrated to the head revision."""
    try:
        async with state.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        revision = await current_revision(state.engine)
    except Exception as error:
        logger.warning("readyz.database_unreachable", extra={"error": type(error).__name__})
        raise ServiceUnavailable("The database is not reachable.", code="database_unreachable") from error
    head = state.head_revision
    if revision is None:
        state.schema.behind("empty (never migrated)")
        raise ServiceUnavailable(NOT_MIGRATED, code="database_not_migrated")
    if revision != head:
        state.schema.behind(f"at revision {revision}")
        raise ServiceUnavailable(
            f"The database is at revision {revision}, not at {head}: run `parley migrate`.", code="migrations_pending"
        )
    state.schema.current()
    return Health(status="ready", database="ok", revision=revision)
