"""Costs checked by hand against OpenAI's published prices (USD per 1M tokens, standard tier):

    model         input   cached input   output
    gpt-5         1.25    0.125          10.00
    gpt-5-mini    0.25    0.025           2.00
    gpt-4.1       2.00    0.50            8.00
    gpt-4o-mini   0.15    0.075           0.60

Cached tokens are part of the input tokens and reasoning tokens part of the output tokens, so each token is
priced once: cost = (input - cached) * input + cached * cached_input + output * output.
"""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from pathlib import Path

import pytest

from app.services.pricing import Pricer, TokenUsage

USAGE = TokenUsage(input_tokens=12_000, cached_tokens=8_000, output_tokens=3_000, reasoning_tokens=2_000)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # (4000 * 1.25 + 8000 * 0.125 + 3000 * 10) / 1e6 = 0.005 + 0.001 + 0.03
        ("gpt-5", Decimal("0.036")),
        # (4000 * 0.25 + 8000 * 0.025 + 3000 * 2) / 1e6 = 0.001 + 0.0002 + 0.006
        ("gpt-5-mini", Decimal("0.0072")),
        # (4000 * 2 + 8000 * 0.5 + 3000 * 8) / 1e6 = 0.008 + 0.004 + 0.024
        ("gpt-4.1", Decimal("0.036")),
        # (4000 * 0.15 + 8000 * 0.075 + 3000 * 0.6) / 1e6 = 0.0006 + 0.0006 + 0.0018
        ("gpt-4o-mini", Decimal("0.003")),
        # Served snapshot names price as their model.
        ("gpt-5-2025-08-07", Decimal("0.036")),
        ("gpt-4.1-2025-04-14", Decimal("0.036")),
    ],
)
def test_published_prices(model: str, expected: Decimal) -> None:
    price = Pricer().price(model=model, usage=USAGE)
    assert price.cost_usd == expected
    assert isinstance(price.cost_usd, Decimal)
    assert price.source is not None
    assert price.source.startswith("genai-prices ")


def test_reasoning_tokens_are_not_billed_twice() -> None:
    without = Pricer().price(model="gpt-5", usage=TokenUsage(input_tokens=1000, output_tokens=1000))
    with_reasoning = Pricer().price(
        model="gpt-5", usage=TokenUsage(input_tokens=1000, output_tokens=1000, reasoning_tokens=900)
    )
    assert with_reasoning.cost_usd == without.cost_usd == Decimal("0.01125")


def test_service_tier_as_reported_is_priced() -> None:
    usage = TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000)
    standard = Pricer().price(model="gpt-5", usage=usage, service_tier="default").cost_usd
    flex = Pricer().price(model="gpt-5", usage=usage, service_tier="flex").cost_usd
    priority = Pricer().price(model="gpt-5", usage=usage, service_tier="priority").cost_usd
    assert standard == Decimal("11.25")
    assert flex == Decimal("5.625")  # half price: 0.625 input, 5.00 output
    assert priority is not None
    assert priority > standard


def test_web_search_calls_have_a_per_call_fee() -> None:
    plain = Pricer().price(model="gpt-5", usage=TokenUsage(input_tokens=1000, output_tokens=100)).cost_usd
    searched = (
        Pricer()
        .price(model="gpt-5", usage=TokenUsage(input_tokens=1000, output_tokens=100, web_search_calls=2))
        .cost_usd
    )
    assert plain is not None
    assert searched == plain + Decimal("0.02")  # $10 per 1,000 calls


def test_unknown_model_costs_null_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        price = Pricer().price(model="my-private-model", usage=USAGE)
    assert price.cost_usd is None
    assert price.source is None
    assert "my-private-model" in caplog.text


def test_no_usage_is_unknown_not_zero() -> None:
    assert Pricer().price(model="gpt-5", usage=None).cost_usd is None


def test_override_file_wins_and_takes_globs(tmp_path: Path) -> None:
    overrides = tmp_path / "prices.json"
    overrides.write_text(
        json.dumps(
            {
                "models": {
                    "ft:gpt-4.1:acme:*": {"input": "3.00", "cached_input": "0.75", "output": "12.00"},
                    "gpt-4o-mini": {"input": "0.10", "output": "0.40"},
                }
            }
        )
    )
    pricer = Pricer(overrides)
    fine_tuned = pricer.price(model="ft:gpt-4.1:acme::abc123", usage=USAGE)
    # (4000 * 3 + 8000 * 0.75 + 3000 * 12) / 1e6
    assert fine_tuned.cost_usd == Decimal("0.054")
    assert fine_tuned.source == "override prices.json"
    # A negotiated rate with no cached price charges cached input at the input rate.
    assert pricer.price(model="gpt-4o-mini", usage=USAGE).cost_usd == Decimal("0.0024")
    assert pricer.price(model="gpt-5", usage=USAGE).cost_usd == Decimal("0.036")


def test_bad_override_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "prices.json"
    bad.write_text(json.dumps({"models": {"x": {"input": "1"}}}))
    with pytest.raises(ValueError, match="'input' and 'output'"):
        Pricer(bad)
