"""Map the OpenAI SDK's exceptions onto Parley's error tree.

Upstream bodies are not passed through whole: only the upstream message for validation errors (the
client needs it to fix its request) and the code; headers and internals stay inside.
"""

from __future__ import annotations

import logging

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


def _upstream_code(error: openai.APIStatusError) -> str | None:
    body = error.body
    if isinstance(body, dict):
        code = body.get("code")
        if isinstance(code, str):
            return code
    return error.code if isinstance(error.code, str) else None


def map_upstream_error(error: openai.OpenAIError) -> ParleyError:
    if isinstance(error, openai.APITimeoutError):
        return UpstreamTimeout("The upstream model service did not answer in time.")
    if isinstance(error, openai.APIConnectionError):
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
