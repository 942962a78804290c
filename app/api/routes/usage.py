"""/v1/usage: what was spent, from the cost ledger."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BeforeValidator, WithJsonSchema

from app.api.deps import DbDep, StateDep, bearer_scheme
from app.api.routes.common import errors
from app.errors import PermissionDenied
from app.services import usage_reports

router = APIRouter(prefix="/v1", tags=["usage"], responses=errors(401, 403, 422))


async def usage_scope(
    state: StateDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> str | None:
    """The user whose usage may be read; None for the admin token (everyone's)."""
    credential = credentials.credentials if credentials else None
    if credential and state.authenticator.is_admin(credential):
        return None
    return (await state.authenticator.authenticate(credential)).user_id


ISO_8601 = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ].*)?$")


def _iso_8601(value: object) -> object:
    # Pydantic would also read a bare number as a Unix timestamp: the API speaks ISO 8601 dates only.
    if isinstance(value, str) and not ISO_8601.match(value):
        raise ValueError("must be an ISO 8601 date or date-time, e.g. 2026-12-01 or 2026-12-01T00:00:00Z")
    return value


IsoDateTime = Annotated[
    dt.datetime,
    BeforeValidator(_iso_8601),
    WithJsonSchema({"anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "format": "date"}]}),
]


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


@router.get(
    "/usage",
    summary="Usage and cost",
    responses={200: {"content": {"text/csv": {}}, "description": "The report (JSON, or CSV with format=csv)."}},
)
async def get_usage(
    db: DbDep,
    scope: Annotated[str | None, Depends(usage_scope)],
    start: Annotated[
        IsoDateTime | None, Query(description="Inclusive; default: the start of this month (UTC).")
    ] = None,
    end: Annotated[IsoDateTime | None, Query(description="Exclusive; default: now.")] = None,
    group_by: Annotated[
        Literal["day", "model", "session", "prompt", "user", "kind"],
        Query(description="`kind`: turns apart from the sessions' automatic titles."),
    ] = "day",
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> Any:
    """Requests, tokens (input, cached input, output, reasoning) and cost in USD, grouped. A user sees their own
    usage; the admin token sees everyone's and may group by user. Every ledger row counts, the sessions' automatic
    titles (kind `title`) with the turns'. Unknown costs are left out of `cost_usd` and counted in
    `unpriced_requests`."""
    if group_by == "user" and scope is not None:
        raise PermissionDenied("Only the admin may group usage by user.", code="admin_only", param="group_by")
    report = await usage_reports.usage_report(
        db, start=_aware(start), end=_aware(end), group_by=group_by, user_id=scope
    )
    if format == "csv":
        return Response(usage_reports.as_csv(report), media_type="text/csv; charset=utf-8")
    report["start"] = report["start"].isoformat()
    report["end"] = report["end"].isoformat()
    return JSONResponse(report)
