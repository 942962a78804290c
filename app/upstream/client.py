"""The one OpenAI client a Parley process uses, built from settings."""

from __future__ import annotations

import httpx2
import openai

from app.settings import Settings

# The simulator accepts any bearer value; this one says where a request came from in its logs.
SIMULATOR_API_KEY = "sk-parley-embedded-simulator"
# Under the 5 s after which uvicorn (the simulator's server, and many others) closes an idle connection: a
# request sent on a connection the server is closing at that moment fails, and a stream open is not retried.
KEEPALIVE_EXPIRY_S = 4.0


def build_openai_client(settings: Settings, *, base_url: str) -> openai.AsyncOpenAI:
    api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else SIMULATOR_API_KEY
    timeout = openai.Timeout(settings.upstream_timeout_s, connect=settings.upstream_connect_timeout_s)
    client = openai.AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        timeout=timeout,
        # Conversation calls are safe to retry (a duplicate create only orphans an empty conversation);
        # the streaming responses call turns retries off for itself.
        max_retries=2,
        # aiohttp, not httpx2's default transport: a C HTTP parser and one timer reset per socket read, where
        # httpcore2 runs h11 in Python and opens an anyio cancel scope on every read, and scans its whole pool
        # at each request start and end. Every streamed turn holds one connection for its whole length.
        http_client=openai.DefaultAioHttpClient(
            timeout=timeout,
            limits=httpx2.Limits(
                max_connections=settings.upstream_max_connections,
                max_keepalive_connections=settings.upstream_max_connections,
                keepalive_expiry=KEEPALIVE_EXPIRY_S,
            ),
        ),
    )
    # The SDK imports each resource module on first use: ~0.1 s that would land in the first turn.
    _ = (client.responses, client.conversations)
    return client
