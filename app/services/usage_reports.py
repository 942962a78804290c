"""`GET /v1/usage`: the ledger summed by day, model, session, prompt, kind (or user, for admins)."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import ValidationFailed
from app.repositories import usage_repository as usage_repo

MEASURES = (
    "requests",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "unpriced_requests",
)
GROUP_KEYS = {
    "day": ("day",),
    "model": ("model",),
    "session": ("session_id",),
    "prompt": ("prompt_id", "prompt_version"),
    "user": ("user_id",),
    # What the spend went on: the turns themselves, or the sessions' automatic titles.
    "kind": ("kind",),
}
MAX_RANGE = dt.timedelta(days=400)


def _money(value: Any) -> str | None:
    return f"{Decimal(value):.8f}" if value is not None else None


def _row(raw: dict[str, Any]) -> dict[str, Any]:
    row = {key: raw[key] for key in raw if key not in MEASURES}
    for key in MEASURES:
        row[key] = _money(raw[key]) if key == "cost_usd" else int(raw[key] or 0)
    return row


async def usage_report(
    db: AsyncSession,
    *,
    start: dt.datetime | None,
    end: dt.datetime | None,
    group_by: str,
    user_id: str | None,
) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    end = end or now
    start = start or end.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if end <= start:
        raise ValidationFailed("'end' must be after 'start'.", param="end")
    if end - start > MAX_RANGE:
        raise ValidationFailed("A report covers at most 400 days.", param="start")
    grouped = await usage_repo.aggregate(db, start=start, end=end, user_id=user_id, group_by=group_by)
    (totals,) = await usage_repo.aggregate(db, start=start, end=end, user_id=user_id, group_by=None)
    return {
        "object": "list",
        "group_by": group_by,
        "start": start,
        "end": end,
        "data": [_row(raw) for raw in grouped],
        "totals": _row(totals),
    }


def as_csv(report: dict[str, Any]) -> str:
    columns = [*GROUP_KEYS[report["group_by"]], *MEASURES]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in report["data"]:
        writer.writerow(row)
    return buffer.getvalue()
