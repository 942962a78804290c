"""What one upstream round of a turn may cost at most, reserved against its owner's monthly budget before the
round goes upstream (`limits` says whether it fits; the turn's final write releases it)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from decimal import ROUND_CEILING, Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.repositories import turn_repository as turns_repo
from app.services.pricing import Pricer, TokenUsage
from app.settings import Settings

# No tokenizer is installed, and nothing may ask the upstream before the round goes there. OpenAI's tokenizers
# average about four characters of English per token; three errs towards reserving too much, since code, JSON
# and most other languages take more tokens per character than English prose.
CHARS_PER_TOKEN = 3
# A Money column's scale: a reservation is rounded up to it, so what is stored is never less than the estimate.
MONEY_STEP = Decimal("1E-10")
_GLOB_CHARACTERS = frozenset("*?[")


def tokens_for(chars: int) -> int:
    """A conservative token count of `chars` characters of text (rounded up)."""
    return -(-chars // CHARS_PER_TOKEN)


def new_input_chars(body: Mapping[str, Any], text: str) -> int:
    """The characters a round adds to the context besides the history: the new words, Parley's own instructions
    when it sends them, the tool definitions and a dashboard prompt's variables (every request carries them)."""
    chars = len(text) + len(body.get("instructions") or "")
    if body.get("tools"):
        # The standard library's encoder: tool schemas are free-form JSON, whose integers may exceed orjson's 64 bits.
        chars += len(json.dumps(body["tools"], separators=(",", ":"), ensure_ascii=False))
    prompt = body.get("prompt") or {}
    variables = prompt.get("variables") if isinstance(prompt, dict) else None
    if isinstance(variables, dict):
        chars += sum(len(value) for value in variables.values() if isinstance(value, str))
    return chars


class RoundCosts:
    """The most a round may cost: (the context it reads + what it adds) at the input price, plus
    min(max_output_tokens, PARLEY_BUDGET_RESERVE_OUTPUT_TOKENS) at the output price."""

    def __init__(self, settings: Settings, pricer: Pricer) -> None:
        self._settings = settings
        self._pricer = pricer

    @property
    def settings(self) -> Settings:
        return self._settings

    async def first_round(self, db: AsyncSession, *, session_id: str, body: Mapping[str, Any], text: str) -> Decimal:
        """A message's first round: the session's last response read and wrote its whole context (its input
        and output tokens), and the message adds `text` (and what every request carries) to it."""
        last = await turns_repo.last_usage(db, session_id=session_id)
        context = last.input_tokens + last.output_tokens
        return self.cost(body, input_tokens=context + tokens_for(new_input_chars(body, text)), served=last.model)

    async def after_tool_outputs(
        self, db: AsyncSession, *, session_id: str, body: Mapping[str, Any], outputs: Iterable[str]
    ) -> Decimal:
        """The round that answers the client's tool outputs: the turn's last response (settled when it asked
        for them) and the outputs."""
        last = await turns_repo.last_usage(db, session_id=session_id)
        added = sum(len(output) for output in outputs)
        return self.cost(
            body, input_tokens=last.input_tokens + last.output_tokens + tokens_for(added), served=last.model
        )

    def next_round(
        self,
        body: Mapping[str, Any],
        *,
        last_usage: Mapping[str, Any] | None,
        served: str | None,
        outputs: Iterable[str],
    ) -> Decimal:
        """A round after Parley ran tools itself: the previous response (`last_usage`, as the upstream reported
        it) and the tools' outputs."""
        usage = TokenUsage.from_response_usage(dict(last_usage)) if last_usage else TokenUsage()
        added = tokens_for(sum(len(output) for output in outputs))
        return self.cost(body, input_tokens=usage.input_tokens + usage.output_tokens + added, served=served)

    def cost(self, body: Mapping[str, Any], *, input_tokens: int, served: str | None) -> Decimal:
        """Every input token at the (uncached) input price and the reserved output tokens at the output price, for
        the dearest model the round may run on; nothing for a model with no known price (its cost is recorded as
        unknown, and counts nothing against the budget either)."""
        usage = TokenUsage(input_tokens=input_tokens, output_tokens=self.output_tokens(body))
        tier = body.get("service_tier")
        costs = [
            cost
            for model in self._models(body, served)
            if (cost := self._pricer.price(model=model, usage=usage, service_tier=tier).cost_usd) is not None
        ]
        return max(costs, default=Decimal(0)).quantize(MONEY_STEP, rounding=ROUND_CEILING)

    def output_tokens(self, body: Mapping[str, Any]) -> int:
        reserve = self._settings.budget_reserve_output_tokens
        cap = body.get("max_output_tokens")
        if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0:
            return min(cap, reserve)
        return reserve

    def _models(self, body: Mapping[str, Any], served: str | None) -> list[str]:
        """The model the round asks for; with a dashboard prompt that names its own (the request has none),
        the one that last served the session, else the dearest this deployment names (PARLEY_DEFAULT_MODEL and
        PARLEY_ALLOWED_MODELS; a pattern such as `*` names none)."""
        model = body.get("model")
        if isinstance(model, str) and model:
            return [model]
        if served:
            return [served]
        named = [self._settings.default_model, *self._settings.allowed_models]
        return [name for name in named if name and not _GLOB_CHARACTERS & set(name)]
