"""The runner's persistence (`streaming.runner.TurnStore`) over the database.

Every write is its own short transaction; the per-event path never waits for one. `finish` writes the
turn's final state, the assistant message and one ledger row per upstream response in one transaction.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from decimal import Decimal
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.base import utcnow
from app.db.ids import new_id
from app.db.models import Message
from app.repositories import sessions as sessions_repo
from app.repositories import turns as turns_repo
from app.services.turns import iso, render_turn
from app.streaming.outcome import TurnOutcome
from app.streaming.runner import OrphanedTurn, TurnJob
from app.streaming.turn_state import ResponseOutcome

logger = logging.getLogger(__name__)

FINISH_ATTEMPTS = 3


def _usage_row(job: TurnJob, response: ResponseOutcome) -> dict[str, Any]:
    usage = response.usage or {}
    input_details = usage.get("input_tokens_details") or {}
    output_details = usage.get("output_tokens_details") or {}
    known = bool(usage)
    return {
        "id": new_id("usage"),
        "response_id": response.response_id,
        "turn_id": job.turn_id,
        "session_id": job.session_id,
        "user_id": job.user_id,
        "model": response.model,
        "status": response.status,
        "input_tokens": usage.get("input_tokens") if known else None,
        "cached_input_tokens": input_details.get("cached_tokens") if known else None,
        "output_tokens": usage.get("output_tokens") if known else None,
        "reasoning_tokens": output_details.get("reasoning_tokens") if known else None,
        "total_tokens": usage.get("total_tokens") if known else None,
        # Pricing arrives with the cost ledger; until a price is known the cost is unknown, never 0.
        "cost_usd": None,
        "created_at": utcnow(),
    }


class SqlTurnStore:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker

    async def store_response_ids(self, turn_id: str, response_ids: list[str]) -> None:
        try:
            async with self._sessionmaker() as db, db.begin():
                await turns_repo.set_response_ids(db, turn_id=turn_id, response_ids=response_ids)
        except DBAPIError:
            # Not fatal: `finish` writes the ids again with the final state.
            logger.warning("turn.response_id_not_stored", extra={"turn_id": turn_id}, exc_info=True)

    async def finish(self, job: TurnJob, outcome: TurnOutcome) -> dict[str, Any]:
        now = utcnow()
        cost: Decimal | None = None
        values: dict[str, Any] = {
            "status": outcome.status,
            "output_text": outcome.output_text,
            "response_ids": outcome.response_ids,
            "usage": outcome.usage,
            "cost_usd": cost,
            "error": outcome.error,
            "ttft_ms": outcome.ttft_ms,
            "duration_ms": outcome.duration_ms,
            "last_event_id": outcome.last_event_id,
            "completed_at": now,
        }
        if outcome.status == "failed" and not outcome.response_ids:
            # Nothing started upstream (e.g. a 429): the client may retry with the same Idempotency-Key.
            values["idempotency_key"] = None
        for attempt in range(1, FINISH_ATTEMPTS + 1):
            try:
                await self._write_final(job, outcome, values, now)
                break
            except (OperationalError, DBAPIError):
                if attempt == FINISH_ATTEMPTS:
                    logger.exception("turn.finish_not_stored", extra={"turn_id": job.turn_id})
                    break
                await asyncio.sleep(0.2 * attempt)
        return {**job.created_turn, **_rendered(values), "stream_url": job.stream_url or None}

    async def _write_final(self, job: TurnJob, outcome: TurnOutcome, values: dict[str, Any], now: dt.datetime) -> None:
        async with self._sessionmaker() as db, db.begin():
            if not await turns_repo.finish_turn_row(db, turn_id=job.turn_id, values=values):
                logger.info("turn.already_finished", extra={"turn_id": job.turn_id})
                return
            if outcome.output_text or outcome.status == "completed":
                await sessions_repo.add_messages(
                    db,
                    [
                        Message(
                            id=new_id("msg"),
                            session_id=job.session_id,
                            turn_id=job.turn_id,
                            role="assistant",
                            content=outcome.output_text,
                            status=outcome.status,
                            created_at=now,
                        )
                    ],
                )
            await turns_repo.insert_usage_records(db, [_usage_row(job, r) for r in outcome.responses])
            await turns_repo.add_session_cost(db, session_id=job.session_id, cost=values["cost_usd"], at=now)

    async def cancel_requests(self, turn_ids: list[str]) -> list[str]:
        async with self._sessionmaker() as db:
            return await turns_repo.cancel_requested_among(db, turn_ids)

    async def beat(self, runner_id: str) -> None:
        async with self._sessionmaker() as db, db.begin():
            await turns_repo.beat(db, runner_id=runner_id, at=utcnow())

    async def remove_heartbeat(self, runner_id: str) -> None:
        async with self._sessionmaker() as db, db.begin():
            await turns_repo.remove_heartbeat(db, runner_id=runner_id)

    async def claim_orphans(self, runner_id: str, stale_before: dt.datetime) -> list[OrphanedTurn]:
        async with self._sessionmaker() as db, db.begin():
            turns = await turns_repo.claim_orphaned_turns(db, runner_id=runner_id, stale_before=stale_before)
        return [
            OrphanedTurn(
                job=TurnJob(
                    turn_id=turn.id,
                    session_id=turn.session_id,
                    user_id=turn.user_id,
                    upstream_body=turn.request,
                    created_turn=render_turn(turn, stream_url=None),
                    stream_url="",
                ),
                response_ids=list(turn.response_ids or []),
                output_text=turn.output_text or "",
            )
            for turn in turns
        ]


def _rendered(values: dict[str, Any]) -> dict[str, Any]:
    cost = values["cost_usd"]
    return {
        "status": values["status"],
        "output_text": values["output_text"],
        "response_ids": values["response_ids"],
        "usage": values["usage"],
        "cost_usd": f"{cost:.8f}" if cost is not None else None,
        "error": values["error"],
        "ttft_ms": values["ttft_ms"],
        "duration_ms": values["duration_ms"],
        "completed_at": iso(values["completed_at"]),
    }
