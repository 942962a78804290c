"""The one OpenAI client a Parley process uses, built from settings."""

from __future__ import annotations

import openai

from app.settings import Settings

# The simulator accepts any bearer value; this one says where a request came from in its logs.
SIMULATOR_API_KEY = "sk-parley-embedded-simulator"


def build_openai_client(settings: Settings, *, base_url: str) -> openai.AsyncOpenAI:
    api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else SIMULATOR_API_KEY
    return openai.AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        timeout=openai.Timeout(settings.upstream_timeout_s, connect=settings.upstream_connect_timeout_s),
        # Conversation calls are safe to retry (a duplicate create only orphans an empty conversation);
        # the streaming responses call turns retries off for itself.
        max_retries=2,
    )
