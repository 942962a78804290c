"""What an upstream response cost, in exact decimal USD.

Prices come from the `genai-prices` package's bundled data (never updated over the network at run time),
with a local override file (PARLEY_PRICING_FILE) for fine-tuned models and negotiated rates. OpenAI's
usage semantics: `cached_tokens` are part of `input_tokens` and `reasoning_tokens` part of `output_tokens`,
so each token is priced exactly once. A model with no known price costs `None` (unknown), never 0.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices

logger = logging.getLogger(__name__)

MILLION = Decimal(1_000_000)
GENAI_PRICES_SOURCE = f"genai-prices {genai_prices.__version__}"
# genai-prices knows these tiers' rates; anything else (e.g. "auto", "default", "scale") is standard.
PRICED_TIERS = frozenset({"flex", "priority", "fast"})


@dataclass(frozen=True, slots=True)
class TokenUsage:
    input_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    web_search_calls: int = 0

    @classmethod
    def from_response_usage(cls, usage: dict[str, Any], *, web_search_calls: int = 0) -> TokenUsage:
        input_details = usage.get("input_tokens_details") or {}
        output_details = usage.get("output_tokens_details") or {}
        return cls(
            input_tokens=int(usage.get("input_tokens") or 0),
            cached_tokens=int(input_details.get("cached_tokens") or 0),
            cache_write_tokens=int(input_details.get("cache_write_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
            reasoning_tokens=int(output_details.get("reasoning_tokens") or 0),
            web_search_calls=web_search_calls,
        )


@dataclass(frozen=True, slots=True)
class Price:
    cost_usd: Decimal | None
    source: str | None


@dataclass(frozen=True, slots=True)
class OverridePrice:
    """USD per million tokens."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    per_web_search: Decimal = Decimal(0)

    def cost(self, usage: TokenUsage) -> Decimal:
        cached_rate = self.cached_input if self.cached_input is not None else self.input
        write_rate = self.cache_write if self.cache_write is not None else self.input
        uncached = max(usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens, 0)
        per_million = (
            uncached * self.input
            + usage.cached_tokens * cached_rate
            + usage.cache_write_tokens * write_rate
            + usage.output_tokens * self.output
        )
        return per_million / MILLION + usage.web_search_calls * self.per_web_search


def load_overrides(path: Path) -> dict[str, OverridePrice]:
    """`{"models": {"<model or glob>": {"input": "2.00", "cached_input": "0.50", "output": "8.00"}}}`,
    prices in USD per million tokens (strings, so no float ever touches them)."""
    raw = json.loads(path.read_text())
    models = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(models, dict):
        raise ValueError(f"{path}: expected an object with a 'models' object")
    overrides: dict[str, OverridePrice] = {}
    for pattern, prices in models.items():
        if not isinstance(prices, dict) or "input" not in prices or "output" not in prices:
            raise ValueError(f"{path}: model {pattern!r} needs at least 'input' and 'output' prices")
        overrides[pattern] = OverridePrice(
            input=Decimal(str(prices["input"])),
            output=Decimal(str(prices["output"])),
            cached_input=Decimal(str(prices["cached_input"])) if "cached_input" in prices else None,
            cache_write=Decimal(str(prices["cache_write"])) if "cache_write" in prices else None,
            per_web_search=Decimal(str(prices.get("per_web_search", "0"))),
        )
    return overrides


class Pricer:
    def __init__(self, override_file: Path | None = None) -> None:
        self._overrides = load_overrides(override_file) if override_file else {}
        self._override_source = f"override {override_file.name}" if override_file else None
        self._warned: set[str] = set()

    def warm(self) -> None:
        """Load genai-prices' bundled price data (a large module, ~0.1 s) now rather than in the first turn."""
        self.price(model="gpt-4o-mini", usage=TokenUsage(input_tokens=1, output_tokens=1))

    def price(self, *, model: str | None, usage: TokenUsage | None, service_tier: str | None = None) -> Price:
        if usage is None or not model:
            return Price(cost_usd=None, source=None)
        override = self._override_for(model)
        if override is not None:
            return Price(cost_usd=override.cost(usage), source=self._override_source)
        try:
            calculation = genai_prices.calc_price(
                genai_prices.Usage(
                    input_tokens=usage.input_tokens,
                    cache_read_tokens=usage.cached_tokens,
                    cache_write_tokens=usage.cache_write_tokens,
                    output_tokens=usage.output_tokens,
                    web_searches=usage.web_search_calls,
                ),
                model,
                provider_id="openai",
                price_context={"service_tier": service_tier} if service_tier in PRICED_TIERS else None,
            )
        except LookupError:
            if model not in self._warned:
                self._warned.add(model)
                logger.warning("pricing.unknown_model: no price for %s; its cost is recorded as unknown", model)
            return Price(cost_usd=None, source=None)
        return Price(cost_usd=Decimal(calculation.total_price), source=GENAI_PRICES_SOURCE)

    def _override_for(self, model: str) -> OverridePrice | None:
        exact = self._overrides.get(model)
        if exact is not None:
            return exact
        for pattern, price in self._overrides.items():
            if fnmatch.fnmatchcase(model, pattern):
                return price
        return None
