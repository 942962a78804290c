"""Automatic titles: after a session's first turn, a small model (`PARLEY_TITLE_MODEL`) names the session.

The title is made in a task of its own, started once the turn's terminal event is in its log, so it never delays
a turn; its cost is a ledger row of kind `title` attached to that turn. A title the user gave is never
overwritten, and a title that fails (upstream or database) is logged and forgotten: it is never worth a turn.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from decimal import Decimal
from typing import Any

import openai
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.base import utcnow
from app.db.ids import new_id
from app.repositories import title_repository as titles_repo
from app.repositories import turn_repository as turns_repo
from app.services.limits import month_of
from app.services.pricing import Pricer, TokenUsage
from app.services.turn_service import input_text, safety_identifier
from app.settings import Settings
from app.streaming.turn_runner import TurnJob
from app.streaming.turn_state import ResponseOutcome
from app.upstream.response_stream import CreatedResponse, create_response

logger = logging.getLogger(__name__)

INSTRUCTIONS = (
    "Write a title for this conversation: at most six words naming its subject, in the language of the user's "
    "message. Reply with the title only: no quotes, no final punctuation, no 'Title:' before it."
)
# The start of each side names the subject well enough, and bounds what a title costs.
MAX_MESSAGE_CHARS = 1000
MAX_ANSWER_CHARS = 500
MAX_OUTPUT_TOKENS = 32
# A reasoning model thinks before it writes, even at low effort, and that counts against max_output_tokens.
REASONING_MODEL_PREFIXES = ("gpt-5", "o1", "o3", "o4")
REASONING_MAX_OUTPUT_TOKENS = 1024
# Six words fit; well within the API's own limit on a title (`api.schemas.MAX_TITLE_CHARS`).
MAX_AUTO_TITLE_CHARS = 80
TITLE_TIMEOUT_S = 30.0
# Titles at once; more wait their turn (a burst of new sessions must not take every upstream or database slot).
MAX_CONCURRENT_TITLES = 8
# At shutdown, titles under way get this long to land before they are cancelled.
SHUTDOWN_WAIT_S = 3.0
# A turn waiting for the client's tool outputs is titled from the user's message: the turn's next step is a new
# job, which no longer knows that the session was untitled.
TITLED_STATUSES = frozenset({"completed", "requires_action"})

# Quotes (typographic and CJK ones too) and Markdown emphasis a model may wrap a title in.
_QUOTES = "\"'`\u201c\u201d\u2018\u2019\u201e\u00ab\u00bb\u300c\u300d\u300e\u300f*_#"
_PREFIX = re.compile(r"^\s*title\s*:\s*", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Closing punctuation, CJK full-width forms and dashes included.
_TRAILING = ".,;:!?\u2026\u3002\uff0c\u3001\uff1b\uff1a\uff01\uff1f-\u2013\u2014 "


def clean_title(text: str) -> str | None:
    """The model's answer as a title: its first line, without quotes, a `Title:` prefix or closing punctuation,
    cut at a word to MAX_AUTO_TITLE_CHARS; None when nothing is left."""
    line = next((line for line in text.splitlines() if line.strip()), "")
    title = _PREFIX.sub("", _CONTROL.sub(" ", line)).strip().strip(_QUOTES).strip()
    title = " ".join(title.split()).rstrip(_TRAILING).strip(_QUOTES).strip()
    if len(title) > MAX_AUTO_TITLE_CHARS:
        cut = title[: MAX_AUTO_TITLE_CHARS + 1].rsplit(" ", 1)[0]
        title = (cut if cut and len(cut) <= MAX_AUTO_TITLE_CHARS else title[:MAX_AUTO_TITLE_CHARS]).rstrip(_TRAILING)
    return title or None


def title_request(model: str, *, user_text: str, answer: str, user_id: str) -> dict[str, Any]:
    """One non-streamed, unstored `responses.create`: the user's first message and the start of its answer."""
    conversation: list[dict[str, Any]] = [{"role": "user", "content": user_text[:MAX_MESSAGE_CHARS]}]
    if answer:
        conversation.append({"role": "assistant", "content": answer[:MAX_ANSWER_CHARS]})
    body: dict[str, Any] = {
        "model": model,
        "instructions": INSTRUCTIONS,
        "input": conversation,
        "store": False,
        "max_output_tokens": MAX_OUTPUT_TOKENS,
        "safety_identifier": safety_identifier(user_id),
    }
    if model.startswith(REASONING_MODEL_PREFIXES):
        body["reasoning"] = {"effort": "low"}
        body["max_output_tokens"] = REASONING_MAX_OUTPUT_TOKENS
    return body


