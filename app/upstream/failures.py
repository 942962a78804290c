"""Map the OpenAI SDK's exceptions onto Parley's error tree.

Upstream bodies are not passed through whole: only the upstream message for validation errors (the
client needs it to fix its request) and the code; headers and internals stay inside.
"""

from __future__ import annotations

import logging

import aiohttp
import httpx2
import openai

from app.errors import (
    InvalidRequest,
    NotFound,
    ParleyError,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)

logger = logging.getLogger(__name__)

# What reading a response body can raise when the connection fails or stalls: httpx2's errors, as the SDK's
# aiohttp adapter maps aiohttp's, and aiohttp's own for any it leaves unmapped.
STREAM_READ_ERRORS: tuple[type[Exception], ...] = (httpx2.TransportError, httpx2.StreamError, aiohttp.ClientError)


def transport_error(error: BaseException) -> BaseException:
    """What the HTTP client itself raised, beneath the SDK's and httpx2's wrappers.

    The SDK's aiohttp adapter maps every aiohttp connection error to `httpx2.ConnectTimeout`, a refused
    connection and a server that hung up included; only the aiohttp error under it says what happened.
    """
    if isinstance(error, openai.APIConnectionError) and error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error.__cause__, aiohttp.ClientError):
        error = error.__cause__
    return error


def timed_out(error: BaseException) -> bool:
    """A connect or read timeout (for a body being read: the stall bound), not a failed connection."""
    return isinstance(transport_error(error), (TimeoutError, httpx2.TimeoutException, openai.APITimeoutError))


def provably_not_started(error: openai.APIConnectionError) -> bool:
    """The connection was never made (refused, no such host), so the upstream cannot have seen the request."""
    return isinstance(transport_error(error), (aiohttp.ClientConnectorError, httpx2.ConnectError))


def _upstream_code(error: openai.APIStatusError) -> str | None:
    body = error.body
    if isinstance(body, dict):
        code = body.get("code")
        if isinstance(code, str):
            return code
    return error.code if isinstance(error.code, str) else None


def map_upstream_error(error: openai.OpenAIError) -> ParleyError:
    if isinstance(error, openai.APIConnectionError):
        if timed_out(error):
            return UpstreamTimeout("The upstream model service did not answer in time.")
        return UpstreamError("The upstream model service could not be reached.", code="upstream_unreachable")
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        code = _upstream_code(error)
        logger.warning(
            "upstream.error",
            extra={"status": status, "code": code, "upstream_request_id": error.request_id},
        )
        if status == 429:
            headers = {}
            retry_after = error.response.headers.get("retry-after")
            if retry_after:
                headers["Retry-After"] = retry_after
            return RateLimited(
                "The upstream model service is rate limiting requests; retry later.",
                code=code or "upstream_rate_limited",
                headers=headers,
            )
        if status == 404:
            return NotFound("The upstream resource was not found.", code=code or "upstream_not_found")
        if status in (400, 422):
            return InvalidRequest(f"The upstream model service rejected the request: {error.message}", code=code)
        return UpstreamError(f"The upstream model service failed (HTTP {status}).", code=code or "upstream_error")
    return UpstreamError("The upstream model service failed.")
