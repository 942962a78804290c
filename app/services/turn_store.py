"""The runner's persistence (`streaming.runner.TurnStore`) over the database.

Every write is its own short transaction; the per-event path never waits for one. A turn's end is one
transaction: its final state, the assistant message, one priced ledger row per upstream response (unique on
the response id), the session's and the user's spend. If the database cannot take it, the same write goes
to the local spool and is replayed later.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from decimal import ROUND_CEILING, Decimal
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.base import utcnow
from app.db.ids import new_id
from app.errors import PaymentRequired
from app.repositories import turn_repository as turns_repo
from app.repositories import user_repository as users_repo
from app.services.limits import check_round_budget, month_of
from app.services.pricing import Price, Pricer, TokenUsage
from app.services.reservations import MONEY_STEP, RoundCosts
from app.services.spool import Spool
from app.services.turn_service import iso, render_turn
from app.streaming.outcome import TurnOutcome
from app.streaming.turn_runner import OrphanedTurn, RoundRefused, TurnJob, UpstreamPosition
from app.streaming.turn_state import ResponseOutcome

logger = logging.getLogger(__name__)

FINISH_ATTEMPTS = 3
# How long a turn's response ids wait before their early write (see SqlTurnStore.store_response_ids).
RESPONSE_IDS_DELAY_S = 0.25
# A pool timeout (sqlalchemy.exc.TimeoutError) counts too: an overloaded pool must spool, not strand the turn.
DATABASE_ERRORS = (OperationalError, DBAPIError, SQLAlchemyTimeoutError, OSError, asyncio.TimeoutError)


class SqlTurnStore:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        pricer: Pricer,
        spool: Spool,
        costs: RoundCosts | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._pricer = pricer
        self.spool = spool
        # Without it, a budgeted turn's later rounds are not reserved (a store that only plans or replays writes).
        self._costs = costs
        self._pending_ids: dict[str, list[str]] = {}
        self._ids_writer: asyncio.Task[None] | None = None

    async def store_response_ids(self, turn_id: str, response_ids: list[str]) -> None:
        """Record a turn's upstream response ids early, so that a process dying mid-turn leaves enough for
        another to recover the answer. Written RESPONSE_IDS_DELAY_S later, together with every other turn's
        that arrived meanwhile (one transaction per batch, not per turn); a turn that ends before that has
        them written by its final write instead, so short turns cost no extra transaction. The price: a
        process killed within that delay of a turn's start leaves the turn to be failed as interrupted."""
        self._pending_ids[turn_id] = response_ids
        if self._ids_writer is None or self._ids_writer.done():
            self._ids_writer = asyncio.create_task(self._write_response_ids(), name="parley-response-ids")

    async def store_tool_outputs(self, turn_id: str, outputs: list[dict[str, Any]]) -> None:
        """A running turn's tool outputs of its latest round, stored before they are sent upstream: a process
        taking the turn over uses them rather than running a finished call again."""
        async with self._sessionmaker() as db, db.begin():
            await turns_repo.set_tool_outputs(db, turn_id, outputs)

    async def _write_response_ids(self) -> None:
        while self._pending_ids:
            await asyncio.sleep(RESPONSE_IDS_DELAY_S)
            batch, self._pending_ids = self._pending_ids, {}
            if not batch:
                break
            try:
                async with self._sessionmaker() as db, db.begin():
                    await turns_repo.set_response_ids(db, batch)
            except DATABASE_ERRORS:
                # Not fatal: the final write stores the ids again with the turn's end.
                logger.warning("turn.response_ids_not_stored", extra={"turns": len(batch)})
            except Exception:
                logger.exception("turn.response_ids_not_stored", extra={"turns": len(batch)})

    async def finish(self, job: TurnJob, outcome: TurnOutcome) -> dict[str, Any]:
        self._pending_ids.pop(job.turn_id, None)  # the final write has them
        plan = self.plan_final_write(job, outcome, utcnow())
        for attempt in range(1, FINISH_ATTEMPTS + 1):
            try:
                await self.apply(plan)
                break
            except DATABASE_ERRORS:
                if attempt == FINISH_ATTEMPTS:
                    logger.error("turn.finish_spooled: database unavailable", extra={"turn_id": job.turn_id})
                    await self.spool.append(plan)
                    break
                await asyncio.sleep(0.2 * attempt)
        return {**job.created_turn, **plan["rendered"], "stream_url": job.stream_url or None}

    def plan_final_write(self, job: TurnJob, outcome: TurnOutcome, now: dt.datetime) -> dict[str, Any]:
        """Everything the end of a turn (or of one of its steps) writes, as plain JSON data, so it can be
        spooled as it is."""
        prompt = job.upstream_body.get("prompt") or {}
        prior = job.prior
        rows = [self._ledger_row(job, outcome, response, prompt, now) for response in outcome.responses]
        costs = [row["cost_usd"] for row in rows]
        known = sum((Decimal(c) for c in costs if c is not None), Decimal(0))
        total: Decimal | None = known if None not in costs else None
        if not rows and not prior:
            total = None  # nothing was answered upstream: the cost is not known to be zero
        if prior is not None and total is not None:
            total = total + Decimal(prior.cost_usd) if prior.cost_usd is not None else None
        turn_values: dict[str, Any] = {
            "status": outcome.status,
            "output_text": outcome.output_text,
            "response_ids": outcome.response_ids,
            "usage": _add_usage(prior.usage if prior else None, outcome.usage),
            "cost_usd": str(total) if total is not None else None,
            "error": outcome.error,
            "required_action": outcome.required_action,
            "pending_tool_outputs": outcome.pending_tool_outputs,
            "ttft_ms": outcome.ttft_ms,
            "duration_ms": outcome.duration_ms,
            "last_event_id": outcome.last_event_id,
            "completed_at": now.isoformat() if outcome.status != "requires_action" else None,
            # Released as the actual cost lands (a turn going on after tool outputs reserves again).
            "reserved_usd": None,
        }
        if outcome.status == "failed" and not outcome.response_ids:
            # Nothing started upstream (e.g. a 429): the client may retry with the same Idempotency-Key.
            turn_values["idempotency_key"] = None
        # The history gets what this step added (a turn that went on after requires_action kept its start).
        new_text = outcome.output_text
        if prior is not None and new_text.startswith(prior.text):
            new_text = new_text[len(prior.text) :]
        message = None
        if new_text or outcome.items or (outcome.status == "completed" and prior is None):
            served = next((r.model for r in reversed(outcome.responses) if r.model), None)
            message = {
                "id": new_id("msg"),
                "content": new_text,
                "status": outcome.status,
                "items": outcome.items,
                "model": served,
                "conversation_id": job.upstream_body.get("conversation"),
            }
        return {
            "turn_id": job.turn_id,
            "session_id": job.session_id,
            "user_id": job.user_id,
            "at": now.isoformat(),
            "turn": turn_values,
            "message": message,
            "ledger": rows,
            "known_cost_usd": str(known),
            "rendered": {
                **{
                    k: turn_values[k]
                    for k in (
                        "status",
                        "output_text",
                        "response_ids",
                        "usage",
                        "error",
                        "required_action",
                        "ttft_ms",
                        "duration_ms",
                    )
                },
                "cost_usd": f"{total:.8f}" if total is not None else None,
                "completed_at": iso(now) if outcome.status != "requires_action" else None,
            },
        }

    def _ledger_row(
        self, job: TurnJob, outcome: TurnOutcome, response: ResponseOutcome, prompt: dict[str, Any], now: dt.datetime
    ) -> dict[str, Any]:
        usage = response.usage
        tokens = TokenUsage.from_response_usage(usage, web_search_calls=response.web_search_calls) if usage else None
        price = self._price(job, response, tokens)
        return {
            "id": new_id("usage"),
            "response_id": response.response_id,
            "turn_id": job.turn_id,
            "session_id": job.session_id,
            "user_id": job.user_id,
            "prompt_id": prompt.get("id"),
            "prompt_version": prompt.get("version"),
            "model_requested": job.upstream_body.get("model"),
            "model": response.model,
            "service_tier": response.service_tier,
            "status": response.status,
            "input_tokens": tokens.input_tokens if tokens else None,
            "cached_input_tokens": tokens.cached_tokens if tokens else None,
            "cache_write_tokens": tokens.cache_write_tokens if tokens else None,
            "output_tokens": tokens.output_tokens if tokens else None,
            "reasoning_tokens": tokens.reasoning_tokens if tokens else None,
            "total_tokens": int(usage.get("total_tokens") or 0) if usage else None,
            "web_search_calls": response.web_search_calls,
            "cost_usd": str(price.cost_usd) if price.cost_usd is not None else None,
            "price_source": price.source,
            "upstream_request_id": response.upstream_request_id,
            "rate_limits": response.rate_limits or None,
            "ttft_ms": outcome.ttft_ms,
            "duration_ms": outcome.duration_ms,
            "created_at": now.isoformat(),
        }

    def _price(self, job: TurnJob, response: ResponseOutcome, tokens: TokenUsage | None) -> Price:
        return self._pricer.price(
            model=response.model or job.upstream_body.get("model"), usage=tokens, service_tier=response.service_tier
        )

    async def reserve_round(
        self, job: TurnJob, body: dict[str, Any], responses: list[ResponseOutcome]
    ) -> RoundRefused | None:
        """Before a further round of a budgeted turn goes upstream: hold what the turn's unsettled rounds cost
        (`responses`) plus what the next may cost at most, in place of what it held, if that fits beside the
        owner's spend and their other turns' reservations."""
        if not job.budgeted or self._costs is None:
            return None
        costs = self._costs
        last = responses[-1] if responses else None
        outputs = [str(item.get("output", "")) for item in body.get("input") or [] if isinstance(item, dict)]
        needs = self._unsettled_cost(job, responses) + costs.next_round(
            body, last_usage=last.usage if last else None, served=last.model if last else None, outputs=outputs
        )

        async def reservation() -> Decimal:
            return needs

        try:
            async with self._sessionmaker() as db, db.begin():
                user = await users_repo.lock_user(db, job.user_id)
                held = await turns_repo.reservation_of(db, turn_id=job.turn_id)
                reserved = await check_round_budget(
                    db,
                    settings=costs.settings,
                    user_id=job.user_id,
                    user_budget=user.monthly_budget_usd if user is not None else None,
                    now=utcnow(),
                    reservation=reservation,
                    held_by_this_turn=held,
                    what="this turn's next step",
                )
                if reserved is not None:
                    await turns_repo.set_reservation(db, turn_id=job.turn_id, amount=reserved)
        except PaymentRequired as error:
            return RoundRefused(status="incomplete", code=error.code, message=error.message)
        except DATABASE_ERRORS:
            logger.warning("turn.round_not_reserved: database unavailable", extra={"turn_id": job.turn_id})
            return RoundRefused(
                status="failed",
                code="database_unavailable",
                message="The budget could not be checked for this turn's next step: the database did not answer.",
            )
        return None

    def _unsettled_cost(self, job: TurnJob, responses: list[ResponseOutcome]) -> Decimal:
        """What responses cost that the turn's final write has not added to the spend yet (unknown: nothing)."""
        total = Decimal(0)
        for response in responses:
            if response.usage:
                tokens = TokenUsage.from_response_usage(response.usage, web_search_calls=response.web_search_calls)
                total += self._price(job, response, tokens).cost_usd or Decimal(0)
        return total.quantize(MONEY_STEP, rounding=ROUND_CEILING)

    async def apply(self, plan: dict[str, Any]) -> None:
        """Run one final write (fresh, or replayed from the spool) in one transaction; idempotent."""
        at = dt.datetime.fromisoformat(plan["at"])
        turn_values = dict(plan["turn"])
        if turn_values["completed_at"] is not None:
            turn_values["completed_at"] = dt.datetime.fromisoformat(turn_values["completed_at"])
        if turn_values["cost_usd"] is not None:
            turn_values["cost_usd"] = Decimal(turn_values["cost_usd"])
        ledger = [
            {
                **row,
                "cost_usd": Decimal(row["cost_usd"]) if row["cost_usd"] is not None else None,
                "created_at": dt.datetime.fromisoformat(row["created_at"]),
            }
            for row in plan["ledger"]
        ]
        known_cost = Decimal(plan["known_cost_usd"])
        async with self._sessionmaker() as db, db.begin():
            await turns_repo.finish_turn(
                db,
                turn_id=plan["turn_id"],
                session_id=plan["session_id"],
                user_id=plan["user_id"],
                values=turn_values,
                # A final write spooled before messages had items or branches has none.
                message=(
                    {"items": None, "model": None, "conversation_id": None, **plan["message"]}
                    if plan["message"]
                    else None
                ),
                ledger=ledger,
                cost=known_cost,
                at=at,
                month=month_of(at),
            )

    async def replay_spool(self) -> int:
        return await self.spool.replay(self.apply)

    async def cancel_requests(self, turn_ids: list[str]) -> list[str]:
        async with self._sessionmaker() as db:
            return await turns_repo.cancel_requested_among(db, turn_ids)

    async def beat(self, runner_id: str, positions: dict[str, UpstreamPosition]) -> None:
        """The runner is alive, and its turns' background responses were relayed this far (one statement for
        them all, in the same transaction)."""
        async with self._sessionmaker() as db, db.begin():
            await turns_repo.beat(db, runner_id=runner_id, at=utcnow())
            await turns_repo.set_positions(
                db,
                {
                    turn_id: (list(position.response_ids), position.sequence_number)
                    for turn_id, position in positions.items()
                },
            )

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
                    # Its age, on this process's clock: the taken-over turn's duration counts from its start.
                    started_at=time.monotonic() - max((utcnow() - turn.created_at).total_seconds(), 0.0),
                ),
                response_ids=list(turn.response_ids or []),
                output_text=turn.output_text or "",
                last_sequence_number=turn.last_sequence_number,
                cancel_requested=turn.cancel_requested_at is not None,
                # Its earlier part ended `requires_action`, which numbered its events.
                continued=turn.last_event_id is not None,
                tool_outputs=list(turn.pending_tool_outputs or []),
            )
            for turn in turns
        ]


def _add_usage(prior: dict[str, int] | None, new: dict[str, int] | None) -> dict[str, int] | None:
    if prior is None or new is None:
        return new if prior is None else prior
    return {key: int(prior.get(key, 0)) + int(new.get(key, 0)) for key in {*prior, *new}}