class TitleMaker:
    """Names sessions after their first turn (`TurnRunner`'s `on_turn_ended`), in tasks it keeps until they end."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        upstream: openai.AsyncOpenAI,
        pricer: Pricer,
    ) -> None:
        self.model = settings.auto_title_model
        self._sessionmaker = sessionmaker
        # A short side call: bounded, retried once by the SDK (it is not stored, so a retry cannot double anything).
        self._upstream = upstream.with_options(
            max_retries=1, timeout=openai.Timeout(TITLE_TIMEOUT_S, connect=settings.upstream_connect_timeout_s)
        )
        self._pricer = pricer
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_TITLES)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def turn_ended(self, job: TurnJob, final: dict[str, Any]) -> None:
        """Start a title if this was an untitled session's first turn and it was answered; returns at once."""
        if not job.title_wanted or self.model is None or self._closed:
            return
        status = final.get("status")
        if status not in TITLED_STATUSES or (status == "completed" and not final.get("output_text")):
            return
        task = asyncio.create_task(self._make(job, final, self.model), name=f"title-{job.session_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """At shutdown, after the runner: titles under way get a moment to land, then are cancelled."""
        self._closed = True
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=SHUTDOWN_WAIT_S)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    async def _make(self, job: TurnJob, final: dict[str, Any], model: str) -> None:
        context = {"session_id": job.session_id, "turn_id": job.turn_id, "model": model}
        body = title_request(
            model,
            user_text=input_text(final.get("input") or ""),
            answer=str(final.get("output_text") or ""),
            user_id=job.user_id,
        )
        async with self._slots:
            started = time.monotonic()
            try:
                created = await create_response(self._upstream, body)
            except Exception as error:
                logger.warning("title.upstream_failed: %s", type(error).__name__, extra=context)
                return
            duration_ms = int((time.monotonic() - started) * 1000)
            response = ResponseOutcome.from_response(created.response)
            title = clean_title(response.output_text or "") if response.status in ("completed", "incomplete") else None
            row = self._ledger_row(job, model, response, created, duration_ms)
            try:
                titled = await self._store(job, title, row)
            except Exception as error:
                # Paid for and not recorded: say what was lost.
                logger.error(
                    "title.not_stored: %s", type(error).__name__, extra={**context, "cost_usd": row["cost_usd"]}
                )
                return
        logger.info("title.made" if titled else "title.not_used", extra={**context, "status": response.status})

    async def _store(self, job: TurnJob, title: str | None, row: dict[str, Any]) -> bool:
        """The title where nobody named the session, its ledger row, and its cost to the session and its owner,
        in one transaction. The cost counts whether or not the title was kept: it was paid."""
        now = utcnow()
        cost: Decimal | None = row["cost_usd"]
        async with self._sessionmaker() as db, db.begin():
            titled = title is not None and await titles_repo.set_auto_title(
                db, session_id=job.session_id, title=title, at=now
            )
            await turns_repo.insert_usage_records(db, [row])
            if cost is not None:
                await turns_repo.add_session_cost(db, session_id=job.session_id, cost=cost, at=now)
                if cost:
                    await turns_repo.add_monthly_spend(db, user_id=job.user_id, month=month_of(now), cost=cost, at=now)
        return titled

    def _ledger_row(
        self, job: TurnJob, model: str, response: ResponseOutcome, created: CreatedResponse, duration_ms: int
    ) -> dict[str, Any]:
        usage = response.usage
        tokens = TokenUsage.from_response_usage(usage) if usage else None
        price = self._pricer.price(model=response.model or model, usage=tokens, service_tier=response.service_tier)
        return {
            "id": new_id("usage"),
            "response_id": response.response_id,
            "kind": "title",
            "turn_id": job.turn_id,
            "session_id": job.session_id,
            "user_id": job.user_id,
            "prompt_id": None,
            "prompt_version": None,
            "model_requested": model,
            "model": response.model,
            "service_tier": response.service_tier,
            "status": response.status,
            "input_tokens": tokens.input_tokens if tokens else None,
            "cached_input_tokens": tokens.cached_tokens if tokens else None,
            "cache_write_tokens": tokens.cache_write_tokens if tokens else None,
            "output_tokens": tokens.output_tokens if tokens else None,
            "reasoning_tokens": tokens.reasoning_tokens if tokens else None,
            "total_tokens": int(usage.get("total_tokens") or 0) if usage else None,
            "web_search_calls": 0,
            "cost_usd": price.cost_usd,
            "price_source": price.source,
            "upstream_request_id": created.request_id,
            "rate_limits": None,
            "ttft_ms": None,
            "duration_ms": duration_ms,
            "created_at": utcnow(),
        }
